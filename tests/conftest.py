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


def random_state_dict(rng, input_size, hidden_size, num_layers=1, bidirectional=False, bias=True, dtype=np.float64):
    """PyTorch-named parameters with a scale that keeps gates away from saturation."""
    D, H = (2 if bidirectional else 1), hidden_size
    sd = {}
    for layer in range(num_layers):
        I = input_size if layer == 0 else D * H
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            sd["weight_ih" + sfx] = rng.uniform(-0.5, 0.5, (4 * H, I)).astype(dtype)
            sd["weight_hh" + sfx] = rng.uniform(-0.5, 0.5, (4 * H, H)).astype(dtype)
            if bias:
                sd["bias_ih" + sfx] = rng.uniform(-0.5, 0.5, 4 * H).astype(dtype)
                sd["bias_hh" + sfx] = rng.uniform(-0.5, 0.5, 4 * H).astype(dtype)
    return sd


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
