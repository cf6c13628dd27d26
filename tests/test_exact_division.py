"""normalize_delta_cpu's ``/(spatial*batch)`` as a multiplication by the exact reciprocal.

When the count ``n = spatial*batch`` is a power of two, ``fused`` multiplies by
``1./n`` (exact: ``2**-k``) instead of dividing.  Both operations round the same
real number once, so the double, and the float32 stored, are the same for every
operand (proof sketch: docs/benchmarks.md, "Dividing by a power-of-two count").
These tests try to break that: random bit patterns over the whole double range,
quotients that are ties between two subnormal doubles, results next to a float32
rounding midpoint, NaN, Inf, +-0, denormals, and, through the layer, zero and
negative variances, all compared bitwise with the division (and with the blas
path, which always divides).
"""
import numpy as np
import pytest
from numba import njit

from _routines import FORKS
from _state import same_bits_any_nan
from darknet_bn import BatchNormLayer, get_dialect
from darknet_bn.c_arith import BY_RECIPROCAL, DIVIDE, exact_reciprocal, normalize_delta_by
from darknet_bn.batchnorm_layer import FIELDS
from darknet_bn.golden import bits_equal, ulp_diff

SEED = 20261205


@njit(cache=False, error_model="numpy")
def _quotients(p, n):
    """(p / n, p * exact_reciprocal(n)) elementwise, in double."""
    inv = exact_reciprocal(n)
    a = np.empty_like(p)
    b = np.empty_like(p)
    for i in range(p.size):
        a[i] = p[i] / np.float64(n)
        b[i] = p[i] * inv
    return a, b


@njit(cache=False, error_model="numpy")
def _elements(d, v, m, denom, vd2, term_mean, n):
    """normalize_delta_by with C's division and with the reciprocal, elementwise."""
    inv = exact_reciprocal(n)
    a = np.empty(d.size, np.float32)
    b = np.empty(d.size, np.float32)
    for i in range(d.size):
        a[i] = normalize_delta_by(d[i], v[i], m[i], denom[i], vd2[i], np.float64(n),
                                  term_mean[i], DIVIDE)
        b[i] = normalize_delta_by(d[i], v[i], m[i], denom[i], vd2[i], inv, term_mean[i],
                                  BY_RECIPROCAL)
    return a, b


def _double_bits_equal(a, b):
    return np.array_equal(a.view(np.int64), b.view(np.int64))


def test_exact_reciprocal_only_for_powers_of_two():
    for k in range(63):
        assert exact_reciprocal(2**k) == 2.0**-k
    for n in (3, 5, 6, 7, 12, 100, 255, 257, 12544, 43264, 2**40 + 1, 3 * 2**50):
        assert exact_reciprocal(n) == 0.0, n


def _special_doubles(rng):
    """Doubles covering every exponent, the subnormals, ties and specials."""
    bits = rng.integers(0, 2**63, 200_000, dtype=np.int64)
    signs = rng.integers(0, 2, bits.size).astype(np.int64) << 63
    rand = (bits | signs).view(np.float64)
    tiny = np.array([5e-324, -5e-324, 2.2250738585072014e-308, 2.225073858507201e-308,
                     1e-310, -1e-310, 0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan,
                     np.finfo(np.float64).max, -np.finfo(np.float64).max, 1.0, -1.0])
    return np.concatenate([rand, tiny])


@pytest.mark.parametrize("k", [0, 1, 2, 6, 8, 12, 20, 52, 62])
def test_product_by_the_reciprocal_is_the_quotient(k):
    """Every double p: p / 2**k and p * 2**-k have the same bits (NaN payloads too)."""
    rng = np.random.default_rng(SEED + k)
    p = _special_doubles(rng)
    # quotients that are ties between two subnormal doubles: p = (2j+1) * 2**(k-1075)
    if k >= 1:
        odd = (2 * rng.integers(0, 2**20, 2000) + 1).astype(np.float64)
        ties = np.ldexp(odd, k - 1075)
        p = np.concatenate([p, ties, -ties])
    a, b = _quotients(p, 2**k)
    assert _double_bits_equal(a, b), f"seed {SEED + k}, k {k}"


def _near_float_midpoints(rng, size):
    """Element operands whose exact result lies within a few double ulps of a float32
    rounding midpoint, so any change in the double sum would show in the float."""
    f = rng.uniform(-4, 4, size).astype(np.float32)
    nxt = np.nextafter(f, np.float32(np.inf))
    mid = (f.astype(np.float64) + nxt.astype(np.float64)) / 2
    wiggle = rng.integers(-4, 5, size) * np.spacing(mid)
    target = mid + wiggle
    return target


@pytest.mark.parametrize("n", [2, 64, 256, 4096, 2**20])
def test_normalize_delta_element_same_bits_near_float_midpoints(n):
    """The whole element: results steered next to float32 rounding midpoints, and
    specials (NaN, Inf, +-0, denormal) in every operand."""
    seed = SEED + n
    rng = np.random.default_rng(seed)
    size = 100_000
    d = rng.standard_normal(size).astype(np.float32)
    v = rng.standard_normal(size).astype(np.float32) * 3
    m = rng.standard_normal(size).astype(np.float32)
    denom = rng.uniform(1e-3, 5, size)
    vd2 = rng.standard_normal(size) * n
    # term_mean chosen so that the exact double sum hits a value near a float midpoint
    first = d.astype(np.float64) / denom
    second = vd2 * (v - m).astype(np.float64) / n
    term_mean = _near_float_midpoints(rng, size) - first - second
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-40],
                        np.float32)
    for arr in (d, v, m):
        arr[rng.integers(0, size, 400)] = rng.choice(specials, 400)
    vd2[rng.integers(0, size, 400)] = rng.choice([np.nan, np.inf, -np.inf, 0.0, -0.0,
                                                  5e-324, 1e-310], 400)
    denom[rng.integers(0, size, 200)] = rng.choice([0.0, np.inf, np.nan, 1e-310], 200)
    a, b = _elements(d, v, m, denom, vd2, term_mean, n)
    assert bits_equal(a, b), f"seed {seed}: {ulp_diff(a, b)}"


def _layer_pair(shape, dialect, rng):
    b, c, h, w = shape
    layer_type = get_dialect(dialect).layer_types[0]     # hankai: the conv stage only
    layers = [BatchNormLayer(b, w, h, c, dialect=dialect, layer_type=layer_type, kernel=k)
              for k in ("blas", "fused")]
    state = {"scales": rng.uniform(-2, 2, c), "biases": rng.normal(0, 1, c),
             "rolling_mean": rng.normal(0, 1, c),
             # the fork's zero and negative variances (a pjreddie inference backward
             # divides by the rolling ones): sqrt of a negative is NaN, of 0 is 0
             "rolling_variance": np.where(np.arange(c) % 3 == 0, 0.0,
                                          np.where(np.arange(c) % 3 == 1, -0.5, 2.0))}
    for name, v in state.items():
        for l in layers:
            getattr(l, name)[:] = np.asarray(v, np.float32)
    return layers


@pytest.mark.parametrize("dialect", FORKS)
@pytest.mark.parametrize("shape", [(64, 40, 1, 1), (256, 24, 1, 1), (2, 300, 1, 1),
                                   (4, 19, 4, 4), (2, 16, 8, 8), (1, 9, 2, 4)],
                         ids=lambda s: "x".join(map(str, s)))
def test_power_of_two_counts_match_blas_on_adversarial_inputs(shape, dialect):
    """Layers whose spatial*batch is a power of two (the reciprocal path) against the
    blas path (C's division), train and inference backward, on inputs with NaN,
    Inf, +-0, denormals, constant (zero-variance) channels, tiny and huge values.
    Bitwise, with NaNs in the same places; a NaN's sign and payload follow the
    compiler's operand order, which C does not fix either (docs/reliability.md): the
    vectorized and the scalar code may give different ones."""
    seed = SEED + sum(shape)
    rng = np.random.default_rng(seed)
    b, c, h, w = shape
    blas, fl = _layer_pair(shape, dialect, rng)
    for step, train in enumerate((True, False, True)):
        x = (rng.standard_normal((b, c, h * w)) * rng.uniform(1e-3, 1e3, (1, c, 1))
             ).astype(np.float32)
        x[:, 0, :] = np.float32(1.5)                          # zero batch variance
        if c > 4:
            x[:, 4, :] *= np.float32(1e-39)                   # denormal inputs
        x.reshape(-1)[rng.integers(0, x.size, 3)] = [np.nan, np.inf, -0.0]
        d = rng.standard_normal(x.size).astype(np.float32)
        d[rng.integers(0, d.size, 4)] = [np.inf, -np.inf, 1e-45, -0.0]
        for l in (blas, fl):
            l.forward(x.reshape(-1), train=train)
        grads = [l.backward(d, train=train) for l in (blas, fl)]
        where = f"{shape} {dialect} step {step} train={train} seed {seed}"
        bad = [f"{name} {ulp_diff(getattr(fl, name), getattr(blas, name))}" for name in FIELDS
               if not same_bits_any_nan(getattr(fl, name), getattr(blas, name))]
        if not same_bits_any_nan(grads[1], grads[0]):
            bad.append("returned gradient")
        assert not bad, f"{where}: {bad}"
