"""Bad input never crashes: a TypeError/ValueError naming the argument, what was expected and what came."""

import numpy as np
import pytest

import fastlstm
from fastlstm import _C


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(input_size=0), ValueError, "input_size: expected a positive int, got 0"),
    (dict(input_size=3.0), TypeError, "input_size: expected a positive int, got float"),
    (dict(hidden_size=True), TypeError, "hidden_size"),
    (dict(num_layers=-1), ValueError, "num_layers"),
    (dict(dropout=1.0), ValueError, r"dropout: expected a float in \[0, 1\), got 1.0"),
    (dict(dropout="0.1"), TypeError, "dropout"),
    (dict(dtype="float16"), TypeError, "dtype: expected 'float32' or 'float64', got float16"),
    (dict(dtype="int32"), TypeError, "dtype"),
    (dict(bidirectional=1), TypeError, "bidirectional: expected a bool"),
    (dict(device="tpu"), ValueError, "device"),
    pytest.param(dict(device="cuda"), RuntimeError, "CUDA",
                 marks=pytest.mark.skipif(fastlstm._backend.cuda_usable(), reason="a GPU is usable here")),
    (dict(device="cuda:x"), ValueError, "device: expected 'cpu', 'cuda' or 'cuda:N', got 'cuda:x'"),
    (dict(device=0), TypeError, "device: expected 'cpu', 'cuda' or 'cuda:N', got int"),
    (dict(seed=-3), ValueError, "seed"),
    (dict(proj_size=4), ValueError, r"proj_size: expected 0 \(none\) or less than hidden_size=4"),
])
def test_bad_constructor_arguments(kwargs, exc, match):
    args = dict(input_size=3, hidden_size=4)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fastlstm.LSTM(**args)


@pytest.fixture
def lstm():
    return fastlstm.LSTM(3, 4, num_layers=2, seed=0)


@pytest.mark.parametrize("x,exc,match", [
    ([[[0.0, 0.0, 0.0]]], TypeError, "x: expected a numpy.ndarray of float32"),
    (np.zeros((2, 1, 3), np.float64), TypeError, "x: expected dtype float32, got float64"),
    (np.zeros((2, 1, 3), np.int64), TypeError, "x: expected dtype float32, got int64"),
    (np.zeros((2, 1, 5), np.float32), ValueError, r"x: expected the last dimension to be input_size=3, got shape \(2, 1, 5\)"),
    (np.zeros((3,), np.float32), ValueError, r"x: expected 3 dimensions"),
    (np.zeros((1, 2, 1, 3), np.float32), ValueError, r"x: expected 3 dimensions"),
    (np.zeros((0, 2, 3), np.float32), ValueError, "at least one time step"),
    (np.zeros((2, 0, 3), np.float32), ValueError, "at least one time step"),
])
def test_bad_input(lstm, x, exc, match):
    with pytest.raises(exc, match=match):
        lstm(x)


def test_bad_states(lstm):
    x = np.zeros((2, 5, 3), np.float32)
    h = np.zeros((2, 5, 4), np.float32)
    with pytest.raises(TypeError, match="hx: expected a pair"):
        lstm(x, h)
    with pytest.raises(ValueError, match=r"hx\[0\]: expected shape \(2, 5, 4\).*got \(2, 4, 4\)"):
        lstm(x, (np.zeros((2, 4, 4), np.float32), h))
    with pytest.raises(TypeError, match=r"hx\[1\]: expected dtype float32, got float64"):
        lstm(x, (h, h.astype(np.float64)))
    with pytest.raises(TypeError, match=r"hx\[0\]"):
        lstm(x, (None, h))


def test_bad_backward_arguments(lstm):
    x = np.zeros((2, 5, 3), np.float32)
    y, _ = lstm(x)
    with pytest.raises(ValueError, match=r"dy: expected shape \(2, 5, 4\)"):
        lstm.backward(np.zeros((2, 5, 5), np.float32))
    with pytest.raises(TypeError, match="dy: expected dtype float32"):
        lstm.backward(np.zeros((2, 5, 4)))
    with pytest.raises(ValueError, match=r"dhx\[1\]: expected shape"):
        lstm.backward(np.zeros_like(y), (None, np.zeros((1, 5, 4), np.float32)))
    lstm.backward(np.zeros_like(y))  # the failed calls above did not consume the saved forward


def test_bad_state_dict(lstm):
    sd = lstm.state_dict()
    with pytest.raises(ValueError, match="missing keys"):
        lstm.load_state_dict({k: v for k, v in sd.items() if k != "bias_hh_l1"})
    with pytest.raises(ValueError, match="unexpected keys"):
        lstm.load_state_dict(dict(sd, extra=np.zeros(1)))
    before = lstm.state_dict()
    bad = dict(sd, weight_ih_l0=sd["weight_ih_l0"] + 1, weight_hh_l1=np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"state\['weight_hh_l1'\]: expected shape \(16, 4\), got \(3, 3\)"):
        lstm.load_state_dict(bad)
    for k in before:  # all-or-nothing: nothing was loaded
        np.testing.assert_array_equal(lstm.state_dict()[k], before[k])
    with pytest.raises(TypeError, match="state: expected a dict"):
        lstm.load_state_dict([1, 2])


def test_memory_is_checked_before_allocating():
    lstm = fastlstm.LSTM(1, 1)
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(10**7, 10**5, 1), strides=(0, 0, 0))
    with pytest.raises(MemoryError, match="GiB"):
        lstm(huge)
    with pytest.raises(MemoryError, match="parameters"):
        fastlstm.LSTM(10**6, 10**6)


def test_isa_and_threads_switches_reject_bad_values():
    with pytest.raises(ValueError, match="isa: expected one of"):
        fastlstm.set_isa("sse9")
    with pytest.raises(TypeError):
        fastlstm.set_isa(3)
    with pytest.raises(ValueError):
        fastlstm.set_num_threads(0)
    with pytest.raises(TypeError):
        fastlstm.set_num_threads(2.0)


def test_compiled_functions_check_their_arrays():
    """The binding's own checks (a misuse of fastlstm._C raises, never writes out of bounds)."""
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="inner sizes differ"):
        _C.gemm(a, np.zeros((5, 2), np.float32), np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="c: expected shape"):
        _C.gemm(a, np.zeros((4, 2), np.float32), np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="writable"):
        c = np.zeros((3, 2), np.float32)
        c.flags.writeable = False
        _C.gemm(a, np.zeros((4, 2), np.float32), c)
    with pytest.raises(ValueError, match="y: expected shape"):
        _C.lstm_forward(np.zeros((2, 1, 16), np.float32), np.zeros((1, 16, 4), np.float32), None, None, None,
                        np.zeros((2, 1, 5), np.float32), np.zeros((1, 1, 4), np.float32),
                        np.zeros((1, 1, 4), np.float32), None, None, False)


def test_gemm_row_selections_are_checked():
    from fastlstm import _C

    a, b, c = np.ones((4, 3)), np.ones((3, 2)), np.zeros((4, 2))
    with pytest.raises(ValueError, match="m_rows: expected strictly increasing"):
        _C.gemm(a, b, c, m_rows=np.array([1, 1], np.int64))
    with pytest.raises(ValueError, match=r"m_rows: index 4 at 0 is outside \[0, 4\)"):
        _C.gemm(a, b, c, m_rows=np.array([4], np.int64))
    with pytest.raises(ValueError, match="k_rows: needs trans_a=True"):
        _C.gemm(a, b, c, k_rows=np.array([0], np.int64))


def test_gemm_second_product_and_sums_are_checked():
    from fastlstm import _C

    a, b, c = np.ones((5, 4)), np.ones((5, 2)), np.zeros((4, 2))  # c = a^T b with trans_a: K = 5 rows
    b2, c2 = np.ones((3, 6)), np.zeros((4, 6))
    with pytest.raises(ValueError, match="b2 and c2 go together"):
        _C.gemm(a, b, c, True, b2=b2)
    with pytest.raises(ValueError, match="c2: expected shape \\(4, 6\\)"):
        _C.gemm(a, b, c, True, b2=b2, c2=np.zeros((4, 5)))
    with pytest.raises(ValueError, match="b2: needs trans_b=False and no bias"):
        _C.gemm(a, b, c, True, False, np.ones(2), b2=b2, c2=c2)
    with pytest.raises(ValueError, match=r"b2_offset: expected 0..2 \(b2's 3 rows inside a's 5\), got 3"):
        _C.gemm(a, b, c, True, b2=b2, c2=c2, b2_offset=3)
    with pytest.raises(ValueError, match="b2_offset: expected 0..2"):
        _C.gemm(a, b, c, True, b2=b2, c2=c2, b2_offset=-1)
    with pytest.raises(ValueError, match="c2: expected a writable array"):
        ro = np.zeros((4, 6))
        ro.flags.writeable = False
        _C.gemm(a, b, c, True, b2=b2, c2=ro)
    with pytest.raises(ValueError, match="a_sums: needs trans_a=True"):
        _C.gemm(np.ones((4, 5)), b, c, a_sums=np.zeros(4))
    with pytest.raises(ValueError, match="a_sums"):
        _C.gemm(a, b, c, True, a_sums=np.zeros(5))  # one per row of op(a): 4
    assert not c.any() and not c2.any(), "a refused call wrote its outputs"


def test_lengths_must_be_exact_integers_in_range():
    lstm = fastlstm.LSTM(3, 4)
    x = np.ones((5, 2, 3), np.float32)
    with pytest.raises(TypeError, match="lengths: expected integers"):
        lstm(x, lengths=np.array([2.7, 5], dtype=object))  # (once truncated to [2, 5] silently)
    with pytest.raises(TypeError, match="lengths: expected integers"):
        lstm(x, lengths=[[1, 2], [3]])
    with pytest.raises(ValueError, match=r"lengths: expected values in 1\.\.5"):
        lstm(x, lengths=[2**64, 1])  # (once an OverflowError)
    with pytest.raises(ValueError, match=r"lengths: expected values in 1\.\.5"):
        lstm(x, lengths=np.array([2**64 - 1, 1], np.uint64))  # not wrapped to -1 on the way to int64
    y_obj, _ = lstm(x, lengths=np.array([5, 2], dtype=object))
    y_int, _ = lstm(x, lengths=[5, 2])
    np.testing.assert_array_equal(y_obj, y_int)


def test_empty_batches_are_reported_with_the_callers_shape():
    with pytest.raises(ValueError, match=r"got shape \(0, 3\)"):
        fastlstm.LSTM(3, 4)(np.ones((0, 3), np.float32))
    with pytest.raises(ValueError, match=r"x: expected at least one sequence, got shape \(0, 3\)"):
        fastlstm.LSTMCell(3, 4)(np.ones((0, 3), np.float32))


def test_many_layers_are_refused_before_anything_is_allocated():
    # the estimate counts each layer's Python objects too (10**7 tiny layers once passed it on a 24 GB machine
    # and were OOM-killed) and takes no time for any num_layers (a sum over 10**9 layers once ran for minutes);
    # 10**8 layers need ~500 GB, more than any test machine has
    for n in (10**8, 10**9):
        with pytest.raises(MemoryError, match="parameters"):
            fastlstm.LSTM(3, 4, num_layers=n)


def test_parameter_assignment_takes_real_numbers_of_the_right_shape():
    lstm = fastlstm.LSTM(3, 4)
    p = lstm.parameters()[0]
    before = p.data.copy()
    for bad in (np.ones(p.shape, np.complex64), np.ones(p.shape, bool), np.ones(p.shape, object)):
        with pytest.raises(TypeError, match="weight_ih_l0: expected real numbers"):
            p.data = bad
        with pytest.raises(TypeError, match=r"weight_ih_l0\.grad: expected real numbers"):
            p.grad = bad
    with pytest.raises(TypeError, match="weight_ih_l0: expected an array"):
        p.data = [[1.0, 2.0], [3.0]]
    np.testing.assert_array_equal(p.data, before)
    p.data = np.full(p.shape, 2, np.int64)  # integers convert
    assert p.data.dtype == np.float32 and np.all(p.data == 2)


def test_state_dict_values_torch_cannot_hand_to_numpy_name_their_key():
    torch = pytest.importorskip("torch")
    lstm = fastlstm.LSTM(3, 4)
    before = lstm.state_dict()
    state = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in before.items()}
    with pytest.raises(TypeError, match=r"state\['weight_ih_l0'\]: this torch tensor"):
        lstm.load_state_dict(state)
    ragged = dict(before, weight_hh_l0=[[1.0], [2.0, 3.0]])
    with pytest.raises(TypeError, match=r"state\['weight_hh_l0'\]: expected an array"):
        lstm.load_state_dict(ragged)
    for k, v in lstm.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_cell_load_state_dict_names_missing_keys_as_the_cell_does():
    cell = fastlstm.LSTMCell(3, 4)
    with pytest.raises(ValueError, match=r"missing keys \['weight_hh', 'bias_ih', 'bias_hh'\]"):
        cell.load_state_dict({"weight_ih": np.zeros((16, 3), np.float32)})


def test_a_rejected_cell_backward_keeps_the_recorded_step():
    cell = fastlstm.LSTMCell(3, 4, seed=0)
    x = np.ones((2, 3), np.float32)
    cell(x)
    with pytest.raises(ValueError, match="dh: expected shape"):
        cell.backward(np.ones((5, 4), np.float32))
    dx, _ = cell.backward(np.ones((2, 4), np.float32))  # the step is still there
    assert dx.shape == (2, 3)


def test_keras_layer_index_takes_numpy_integers():
    lstm = fastlstm.LSTM(3, 4, num_layers=2)
    assert lstm.keras_weights(layer=np.int64(1))[0].shape == (4, 16)
    with pytest.raises(ValueError, match=r"layer: expected an int in \[0, 2\)"):
        lstm.keras_weights(layer=np.int64(2))


def test_constructor_dtype_none_is_refused_not_float64():
    with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64', got None"):
        fastlstm.LSTM(3, 4, dtype=None)


def test_thread_counts_past_the_pool_limit_are_capped_not_a_binding_error():
    n = fastlstm.get_num_threads()
    try:
        fastlstm.set_num_threads(2**40)
        assert 1 <= fastlstm.get_num_threads() <= 4095
    finally:
        fastlstm.set_num_threads(n)


def test_numpy_scalars_are_taken_where_python_numbers_are():
    assert fastlstm.LSTM(3, 4, proj_size=np.int64(2)).proj_size == 2
    with pytest.raises(ValueError, match="proj_size: expected a non-negative int, got -1"):
        fastlstm.LSTM(3, 4, proj_size=-1)
    lstm = fastlstm.LSTM(3, 4)
    assert fastlstm.optim.SGD(lstm.parameters(), lr=0.1, momentum=0.9, nesterov=np.bool_(True)).nesterov is True
    n = fastlstm.get_num_threads()
    try:
        fastlstm.set_num_threads(np.int64(1))
        assert fastlstm.get_num_threads() == 1
    finally:
        fastlstm.set_num_threads(n)


def test_empty_matrices_multiply_to_empty_or_zero_results():
    a, b = np.zeros((0, 3), np.float32), np.ones((2, 3), np.float32)
    c = np.empty((0, 2), np.float32)
    _C.gemm(a, b, c, trans_b=True)  # (NumPy gives an empty array arbitrary strides; once "rows must be contiguous")
    c = np.full((4, 2), 7, np.float32)
    _C.gemm(np.zeros((4, 0), np.float32), np.zeros((0, 2), np.float32), c)
    np.testing.assert_array_equal(c, 0)  # an empty sum


def test_none_for_a_weight_or_gradient_says_none():
    lstm = fastlstm.LSTM(3, 4)
    p = dict(lstm.named_parameters())["weight_hh_l0"]
    with pytest.raises(TypeError, match=r"weight_hh_l0\.grad: expected an array of shape \(16, 4\), got None; "
                                        r"clear gradients with zero_grad\(\)"):
        p.grad = None
    with pytest.raises(TypeError, match=r"weight_hh_l0: expected an array of shape \(16, 4\), got None$"):
        p.data = None
    with pytest.raises(TypeError, match=r"state\['weight_ih_l0'\]: expected an array, got None"):
        lstm.load_state_dict(dict(lstm.state_dict(), weight_ih_l0=None))


def test_keras_weights_errors_name_the_entry():
    lstm = fastlstm.LSTM(3, 4, seed=0)
    good = lstm.keras_weights()
    with pytest.raises(TypeError, match=r"weights\[0\]: expected an array, got list"):
        lstm.load_keras_weights([[[1.0, 2.0], [3.0]]] + good[1:])
    with pytest.raises(TypeError, match=r"weights\[1\]: expected an array, got None"):
        lstm.load_keras_weights([good[0], None, good[2]])
    with pytest.raises(TypeError, match=r"layer: expected an int in \[0, 1\), got bool True"):
        lstm.load_keras_weights(good, layer=True)
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"weights\[2\]: this torch tensor has no NumPy equivalent"):
        lstm.load_keras_weights(good[:2] + [torch.from_numpy(good[2]).to(torch.bfloat16)])
    np.testing.assert_array_equal(lstm.keras_weights()[0], good[0])


def test_lengths_given_as_booleans_are_refused():
    lstm = fastlstm.LSTM(3, 4)
    x = np.ones((5, 3, 3), np.float32)
    for lengths in ([True, 1, 1], (5, np.True_, 2)):  # (NumPy would read True as 1)
        with pytest.raises(TypeError, match="lengths: expected integers, one per sequence"):
            lstm(x, lengths=lengths)


def test_unbatched_cell_errors_show_the_unbatched_shape():
    cell = fastlstm.LSTMCell(5, 7, seed=0)
    x, h = np.zeros(5, np.float32), np.zeros(7, np.float32)
    with pytest.raises(TypeError, match=r"hx\[1\]: expected a numpy.ndarray of float32 with shape \(7,\), got None"):
        cell(x, (h, None))
    cell(x)
    with pytest.raises(TypeError, match=r"dc: expected a numpy.ndarray of float32 with shape \(7,\), got list"):
        cell.backward(None, [0.0] * 7)
