"""fastlstm.LSTM as a layer: stacking, directions, layouts, dropout, states, parameters, modes, threads.

Numbers are checked against fastlstm.reference; the rest of the API contract in shared DESIGN.md
(in-place parameter updates seen by the next call, gradient accumulation, determinism, concurrent eval
calls, inputs left untouched) is checked directly.
"""

import sys
import threading

import numpy as np
import pytest

import fastlstm
from conftest import assert_close, random_state_dict, using_threads
from fastlstm import reference as R


def make(I, H, dtype="float64", **kw):
    return fastlstm.LSTM(I, H, dtype=dtype, **kw)


@pytest.mark.parametrize("num_layers,bidirectional,batch_first", [
    (1, False, False), (2, False, True), (3, True, False), (2, True, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stacked_layers_match_reference(num_layers, bidirectional, batch_first, dtype):
    rng = np.random.default_rng(num_layers * 10 + bidirectional)
    T, B, I, H = 6, 4, 5, 11
    D = 2 if bidirectional else 1
    params = random_state_dict(rng, I, H, num_layers, bidirectional)
    lstm = make(I, H, dtype, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    lstm.load_state_dict(params)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((2, num_layers * D, B, H))
    dy = rng.standard_normal((T, B, D * H))
    dh_n, dc_n = rng.standard_normal((2, num_layers * D, B, H))
    tr = (lambda a: a.transpose(1, 0, 2)) if batch_first else (lambda a: a)
    y, (hn, cn) = lstm(tr(x).astype(dtype), (h0.astype(dtype), c0.astype(dtype)))
    dx, (dh0, dc0) = lstm.backward(tr(dy).astype(dtype), (dh_n.astype(dtype), dc_n.astype(dtype)))
    yr, (hr, cr), cache = R.lstm_forward(x, params, num_layers, bidirectional, h0, c0)
    dxr, dh0r, dc0r, gr = R.lstm_backward(dy, dh_n, dc_n, cache)
    assert y.shape == tr(yr).shape and y.dtype == dtype
    for name, got, ref in [("y", tr(y), yr), ("h_n", hn, hr), ("c_n", cn, cr), ("dx", tr(dx), dxr),
                           ("dh0", dh0, dh0r), ("dc0", dc0, dc0r)]:
        assert_close(got, ref, dtype, name)
    for name, p in lstm.named_parameters():
        assert_close(p.grad, gr[name], dtype, name)


def test_dropout_between_layers_matches_reference_with_the_same_masks():
    rng = np.random.default_rng(5)
    T, B, I, H, L = 5, 3, 4, 6, 3
    lstm = make(I, H, num_layers=L, bidirectional=True, dropout=0.4, seed=11)
    x = rng.standard_normal((T, B, I))
    y, _ = lstm(x)
    masks = [s["mask"] for s in lstm._ctx["layers"][:-1]]
    assert all(m is not None for m in masks)
    kept = np.concatenate([m.ravel() for m in masks])
    assert set(np.unique(kept)) <= {0.0, 1 / 0.6}, "mask entries are 0 or 1/(1-p)"
    assert 0.3 < np.mean(kept == 0) < 0.5, "about p of the units are dropped"
    params = lstm.state_dict()
    yr, _, cache = R.lstm_forward(x, params, L, True, dropout_masks=masks)
    assert_close(y, yr, np.float64, "y with dropout")
    dy = rng.standard_normal(y.shape)
    dx, _ = lstm.backward(dy)
    dxr, _, _, gr = R.lstm_backward(dy, None, None, cache)
    assert_close(dx, dxr, np.float64, "dx with dropout")
    for name, p in lstm.named_parameters():
        assert_close(p.grad, gr[name], np.float64, name)


def test_dropout_is_seeded_and_off_in_eval():
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    a = make(3, 5, num_layers=2, dropout=0.5, seed=3)
    b = make(3, 5, num_layers=2, dropout=0.5, seed=3)
    np.testing.assert_array_equal(a(x)[0], b(x)[0])
    a.eval()
    ref = make(3, 5, num_layers=2, seed=3).eval()
    np.testing.assert_array_equal(a(x)[0], ref(x)[0])


def test_unbatched_input_like_torch():
    rng = np.random.default_rng(1)
    lstm = make(3, 4, num_layers=2, bidirectional=True)
    x = rng.standard_normal((5, 3))
    h0, c0 = rng.standard_normal((2, 4, 4))
    y3, (hn3, cn3) = lstm(x[:, None, :], (h0[:, None], c0[:, None]))
    dx3, (dh03, _) = lstm.backward(np.ones_like(y3), (np.ones_like(hn3), None))
    y, (hn, cn) = lstm(x, (h0, c0))
    assert y.shape == (5, 8) and hn.shape == (4, 4) and cn.shape == (4, 4)
    np.testing.assert_array_equal(y, y3[:, 0])
    dx, (dh0, dc0) = lstm.backward(np.ones_like(y), (np.ones_like(hn), None))
    assert dx.shape == (5, 3) and dh0.shape == (4, 4) and dc0.shape == (4, 4)
    np.testing.assert_array_equal(dx, dx3[:, 0])
    np.testing.assert_array_equal(dh0, dh03[:, 0])


def test_gradients_accumulate_until_zero_grad():
    rng = np.random.default_rng(2)
    lstm = make(3, 4)
    x, dy = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 4))
    lstm(x)
    lstm.backward(dy)
    once = {n: p.grad.copy() for n, p in lstm.named_parameters()}
    assert all(np.any(g != 0) for g in once.values())
    lstm(x)
    lstm.backward(dy)
    for n, p in lstm.named_parameters():
        assert_close(p.grad, 2 * once[n], np.float64, n)
    lstm.zero_grad()
    assert all(np.all(p.grad == 0) for p in lstm.parameters())


def test_in_place_parameter_updates_are_seen_by_the_next_call():
    rng = np.random.default_rng(3)
    lstm = make(3, 4, num_layers=2, bidirectional=True).eval()
    x = rng.standard_normal((5, 2, 3))
    for name, p in lstm.named_parameters():
        p.data -= 0.1 * rng.standard_normal(p.shape)          # an optimizer step
    lstm._params["weight_hh_l1_reverse"].data = np.zeros((16, 4))  # assignment copies in
    yr, _, _ = R.lstm_forward(x, lstm.state_dict(), 2, True)
    assert np.all(lstm.state_dict()["weight_hh_l1_reverse"] == 0)
    assert_close(lstm(x)[0], yr, np.float64, "y after in-place update")


def test_state_dict_round_trip_and_names():
    a = make(3, 4, num_layers=2, bidirectional=True, seed=1)
    names = [n for n, _ in a.named_parameters()]
    assert names[:8] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                         "weight_ih_l0_reverse", "weight_hh_l0_reverse", "bias_ih_l0_reverse", "bias_hh_l0_reverse"]
    assert a.state_dict()["weight_ih_l1"].shape == (16, 8)
    b = make(3, 4, num_layers=2, bidirectional=True, seed=2)
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).standard_normal((3, 2, 3))
    np.testing.assert_array_equal(a.eval()(x)[0], b.eval()(x)[0])
    sd = a.state_dict()
    sd["weight_ih_l0"][...] = 7  # a copy: the layer is unaffected
    assert not np.any(a.state_dict()["weight_ih_l0"] == 7)


def test_init_is_pytorch_uniform_and_seeded():
    a, b, c = make(10, 25, seed=4), make(10, 25, seed=4), make(10, 25, seed=5)
    for (n, pa), (_, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(), c.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data)
        assert not np.array_equal(pa.data, pc.data)
        assert np.abs(pa.data).max() <= 1 / np.sqrt(25)
        assert np.abs(pa.data).max() > 0.9 / np.sqrt(25), f"{n} should fill U(-k, k)"


def test_eval_saves_nothing_and_backward_needs_a_training_forward():
    lstm = make(3, 4).eval()
    x = np.zeros((2, 1, 3))
    lstm(x)
    with pytest.raises(ValueError, match="backward"):
        lstm.backward(np.zeros((2, 1, 4)))
    lstm.train()
    y, _ = lstm(x)
    lstm.backward(np.zeros_like(y))
    with pytest.raises(ValueError, match="once per forward"):
        lstm.backward(np.zeros_like(y))


def test_inputs_are_never_modified():
    rng = np.random.default_rng(4)
    lstm = make(3, 4, num_layers=2, dropout=0.3, dtype="float32", seed=0)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    h0, c0 = rng.standard_normal((2, 2, 2, 4)).astype(np.float32)
    dy = rng.standard_normal((5, 2, 4)).astype(np.float32)
    dh, dc = rng.standard_normal((2, 2, 2, 4)).astype(np.float32)
    copies = [a.copy() for a in (x, h0, c0, dy, dh, dc)]
    lstm(x, (h0, c0))
    lstm.backward(dy, (dh, dc))
    for a, b in zip((x, h0, c0, dy, dh, dc), copies):
        np.testing.assert_array_equal(a, b)


def test_results_do_not_depend_on_layout_alignment_or_threads():
    rng = np.random.default_rng(6)
    lstm = make(7, 33, dtype="float32", num_layers=2, bidirectional=True, seed=0).eval()
    x = rng.standard_normal((9, 5, 7)).astype(np.float32)
    ref = lstm(x)[0]
    # a misaligned copy (offset by one float inside a bigger buffer), a strided view, a Fortran copy
    buf = np.empty(x.size + 1, np.float32)
    misaligned = buf[1:].reshape(x.shape)
    misaligned[...] = x
    strided = np.empty((9, 5, 14), np.float32)[:, :, ::2]
    strided[...] = x
    for variant in (misaligned, strided, np.asfortranarray(x)):
        np.testing.assert_array_equal(lstm(variant)[0], ref)
    for n in (1, 2, 3):
        with using_threads(n):
            np.testing.assert_array_equal(lstm(x)[0], ref)


def test_training_buffers_in_huge_page_memory(monkeypatch):
    """Buffers of 1 MiB or more that a layer keeps across calls lie in 2 MiB-aligned transparent-huge-page
    memory on Linux (_backend.host_workspace); a training step gives the same bits as with np.empty buffers."""
    from fastlstm import _backend
    a = _backend.host_workspace((300, 1000), np.float32)
    assert a.shape == (300, 1000) and a.dtype == np.float32 and a.flags.c_contiguous and a.flags.writeable
    if sys.platform.startswith("linux"):
        assert a.ctypes.data % (2 << 20) == 0
    a[...] = 2
    assert a.sum() == 600000
    assert _backend.host_workspace((3, 5), np.float64).shape == (3, 5)
    rng = np.random.default_rng(8)
    T, B, I, H = 80, 16, 8, 64  # saved gates 1.3 MB
    x, dy = rng.standard_normal((T, B, I)).astype(np.float32), rng.standard_normal((T, B, H)).astype(np.float32)

    def step():
        lstm = make(I, H, dtype="float32", seed=0).train()
        y = lstm(x)[0]
        dx, _ = lstm.backward(dy)
        return [y, dx] + [p.grad for _, p in lstm.named_parameters()]

    got = step()
    monkeypatch.setattr(_backend, "host_workspace", np.empty)
    for g, r in zip(got, step()):
        np.testing.assert_array_equal(g, r)


def test_concurrent_eval_calls_from_many_threads():
    rng = np.random.default_rng(8)
    lstm = make(6, 40, dtype="float32", num_layers=2, bidirectional=True, seed=0).eval()
    xs = [rng.standard_normal((20, 3, 6)).astype(np.float32) for _ in range(6)]
    expected = [lstm(x)[0] for x in xs]
    results = [None] * len(xs)

    def work(i):
        for _ in range(5):
            results[i] = lstm(xs[i])[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a concurrent call hung"
    for got, exp in zip(results, expected):
        np.testing.assert_array_equal(got, exp)


def test_nan_in_gives_nan_out_without_crashing():
    lstm = make(3, 4, dtype="float32", seed=0)
    x = np.zeros((4, 2, 3), np.float32)
    x[1, 0, 2] = np.nan
    y, (hn, cn) = lstm(x)
    assert np.all(np.isfinite(y[0])), "steps before the NaN are unaffected"
    assert np.all(np.isnan(y[1:, 0])), "the NaN sequence is NaN from then on"
    assert np.all(np.isfinite(y[:, 1])), "other sequences are unaffected"
    dx, _ = lstm.backward(np.ones_like(y))
    assert np.isnan(dx[:, 0]).any()


def test_repr_and_modes():
    lstm = make(3, 4, num_layers=2, bidirectional=True)
    assert repr(lstm) == "LSTM(3, 4, num_layers=2, bidirectional=True, dtype='float64')"
    assert repr(fastlstm.LSTM(3, 4, proj_size=2)) == "LSTM(3, 4, proj_size=2)"  # as torch.nn.LSTM's
    assert (repr(fastlstm.LSTM(3, 4, stateful=True, zoneout=0.1, recurrent_dropout=0.2, unit_forget_bias=True))
            == "LSTM(3, 4, stateful=True, unit_forget_bias=True, recurrent_dropout=0.2, zoneout=0.1)")
    assert repr(fastlstm.LSTM(3, 4, zoneout=(0.1, 0.3))) == "LSTM(3, 4, zoneout=(0.1, 0.3))"
    assert lstm.training
    assert lstm.eval() is lstm and not lstm.training
    assert lstm.to("cpu") is lstm


@pytest.mark.parametrize("refill", ["h0", "c0", "x"])
def test_caller_may_refill_its_state_arrays_between_forward_and_backward(refill):
    """Truncated BPTT reuses one state buffer: h0 and c0 are kept as copies (x, documented, is not)."""
    rng = np.random.default_rng(4)
    lstm = make(3, 4, num_layers=2, seed=0)
    x, h, c = rng.standard_normal((5, 2, 3)), rng.standard_normal((2, 2, 4)), rng.standard_normal((2, 2, 4))

    def grads(clobber):
        lstm.zero_grad()
        x0, h0, c0 = x.copy(), h.copy(), c.copy()
        y, _ = lstm(x0, (h0, c0))
        if clobber:
            {"h0": h0, "c0": c0, "x": x0}[refill][...] = 0
        dx, (dh0, dc0) = lstm.backward(np.ones_like(y))
        return [dx, dh0, dc0] + [p.grad.copy() for p in lstm.parameters()]

    same = [np.array_equal(a, b) for a, b in zip(grads(False), grads(True))]
    if refill == "x":  # the weight gradients follow the changed x (the backward docstring says so)
        assert not all(same)
    else:
        assert all(same)
