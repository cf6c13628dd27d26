"""NaN and Inf: Darknet checks nothing and propagates them; so does the port, bit for bit.

Policy (docs/reliability.md): no value is checked, clipped or replaced; a NaN or
Inf goes through exactly the C's arithmetic.  Since the reductions are per
channel, a NaN in one channel's input poisons that channel only (its statistics,
output, rolling statistics, gradient and parameter updates) and leaves every
other channel bit-identical to a clean run.  Divisions by zero give +-Inf/NaN as
in C, never a Python exception.  Checked here against the naive transcription of
the C (tests/naive.py): bitwise, with every NaN where the C has one; a NaN's own
sign and payload are not compared (C leaves them to the compiler's operand order:
an invalid operation gives x86's default NaN 0xffc00000, where the Python
reference gives 0x7fc00000).
"""
import copy
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import naive
from _routines import DIMS, FORKS, ROUTINES, call, random_values
from _state import fill_layer, same_bits, same_bits_any_nan
from darknet_bn import blas, get_dialect
from darknet_bn.batchnorm_layer import PATHS, BatchNormLayer

F32 = np.float32
SPECIALS = [F32("nan"), -F32("nan"), F32("inf"), -F32("inf"), F32(-0.0), F32(1e-45),
            F32(3.4028235e38), F32(-3.4028235e38)]
NON_NEGATIVE = [F32("nan"), F32("inf"), F32(-0.0), F32(1e-45), F32(3.4028235e38)]


def inject(rng, arr, pool, count):
    """Put ``count`` values from ``pool`` at random positions of ``arr`` (in place)."""
    for _ in range(count if arr.size else 0):
        arr[rng.integers(arr.size)] = pool[rng.integers(len(pool))]
    return arr


def assert_same(a, b, label):
    assert same_bits_any_nan(a, b), f"{label}: values differ (NaN positions or bits)"


# --------------------------------------------------------------------------
# routines
# --------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.sampled_from(ROUTINES), st.integers(0, 2**32 - 1), st.integers(1, 4),
       st.integers(1, 4), st.integers(1, 6), st.sampled_from(FORKS),
       st.sampled_from([1.5, float("nan"), float("inf"), -0.0]))
def test_routines_propagate_specials_like_c(routine, seed, batch, filters, spatial, dialect,
                                            alpha):
    if routine.name == "variance_cpu" and batch * spatial < 2:
        batch = 2
    rng = np.random.default_rng(seed)
    v = random_values(routine, rng, batch, filters, spatial, N=7, INCX=2, INCY=1, ALPHA=alpha)
    for name, arr in v.items():
        if isinstance(arr, np.ndarray):
            # a variance is >= 0 or NaN (the naive reference's math.sqrt rejects < 0)
            inject(rng, arr, NON_NEGATIVE if name == "variance" else SPECIALS,
                   int(rng.integers(1, 4)))
    port = {k: (a.copy() if isinstance(a, np.ndarray) else a) for k, a in v.items()}
    ref = {k: (a.copy() if isinstance(a, np.ndarray) else a) for k, a in v.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # no RuntimeWarning, no exception
        call(routine, routine.port, port, dialect)
    with np.errstate(all="ignore"):
        call(routine, routine.naive, ref, dialect)
    for name in routine.args:
        if name not in DIMS:
            assert_same(port[name], ref[name], f"{routine.name}:{name}")


@pytest.mark.parametrize("dialect", FORKS)
def test_division_by_zero_gives_inf_not_an_exception(dialect):
    """variance = -.00001f makes Darknet divide by sqrt(0): -Inf/NaN, as in C (and with
    C++'s sqrtf and powf)."""
    var = np.array([-1e-5, 1.0], F32)
    delta = np.array([1.0, 0.0, 2.0, 0.5], F32)            # batch 1, 2 channels, 2 each
    mean_delta = np.zeros(2, F32)
    blas.mean_delta_cpu(delta, var, 1, 2, 2, mean_delta, dialect=dialect)
    assert mean_delta[0] == -np.inf                         # 1.0 * (-1./sqrt(0))
    variance_delta = np.zeros(2, F32)
    x, mean = np.array([1, 1, 3, 3], F32), np.array([1, 2], F32)
    blas.variance_delta_cpu(x, delta, mean, var, 1, 2, 2, variance_delta, dialect=dialect)
    assert np.isnan(variance_delta[0])                      # 0 * pow(0, -1.5) = 0 * inf


# --------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------
LAYERS = [(d, t, k) for d in FORKS for t in get_dialect(d).layer_types for k in sorted(PATHS)]


def naive_twin(layer):
    """tests/naive.py's C struct holding the same bits as ``layer``."""
    n = naive.Layer(layer.batch, layer.w, layer.h, layer.c, layer.dialect.name, layer.type)
    for name in ("output", "delta", "x", "x_norm", "mean", "variance", "rolling_mean",
                 "rolling_variance", "scales", "biases", "scale_updates", "bias_updates",
                 "mean_delta", "variance_delta"):
        getattr(n, name)[:] = getattr(layer, name)
    return n


@pytest.mark.parametrize("dialect,layer_type,kernel", LAYERS)
def test_layer_with_specials_matches_naive(dialect, layer_type, kernel):
    rng = np.random.default_rng(7)
    layer = fill_layer(BatchNormLayer(3, 3, 2, 4, dialect=dialect, layer_type=layer_type,
                                      kernel=kernel), rng)
    ref = naive_twin(layer)
    n = layer.batch * layer.outputs
    for step, train in enumerate([True, True, False]):
        x = inject(rng, rng.standard_normal(n).astype(F32), SPECIALS, 2)
        d = inject(rng, rng.standard_normal(n).astype(F32), SPECIALS, 2)
        net_delta = np.zeros(n, F32)
        layer.forward(x, train=train)
        grad = layer.backward(d, train=train)
        layer.update(0.01, 0.9, 0.0005)
        with np.errstate(all="ignore"):
            naive.forward_batchnorm_layer(ref, x, train)
            naive.backward_batchnorm_layer(ref, d, train, net_delta)
            naive.update_batchnorm_layer(ref, layer.batch, 0.01, 0.9, 0.0005)
        for name in ("output", "delta", "x", "x_norm", "mean", "variance", "rolling_mean",
                     "rolling_variance", "scales", "biases", "scale_updates", "bias_updates",
                     "mean_delta", "variance_delta"):
            assert_same(getattr(layer, name), getattr(ref, name), f"step {step} {name}")
        if layer_type == "batchnorm":
            assert_same(grad, net_delta, f"step {step} net_delta")


@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dialect,layer_type,kernel", LAYERS)
def test_a_nan_stays_in_its_channel(dialect, layer_type, kernel, poison):
    """One bad element poisons its channel only; the other channels keep their bits."""
    rng = np.random.default_rng(11)
    clean = fill_layer(BatchNormLayer(2, 3, 3, 5, dialect=dialect, layer_type=layer_type,
                                      kernel=kernel), rng)
    dirty = copy.deepcopy(clean)
    n, c, sp = clean.batch * clean.outputs, clean.c, clean.h * clean.w
    x = rng.standard_normal(n).astype(F32)
    d = rng.standard_normal(n).astype(F32)
    bad_channel = 2
    x_bad = x.copy()
    x_bad[(1 * c + bad_channel) * sp + 4] = poison          # batch 1, channel 2
    for layer, inp in ((clean, x), (dirty, x_bad)):
        layer.forward(inp, train=True)
        layer.backward(d, train=True)
        layer.update(0.01, 0.9, 0.0005)
    others = [f for f in range(c) if f != bad_channel]
    for name in ("output", "x_norm", "delta"):
        a = getattr(clean, name).reshape(clean.batch, c, sp)
        b = getattr(dirty, name).reshape(dirty.batch, c, sp)
        assert same_bits(a[:, others], b[:, others]), f"{name}: other channels changed"
        assert np.isnan(b[:, bad_channel]).all(), f"{name}: channel {bad_channel} not all NaN"
    for name in ("mean", "variance", "rolling_mean", "rolling_variance", "scale_updates",
                 "scales", "mean_delta", "variance_delta"):
        a, b = getattr(clean, name), getattr(dirty, name)
        assert same_bits(a[others], b[others]), f"{name}: other channels changed"
        if name in ("mean", "rolling_mean") and np.isinf(poison):
            assert b[bad_channel] == poison, f"{name}: an Inf input gives an Inf mean"
        elif name in ("scales", "scale_updates") and not dirty.has_update:
            assert np.isnan(b[bad_channel]) or name == "scales"
        else:
            assert np.isnan(b[bad_channel]), f"{name}[{bad_channel}] = {b[bad_channel]}"


def test_nan_scalars_are_accepted():
    """NaN/Inf learning rates and ALPHA are values like any other, as in C."""
    y = np.ones(3, F32)
    blas.axpy_cpu(3, float("nan"), np.ones(3, F32), 1, y, 1)
    assert np.isnan(y).all()
    layer = BatchNormLayer(2, 2, 2, 3, dialect="alexeyab")
    layer.scale_updates[:] = 1
    layer.update(float("inf"), 0.9, 0.0)
    assert np.isinf(layer.scales).all()
