"""Error bounds of the vectorised sigmoid and tanh (csrc/cpu/kernels_impl.h, Math) on every ISA.

The bound documented next to the code: within 3 ulp of the exact value, float32 and float64, over the whole range: every binade from the smallest subnormal to the largest
finite value, both signs, a dense sweep of the interval where the functions change, and the clamp
points. The exact values come from long double (64-bit significand) NumPy math. Run with -s to see
the measured maxima.
"""

import numpy as np
import pytest

from fastlstm import _C

BOUND_ULP = {np.dtype(np.float32): 3.0, np.dtype(np.float64): 3.0}


def samples(dtype, seed=0):
    rng = np.random.default_rng(seed)
    finfo = np.finfo(dtype)
    nmant = finfo.nmant
    lo, hi = finfo.minexp - nmant, finfo.maxexp - 1
    # every binade [2^e, 2^(e+1)) including subnormals, 64 random significands each
    exps = np.repeat(np.arange(lo, hi + 1), 64)
    mant = 1.0 + rng.random(exps.size)
    binades = np.ldexp(mant, exps).astype(dtype)
    dense = rng.uniform(-120, 120, 400_000).astype(dtype)
    edges = np.array([0.0, finfo.smallest_subnormal, finfo.tiny, 0.5 * np.log(3), 0.347, 9.0, 10.0, 20.0,
                      44.0, 88.7, 103.9, 104.0, 709.0, 745.0, 746.0, finfo.max], dtype)
    x = np.concatenate([binades, dense, edges])
    return np.concatenate([x, -x])


def exact_sigmoid(x):
    x = x.astype(np.longdouble)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def ulp_error(got, exact, dtype):
    spacing = np.spacing(np.abs(exact.astype(dtype))).astype(np.longdouble)
    return np.abs(got.astype(np.longdouble) - exact) / spacing


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_activation_within_documented_ulp_bound(isa, dtype, name):
    dtype = np.dtype(dtype)
    x = samples(dtype)
    with np.errstate(over="ignore", under="ignore"):
        exact = exact_sigmoid(x) if name == "sigmoid" else np.tanh(x.astype(np.longdouble))
    got = getattr(_C, name)(x)
    assert got.dtype == dtype
    err = ulp_error(got, exact, dtype)
    worst = int(np.argmax(err))
    print(f"{isa} {name} {dtype}: max error {float(err[worst]):.2f} ulp at x={x[worst]!r}")
    assert err[worst] <= BOUND_ULP[dtype], (
        f"{name}({x[worst]!r}) = {got[worst]!r}, exact {exact[worst]!r}: {float(err[worst]):.2f} ulp")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activation_special_values(isa, dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0], dtype)
    s, t = _C.sigmoid(x), _C.tanh(x)
    assert np.isnan(s[0]) and np.isnan(t[0]), "NaN in must give NaN out"
    np.testing.assert_array_equal(s[1:], [1.0, 0.0, 0.5, 0.5])
    np.testing.assert_array_equal(t[1:], [1.0, -1.0, 0.0, -0.0])
    assert np.signbit(t[4]), "tanh(-0) is -0"


@pytest.mark.parametrize("n", [0, 1, 15, 17, 33])
def test_activation_tails_and_lengths(isa, n):
    x = np.linspace(-5, 5, n).astype(np.float32)
    np.testing.assert_allclose(_C.tanh(x), np.tanh(x.astype(np.float64)), rtol=1e-6, atol=1e-7)
