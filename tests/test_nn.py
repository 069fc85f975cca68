"""Layers and losses of fastlstm.nn / fastlstm.losses: backwards against central finite differences in
float64 (Embedding's and Dropout's against values computed by hand), plus shapes, modes, configs and the
summary table."""

import numpy as np
import pytest

from fastlstm import losses, nn

from conftest import numeric_grad

RTOL = 1e-6


def sample_indices(shape, rng, n=12):
    return [tuple(int(rng.integers(s)) for s in shape) for _ in range(n)]


def check_layer(layer, x, rng, check_input=True):
    """Loss = sum(layer(x) * w): analytic dL/dx and dL/dparams against central differences."""
    layer.train()
    y = layer(x)
    w = rng.standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(w)

    def loss():
        layer.train()
        return float((layer(x) * w).sum())

    if check_input:
        idx = sample_indices(x.shape, rng)
        np.testing.assert_allclose(np.array([dx[i] for i in idx]), numeric_grad(loss, x, idx), rtol=RTOL, atol=1e-8)
    for name, p in layer.named_parameters():
        grad = p.grad.copy()
        idx = sample_indices(p.shape, rng)
        np.testing.assert_allclose(np.array([grad[i] for i in idx]), numeric_grad(loss, p.data, idx),
                                   rtol=RTOL, atol=1e-8, err_msg=name)


def test_linear_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    check_layer(nn.Linear(5, 3, dtype="float64", seed=1), rng.standard_normal((4, 2, 5)), rng)


def test_linear_without_bias_and_on_2d_input():
    rng = np.random.default_rng(1)
    layer = nn.Linear(4, 6, bias=False, dtype="float64", seed=0)
    assert [n for n, _ in layer.named_parameters()] == ["weight"]
    check_layer(layer, rng.standard_normal((7, 4)), rng)


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_module_backward_matches_finite_differences(return_sequences, bidirectional):
    rng = np.random.default_rng(2)
    layer = nn.LSTM(3, 4, num_layers=2, bidirectional=bidirectional, return_sequences=return_sequences,
                    dtype="float64", seed=3)
    x = rng.standard_normal((2, 5, 3))  # batch first
    y = layer(x)
    D = 2 if bidirectional else 1
    assert y.shape == ((2, 5, 4 * D) if return_sequences else (2, 4 * D))
    check_layer(layer, x, rng)


def test_lstm_module_with_projection_backward_matches_finite_differences():
    rng = np.random.default_rng(12)
    layer = nn.LSTM(3, 6, bidirectional=True, return_sequences=False, proj_size=2, dtype="float64", seed=1)
    assert layer(rng.standard_normal((2, 4, 3))).shape == (2, 4)
    check_layer(layer, rng.standard_normal((2, 4, 3)), rng)


def test_lstm_module_last_step_is_the_last_output_of_the_sequence():
    rng = np.random.default_rng(3)
    seq = nn.LSTM(3, 5, seed=0)
    last = nn.LSTM(3, 5, return_sequences=False, seed=0)
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(last(x), seq(x)[:, -1])


def test_rnn_backward_matches_finite_differences():
    rng = np.random.default_rng(4)
    for rs in (True, False):
        check_layer(nn.RNN(3, 5, return_sequences=rs, dtype="float64", seed=1), rng.standard_normal((2, 6, 3)), rng)


def test_embedding_backward_adds_repeated_ids():
    rng = np.random.default_rng(5)
    layer = nn.Embedding(7, 3, dtype="float64", seed=0)
    ids = np.array([[1, 2, 1], [6, 1, 0]])
    y = layer(ids)
    np.testing.assert_array_equal(y, layer.weight.data[ids])
    w = rng.standard_normal(y.shape)
    layer.zero_grad()
    assert layer.backward(w) is None
    expected = np.zeros((7, 3))
    for (b, t), i in np.ndenumerate(ids):
        expected[i] += w[b, t]
    np.testing.assert_allclose(layer.weight.grad, expected, rtol=1e-12)


def test_embedding_rejects_bad_ids():
    layer = nn.Embedding(4, 2)
    with pytest.raises(ValueError, match=r"ids: expected values in \[0, 4\)"):
        layer(np.array([[0, 4]]))
    with pytest.raises(TypeError, match="ids: expected an integer array"):
        layer(np.zeros((1, 2), np.float32))


def test_dropout_scales_kept_units_and_is_identity_in_eval():
    x = np.ones((200, 50), np.float32)
    drop = nn.Dropout(0.25, seed=0)
    y = drop(x)
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    np.testing.assert_array_equal(drop.backward(np.ones_like(x)), y)  # same mask
    drop.eval()
    assert drop(x) is x


def test_sequential_backward_matches_finite_differences():
    rng = np.random.default_rng(6)
    model = nn.Sequential(nn.LSTM(3, 4, dtype="float64", seed=0), nn.Linear(4, 2, dtype="float64", seed=1))
    check_layer(model, rng.standard_normal((2, 4, 3)), rng)
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["0.weight_ih_l0", "0.weight_hh_l0"] and names[-2:] == ["1.weight", "1.bias"]


def test_backward_without_training_forward_is_a_clear_error():
    layer = nn.Linear(2, 2)
    layer.eval()
    layer(np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match="no saved forward"):
        layer.backward(np.ones((1, 2), np.float32))


def test_config_round_trip_rebuilds_the_same_architecture():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LSTM(4, 8, num_layers=2, bidirectional=True),
                          nn.Dropout(0.1), nn.Linear(16, 10))
    clone = nn.from_config(model.config())
    assert clone.config() == model.config()
    assert [(n, p.shape) for n, p in clone.named_parameters()] == [(n, p.shape) for n, p in model.named_parameters()]
    with pytest.raises(ValueError, match="unknown layer type"):
        nn.from_config({"type": "Conv2d"})


def test_summary_lists_layers_shapes_and_parameter_counts():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LSTM(4, 8), nn.Linear(8, 10))
    text = model.summary((12,), print_fn=None)
    assert "(None, 12, 4)" in text and "(None, 12, 8)" in text and "(None, 12, 10)" in text
    lstm_params = 4 * 8 * (4 + 8 + 2)
    assert f"{lstm_params:,}" in text
    assert f"Total params: {40 + lstm_params + 90:,}" in text


def test_state_dict_round_trip_and_strictness():
    a = nn.Sequential(nn.Linear(3, 2, seed=0))
    b = nn.Sequential(nn.Linear(3, 2, seed=1))
    b.load_state_dict(a.state_dict())
    x = np.ones((1, 3), np.float32)
    np.testing.assert_array_equal(a(x), b(x))
    with pytest.raises(ValueError, match="missing keys"):
        b.load_state_dict({"0.weight": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="expected shape"):
        b.load_state_dict({"0.weight": np.zeros((3, 2)), "0.bias": np.zeros(2)})


# ---- losses ---------------------------------------------------------------------------------------
def test_cross_entropy_value_by_hand():
    logits = np.array([[2.0, 0.0, -1.0]])
    loss, grad = losses.CrossEntropyLoss()(logits, np.array([0]))
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    assert loss == pytest.approx(-np.log(p[0]), rel=1e-12)
    np.testing.assert_allclose(grad[0], p - np.array([1, 0, 0]), rtol=1e-12)


def test_cross_entropy_gradient_with_ignore_index_and_mask():
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((3, 4, 5)) * 3
    targets = rng.integers(0, 5, size=(3, 4))
    targets[0, 1] = -100
    mask = (rng.random((3, 4)) > 0.3).astype(np.float64)
    fn = losses.CrossEntropyLoss(ignore_index=-100)
    loss, grad = fn(logits, targets, mask)
    counted = (targets != -100) & (mask != 0)
    assert np.all(grad[~counted] == 0)
    idx = sample_indices(logits.shape, rng)
    num = numeric_grad(lambda: fn(logits, targets, mask)[0], logits, idx)
    np.testing.assert_allclose(np.array([grad[i] for i in idx]), num, rtol=1e-6, atol=1e-9)
    s, c = fn.sum_and_count(logits, targets, mask)
    assert c == counted.sum() and s / c == pytest.approx(loss, rel=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    loss, grad = losses.CrossEntropyLoss()(np.array([[1e4, -1e4]], np.float32), np.array([1]))
    assert np.isfinite(loss) and loss == pytest.approx(2e4, rel=1e-6)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("bad", [-np.inf, np.nan], ids=["minus_inf", "nan"])
def test_cross_entropy_positions_not_counted_give_nothing_whatever_their_logits(bad):
    """A pad class masked to -inf (or a NaN) where ignore_index or the mask leaves the position out: the
    loss and gradient are those of the counted positions alone (they were NaN: 0 * inf)."""
    logits = np.array([[bad, 0.0, 0.0], [-np.inf, 1.0, 2.0]], np.float32)
    targets = np.array([0, 1])
    want = float(np.log(np.exp([1.0, 2.0]).sum()) - 1.0)  # the second row alone
    for fn, mask in ((losses.CrossEntropyLoss(ignore_index=0), None), (losses.CrossEntropyLoss(), [0, 1])):
        loss, grad = fn(logits, targets, mask)
        assert loss == pytest.approx(want, rel=1e-6)
        assert np.all(grad[0] == 0) and np.all(np.isfinite(grad[1])) and grad[1, 0] == 0
        assert fn.sum_and_count(logits, targets, mask) == pytest.approx((want, 1.0), rel=1e-6)
    loss, _ = losses.CrossEntropyLoss()(logits, np.array([1, 1]))  # counted, the bad logit shows
    assert np.isnan(loss) if np.isnan(bad) else loss == pytest.approx((want + np.log(2.0)) / 2, rel=1e-6)

def test_mse_value_and_gradient():
    pred = np.array([[1.0, 2.0], [3.0, 5.0]])
    target = np.array([[1.0, 1.0], [1.0, 1.0]])
    loss, grad = losses.MSELoss()(pred, target)
    assert loss == pytest.approx((0 + 1 + 4 + 16) / 4)
    np.testing.assert_allclose(grad, 2 * (pred - target) / 4)
    with pytest.raises(ValueError, match="target: expected the prediction's shape"):
        losses.MSELoss()(pred, target[:1])


def test_config_follows_settings_changed_after_construction():
    layer = nn.LSTM(2, 3, seed=0)
    layer.stateful, layer.return_sequences = True, False
    assert layer.config()["stateful"] is True and layer.config()["return_sequences"] is False
    clone = nn.from_config(layer.config())
    assert clone.stateful and not clone.return_sequences
    assert "stateful=True" in repr(layer)


def test_random_layers_keep_their_seed_in_the_config():
    drop, lstm = nn.Dropout(0.3), nn.LSTM(2, 3, num_layers=2, dropout=0.5)  # seeds drawn
    assert isinstance(drop.config()["seed"], int) and isinstance(lstm.config()["seed"], int)
    assert nn.Dropout(0.3, seed=7).config() == {"type": "Dropout", "p": 0.3, "seed": 7}
    x = np.ones((4, 5, 2), np.float32)
    a, b = nn.from_config(drop.config()), nn.from_config(drop.config())
    np.testing.assert_array_equal(a(x), b(x))  # the same masks from every rebuild
    a, b = nn.from_config(lstm.config()), nn.from_config(lstm.config())
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a(x), b(x))  # (dropout between the layers, training mode)


def test_from_config_without_init_leaves_parameters_to_be_loaded():
    model = nn.Sequential(nn.Embedding(10, 4, seed=0), nn.LSTM(4, 8, seed=1), nn.Linear(8, 10, seed=2))
    clone = nn.from_config(model.config(), init=False)
    assert all(not p.data.any() and not p.grad.any() for p in clone.parameters())  # nothing drawn
    clone.load_state_dict(model.state_dict())
    ids = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(clone.eval()(ids), model.eval()(ids))
    fresh = nn.from_config(model.config())  # init=True again afterwards: the LSTM draws its seed's weights
    for (name, p), (_, q) in zip(fresh[1].named_parameters(), nn.LSTM(4, 8, seed=1).named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=name)
    with pytest.raises(TypeError, match="init: expected a bool"):
        nn.from_config(model.config(), init=None)


class _Head(nn.Module):
    """A model of the user's own: an LSTM and a Linear head, without a config."""

    def __init__(self, hidden=8):
        self.lstm = nn.LSTM(2, hidden, return_sequences=False, seed=0)
        self.head = nn.Linear(hidden, 1, seed=1)

    def _children(self):
        return (self.lstm, self.head)

    def named_parameters(self, prefix=""):
        yield from self.lstm.named_parameters(prefix + "lstm.")
        yield from self.head.named_parameters(prefix + "head.")

    def forward(self, x):
        return self.head(self.lstm(x))

    def backward(self, dy):
        return self.lstm.backward(self.head.backward(dy))


def test_a_module_of_ones_own_prints_and_is_refused_for_saving_with_the_reason(tmp_path):
    import fastlstm
    from fastlstm import optim, train

    model = _Head()
    assert repr(model).startswith("_Head(\n  (0): LSTM(input_size=2") and "(1): Linear(" in repr(model)
    why = r"model: its configuration cannot be saved \(_Head.config\(\): .* @fastlstm.nn.register\)"
    with pytest.raises(TypeError, match=why):
        fastlstm.save(model, tmp_path / "m.npz")
    x, y = np.ones((8, 5, 2), np.float32), np.ones((8, 1), np.float32)
    with pytest.raises(TypeError, match=why):  # before the first step, not at the first validation
        train.fit(model, (x, y), losses.MSELoss(), optim.SGD(model.parameters(), 0.1), steps=3, batch_size=4,
                  val=(x, y), progress=False, callbacks=[train.ModelCheckpoint(tmp_path / "best.npz")])
    assert not any(p.grad.any() for p in model.parameters()) and not list(tmp_path.iterdir())


def test_a_registered_module_of_ones_own_saves_and_loads(tmp_path, monkeypatch):
    import fastlstm

    monkeypatch.setattr(nn, "_REGISTRY", dict(nn._REGISTRY))  # (the test's classes leave with it)

    @nn.register
    class HeadModel(_Head):
        def __init__(self, hidden=8):
            super().__init__(hidden)
            self._config = dict(hidden=hidden)

    model = HeadModel(hidden=6).eval()
    x = np.random.default_rng(0).standard_normal((3, 5, 2)).astype(np.float32)
    loaded = fastlstm.load(fastlstm.save(model, tmp_path / "m.npz"))
    assert type(loaded) is HeadModel and repr(loaded) == "HeadModel(hidden=6)"
    np.testing.assert_array_equal(loaded(x), model(x))
    with pytest.raises(ValueError, match="cls: the name 'Linear' is one of fastlstm.nn's own layers"):
        nn.register(type("Linear", (nn.Module,), {}))
    with pytest.raises(TypeError, match="cls: expected a subclass of fastlstm.nn.Module"):
        nn.register(int)
    with pytest.raises(ValueError, match="unknown layer type 'Absent'.*decorate it with @fastlstm.nn.register"):
        nn.from_config({"type": "Absent"})


def test_registered_subclasses_of_the_library_layers_keep_their_class(tmp_path, monkeypatch):
    import fastlstm

    monkeypatch.setattr(nn, "_REGISTRY", dict(nn._REGISTRY))

    @nn.register
    class Tagger(nn.Sequential):
        def __init__(self, vocab=7, hidden=5):
            super().__init__(nn.Embedding(vocab, 4, seed=0), nn.LSTM(4, hidden, seed=1), nn.Linear(hidden, vocab))
            self._config = dict(vocab=vocab, hidden=hidden)

    @nn.register
    class Encoder(nn.LSTM):
        def __init__(self, width=6):
            super().__init__(3, width, return_sequences=False, seed=2)
            self._config = dict(width=width)  # (nn.LSTM's own config is computed; a subclass may still set one)

    ids, x = np.arange(6).reshape(2, 3), np.ones((2, 4, 3), np.float32)
    for model, inp in ((Tagger(hidden=6), ids), (Encoder(width=4), x)):
        loaded = fastlstm.load(fastlstm.save(model.eval(), tmp_path / "m.npz"))
        assert type(loaded) is type(model) and repr(loaded) == repr(model)
        np.testing.assert_array_equal(loaded(inp), model(inp))
    assert repr(Tagger()).startswith("Tagger(\n  (0): Embedding(")


def test_save_refuses_a_class_load_could_not_rebuild(tmp_path, monkeypatch):
    import fastlstm
    from fastlstm import train

    class Unregistered(_Head):
        def __init__(self, hidden=8):
            super().__init__(hidden)
            self._config = dict(hidden=hidden)

    class Linear(nn.Linear):  # the library's name, another class: would load as nn.Linear
        pass

    for model, name in ((Unregistered(), "Unregistered"), (nn.Sequential(nn.LSTM(2, 3), Linear(3, 1)), "Linear")):
        with pytest.raises(TypeError, match=f"model: {name} is not a class fastlstm.load can rebuild"):
            fastlstm.save(model, tmp_path / "m.npz")
        with pytest.raises(TypeError, match=f"model: {name} is not a class"):
            train.ModelCheckpoint(tmp_path / "m.npz").on_train_begin(train.TrainState(model, None, None))
    assert not list(tmp_path.iterdir())


def test_a_copy_made_mid_training_keeps_no_saved_forward():
    import copy

    model = nn.Sequential(nn.Embedding(5, 4, seed=0), nn.LSTM(4, 6, seed=1), nn.Dropout(0.5, seed=2),
                          nn.Linear(6, 5, seed=3))
    y = model(np.arange(6).reshape(2, 3) % 5)  # training mode: every layer keeps what its backward needs
    twin = copy.deepcopy(model)
    with pytest.raises(ValueError, match="backward: Linear has no saved forward"):
        twin.backward(np.ones_like(y))
    assert not any(p.grad.any() for p in twin.parameters())
    model.backward(np.ones_like(y))  # the original's are all still there
    assert all(p.grad.any() for p in model.parameters())
