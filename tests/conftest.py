"""Shared test helpers: the tolerance table, a comparison that explains its failures, ISA fixtures.

Run: pytest (from the repository root, after `pip install '.[test]'`).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import fastlstm

# One table per dtype: an element passes when |got - ref| <= rtol * (|ref| + max|ref|), i.e. errors
# are measured against the magnitude of the element and of the whole array (sums that cancel to a
# small value carry the rounding of their large terms). float32 kernels are compared with a float64
# reference, so rtol is a few float32 ulps times the growth of rounding over a sequence.
TOLERANCE = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}

ISAS = fastlstm.build_info()["isa_supported"]


def assert_close(got, ref, dtype, what="", rtol=None):
    """Assert got ~ ref within the dtype's tolerance; on failure name the worst element and its share."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != reference {ref.shape}"
    rtol = TOLERANCE[np.dtype(dtype)] if rtol is None else rtol
    scale = np.abs(ref).max(initial=0.0)
    bound = rtol * (np.abs(ref) + scale) + np.finfo(np.float64).tiny
    diff = np.abs(got - ref)
    used = diff / bound
    if not np.all(np.isfinite(got)) and np.all(np.isfinite(ref)):
        raise AssertionError(f"{what}: non-finite output at {np.argwhere(~np.isfinite(got))[:3].tolist()}")
    worst = np.unravel_index(np.argmax(used), used.shape) if used.size else ()
    assert used.size == 0 or used[worst] <= 1.0, (
        f"{what}: worst element {tuple(int(i) for i in worst)} got {got[worst]:.9g} vs reference {ref[worst]:.9g}; "
        f"max |diff| {diff.max():.3g}, {used[worst]:.1f}x the tolerance (rtol {rtol:g}, scale {scale:.3g})")


@contextlib.contextmanager
def _switched(get, set_, value):
    """Set a global switch of fastlstm for the duration of a with-block, then restore it."""
    old = get()
    set_(value)
    try:
        yield
    finally:
        set_(old)


def using_isa(name):
    return _switched(fastlstm.get_isa, fastlstm.set_isa, name)


def using_threads(n):
    return _switched(fastlstm.get_num_threads, fastlstm.set_num_threads, n)


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test once per ISA this machine supports."""
    with using_isa(request.param):
        yield request.param


@pytest.fixture(params=["fused", "gemm"])
def input_projection(request, monkeypatch):
    """Run the test with both CPU routes of x W_ih^T: inside the recurrent kernel (what small and mid-sized
    layers take) and a GEMM over all steps beforehand (what layers too big for the cache take)."""
    fused = request.param == "fused"
    monkeypatch.setattr(fastlstm._C, "fuse_input_projection", lambda *args: fused)
    yield request.param


def random_state_dict(rng, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True, dtype=np.float64,
                      proj_size=0):
    """PyTorch-named parameters with a scale that keeps gates away from saturation (weight_hr with proj_size)."""
    D, H, Ho = (2 if bidirectional else 1), hidden_size, proj_size or hidden_size
    sd = {}
    for layer in range(num_layers):
        I = input_size if layer == 0 else D * Ho
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            sd["weight_ih" + sfx] = rng.uniform(-0.5, 0.5, (4 * H, I)).astype(dtype)
            sd["weight_hh" + sfx] = rng.uniform(-0.5, 0.5, (4 * H, Ho)).astype(dtype)
            if bias:
                sd["bias_ih" + sfx] = rng.uniform(-0.5, 0.5, 4 * H).astype(dtype)
                sd["bias_hh" + sfx] = rng.uniform(-0.5, 0.5, 4 * H).astype(dtype)
            if proj_size:
                sd["weight_hr" + sfx] = rng.uniform(-0.5, 0.5, (proj_size, H)).astype(dtype)
    return sd


def reference_masks(lstm):
    """(zoneout, rec_masks) of the layer's saved training forward, as fastlstm.reference takes them: one
    entry per layer and direction, in the kernels' row order (sequences sorted longest first)."""
    regs, D = [layer["reg"] for layer in lstm._ctx["layers"]], lstm.num_directions
    zo = None if regs[0].get("zoneout_h") is None else [
        (r["zoneout_h"][d].astype(np.float64), r["zoneout_c"][d].astype(np.float64)) for r in regs for d in range(D)]
    rm = None if regs[0].get("rec_mask") is None else [r["rec_mask"][d].astype(np.float64) for r in regs for d in range(D)]
    return zo, rm


def check_layer_against_reference(make_layer, params, x, state, grads, lengths, dtype, what):
    """Forward and backward of make_layer(batch_first) (params loaded) at 1, 2 and 3 threads (batch-first
    at 2) against fastlstm.reference with the masks the layer drew; 1 and 3 threads must agree bitwise.

    x: [T, B, I] float64; state = (h0, c0), grads = (dy, dh_n, dc_n) in the reference's layout.
    Returns the 1-thread results.
    """
    (h0, c0), (dy, dh_n, dc_n) = state, grads
    T = x.shape[0]
    live = 1 if lengths is None else (np.arange(T)[:, None] < np.asarray(lengths)[None, :])[:, :, None]
    cast = lambda a: None if a is None else np.ascontiguousarray(a.astype(dtype))
    results = []
    for threads, bf in [(1, False), (2, True), (3, False)]:
        lstm = make_layer(bf)
        lstm.load_state_dict(params)
        sw = (lambda a: a.swapaxes(0, 1)) if bf else (lambda a: a)
        with using_threads(threads):
            y, (hn, cn) = lstm(cast(sw(x)), (cast(h0), cast(c0)), lengths=lengths)
            zo, rm = reference_masks(lstm)
            dx, (dh0, dc0) = lstm.backward(cast(sw(dy)), (cast(dh_n), cast(dc_n)))
        yr, (hr, cr), cache = fastlstm.reference.lstm_forward(x, params, lstm.num_layers, lstm.bidirectional, h0, c0,
                                                              None, lengths, zo, rm)
        dxr, dh0r, dc0r, gr = fastlstm.reference.lstm_backward(dy * live, dh_n, dc_n, cache)
        got = dict(y=sw(y), hn=hn, cn=cn, dx=sw(dx), dh0=dh0, dc0=dc0,
                   **{k: p.grad.copy() for k, p in lstm.named_parameters()})
        ref = dict(y=yr, hn=hr, cn=cr, dx=dxr, dh0=dh0r, dc0=dc0r, **gr)
        assert set(got) == set(ref)
        for key in ref:
            assert_close(got[key], ref[key], dtype, f"{what} {key} threads={threads} batch_first={bf}")
        results.append(got)
    for key in results[0]:  # the partition of units over threads must not change a single bit
        np.testing.assert_array_equal(results[0][key], results[2][key], err_msg=f"{key}: 1 vs 3 threads")
    return results[0]


def numeric_grad(f, arr, indices=None, eps=1e-6):
    """Central differences of the scalar f() with respect to arr (changed in place and restored): at
    `indices` (a list of index tuples; returns a 1-D array), or at every element (returns arr's shape)."""
    points = list(np.ndindex(arr.shape)) if indices is None else indices
    out = np.empty(len(points))
    for n, idx in enumerate(points):
        old = arr[idx]
        arr[idx] = old + eps
        up = f()
        arr[idx] = old - eps
        down = f()
        arr[idx] = old
        out[n] = (up - down) / (2 * eps)
    return out.reshape(arr.shape) if indices is None else out
