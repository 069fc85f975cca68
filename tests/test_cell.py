"""fastlstm.LSTMCell (one fused step, backward undoing the latest call), the stateful streaming mode
of fastlstm.LSTM, Keras weight import/export and unit_forget_bias."""

import numpy as np
import pytest

import fastlstm
from fastlstm import reference as R

from conftest import assert_close, random_state_dict


def cell_params(rng, I, H, bias=True):
    sd = random_state_dict(rng, I, H, bias=bias)
    return sd, {k.replace("_l0", ""): v for k, v in sd.items()}


def test_cell_steps_match_the_reference_sequence_and_its_bptt():
    rng = np.random.default_rng(0)
    T, B, I, H = 6, 3, 5, 7
    sd, cell_sd = cell_params(rng, I, H)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((1, B, H)), rng.standard_normal((1, B, H))
    dy = rng.standard_normal((T, B, H))
    y, (hn, cn), cache = R.lstm_forward(x, sd, 1, False, h0, c0)
    dx_ref, dh0_ref, dc0_ref, g_ref = R.lstm_backward(dy, None, None, cache)

    cell = fastlstm.LSTMCell(I, H, dtype="float64")
    cell.load_state_dict(cell_sd)
    h, c = h0[0], c0[0]
    for t in range(T):
        h, c = cell(x[t], (h, c))
        assert_close(h, y[t], np.float64, f"h[{t}]")
    assert_close(c, cn[0], np.float64, "c_n")
    # hand-written BPTT: each backward undoes the latest call
    dh, dc = np.zeros((B, H)), np.zeros((B, H))
    dxs = [None] * T
    for t in reversed(range(T)):
        dxs[t], (dh, dc) = cell.backward(dh + dy[t], dc)
    assert_close(np.stack(dxs), dx_ref, np.float64, "dx")
    assert_close(dh, dh0_ref[0], np.float64, "dh0")
    assert_close(dc, dc0_ref[0], np.float64, "dc0")
    for name, p in cell.named_parameters():
        assert_close(p.grad, g_ref[name + "_l0"], np.float64, name)
    with pytest.raises(ValueError, match="no recorded forward"):
        cell.backward(dh)


def test_cell_matches_torch_lstmcell():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    tc = torch.nn.LSTMCell(4, 6)
    cell = fastlstm.LSTMCell(4, 6)
    cell.load_state_dict({k: v.detach().numpy() for k, v in tc.state_dict().items()})
    assert sorted(cell.state_dict()) == sorted(tc.state_dict())
    x = rng.standard_normal((3, 4)).astype(np.float32)
    h0 = rng.standard_normal((3, 6)).astype(np.float32)
    c0 = rng.standard_normal((3, 6)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    ht, ct = tc(xt, (torch.tensor(h0), torch.tensor(c0)))
    h, c = cell(x, (h0, c0))
    assert_close(h, ht.detach().numpy(), np.float32, "h")
    assert_close(c, ct.detach().numpy(), np.float32, "c")
    dh = rng.standard_normal((3, 6)).astype(np.float32)
    (ht * torch.tensor(dh)).sum().backward()
    dx, _ = cell.backward(dh)
    assert_close(dx, xt.grad.numpy(), np.float32, "dx")
    for name, p in cell.named_parameters():
        assert_close(p.grad, dict(tc.named_parameters())[name].grad.numpy(), np.float32, name)


def test_cell_unbatched_and_zero_state():
    cell = fastlstm.LSTMCell(3, 4, seed=0).eval()
    x = np.ones(3, np.float32)
    h, c = cell(x)
    hb, cb = cell(x[None], (np.zeros((1, 4), np.float32), np.zeros((1, 4), np.float32)))
    np.testing.assert_array_equal(h, hb[0])
    assert h.shape == (4,) and c.shape == (4,)
    with pytest.raises(ValueError, match=r"hx\[0\]"):
        cell(x[None], (np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32)))


def test_streaming_chunks_equal_one_long_call():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 3, 5)).astype(np.float32)
    whole = fastlstm.LSTM(5, 8, num_layers=2, seed=3).eval()
    y, (hn, cn) = whole(x)
    stream = fastlstm.LSTM(5, 8, num_layers=2, seed=3, stateful=True).eval()
    parts = [stream(x[a:b])[0] for a, b in ((0, 7), (7, 8), (8, 31), (31, 40))]
    np.testing.assert_array_equal(np.concatenate(parts), y)
    np.testing.assert_array_equal(stream.state[0], hn)
    np.testing.assert_array_equal(stream.state[1], cn)
    stream.reset_state()
    np.testing.assert_array_equal(stream(x)[0], y)
    with pytest.raises(ValueError, match="reset_state"):
        stream(x[:, :2])
    with pytest.raises(ValueError, match="bidirectional layer cannot stream"):
        fastlstm.LSTM(5, 8, bidirectional=True, stateful=True)


def keras_lstm(x, kernel, recurrent, bias):
    """Keras's LSTM equations (time-major here), gates i, f, c, o in the kernel's columns."""
    def sig(z):
        return 1 / (1 + np.exp(-z))
    T, B, _ = x.shape
    H = recurrent.shape[0]
    h, c, ys = np.zeros((B, H)), np.zeros((B, H)), []
    for t in range(T):
        z = x[t] @ kernel + h @ recurrent + bias
        i, f, g, o = sig(z[:, :H]), sig(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sig(z[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys)


def test_keras_weights_round_trip_and_match_keras_equations():
    rng = np.random.default_rng(4)
    I, H = 3, 5
    x = rng.standard_normal((6, 2, I))
    fwd = [rng.standard_normal((I, 4 * H)) * 0.5, rng.standard_normal((H, 4 * H)) * 0.5, rng.standard_normal(4 * H)]
    bwd = [rng.standard_normal((I, 4 * H)) * 0.5, rng.standard_normal((H, 4 * H)) * 0.5, rng.standard_normal(4 * H)]
    lstm = fastlstm.LSTM(I, H, bidirectional=True, dtype="float64")
    lstm.load_keras_weights(fwd + bwd)
    y, _ = lstm(x)
    assert_close(y[:, :, :H], keras_lstm(x, *fwd), np.float64, "forward direction")
    assert_close(y[:, :, H:], keras_lstm(x[::-1], *bwd)[::-1], np.float64, "backward direction (go_backwards)")
    for got, want in zip(lstm.keras_weights(), fwd + bwd):
        np.testing.assert_allclose(got, want, rtol=1e-15)
    # no bias: two arrays per direction
    nb = fastlstm.LSTM(I, H, bias=False, dtype="float64")
    nb.load_keras_weights(fwd[:2])
    assert_close(nb(x)[0], keras_lstm(x, fwd[0], fwd[1], np.zeros(4 * H)), np.float64, "no bias")
    with pytest.raises(ValueError, match="expected a list of 6 arrays"):
        lstm.load_keras_weights(fwd)
    with pytest.raises(ValueError, match=r"weights\[1\]: expected shape \(5, 20\)"):
        lstm.load_keras_weights([fwd[0], fwd[0], fwd[2]] + bwd)
    with pytest.raises(ValueError, match="layer: expected an int in"):
        lstm.keras_weights(layer=1)


def test_unit_forget_bias_starts_the_forget_gate_at_one():
    lstm = fastlstm.LSTM(3, 4, num_layers=2, bidirectional=True, unit_forget_bias=True, seed=0)
    for name, p in lstm.named_parameters():
        if name.startswith("bias_ih"):
            np.testing.assert_array_equal(p.data, np.repeat([0.0, 1.0, 0.0, 0.0], 4))
        elif name.startswith("bias_hh"):
            assert not p.data.any()
    keras = lstm.keras_weights(0)  # Keras's single bias per direction: forget gate 1, the rest 0
    for bias in (keras[2], keras[5]):
        np.testing.assert_array_equal(bias, np.repeat([0.0, 1.0, 0.0, 0.0], 4))
    with pytest.raises(ValueError, match="unit_forget_bias: needs bias=True"):
        fastlstm.LSTM(3, 4, bias=False, unit_forget_bias=True)


def test_cell_records_survive_the_caller_reusing_its_buffers():
    rng = np.random.default_rng(9)
    xs = rng.standard_normal((3, 2, 4)).astype(np.float32)
    grads = []
    for reuse in (False, True):
        cell = fastlstm.LSTMCell(4, 5, seed=1)
        buf = np.empty((2, 4), np.float32)
        h = c = None
        for t in range(3):
            if reuse:
                buf[...] = xs[t]
            h, c = cell(buf if reuse else xs[t].copy(), None if h is None else (h, c))
        dh, dc = np.ones_like(h), None
        for _ in range(3):
            _, (dh, dc) = cell.backward(dh, dc)
        grads.append({k: p.grad.copy() for k, p in cell.named_parameters()})
    for k in grads[0]:
        np.testing.assert_array_equal(grads[0][k], grads[1][k], err_msg=k)


def test_nn_lstm_streams_like_the_core():
    from fastlstm import nn

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 30, 3)).astype(np.float32)
    whole = nn.LSTM(3, 6, seed=0).eval()
    stream = nn.LSTM(3, 6, stateful=True, seed=0).eval()
    parts = [stream(x[:, a:b]) for a, b in ((0, 11), (11, 12), (12, 30))]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole(x))
    with pytest.raises(ValueError, match="cannot stream"):
        nn.LSTM(3, 6, bidirectional=True, stateful=True)
