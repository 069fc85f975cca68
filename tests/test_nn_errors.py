"""Bad arguments to fastlstm.nn layers and fastlstm.losses: a TypeError/ValueError naming the argument,
what was expected and what came, raised before any weight or gradient is touched.

Run: pytest -q tests/test_nn_errors.py (tiny shapes; well under a second).
"""

import numpy as np
import pytest

import fastlstm
from fastlstm import losses, nn


def snapshot(model):
    """Bytes of every parameter and gradient, to prove a rejected call modified nothing."""
    return {name: (p.data.tobytes(), p.grad.tobytes()) for name, p in model.named_parameters()}


def two_linears():
    return nn.Sequential(nn.Linear(3, 2, seed=0), nn.Linear(2, 2, seed=1))


# ---- 1. load_state_dict is all-or-nothing and takes only real numbers ------------------------------
def test_load_state_dict_checks_every_value_before_writing_any():
    model = two_linears()
    bad = model.state_dict()
    bad["0.weight"] = bad["0.weight"] + 1  # valid, and checked first
    bad["1.weight"] = np.array([["a", "b"], ["c", "d"]])
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"state\['1.weight'\]: expected a real-valued array.*<U1"):
        model.load_state_dict(bad)
    assert snapshot(model) == before


@pytest.mark.parametrize("value", [
    np.ones((2, 3), np.complex64) + 1j,
    np.ones((2, 3), bool),
    np.ones((2, 3), object),
    np.array([["2020-01-01"] * 3] * 2, "datetime64[D]"),
    np.zeros((2, 3), [("a", "f4")]),
    None,
], ids=["complex", "bool", "object", "datetime", "structured", "None"])
def test_load_state_dict_rejects_values_that_are_not_real_numbers(value):
    model = two_linears()
    state = model.state_dict()
    state["0.weight"] = value
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"state\['0.weight'\]: expected a real-valued array of shape \(2, 3\)"):
        model.load_state_dict(state)
    assert snapshot(model) == before


def test_load_state_dict_converts_integers_and_lists_to_the_model_dtype():
    model = two_linears()
    state = model.state_dict()
    state["0.weight"] = [[1, 2, 3], [4, 5, 6]]
    state["0.bias"] = np.array([7, 8], np.int64)
    model.load_state_dict(state)
    np.testing.assert_array_equal(model[0].weight.data, np.array([[1, 2, 3], [4, 5, 6]], np.float32))
    assert model[0].weight.dtype == np.float32 and model[0].bias.data.tolist() == [7.0, 8.0]


def test_a_loaded_model_refuses_a_half_good_state(tmp_path):
    clone = fastlstm.load(two_linears().save(tmp_path / "m.npz"))
    bad = clone.state_dict()
    bad["0.weight"] = bad["0.weight"] + 1
    bad["1.bias"] = bad["1.bias"] + 1j  # its imaginary part used to be dropped silently
    before = snapshot(clone)
    with pytest.raises(TypeError, match=r"state\['1.bias'\]: expected a real-valued array.*complex"):
        clone.load_state_dict(bad)
    assert snapshot(clone) == before


def test_load_state_dict_takes_a_torch_state_dict_and_names_a_bfloat16_key():
    torch = pytest.importorskip("torch")
    reference = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    model = two_linears()
    model.load_state_dict(reference.state_dict())
    np.testing.assert_array_equal(model[1].bias.data, reference[1].bias.detach().numpy())
    bad = dict(reference.state_dict(), **{"1.weight": reference[1].weight.detach().to(torch.bfloat16)})
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"state\['1.weight'\]: this torch tensor has no NumPy equivalent"):
        model.load_state_dict(bad)
    assert snapshot(model) == before


# ---- 2. backward checks dy against what forward returned, before touching a gradient ----------------
def _forward(layer, x):
    layer.train()
    layer.zero_grad()
    return layer(x)


X_SEQ = np.ones((2, 5, 3), np.float32)

BAD_DY = [
    ("lstm_last_too_wide", lambda: nn.LSTM(3, 4, return_sequences=False, seed=0), X_SEQ, (2, 9), (2, 4)),
    ("lstm_last_broadcast", lambda: nn.LSTM(3, 4, return_sequences=False, seed=0), X_SEQ, (1, 4), (2, 4)),
    ("lstm_last_1d", lambda: nn.LSTM(3, 4, return_sequences=False, seed=0), X_SEQ, (4,), (2, 4)),
    ("lstm_bidirectional_last", lambda: nn.LSTM(3, 4, return_sequences=False, bidirectional=True, seed=0), X_SEQ,
     (2, 4), (2, 8)),
    ("rnn_sequences_broadcast", lambda: nn.RNN(3, 4, seed=0), X_SEQ, (4,), (2, 5, 4)),
    ("rnn_last_broadcast", lambda: nn.RNN(3, 4, return_sequences=False, seed=0), X_SEQ, (1, 1), (2, 4)),
    ("dropout_broadcast", lambda: nn.Dropout(0.5, seed=0), np.ones((4, 4), np.float32), (1, 4), (4, 4)),
    ("embedding_same_size", lambda: nn.Embedding(5, 2, seed=0), np.array([[1, 2, 3]]), (6, 1), (1, 3, 2)),
    ("linear_transposed", lambda: nn.Linear(4, 3, seed=0), np.ones((2, 4), np.float32), (3, 2), (2, 3)),
    ("sequential", lambda: nn.Sequential(nn.Linear(4, 3, seed=0), nn.Linear(3, 2, seed=1)),
     np.ones((2, 4), np.float32), (2, 3), (2, 2)),
]


@pytest.mark.parametrize("make,x,dy_shape,y_shape", [case[1:] for case in BAD_DY], ids=[case[0] for case in BAD_DY])
def test_backward_rejects_dy_of_another_shape_and_modifies_nothing(make, x, dy_shape, y_shape):
    layer = make()
    y = _forward(layer, x)
    assert y.shape == y_shape
    before = snapshot(layer)
    expected = rf"dy: expected shape {re_tuple(y_shape)} \(the shape of y\), got {re_tuple(dy_shape)}"
    with pytest.raises(ValueError, match=expected):
        layer.backward(np.ones(dy_shape, np.float32))
    assert snapshot(layer) == before
    layer.backward(np.ones(y_shape, np.float32))  # the saved forward survives a rejected dy


def re_tuple(shape):
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("dy", [None, "abc", np.ones((2, 3), np.complex64)], ids=["None", "str", "complex"])
def test_backward_rejects_dy_that_is_not_real_numbers(dy):
    layer = nn.Linear(4, 3, seed=0)
    _forward(layer, np.ones((2, 4), np.float32))
    before = snapshot(layer)
    with pytest.raises(TypeError, match=r"dy: expected a real-valued array of shape \(2, 3\)"):
        layer.backward(dy)
    assert snapshot(layer) == before


def test_lstm_last_step_backward_handles_an_unbatched_input():
    layer = nn.LSTM(3, 4, return_sequences=False, bidirectional=True, seed=0)
    y = _forward(layer, np.ones((5, 3), np.float32))
    assert y.shape == (8,)
    assert layer.backward(np.ones(8, np.float32)).shape == (5, 3)


# ---- 3. lists are converted; None, strings and objects are a TypeError naming the argument ----------
LIST_INPUTS = [
    ("linear", lambda: nn.Linear(3, 2, seed=0), [[1.0, 2.0, 3.0]], (1, 2)),
    ("linear_ints", lambda: nn.Linear(3, 2, seed=0), [[1, 2, 3]], (1, 2)),
    ("embedding", lambda: nn.Embedding(5, 2, seed=0), [[1, 2]], (1, 2, 2)),
    ("rnn", lambda: nn.RNN(3, 2, seed=0), [[[1.0, 2.0, 3.0]]], (1, 1, 2)),
    ("dropout", lambda: nn.Dropout(0.5, seed=0), [1.0, 2.0], (2,)),
    ("sequential", lambda: nn.Sequential(nn.Linear(3, 2, seed=0)), [[1.0, 2.0, 3.0]], (1, 2)),
]


@pytest.mark.parametrize("make,x,y_shape", [c[1:] for c in LIST_INPUTS], ids=[c[0] for c in LIST_INPUTS])
def test_forward_accepts_numeric_lists(make, x, y_shape):
    assert make()(x).shape == y_shape


LAYERS = [
    ("linear", lambda: nn.Linear(3, 2), "x"),
    ("embedding", lambda: nn.Embedding(5, 2), "ids"),
    ("rnn", lambda: nn.RNN(3, 2), "x"),
    ("dropout", lambda: nn.Dropout(0.5), "x"),
    ("sequential", lambda: nn.Sequential(nn.Linear(3, 2)), "x"),
]


@pytest.mark.parametrize("bad", [None, "abc", object(), [[1 + 2j, 0, 0]]], ids=["None", "str", "object", "complex"])
@pytest.mark.parametrize("make,name", [c[1:] for c in LAYERS], ids=[c[0] for c in LAYERS])
def test_forward_rejects_values_that_are_not_arrays_of_numbers(make, name, bad):
    with pytest.raises(TypeError, match=rf"^{name}: expected"):
        make()(bad)


def test_forward_rejects_a_ragged_list():
    with pytest.raises(TypeError, match="x: expected .* got a ragged list"):
        nn.Linear(3, 2)([[1.0, 2.0, 3.0], [1.0]])


@pytest.mark.parametrize("shape", [(2, 0, 3), (0, 2, 3)])
def test_rnn_rejects_an_empty_sequence_or_batch(shape):
    with pytest.raises(ValueError, match=r"x: expected at least one time step and one sequence"):
        nn.RNN(3, 2)(np.ones(shape, np.float32))


@pytest.mark.parametrize("bad", [None, "abc", object()], ids=["None", "str", "object"])
def test_losses_reject_values_that_are_not_arrays_of_numbers(bad):
    good = np.ones((2, 3))
    with pytest.raises(TypeError, match="^pred: expected"):
        losses.MSELoss()(bad, good)
    with pytest.raises(TypeError, match="^target: expected"):
        losses.MSELoss()(good, bad)
    with pytest.raises(TypeError, match="^logits: expected"):
        losses.CrossEntropyLoss()(bad, np.array([0, 1]))
    with pytest.raises(TypeError, match="^targets: expected"):
        losses.CrossEntropyLoss()(good, bad)
    if bad is not None:  # (mask=None means no mask)
        with pytest.raises(TypeError, match="^mask: expected"):
            losses.CrossEntropyLoss()(good, np.array([0, 1]), mask=bad)


def test_losses_accept_lists():
    loss, grad = losses.MSELoss()([1.0, 3.0], [1, 1])
    assert loss == pytest.approx(2.0) and grad.tolist() == [0.0, 2.0]
    loss, grad = losses.CrossEntropyLoss()([[0.0, 0.0]], [1], mask=[1])
    assert loss == pytest.approx(np.log(2.0)) and grad.shape == (1, 2)


def test_cross_entropy_rejects_logits_without_classes():
    with pytest.raises(ValueError, match=r"logits: expected shape \(\.\.\., classes\) with at least one class"):
        losses.CrossEntropyLoss()(np.ones((2, 0)), np.array([0, 0]))


# ---- 4. constructors check memory before allocating ------------------------------------------------
@pytest.mark.parametrize("config,what", [
    ({"type": "Linear", "in_features": 10**6, "out_features": 10**6}, "Linear parameters"),
    ({"type": "Embedding", "num_embeddings": 10**6, "embedding_dim": 10**6}, "Embedding parameters"),
    ({"type": "RNN", "input_size": 10**6, "hidden_size": 10**6}, "RNN parameters"),
], ids=["linear", "embedding", "rnn"])
def test_constructors_check_memory_before_allocating(config, what):
    with pytest.raises(MemoryError, match=f"{what} and gradients needs .* GiB"):
        nn.from_config(config)


# ---- 5. losses and dropout compute in floating point -------------------------------------------------
def test_mse_rejects_integer_predictions_instead_of_truncating_the_gradient():
    with pytest.raises(TypeError, match=r"pred: expected a floating-point array.*int64.*astype"):
        losses.MSELoss()(np.array([1, 2, 3, 4]), np.zeros(4, int))
    with pytest.raises(TypeError, match="pred: expected a floating-point array"):
        losses.MSELoss().sum_and_count(np.array([1, 2]), np.zeros(2))


def test_mse_takes_integer_targets_in_the_prediction_dtype():
    loss, grad = losses.MSELoss()(np.array([1.0, 2.0, 3.0, 4.0], np.float32), np.zeros(4, int))
    assert loss == pytest.approx(7.5)
    assert grad.dtype == np.float32 and grad.tolist() == [0.5, 1.0, 1.5, 2.0]


def test_cross_entropy_rejects_integer_logits():
    with pytest.raises(TypeError, match="logits: expected a floating-point array"):
        losses.CrossEntropyLoss()(np.ones((2, 3), np.int64), np.array([0, 1]))


def test_dropout_rejects_integer_input_it_could_not_rescale():
    drop = nn.Dropout(0.3, seed=0)
    with pytest.raises(TypeError, match="x: expected a floating-point array.*int64"):
        drop(np.ones((4, 4), np.int64))
    drop.eval()
    with pytest.raises(TypeError, match="x: expected a floating-point array"):
        drop(np.ones((4, 4), np.int64))


# ---- 6. dtype=None is not a silent float64 ---------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: nn.Linear(3, 4, dtype=None),
    lambda: nn.Embedding(3, 4, dtype=None),
    lambda: nn.RNN(3, 4, dtype=None),
    lambda: nn.LSTM(3, 4, dtype=None),
    lambda: nn.from_config({"type": "Linear", "in_features": 3, "out_features": 2, "dtype": None}),
], ids=["linear", "embedding", "rnn", "lstm", "from_config"])
def test_dtype_none_is_rejected(make):
    with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64', got None"):
        make()


def test_empty_batches_pass_through_linear():
    model = nn.Sequential(nn.Linear(3, 2))
    y = model(np.zeros((0, 3), np.float32))
    assert y.shape == (0, 2)
    assert model.backward(np.zeros((0, 2), np.float32)).shape == (0, 3)


def test_lstm_layer_converts_like_the_other_layers():
    layer = nn.LSTM(3, 4, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    y_list = layer(x.tolist())  # lists and float64 become the layer's float32, as in Linear
    y_f32 = layer(x.astype(np.float32))
    assert y_list.dtype == np.float32
    np.testing.assert_array_equal(y_list, y_f32)
    assert layer.backward(np.ones((2, 5, 4))).shape == (2, 5, 3)
    with pytest.raises(TypeError, match="x: expected a real-valued array"):
        layer(None)


def test_summary_checks_input_shape():
    model = nn.Sequential(nn.Linear(2, 2))
    for bad in (5, "ab", (2.5,), (-1,)):
        with pytest.raises(TypeError, match="input_shape: expected sizes without the batch"):
            model.summary(bad)
    quiet = dict(print_fn=lambda line: None)
    assert "(None, 2)" in model.summary((2,), **quiet)
    # Keras-style unknown sizes and any sequence of whole numbers, as summary took before it checked
    seq = nn.Sequential(nn.LSTM(2, 16, return_sequences=False), nn.Linear(16, 1))
    for shape in ((None, 2), np.array([20, 2]), (20.0, 2), range(20, 1, -18)):
        assert "(None, 16)" in seq.summary(shape, **quiet)


def test_summary_refuses_shapes_the_model_would_refuse():
    """A shape the caller gives that the forward would refuse is an error naming the layer (Linear(8, 2) on 3
    features printed (None, 2)); after a forward, what summary cannot tell is '?', never an error."""
    quiet = dict(print_fn=None)
    with pytest.raises(ValueError, match=r"input_shape: Linear takes \[\.\.\., features\] with 8 features, "
                                         r"got \(None, 3\)"):
        nn.Sequential(nn.Linear(8, 2)).summary((3,), **quiet)
    with pytest.raises(ValueError, match=r"input_shape: RNN takes \[batch, time, features\] with 2 features, "
                                         r"got \(None, 2\)"):
        nn.Sequential(nn.RNN(2, 3)).summary((2,), **quiet)  # no time axis
    with pytest.raises(ValueError, match=r"RNN takes .* got \(None, 4, 5, 2\)"):
        nn.Sequential(nn.RNN(2, 3)).summary((4, 5, 2), **quiet)  # the forward refuses 4-D input too
    with pytest.raises(ValueError, match=r"input_shape: LSTM takes \[batch, time, features\] or \[time, features\]"):
        nn.Sequential(nn.Embedding(5, 4), nn.LSTM(3, 2)).summary((7,), **quiet)
    assert "(None, 7, 2)" in nn.Sequential(nn.Embedding(5, 3), nn.LSTM(3, 2)).summary((7,), **quiet)
    assert nn.LSTM(2, 4).output_shape((7, 2)) == (7, 4)  # unbatched, as its forward takes it
    assert nn.LSTM(2, 4, return_sequences=False).output_shape((7, 2)) == (4,)
    with pytest.raises(TypeError, match="print_fn: expected a callable"):
        nn.Sequential(nn.Linear(8, 2)).summary((8,), print_fn=5)


def test_summary_after_an_unbatched_forward_or_a_layer_of_ones_own():
    quiet = dict(print_fn=None)
    model = nn.Sequential(nn.LSTM(2, 4), nn.Linear(4, 1))
    assert model(np.zeros((7, 2), np.float32)).shape == (7, 1)  # unbatched: (7, 2) recorded as (None, 2)
    assert "(None, 1)" in model.summary(**quiet)  # read as an unbatched [time, features] (it raised)
    ids = nn.Sequential(nn.Embedding(5, 2), nn.RNN(2, 3), nn.Linear(3, 1))
    assert ids(np.zeros((2, 7), np.int64)).shape == (2, 7, 1)
    assert "(None, 7, 1)" in ids.summary(**quiet)

    class Twice(nn.Module):  # no output_shape of its own: summary cannot know its width
        def forward(self, x):
            return np.concatenate([x, x], axis=-1)

    table = nn.Sequential(Twice(), nn.Linear(6, 1)).summary((3,), **quiet)
    assert "(None, 3)" not in table.split("Twice")[1].splitlines()[0] and table.count("?") == 2


@pytest.mark.parametrize("config,error,message", [
    ({"type": ["Linear"]}, TypeError, r"config\['type'\]: expected a layer name \(str\), got list"),
    ({"type": "Sequential", "layers": None}, TypeError, r"config\['layers'\]: expected a list of layer configs"),
    ({"type": "Sequential", "layers": "abc"}, TypeError, r"config\['layers'\]: expected a list"),
    ({"type": "Sequential", "layers": {"type": "Linear"}}, TypeError, r"config\['layers'\]: expected a list"),
    ({"type": "Sequential", "layer": []}, ValueError, r"has 'layers' only, got also \['layer'\]"),
], ids=["type", "none", "str", "dict", "typo"])
def test_from_config_names_a_malformed_config(config, error, message):
    with pytest.raises(error, match=message):
        nn.from_config(config)


def test_dropout_backward_needs_its_training_forward_once():
    drop = nn.Dropout(0.5, seed=0)
    x = np.ones((4, 6), np.float32)
    with pytest.raises(ValueError, match="backward: Dropout has no saved forward"):
        drop.backward(x)  # used to return dy unscaled
    y = drop(x)
    np.testing.assert_array_equal(drop.backward(x), y)  # the same mask and scale
    with pytest.raises(ValueError, match="backward: Dropout has no saved forward"):
        drop.backward(x)  # used to reuse the mask
    drop.eval()
    drop(x)
    with pytest.raises(ValueError, match="no saved forward"):
        drop.backward(x)
