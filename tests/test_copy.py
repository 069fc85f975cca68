"""Copies of layers and models (pickle, copy.deepcopy) and arrays whose dtype went through a copy.

A layer's parameters are views into its stacked buffers, which the kernels read and accumulate into: a
copy must rebind its parameters to its own buffers (not to detached copies of the views, which training
would then never reach), must not share anything with the original, and must not pickle the weights twice.
NumPy gives a dtype that went through pickle or deepcopy as an equal but distinct object, which the
layer and the kernels must accept like NumPy's own.
"""

import copy
import pickle

import numpy as np
import pytest

import fastlstm
from fastlstm import _C, losses, nn, optim

COPIES = {"deepcopy": copy.deepcopy, "pickle": lambda obj: pickle.loads(pickle.dumps(obj))}


def copied_dtype(name):
    dt = copy.deepcopy(np.dtype(name))
    assert dt == np.dtype(name) and dt is not np.dtype(name)  # what the tests below rely on
    return dt


def sgd_step(params, lr=0.1):
    for p in params:
        p.data -= lr * p.grad


@pytest.mark.parametrize("how", COPIES)
@pytest.mark.parametrize("kw", [dict(), dict(num_layers=2, bidirectional=True, dtype="float64"),
                                dict(proj_size=3, batch_first=True), dict(bias=False, zoneout=0.1)])
def test_layer_copy_trains_on_its_own_buffers(how, kw):
    rng = np.random.default_rng(0)
    lstm = fastlstm.LSTM(5, 8, seed=1, **kw)
    dt = lstm.dtype
    x = rng.standard_normal((4, 3, 5)).astype(dt)
    y, _ = lstm(x)
    dy = rng.standard_normal(y.shape).astype(dt)
    lstm.backward(dy)  # the copy carries these gradients
    twin = COPIES[how](lstm)
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in lstm.named_parameters()]
    for (name, p), (_, q) in zip(lstm.named_parameters(), twin.named_parameters()):
        assert np.array_equal(q.data, p.data) and np.array_equal(q.grad, p.grad), name
        assert not np.shares_memory(q.data, p.data) and not np.shares_memory(q.grad, p.grad), name

    # the copy's backward lands in the p.grad the user sees: the same step on both (the copy's random
    # generator too: zoneout's masks) leaves the same, doubled, gradients
    first = [p.grad.copy() for p in lstm.parameters()]
    y2, _ = twin(x)
    np.testing.assert_array_equal(y2, lstm(x)[0])
    twin.backward(dy)
    lstm.backward(dy)
    for (name, p), (_, q), g in zip(lstm.named_parameters(), twin.named_parameters(), first):
        assert np.any(g != 0) and not np.array_equal(p.grad, g), name
        np.testing.assert_array_equal(q.grad, p.grad, err_msg=name)
    # and an update through the copy's parameters reaches its kernels, not the original's
    lstm.eval(), twin.eval()
    before = lstm(x)[0].copy()
    sgd_step(twin.parameters())
    assert not np.allclose(twin(x)[0], before)
    np.testing.assert_array_equal(lstm(x)[0], before)


@pytest.mark.parametrize("how", COPIES)
def test_layer_copy_leaves_saved_state_behind(how):
    lstm = fastlstm.LSTM(4, 6, seed=0)
    y, _ = lstm(np.ones((3, 2, 4), np.float32))  # a training forward waiting for its backward
    twin = COPIES[how](lstm)
    with pytest.raises(ValueError, match="backward: no saved forward"):
        twin.backward(np.ones_like(y))
    lstm.backward(np.ones_like(y))  # the original's is still there


def test_pickle_holds_each_weight_once():
    lstm = fastlstm.LSTM(64, 128, num_layers=2, seed=0)
    weights_and_grads = sum(2 * p.data.nbytes for p in lstm.parameters())
    assert len(pickle.dumps(lstm)) < 1.1 * weights_and_grads


@pytest.mark.parametrize("how", COPIES)
def test_parameter_copied_alone_brings_its_layer(how):
    lstm = fastlstm.LSTM(3, 4, seed=0)
    p = dict(lstm.named_parameters())["weight_hh_l0"]
    q = COPIES[how](p)
    assert q.name == "weight_hh_l0" and np.array_equal(q.data, p.data) and not np.shares_memory(q.data, p.data)
    layer = q._owner
    assert dict(layer.named_parameters())["weight_hh_l0"] is q
    q.data[...] = 0  # the copied layer computes with it
    assert np.array_equal(layer._layers[0].w_hh[0], np.zeros((16, 4), np.float32))


@pytest.mark.parametrize("how", COPIES)
def test_model_and_optimizer_copied_together_stay_connected(how):
    rng = np.random.default_rng(1)
    model = nn.Sequential(nn.LSTM(3, 8, return_sequences=False, seed=0), nn.Linear(8, 2, seed=1))
    opt = optim.Adam(model.parameters(), lr=1e-2)
    x = rng.standard_normal((4, 5, 3)).astype(np.float32)
    target = rng.standard_normal((4, 2)).astype(np.float32)
    loss = losses.MSELoss()

    def step(m, o):
        m.zero_grad()
        value, grad = loss(m(x), target)
        m.backward(grad)
        o.step()
        return value

    step(model, opt)
    twin, twin_opt = COPIES[how]((model, opt))
    assert all(a is b for a, b in zip(twin_opt.params, twin.parameters()))
    before = model(x).copy()
    # same state, same next step: the copies train exactly as the originals do
    assert step(twin, twin_opt) == step(model, opt)
    np.testing.assert_array_equal(twin(x), model(x))
    assert not np.array_equal(model(x), before)


@pytest.mark.parametrize("how", COPIES)
def test_cell_copy(how):
    rng = np.random.default_rng(2)
    cell = fastlstm.LSTMCell(3, 5, seed=0)
    x, h0, c0 = (rng.standard_normal((2, n)).astype(np.float32) for n in (3, 5, 5))
    h, c = cell(x, (h0, c0))
    twin = COPIES[how](cell)
    with pytest.raises(ValueError, match="no recorded forward"):
        twin.backward(np.ones_like(h))
    h2, c2 = twin(x, (h0, c0))
    np.testing.assert_array_equal(h2, h)
    twin.backward(np.ones_like(h2))
    cell.backward(np.ones_like(h))
    for (name, p), (_, q) in zip(cell.named_parameters(), twin.named_parameters()):
        assert q.name == name and np.array_equal(q.grad, p.grad) and np.any(q.grad != 0), name
        assert not np.shares_memory(q.grad, p.grad)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_arrays_with_copied_dtypes(dtype):
    """Arrays that went through pickle (a dataset, multiprocessing) carry an equal dtype object of their own."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2, 3)).astype(dtype)
    ref = fastlstm.LSTM(3, 5, dtype=dtype, seed=0)
    y, (h_n, c_n) = ref(x)
    dx, _ = ref.backward(np.ones_like(y))

    x_pickled = pickle.loads(pickle.dumps(x))
    assert x_pickled.dtype is not np.dtype(dtype)
    lstm = fastlstm.LSTM(3, 5, dtype=copied_dtype(dtype), seed=0)  # its own buffers get the copied dtype too
    assert lstm.dtype is np.dtype(dtype)
    y2, _ = lstm(x_pickled, (h_n.astype(copied_dtype(dtype)), c_n.astype(copied_dtype(dtype))))
    np.testing.assert_array_equal(lstm(x_pickled)[0], y)
    dx2, _ = lstm.backward(np.ones_like(y2).astype(copied_dtype(dtype)))
    assert dx2.shape == dx.shape

    cell = fastlstm.LSTMCell(3, 5, dtype=dtype, seed=0)
    np.testing.assert_array_equal(cell(x_pickled[0])[0], cell(x[0])[0])
    np.testing.assert_array_equal(_C.sigmoid(x_pickled), _C.sigmoid(x))


def test_kernels_accept_equal_dtypes_and_refuse_byte_swapped_ones():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((3, 2), np.float32)
    c = np.empty((2, 2), np.float32)
    _C.gemm(a.astype(copied_dtype("float32")), b, c)
    np.testing.assert_array_equal(c, a @ b)
    with pytest.raises(ValueError, match="a: expected dtype float32, got >f4"):
        _C.gemm(a.astype(">f4"), b, c)
    lstm = fastlstm.LSTM(3, 4)
    with pytest.raises(TypeError, match=r"x: expected dtype float32, got >f4 \(convert with .astype\('float32'\)\)$"):
        lstm(np.zeros((2, 1, 3), ">f4"))
    with pytest.raises(TypeError, match=r"got int64 \(convert with .astype\('float32'\)\)$"):
        lstm(np.zeros((2, 1, 3), np.int64))
    with pytest.raises(TypeError, match="or build the layer with dtype='float64'"):
        lstm(np.zeros((2, 1, 3)))


def test_a_parameter_its_layer_replaced_pickles_with_its_values():
    lstm = fastlstm.LSTM(3, 4, seed=0)
    old = dict(lstm.named_parameters())["bias_hh_l0"]
    lstm._bind_params()  # as .to(device) does: new Parameters; an optimizer built before holds the old ones
    q = pickle.loads(pickle.dumps(old))
    np.testing.assert_array_equal(q.data, old.data)
    assert q._owner is None and len(pickle.dumps(old)) < 2000  # its arrays, not the whole layer


def test_a_shallow_copy_leaves_the_originals_parameters_alone():
    lstm = fastlstm.LSTM(3, 4, seed=0)
    params = lstm.parameters()
    twin = copy.copy(lstm)
    assert all(p._owner is lstm for p in params) and lstm.parameters() == params
    assert all(p is not q and np.shares_memory(p.data, q.data) for p, q in zip(params, twin.parameters()))


def test_parameters_pickled_by_the_previous_version_load():
    p = fastlstm.layer.Parameter("w", np.ones(3, np.float32), np.zeros(3, np.float32))
    p.__setstate__((None, {"name": "w", "_data": np.ones(3, np.float32), "_grad": np.zeros(3, np.float32)}))
    assert p.name == "w" and p._owner is None and p.data.sum() == 3
