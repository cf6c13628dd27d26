"""The C++ fork's float overloads (hankai): the arithmetic facts the port relies on.

hank-ai's Darknet calls ``sqrtf`` and ``powf`` where the C forks call ``sqrt`` and
``pow`` (docs/darknet-semantics.md).  The port computes

- ``sqrtf(v)`` as the double root rounded once to float (``c_arith.c_sqrt``),
- the float division ``a/b`` of normalize_cpu as the double quotient rounded once
  (the "blas" path) or as a float division (the fused kernels),
- ``powf(v, -1.5f)`` by Numba's ``math.pow`` on two float32 values, which must be the
  C library's own ``powf``: glibc's is not correctly rounded, so nothing else gives
  its bits.

Each fact is checked here on many values (seeds fixed and printed), bit for bit,
against an independent computation: NumPy's float32 ``sqrt`` and division, and the
C library's ``powf`` called through ctypes.
"""
import ctypes
import ctypes.util

import numpy as np
import pytest

from darknet_bn import blas

F32 = np.float32
EPS = F32(0.00001)

_LIBM = ctypes.CDLL(ctypes.util.find_library("m"))
_LIBM.powf.restype = ctypes.c_float
_LIBM.powf.argtypes = (ctypes.c_float, ctypes.c_float)


def libm_powf(values, exponent):
    """The C library's powf on every value, through ctypes."""
    e = float(F32(exponent))
    return np.fromiter((_LIBM.powf(float(v), e) for v in values), F32, len(values))


def random_floats(seed, n):
    """float32 values over the whole range: log-uniform magnitudes from the subnormals
    to near FLT_MAX, both signs, and the special values."""
    rng = np.random.default_rng(seed)
    print(f"random_floats: seed {seed}, {n} values")
    magnitude = (2.0 ** rng.uniform(-149, 128, n)).astype(F32)
    values = np.where(rng.random(n) < 0.1, -magnitude, magnitude).astype(F32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, 2.0 ** -149, 2.0 ** -126,
                        np.finfo(F32).max, 1e-5, 0.25, 4.0], F32)
    return np.concatenate([special, values])


def variance_delta_powf(variances):
    """``powf(variance + .00001f, -1.5f)`` as hankai's variance_delta_cpu computes it:
    one channel per value, with ``sum(delta*(x - mean)) = -2`` so that the stored
    ``(float)(-2. * (-.5 * powf(...)))`` is ``powf(...)`` itself (exact steps)."""
    c = len(variances)
    x = np.ones(2 * c, F32)                        # batch 1, spatial 2: x = 1, mean = 0
    delta = np.full(2 * c, -1.0, F32)
    out = np.full(c, np.nan, F32)
    blas.variance_delta_cpu(x, delta, np.zeros(c, F32), np.ascontiguousarray(variances), 1, c,
                            2, out, dialect="hankai")
    return out


def test_sqrtf_is_the_double_root_rounded_once():
    v = random_floats(1, 400_000)
    with np.errstate(invalid="ignore"):
        single = np.sqrt(v)                                    # IEEE float sqrt
        via_double = np.sqrt(v.astype(np.float64)).astype(F32)
    assert np.array_equal(single.view(np.int32), via_double.view(np.int32)), "seed 1"


def test_float_division_is_the_double_quotient_rounded_once():
    a, b = random_floats(2, 400_000), random_floats(3, 400_000)
    with np.errstate(all="ignore"):
        single = a / b
        via_double = (a.astype(np.float64) / b.astype(np.float64)).astype(F32)
    assert np.array_equal(single.view(np.int32), via_double.view(np.int32)), "seeds 2, 3"


def test_the_kernels_powf_is_the_c_librarys():
    """Numba's ``math.pow(float32, float32)`` in the compiled kernel gives the C library's
    ``powf`` bits on 200k values across the float range (NaN for a negative base)."""
    v = random_floats(4, 200_000)
    base = v + EPS                                             # float addition, as the C
    got = variance_delta_powf(v)
    expected = libm_powf(base, -1.5)
    bad = np.nonzero(got.view(np.int32) != expected.view(np.int32))[0]
    assert bad.size == 0, (f"seed 4: {bad.size} values differ from libm powf, e.g. "
                           f"powf({base[bad[0]]!r}, -1.5f) = {expected[bad[0]]!r}, "
                           f"kernel {got[bad[0]]!r}")


def test_powf_is_not_the_double_pow_rounded():
    """Why the C library's powf is needed: it is not correctly rounded, and on ordinary
    variances it differs from ``(float)pow((double)v, -1.5)`` often enough to matter
    (about 1 value in 1500 with glibc 2.36); the kernel follows powf on those values too."""
    seed = 5
    rng = np.random.default_rng(seed)
    v = (10 ** rng.uniform(-6, 6, 400_000)).astype(F32)
    base = v + EPS
    powf = libm_powf(base, -1.5)
    rounded = (base.astype(np.float64) ** -1.5).astype(F32)
    differ = np.nonzero(powf.view(np.int32) != rounded.view(np.int32))[0]
    print(f"seed {seed}: powf differs from the rounded double pow on {differ.size} of "
          f"{v.size} values")
    if differ.size == 0:
        pytest.skip("this C library's powf is correctly rounded on these values")
    got = variance_delta_powf(v[differ])
    assert np.array_equal(got.view(np.int32), powf[differ].view(np.int32)), f"seed {seed}"
