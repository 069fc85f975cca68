"""The CUDA layer, on a GPU (every test here is marked `gpu` and skipped where no GPU is usable).

Both recurrent strategies (persistent and streaming) against the NumPy reference at odd sizes that hit
tail code, in float64 and float32, forward and backward; parity with the CPU layer (dropout included:
both draw masks from the same seeded generator) and with torch.nn.LSTM on cuda; work on a non-default
CuPy stream; errors for mixed devices; state_dict and to() round trips.
Run on a GPU machine: bench/gpu_check.sh (build, these tests, compute-sanitizer, the benchmark).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlstm
from fastlstm import _C, _backend
from conftest import assert_close, random_state_dict

GPU = _backend.cuda_usable()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not GPU, reason="no usable CUDA GPU (or no CUDA kernels in this build)")]
cp = _backend.cupy_or_none() if GPU else None

STRATEGIES = ["persistent", "streaming"]


def gpu(a):
    return None if a is None else cp.asarray(a)


def host(a):
    return None if a is None else cp.asnumpy(a)


def run_against_reference(strategy, T, B, I, H, L, bidirectional, batch_first, dtype, seed=0, lengths=None):
    """Training forward + backward of a CUDA layer against fastlstm.reference (float64)."""
    rng = np.random.default_rng(seed)
    params = random_state_dict(rng, I, H, L, bidirectional)
    D = 2 if bidirectional else 1
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((2, L * D, B, H)) * 0.5
    dy = rng.standard_normal((T, B, D * H))
    dh_n, dc_n = rng.standard_normal((2, L * D, B, H))
    lstm = fastlstm.LSTM(I, H, num_layers=L, bidirectional=bidirectional, batch_first=batch_first, dtype=dtype,
                         device="cuda")
    lstm.cuda_strategy = strategy
    lstm.load_state_dict(params)
    sw = (lambda a: a.swapaxes(0, 1)) if batch_first else (lambda a: a)
    cast = lambda a: gpu(np.ascontiguousarray(a.astype(dtype)))
    y, (hn, cn) = lstm(cast(sw(x)), (cast(h0), cast(c0)), lengths=lengths)
    assert isinstance(y, cp.ndarray) and isinstance(hn, cp.ndarray) and y.dtype == dtype
    dx, (dh0, dc0) = lstm.backward(cast(sw(dy)), (cast(dh_n), cast(dc_n)))
    yr, (hr, cr), cache = fastlstm.reference.lstm_forward(x, params, L, bidirectional, h0, c0, None, lengths)
    live = 1 if lengths is None else (np.arange(T)[:, None] < np.asarray(lengths)[None, :])[:, :, None]
    dxr, dh0r, dc0r, gr = fastlstm.reference.lstm_backward(dy * live, dh_n, dc_n, cache)
    what = (f"{strategy} T={T} B={B} I={I} H={H} L={L} D={D} bf={batch_first} {np.dtype(dtype).name} "
            f"lengths={lengths}")
    got = dict(y=sw(host(y)), hn=host(hn), cn=host(cn), dx=sw(host(dx)), dh0=host(dh0), dc0=host(dc0),
               **{k: host(p.grad) for k, p in lstm.named_parameters()})
    ref = dict(y=yr, hn=hr, cn=cr, dx=dxr, dh0=dh0r, dc0=dc0r, **gr)
    assert set(got) == set(ref)
    for key in ref:
        assert_close(got[key], ref[key], dtype, f"{what} {key}")
    return got


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("H", [1, 7, 33, 129])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_odd_sizes_against_reference(strategy, H, B, T, dtype):
    run_against_reference(strategy, T, B, 5, H, 1, False, False, dtype)
    run_against_reference(strategy, T, B, 3, H, 2, True, True, dtype, seed=1)


@pytest.mark.parametrize("T,B,H", [(7, 20, 300), (4, 70, 96), (3, 8, 1024), (2, 33, 17)])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_larger_shapes_against_reference(strategy, T, B, H):
    """Several sequence tiles (partial ones too), several unit tiles, padding of K to the vector width."""
    run_against_reference(strategy, T, B, 11, H, 1, False, False, np.float64)
    run_against_reference(strategy, T, B, 11, H, 1, True, False, np.float32, seed=2)


@pytest.mark.parametrize("tile", range(5))
def test_every_streaming_tile_against_reference(tile, monkeypatch):
    """The streaming kernels' tile shapes (largest first; the heuristic picks one per problem size),
    each forced at sizes that leave partial tiles in both dimensions."""
    monkeypatch.setenv("FASTLSTM_CUDA_TILE", str(tile))
    run_against_reference("streaming", 3, 37, 6, 45, 1, True, False, np.float64)
    lengths = np.random.default_rng(tile).integers(1, 4, 37).tolist()
    run_against_reference("streaming", 3, 37, 6, 45, 1, True, False, np.float64, lengths=lengths)
    run_against_reference("streaming", 2, 5, 6, 70, 1, False, True, np.float32, seed=3)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_lengths_against_reference(strategy):
    """Variable lengths (unsorted, some full, one of 1): y is 0 past each length, h_n/c_n from the last
    valid step, the reverse direction starts at its own end, gradients flow only where sequences exist."""
    lengths = [3, 7, 1, 7, 5]
    run_against_reference(strategy, 7, 5, 4, 19, 2, True, False, np.float64, lengths=lengths)
    run_against_reference(strategy, 7, 5, 4, 19, 1, True, True, np.float32, seed=4, lengths=lengths)
    run_against_reference(strategy, 6, 3, 4, 8, 1, False, False, np.float64, seed=5, lengths=[6, 2, 4])


def test_auto_picks_persistent_for_small_batches_and_streaming_for_large():
    assert _C.cuda_strategy(1, 256, 1, False, False) == "persistent"
    assert _C.cuda_strategy(8, 1024, 1, True, False) == "persistent"
    assert _C.cuda_strategy(256, 256, 1, False, False) == "streaming"
    assert _C.cuda_strategy(1, 8192, 1, False, True) == "streaming"  # 8192 x 4 gates in float64: off chip


def test_forced_persistent_that_cannot_fit_is_a_clear_error():
    lstm = fastlstm.LSTM(8, 8192, dtype="float64", device="cuda").eval()
    lstm.cuda_strategy = "persistent"
    with pytest.raises(ValueError, match="does not fit on chip"):
        lstm(cp.zeros((2, 1, 8)))


def test_auto_strategy_against_reference_and_eval_matches_training():
    got = run_against_reference("auto", 6, 4, 9, 40, 2, True, False, np.float64)
    lstm = fastlstm.LSTM(9, 40, num_layers=2, bidirectional=True, dtype="float64", device="cuda")
    rng = np.random.default_rng(0)
    lstm.load_state_dict(random_state_dict(rng, 9, 40, 2, True))
    x = rng.standard_normal((6, 4, 9))
    h0, c0 = rng.standard_normal((2, 4, 4, 40)) * 0.5
    y, _ = lstm.eval()(gpu(x), (gpu(h0), gpu(c0)))
    assert_close(host(y), got["y"], np.float64, "eval vs training forward")


def test_gradient_by_finite_differences_on_the_gpu():
    rng = np.random.default_rng(5)
    lstm = fastlstm.LSTM(3, 6, dtype="float64", device="cuda", seed=0)
    x = rng.standard_normal((4, 2, 3))
    w = rng.standard_normal((4, 2, 6))
    loss = lambda: float((host(lstm(gpu(x))[0]) * w).sum())
    lstm(gpu(x))
    dx, _ = lstm.backward(gpu(w))
    dx = host(dx)
    for idx in [(0, 0, 0), (1, 1, 2), (3, 0, 1), (2, 1, 0)]:
        old = x[idx]
        x[idx] = old + 1e-6
        up = loss()
        x[idx] = old - 1e-6
        down = loss()
        x[idx] = old
        assert abs((up - down) / 2e-6 - dx[idx]) < 1e-7 * max(1.0, abs(dx[idx])), idx


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_matches_the_cpu_layer_with_dropout_and_stacking(strategy):
    """Same seed, same dropout masks (drawn on the host), same results on both devices."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 5, 7))
    dy = rng.standard_normal((9, 5, 2 * 24))
    out = {}
    for device in ("cpu", "cuda"):
        lstm = fastlstm.LSTM(7, 24, num_layers=3, bidirectional=True, dropout=0.3, dtype="float64", device=device,
                             seed=11)
        lstm.cuda_strategy = strategy
        put = (lambda a: a) if device == "cpu" else gpu
        y, (hn, cn) = lstm(put(x))
        dx, (dh0, dc0) = lstm.backward(put(dy))
        out[device] = [host(a) if device == "cuda" else a
                       for a in (y, hn, cn, dx, dh0, dc0, *[p.grad for p in lstm.parameters()])]
    for i, (a, b) in enumerate(zip(out["cpu"], out["cuda"])):
        assert_close(b, a, np.float64, f"output {i}", rtol=1e-11)


def test_matches_torch_lstm_on_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rng = np.random.default_rng(4)
    T, B, I, H, L = 12, 6, 10, 48, 2
    ref = torch.nn.LSTM(I, H, num_layers=L, bidirectional=True).cuda()
    lstm = fastlstm.LSTM(I, H, num_layers=L, bidirectional=True, device="cuda")
    lstm.load_state_dict({k: v.detach().cpu().numpy() for k, v in ref.state_dict().items()})
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    dy = rng.standard_normal((T, B, 2 * H)).astype(np.float32)
    xt = torch.tensor(x, device="cuda", requires_grad=True)
    yt, (hnt, cnt) = ref(xt)
    yt.backward(torch.tensor(dy, device="cuda"))
    y, (hn, cn) = lstm(gpu(x))
    dx, _ = lstm.backward(gpu(dy))
    for name, a, b in [("y", y, yt), ("h_n", hn, hnt), ("c_n", cn, cnt), ("dx", dx, xt.grad)]:
        assert_close(host(a), b.detach().cpu().numpy(), np.float32, name, rtol=1e-4)
    grads = {k: v.grad.cpu().numpy() for k, v in ref.named_parameters()}
    for k, p in lstm.named_parameters():
        assert_close(host(p.grad), grads[k], np.float32, k, rtol=1e-4)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_work_is_ordered_on_a_non_default_stream(strategy):
    """Input produced on a non-blocking stream and consumed there at once: the kernels must run on CuPy's
    current stream (on the legacy default stream they would race with the producer)."""
    lstm = fastlstm.LSTM(64, 128, num_layers=2, device="cuda", seed=0)
    lstm.cuda_strategy = strategy
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        x = cp.random.default_rng(0).standard_normal((50, 4, 64), dtype=cp.float32)
        x *= 2  # more work queued ahead of the layer on the same stream
        y, (hn, cn) = lstm(x)
        dx, _ = lstm.backward(cp.ones_like(y))
    stream.synchronize()
    x_host = host(x)
    cpu = fastlstm.LSTM(64, 128, num_layers=2, seed=0)
    yc, (hnc, cnc) = cpu(x_host)
    dxc, _ = cpu.backward(np.ones_like(yc))
    for name, a, b in [("y", y, yc), ("h_n", hn, hnc), ("dx", dx, dxc)]:
        assert_close(host(a), b, np.float32, name, rtol=1e-4)


def test_mixed_devices_are_type_errors_naming_both():
    cuda_layer = fastlstm.LSTM(3, 4, device="cuda")
    with pytest.raises(TypeError, match="expected a cupy.ndarray for this CUDA layer.*got a numpy.ndarray"):
        cuda_layer(np.zeros((2, 1, 3), np.float32))
    with pytest.raises(TypeError, match=r"hx\[0\]: expected a cupy.ndarray"):
        cuda_layer(cp.zeros((2, 1, 3), cp.float32), (np.zeros((1, 1, 4), np.float32), cp.zeros((1, 1, 4), cp.float32)))
    cpu_layer = fastlstm.LSTM(3, 4)
    with pytest.raises(TypeError, match="expected a numpy.ndarray for this CPU layer, got a cupy.ndarray"):
        cpu_layer(cp.zeros((2, 1, 3), cp.float32))
    with pytest.raises(TypeError, match="expected dtype float32, got float64"):
        cuda_layer(cp.zeros((2, 1, 3)))


def test_options_the_gpu_lacks_are_clear_errors():
    with pytest.raises(NotImplementedError, match="proj_size: not supported on CUDA"):
        fastlstm.LSTM(3, 4, proj_size=2, device="cuda")
    with pytest.raises(NotImplementedError, match="proj_size"):
        fastlstm.LSTM(3, 4, proj_size=2).to("cuda")


@pytest.mark.parametrize("zoneout,rec,lengths", [((0.3, 0.2), 0.0, None), (0.0, 0.4, None),
                                                 ((0.25, 0.15), 0.3, [5, 2, 6, 1])])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_zoneout_and_recurrent_dropout_against_reference(strategy, zoneout, rec, lengths):
    """Training masks (drawn on the host from the seed, so the same as the CPU layer's) against the
    reference, forward and backward; eval mode uses zoneout's expectation, as on the CPU."""
    rng = np.random.default_rng(8)
    T, B, I, H, L = 6, 4, 5, 13, 2
    params = random_state_dict(rng, I, H, L, True)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((2, L * 2, B, H)) * 0.5
    dy = rng.standard_normal((T, B, 2 * H))
    dh_n, dc_n = rng.standard_normal((2, L * 2, B, H))
    out = {}
    for device in ("cpu", "cuda"):
        lstm = fastlstm.LSTM(I, H, num_layers=L, bidirectional=True, zoneout=zoneout, recurrent_dropout=rec,
                             dtype="float64", device=device, seed=9)
        lstm.cuda_strategy = strategy
        lstm.load_state_dict(params)
        put = (lambda a: a) if device == "cpu" else gpu
        y, (hn, cn) = lstm(put(x), (put(h0), put(c0)), lengths=lengths)
        regs = [{k: host(v) if device == "cuda" else v for k, v in layer["reg"].items()} for layer in lstm._ctx["layers"]]
        dx, (dh0, dc0) = lstm.backward(put(dy), (put(dh_n), put(dc_n)))
        got = [y, hn, cn, dx, dh0, dc0, *[p.grad for p in lstm.parameters()]]
        out[device] = ([host(a) for a in got] if device == "cuda" else got), regs
        y_eval, _ = lstm.eval()(put(x), (put(h0), put(c0)), lengths=lengths)
        out[device + "_eval"] = host(y_eval) if device == "cuda" else y_eval
    (cpu, cpu_regs), (gpu_out, gpu_regs) = out["cpu"], out["cuda"]
    for rc, rg in zip(cpu_regs, gpu_regs):  # the same masks on both devices
        for k in rc:
            np.testing.assert_array_equal(rc[k], rg[k])
    for i, (a, b) in enumerate(zip(cpu, gpu_out)):  # the CPU layer is itself tested against the reference
        assert_close(b, a, np.float64, f"output {i}", rtol=1e-11)
    assert_close(out["cuda_eval"], out["cpu_eval"], np.float64, "eval (zoneout's expectation)", rtol=1e-11)
    D = 2
    zo = None if "zoneout_h" not in gpu_regs[0] else [
        (r["zoneout_h"][d], r["zoneout_c"][d]) for r in gpu_regs for d in range(D)]
    rm = None if "rec_mask" not in gpu_regs[0] else [r["rec_mask"][d] for r in gpu_regs for d in range(D)]
    if lengths is None:  # (with lengths the masks are in the kernels' sorted row order; the CPU comparison covers it)
        yr, _, _ = fastlstm.reference.lstm_forward(x, params, L, True, h0, c0, None, None, zo, rm)
        assert_close(gpu_out[0], yr, np.float64, "y vs reference")


def test_state_dict_and_to_round_trips():
    lstm = fastlstm.LSTM(5, 9, num_layers=2, bidirectional=True, seed=7)
    x = np.random.default_rng(0).standard_normal((4, 3, 5)).astype(np.float32)
    y_cpu, _ = lstm.eval()(x)
    lstm.to("cuda")
    sd = lstm.state_dict()
    assert all(type(v) is np.ndarray for v in sd.values())
    y_gpu, _ = lstm(gpu(x))
    assert_close(host(y_gpu), y_cpu, np.float32, "after to('cuda')", rtol=1e-5)
    other = fastlstm.LSTM(5, 9, num_layers=2, bidirectional=True, device="cuda", seed=1)
    other.load_state_dict({k: cp.asarray(v) for k, v in sd.items()})  # CuPy values load too
    np.testing.assert_array_equal(host(other(gpu(x))[0]), host(y_gpu))
    lstm.to("cpu")
    np.testing.assert_array_equal(lstm(x)[0], y_cpu)
    seeded = [fastlstm.LSTM(5, 9, seed=3, device=d).state_dict() for d in ("cpu", "cuda")]
    for k in seeded[0]:
        np.testing.assert_array_equal(seeded[0][k], seeded[1][k])  # the seed means the same weights anywhere


def test_lstm_cell_and_stateful_streaming_on_the_gpu():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 2, 4)).astype(np.float32)
    whole = fastlstm.LSTM(4, 16, device="cuda", seed=2).eval()
    y, _ = whole(gpu(x))
    chunks = fastlstm.LSTM(4, 16, device="cuda", seed=2, stateful=True).eval()
    parts = [host(chunks(gpu(x[i:i + 3]))[0]) for i in range(0, 8, 3)]
    assert_close(np.concatenate(parts), host(y), np.float32, "stateful chunks", rtol=1e-5)
    cell = fastlstm.LSTMCell(4, 16, seed=2, device="cuda").eval()
    h = c = cp.zeros((2, 16), cp.float32)
    for t in range(8):
        h, c = cell(gpu(x[t]), (h, c))
    assert_close(host(h), host(y[-1]), np.float32, "LSTMCell loop", rtol=1e-5)
