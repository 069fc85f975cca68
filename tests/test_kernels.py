"""Every CPU kernel on every ISA this machine runs, against fastlstm.reference, at sizes that hit tails.

Sizes: H in (1, 7, 33, 129) crosses the 16/8/4/1-lane unit tiles of AVX-512/AVX2/scalar, B in (1, 3, 8)
crosses the register-blocked row groups, T in (1, 5). Each case runs a bidirectional layer, so the
forward and reverse recurrences are both checked, with initial states, in both time-major and
batch-major layouts, and with 1, 2 and 3 threads (which must agree bit for bit).
"""

import os
import time

import numpy as np
import pytest

import fastlstm
from conftest import assert_close, check_layer_against_reference, random_state_dict, using_threads
from fastlstm import _C
from fastlstm import reference as R


def run_layer(params, x, h0, c0, dy, dh_n, dc_n, dtype, batch_first):
    T, B, I = x.shape
    H = params["weight_hh_l0"].shape[1]
    lstm = fastlstm.LSTM(I, H, bidirectional=True, batch_first=batch_first, dtype=dtype)
    lstm.load_state_dict(params)
    cast = lambda a: a.astype(dtype)
    xin = x.transpose(1, 0, 2) if batch_first else x
    dyin = dy.transpose(1, 0, 2) if batch_first else dy
    y, (hn, cn) = lstm(cast(xin), (cast(h0), cast(c0)))
    dx, (dh0, dc0) = lstm.backward(cast(dyin), (cast(dh_n), cast(dc_n)))
    if batch_first:
        y, dx = y.transpose(1, 0, 2), dx.transpose(1, 0, 2)
    grads = {name: p.grad.copy() for name, p in lstm.named_parameters()}
    return dict(y=y, hn=hn, cn=cn, dx=dx, dh0=dh0, dc0=dc0, **grads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T", [1, 5])
@pytest.mark.parametrize("B", [1, 3, 8])
@pytest.mark.parametrize("H", [1, 7, 33, 129])
def test_layer_kernels_match_reference(isa, input_projection, H, B, T, dtype):
    rng = np.random.default_rng(H * 100 + B * 10 + T)
    I = 5
    params = random_state_dict(rng, I, H, bidirectional=True)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((2, B, H)), rng.standard_normal((2, B, H))
    dy = rng.standard_normal((T, B, 2 * H))
    dh_n, dc_n = rng.standard_normal((2, B, H)), rng.standard_normal((2, B, H))

    y, (hn, cn), cache = R.lstm_forward(x, params, 1, True, h0, c0)
    dx, dh0, dc0, grads = R.lstm_backward(dy, dh_n, dc_n, cache)
    ref = dict(y=y, hn=hn, cn=cn, dx=dx, dh0=dh0, dc0=dc0, **grads)

    results = []
    for threads, batch_first in [(1, False), (2, True), (3, False)]:
        with using_threads(threads):
            got = run_layer(params, x, h0, c0, dy, dh_n, dc_n, dtype, batch_first)
        for key in ref:
            assert_close(got[key], ref[key], dtype,
                         f"{isa} {input_projection} {key} threads={threads} batch_first={batch_first}")
        results.append(got)
    for key in ref:  # the partition of hidden units over threads must not change a single bit
        np.testing.assert_array_equal(results[0][key], results[2][key], err_msg=f"{key}: 1 vs 3 threads")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_sizes_match_reference(isa, input_projection, dtype):
    """A batch of full row blocks whose saved gates, cells and gradients outgrow L2 (> 1 MiB, on either input
    route and dtype): the sizes where both recurrent loops prefetch their epilogues' lines (epilogue_lines),
    with unsorted lengths so the prefetched rows and steps change as sequences end."""
    rng = np.random.default_rng(3)
    T, B, I, H = 48, 8, 5, 129
    params = random_state_dict(rng, I, H, bidirectional=True)
    x = rng.standard_normal((T, B, I))
    state = rng.standard_normal((2, B, H)), rng.standard_normal((2, B, H))
    grads = rng.standard_normal((T, B, 2 * H)), rng.standard_normal((2, B, H)), rng.standard_normal((2, B, H))
    lengths = [48, 17, 48, 1, 33, 48, 8, 47]
    make = lambda bf: fastlstm.LSTM(I, H, bidirectional=True, batch_first=bf, dtype=np.dtype(dtype).name)
    check_layer_against_reference(make, params, x, state, grads, lengths, dtype, f"{isa} {input_projection}")


def test_forward_without_optional_inputs(isa):
    """No bias, no initial state, no gradient for h_n/c_n: the kernels' null-pointer paths."""
    rng = np.random.default_rng(7)
    T, B, I, H = 4, 3, 6, 9
    params = random_state_dict(rng, I, H, bias=False)
    x = rng.standard_normal((T, B, I))
    lstm = fastlstm.LSTM(I, H, bias=False, dtype="float64")
    lstm.load_state_dict(params)
    y, (hn, cn) = lstm(x)
    yr, (hr, cr), cache = R.lstm_forward(x, params)
    assert_close(y, yr, np.float64, "y")
    assert_close(cn, cr, np.float64, "c_n")
    dy = rng.standard_normal(y.shape)
    dx, (dh0, dc0) = lstm.backward(dy)
    dxr, dh0r, dc0r, gr = R.lstm_backward(dy, None, None, cache)
    assert_close(dx, dxr, np.float64, "dx")
    assert_close(dh0, dh0r, np.float64, "dh0")
    assert_close(dc0, dc0r, np.float64, "dc0")
    for name, p in lstm.named_parameters():
        assert_close(p.grad, gr[name], np.float64, name)
    # only dc_n: dy None
    y, _ = lstm(x)
    dc_n = rng.standard_normal((1, B, H))
    _, (dh0, dc0) = lstm.backward(None, (None, dc_n))
    _, dh0r, dc0r, _ = R.lstm_backward(None, None, dc_n, cache)
    assert_close(dh0, dh0r, np.float64, "dh0 from dc_n only")
    assert_close(dc0, dc0r, np.float64, "dc0 from dc_n only")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B,batch_first,with_lengths", [(1, False, False), (1, True, True), (3, False, True),
                                                        (3, True, False), (7, True, True)])
def test_fused_input_projection_matches_the_gx_path(isa, B, batch_first, with_lengths, dtype):
    """x and w_ih in place of gx: the kernel computes x W_ih^T itself, a chunk of steps at a time (T = 101 is
    more than one chunk on every ISA at B = 1), in row blocks across steps (time-major, or B = 1) or per
    step (batch_first with B > 1, where only live rows are computed); both directions, odd I and H."""
    rng = np.random.default_rng(B * 10 + batch_first)
    T, I, H, D = 101, 19, 21, 2
    seq = (lambda c: (B, T, c)) if batch_first else (lambda c: (T, B, c))
    x = rng.standard_normal(seq(I)).astype(dtype)
    w_ih = (0.3 * rng.standard_normal((D, 4 * H, I))).astype(dtype)
    w_hh = (0.3 * rng.standard_normal((D, 4 * H, H))).astype(dtype)
    bias = (0.1 * rng.standard_normal((D, 4 * H))).astype(dtype)
    h0, c0 = rng.standard_normal((2, D, B, H)).astype(dtype)
    lengths = np.sort(rng.integers(1, T + 1, B))[::-1].copy() if with_lengths else None
    gx = np.einsum("abi,dgi->abdg", x.astype(np.float64), w_ih.astype(np.float64)).reshape(seq(D * 4 * H))
    x_before = x.copy()
    results = {}
    for route, threads in [("gx", 1), ("fused", 1), ("fused", 3)]:
        y = np.zeros(seq(D * H), dtype)
        h_n, c_n = np.empty((2, D, B, H), dtype)
        gates, cell = np.zeros((D, T, B, 4 * H), dtype), np.zeros((D, T, B, H), dtype)
        inputs = dict(x=x, w_ih=w_ih) if route == "fused" else {}
        _C.lstm_forward(gx.astype(dtype) if route == "gx" else None, w_hh, bias, h0, c0, y, h_n, c_n, gates, cell,
                        batch_first, num_threads=threads, lengths=lengths, **inputs)
        results[route, threads] = dict(y=y, h_n=h_n, c_n=c_n, gates=gates, cell=cell)
    np.testing.assert_array_equal(x, x_before)
    for key, want in results["gx", 1].items():
        assert_close(results["fused", 1][key], want, dtype, f"{isa} fused {key}")
        np.testing.assert_array_equal(results["fused", 3][key], results["fused", 1][key], err_msg=f"{key}: 1 vs 3 threads")


def test_fuse_input_projection_is_for_weights_that_fit_in_cache():
    assert _C.fuse_input_projection(128, 128, 128, 1, 4)        # 0.5 MiB of weights
    assert not _C.fuse_input_projection(8192, 8192, 8192, 2, 8)  # 4 GiB


def test_forward_takes_gx_or_x_with_w_ih():
    T, B, H = 2, 1, 3
    f = np.zeros
    with pytest.raises(ValueError, match="gx, x and w_ih"):  # neither gx nor x
        _C.lstm_forward(None, f((1, 4 * H, H)), None, None, None, f((T, B, H)), f((1, B, H)), f((1, B, H)), None, None,
                        False)


# K = 2100 and 16500 cross the K block of every ISA and dtype (256 KiB of packed B); M = 200: more than one
# group of row blocks packed from a transposed A; N = 2100: more than 16 panels a thread, so an untransposed A
# is packed too (with fewer it is read in place); M, N = 520, 530: C over 1 MiB, whose tiles the micro-kernel
# prefetches for the epilogue
GEMM_SHAPES = [(1, 1, 1), (7, 65, 300), (13, 129, 513), (6, 64, 256), (100, 3, 17), (5, 70, 2100), (3, 5, 16500),
               (200, 33, 1100), (7, 2100, 30), (520, 530, 20)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("M,N,K", GEMM_SHAPES)
def test_gemm_matches_numpy(isa, M, N, K, trans_a, trans_b, dtype):
    rng = np.random.default_rng(M + N + K)
    a = rng.standard_normal((K, M) if trans_a else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if trans_b else (K, N)).astype(dtype)
    bias = rng.standard_normal(N).astype(dtype)
    ref = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    c = np.full((M, N), np.nan, dtype)
    _C.gemm(a, b, c, trans_a, trans_b, bias)
    assert_close(c, ref + bias, dtype, "c = op(a) op(b) + bias")
    _C.gemm(a, b, c, trans_a, trans_b, None, True)  # accumulate
    assert_close(c, 2 * ref + bias, dtype, "c += op(a) op(b)")


@pytest.mark.parametrize("trans_a,trans_b", [(True, False), (False, True)])
def test_gemm_strided_rows_and_thread_counts(isa, trans_a, trans_b):
    """Row-strided operands (a column block of a wider matrix) as the layer passes them; any thread count.
    K = 300 and 70 columns: full and ragged register-transposed blocks when B is packed transposed."""
    rng = np.random.default_rng(3)
    big_a = rng.standard_normal((300, 50)).astype(np.float32)
    a = big_a[:, 10:30]          # [300, 20], row stride 50
    big_b = rng.standard_normal((300, 80)).astype(np.float32)
    b = big_b[:, 3:73]           # [300, 70], row stride 80
    if not trans_a:              # a [20, 300] and b [70, 300], row strides 320 and 310
        a = np.ascontiguousarray(rng.standard_normal((20, 320)).astype(np.float32))[:, 7:307]
        b = rng.standard_normal((70, 310)).astype(np.float32)[:, 5:305]
    out = np.zeros((40, 90), np.float32)
    c = out[:20, 5:75]           # [20, 70], row stride 90
    ref = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    results = []
    for threads in (1, 2, 3, 5):
        c[...] = 0
        _C.gemm(a, b, c, trans_a, trans_b, None, False, threads)
        assert_close(c, ref, np.float32, f"threads={threads}")
        results.append(c.copy())
        assert np.all(out[20:] == 0) and np.all(out[:, :5] == 0) and np.all(out[:, 75:] == 0), "wrote outside c"
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,N,N2,K", [(1, 1, 1, 1), (13, 65, 33, 300), (100, 32, 129, 2100), (7, 300, 5, 40)])
def test_gemm_second_product_matches_numpy(isa, dtype, M, N, N2, K):
    """c (+)= a^T b and c2 (+)= a^T b2' in one pass over a, b2' being b2 moved down by b2_offset rows with zeros
    elsewhere (the weight gradients dG^T x and dG^T h[t-1]), and a's columns summed in double (the bias
    gradient), with and without a row selection, any thread count giving the same bits. K = 2100 crosses
    every ISA's K block; N = 300, N2 = 5: panels of both products on one thread."""
    rng = np.random.default_rng(M + N + N2 + K)
    a, b = rng.standard_normal((K, M)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)
    rows2 = max(K - 3, 1)
    for offset in sorted({0, K - rows2}):
        b2 = rng.standard_normal((rows2, N2)).astype(dtype)
        moved = np.zeros((K, N2))
        moved[offset:offset + rows2] = b2
        for k_rows in (None, np.arange(0, K, 3, dtype=np.int64)):
            keep = slice(None) if k_rows is None else k_rows
            ref = a[keep].T.astype(np.float64) @ b[keep]
            ref2 = a[keep].T.astype(np.float64) @ moved[keep]
            sums_ref = a[keep].astype(np.float64).sum(axis=0)
            results = []
            for threads in (1, 2, 3):
                c, c2 = np.full((M, N), 1.0, dtype), np.full((M, N2), -1.0, dtype)
                sums = np.full(M, np.nan)
                _C.gemm(a, b, c, True, False, None, True, threads, k_rows=k_rows, b2=b2, c2=c2, b2_offset=offset,
                        a_sums=sums)
                assert_close(c, 1.0 + ref, dtype, f"c += a^T b, offset {offset}")
                assert_close(c2, ref2 - 1.0, dtype, f"c2 += a^T b2', offset {offset}")
                np.testing.assert_allclose(sums, sums_ref, rtol=1e-12, atol=1e-12 * np.abs(a).sum(),
                                           err_msg="a_sums: a's columns summed over the rows taken")
                results.append((c, c2, sums))
            for got in results[1:]:
                for x, y in zip(got, results[0]):
                    np.testing.assert_array_equal(x, y)
            c, c2 = np.full((M, N), np.nan, dtype), np.full((M, N2), np.nan, dtype)  # and without accumulate
            _C.gemm(a, b, c, True, k_rows=k_rows, b2=b2, c2=c2, b2_offset=offset)
            assert_close(c2, ref2, dtype, "c2 = a^T b2'")


def work_moved_since(taken):
    """Whether an item moved between threads since _C.work_taken() was `taken`; taken as so on a machine of 5
    or more cores, where 5 threads need not leave any work behind."""
    return _C.work_taken() > taken or len(os.sched_getaffinity(0)) >= 5


def call_until_work_moves(taken, call, seconds=10.0):
    """call() again until an item has moved between threads, for up to `seconds` (timing decides when: on a
    machine loaded by other processes, 5 threads may run one after another for many short calls)."""
    deadline = time.monotonic() + seconds
    while not work_moved_since(taken) and time.monotonic() < deadline:
        call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("M,N,K", [(12, 512, 300), (600, 448, 1100)])
def test_gemm_work_taken_between_threads(isa, dtype, M, N, K):
    """More threads than cores: a thread whose core is taken away leaves work behind, which the others take from
    its queue (and where 5 threads make a grid of 4, as (12, 512) does on AVX-512, the fifth has only the
    others' work). Which items move depends on timing; the result must not change a bit. K = 1100 is two K
    blocks where a block is 1024 deep (AVX-512: the queues refill, and a thread takes another's packed rows of
    A), with the column sums of A and a second product. On a machine with fewer than 5 cores, work must move."""
    rng = np.random.default_rng(M + N)
    a, b = rng.standard_normal((K, M)).astype(dtype), rng.standard_normal((K, N)).astype(dtype)
    b2 = rng.standard_normal((K - 1, 40)).astype(dtype)
    ref = a.T.astype(np.float64) @ b
    ref2 = a[1:].T.astype(np.float64) @ b2
    x = rng.standard_normal((M, K)).astype(dtype)  # and A read in place, B transposed
    results = []
    taken = _C.work_taken()
    with using_threads(5):
        for threads in (1, 2, 3, 4, 5, 5, 5):
            c, c2, sums = np.full((M, N), 0.5, dtype), np.zeros((M, 40), dtype), np.empty(M)
            _C.gemm(a, b, c, True, False, None, True, threads, b2=b2, c2=c2, b2_offset=1, a_sums=sums)
            assert_close(c, ref + 0.5, dtype, f"c += a^T b, {threads} threads")
            assert_close(c2, ref2, dtype, f"c2 += a^T b2', {threads} threads")
            np.testing.assert_allclose(sums, a.astype(np.float64).sum(axis=0), rtol=1e-12)
            out = np.empty((M, N), dtype)
            _C.gemm(x, b.T.copy(), out, False, True, None, False, threads)
            assert_close(out, x.astype(np.float64) @ b, dtype, f"x b, {threads} threads")
            results.append((c, c2, sums, out))
        call_until_work_moves(taken, lambda: _C.gemm(a, b, np.zeros((M, N), dtype), True, False, None, False, 5))
    for got in results[1:]:
        for value, first in zip(got, results[0]):
            np.testing.assert_array_equal(value, first)
    assert work_moved_since(taken), "no item moved between 5 threads"


def test_pool_threads_compute_in_the_callers_floating_point_mode(isa):
    """With flush-to-zero and denormals-are-zero set on the calling thread (torch.set_flush_denormal), every
    thread of the pool computes in that mode: a product of subnormal inputs is zero whichever thread computes
    which part of it (before, the pool's threads kept their own mode and their share came out non-zero)."""
    torch = pytest.importorskip("torch")
    a = np.full((64, 300), 1e-39, np.float32)  # subnormal in float32 (made before the mode flushes it)
    b = np.ones((300, 256), np.float32)
    assert np.all(a > 0)
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-denormal mode")
    try:
        with using_threads(2):
            for threads in (1, 2):
                c = np.full((64, 256), np.nan, np.float32)
                _C.gemm(a, b, c, False, False, None, False, threads)
                assert np.all(c == 0), f"{threads} threads: {np.count_nonzero(c)} of {c.size} not flushed"
    finally:
        torch.set_flush_denormal(False)
    c = np.empty((64, 256), np.float32)  # and back in the default mode
    _C.gemm(a, b, c)
    np.testing.assert_allclose(c, 300 * np.float32(1e-39), rtol=1e-5)


@pytest.mark.parametrize("B", [16, 1, 3])
def test_forward_projection_items_taken_between_threads(isa, B):
    """The fused input projection of each chunk of steps is a queue of items per thread, and a thread that has
    done its own takes items from another's; with more threads than cores a thread loses its core often, and
    the others do its projection. Whoever computes an item, the results must not change a bit (training
    outputs against one thread) and must be the reference's. B = 1 (and 3 where a row block is 4 or 6 rows):
    rows blocked across steps. On a machine with fewer than 5 cores, work must move."""
    rng = np.random.default_rng(5 + B)
    T, I, H = 40, 24, 70
    w_ih = (0.3 * rng.standard_normal((1, 4 * H, I))).astype(np.float32)
    w_hh = (0.3 * rng.standard_normal((1, 4 * H, H))).astype(np.float32)
    bias = (0.1 * rng.standard_normal((1, 4 * H))).astype(np.float32)
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0, c0 = rng.standard_normal((2, 1, B, H)).astype(np.float32)
    results = []
    taken = _C.work_taken()
    def forward(threads):
        y, gates, cell = (np.empty(shape, np.float32) for shape in ((T, B, H), (1, T, B, 4 * H), (1, T, B, H)))
        h_n, c_n = np.empty((2, 1, B, H), np.float32)
        _C.lstm_forward(None, w_hh, bias, h0, c0, y, h_n, c_n, gates, cell, False, threads, x=x, w_ih=w_ih)
        return y, h_n, c_n, gates, cell

    def same_as_one_thread(got):
        for value, first in zip(got, results[0]):
            np.testing.assert_array_equal(value, first)

    with using_threads(5):
        for threads in (1, 2, 3, 5, 5, 5):
            results.append(forward(threads))
        call_until_work_moves(taken, lambda: same_as_one_thread(forward(5)))
    assert work_moved_since(taken), "no item moved between 5 threads"
    for got in results[1:]:
        for value, first in zip(got, results[0]):
            np.testing.assert_array_equal(value, first)
    params = {"weight_ih_l0": w_ih[0].astype(np.float64), "weight_hh_l0": w_hh[0].astype(np.float64),
              "bias_ih_l0": bias[0].astype(np.float64), "bias_hh_l0": np.zeros(4 * H)}
    y_ref, _, _ = R.lstm_forward(x.astype(np.float64), params, 1, False, h0, c0)
    assert_close(results[0][0], y_ref, np.float32, "y against the reference")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_recurrent_kernels_forced_thread_counts(isa, dtype):
    """The recurrent loops with a forced thread count (left to itself, a call takes fewer threads for a problem
    this small: choose_threads in threading.h), both directions at once: every split of the units gives the
    same bits, and the results are the reference's."""
    rng = np.random.default_rng(11)
    T, B, H, D = 4, 3, 37, 2
    gx = rng.standard_normal((T, B, D * 4 * H)).astype(dtype)
    w_hh = (0.3 * rng.standard_normal((D, 4 * H, H))).astype(dtype)
    bias = (0.1 * rng.standard_normal((D, 4 * H))).astype(dtype)
    h0, c0 = rng.standard_normal((2, D, B, H)).astype(dtype)
    dy = rng.standard_normal((T, B, D * H)).astype(dtype)
    results = []
    for threads in (1, 2, 3, 4):
        y, h_n, c_n = np.empty((T, B, D * H), dtype), np.empty((D, B, H), dtype), np.empty((D, B, H), dtype)
        gates, cell = np.empty((D, T, B, 4 * H), dtype), np.empty((D, T, B, H), dtype)
        _C.lstm_forward(gx, w_hh, bias, h0, c0, y, h_n, c_n, gates, cell, False, threads)
        dg, dh0, dc0 = np.empty((T, B, D * 4 * H), dtype), np.empty((D, B, H), dtype), np.empty((D, B, H), dtype)
        db = np.empty((D, 4 * H), dtype)
        _C.lstm_backward(w_hh, gates, cell, c0, dy, None, None, dg, dh0, dc0, False, db, None, threads)
        results.append(dict(y=y, h_n=h_n, c_n=c_n, dg=dg, dh0=dh0, dc0=dc0, db=db))
    for got, threads in zip(results[1:], (2, 3, 4)):
        for key, value in got.items():
            np.testing.assert_array_equal(value, results[0][key], err_msg=f"{key}: {threads} threads vs 1")
    # against the reference: with W_ih = [1 0] (forward) and [0 1] (reverse), x = gx is each direction's
    # pre-activations, dx is dG and the bias gradient is dG summed
    eye, zero = np.eye(4 * H), np.zeros((4 * H, 4 * H))
    params = {"weight_ih_l0": np.hstack([eye, zero]), "weight_ih_l0_reverse": np.hstack([zero, eye])}
    for d, sfx in enumerate(("", "_reverse")):
        params.update({f"weight_hh_l0{sfx}": w_hh[d].astype(np.float64),
                       f"bias_ih_l0{sfx}": bias[d].astype(np.float64), f"bias_hh_l0{sfx}": np.zeros(4 * H)})
    y, (h_n, c_n), cache = R.lstm_forward(gx.astype(np.float64), params, 1, True, h0, c0)
    dx, dh0, dc0, grads = R.lstm_backward(dy.astype(np.float64), None, None, cache)
    got = results[0]
    db = np.stack([grads["bias_hh_l0"], grads["bias_hh_l0_reverse"]])
    ref = dict(y=y, h_n=h_n, c_n=c_n, dg=dx, dh0=dh0, dc0=dc0, db=db)
    for key, value in ref.items():
        assert_close(got[key], value, dtype, f"{isa} {key}")


def test_force_threads_changes_no_result_and_zero_hands_the_choice_back(isa):
    """_C.force_threads(n) (the benchmark's thread-scaling diagnostic: every kernel that would choose its own
    thread count uses n; its effect on time is that table's forced column): a layer too small to split (B = 1,
    H = 16: one thread under the automatic choice) trained with 2 threads forced gives the same bits, a negative
    count is clamped to 0, and 0 hands the choice back."""
    rng = np.random.default_rng(5)
    x, dy = rng.standard_normal((2, 40, 1, 16)).astype(np.float32)
    lstm = fastlstm.LSTM(16, 16, seed=3).train()

    def step():
        lstm.zero_grad()
        y, _ = lstm(x)
        dx, _ = lstm.backward(dy)
        return [y, dx] + [p.grad.copy() for p in lstm.parameters()]

    assert _C.forced_threads() == 0
    with using_threads(2):
        auto = step()
        try:
            _C.force_threads(2)
            assert _C.forced_threads() == 2
            forced = step()
            _C.force_threads(-4)  # (clamped)
            assert _C.forced_threads() == 0
        finally:
            _C.force_threads(0)
    for got, want in zip(forced, auto):
        np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc/self/task")
def test_a_lower_thread_budget_keeps_the_pool():
    """set_num_threads(1) and back does not start new threads (the scheduler would have to place them again; the
    benchmark's scaling table switches budgets between blocks): the same worker threads serve before and after,
    and a budget below the pool's size caps the team."""
    a = np.ones((256, 256), np.float32)
    c = np.empty_like(a)
    with using_threads(2):
        _C.gemm(a, a, c, num_threads=2)  # the pool exists
        before = set(os.listdir("/proc/self/task"))
        with using_threads(1):
            _C.gemm(a, a, c, num_threads=2)  # capped at the budget: this thread alone
            np.testing.assert_array_equal(c, a @ a)
        _C.gemm(a, a, c, num_threads=2)
        after = set(os.listdir("/proc/self/task"))
    np.testing.assert_array_equal(c, a @ a)
    assert after == before, f"threads {sorted(before)} became {sorted(after)}"


@pytest.mark.skipif(os.name != "posix", reason="counts page faults with resource.getrusage")
def test_repeated_calls_reuse_their_scratch_memory():
    """A kernel called again with the same shapes takes its scratch memory from the calling thread's earlier calls:
    the 2-thread weight-gradient GEMM of a B = 1, H = 16 layer page-faulted up to 148 times a call when each call
    allocated afresh (depending on the heap's state), which took it from 80 to 340 us. Counted, not timed."""
    import resource

    rng = np.random.default_rng(2)
    K, M, N = 1000, 64, 16
    a, b, b2 = (rng.standard_normal(s).astype(np.float32) for s in ((K, M), (K, N), (K - 1, N)))
    c, c2, sums = np.zeros((M, N), np.float32), np.zeros((M, N), np.float32), np.zeros(M)

    def call():
        _C.gemm(a, b, c, trans_a=True, accumulate=True, num_threads=2, b2=b2, c2=c2, b2_offset=1, a_sums=sums)

    with using_threads(2):
        for _ in range(5):
            call()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(50):
            call()
        faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 50
    assert faults < 2, f"{faults:.1f} page faults a call"
