"""Darknet's batchnorm arithmetic under C's float rules, each constant and formula once.

The one-to-one routines (``blas.py``) and the fused kernels (``fused.py``) both
call these helpers; each is inlined (``inline="always"``), so the loops compile
as if written out in place.  C's rules (docs/darknet-semantics.md): ``float op
float`` rounds to float32; a double literal, ``sqrt``, ``pow`` or a ``double``
operand makes the sub-expression float64, rounded to float32 when stored into a
``float``; ``float / int`` converts the int to float32.  Which epsilon goes where
in each fork is in ``dialects.DIALECTS`` (``dialects.normalize_denominator``).
"""
import math

import numpy as np

from ._jit import helper

#: ``.00001f``: the epsilon of every batchnorm formula except pjreddie's normalize_cpu.
EPS = np.float32(0.00001)
#: ``.000001f``: pjreddie's normalize_cpu epsilon.
EPS_NORMALIZE_PJ = np.float32(0.000001)
#: ``(float)(-3./2.)``: variance_delta_cpu's exponent, a float passed to ``pow(double, double)``.
NEG_THREE_HALVES = np.float64(np.float32(-3.0 / 2.0))


@helper(inline="always")
def mean_cpu_scale(batch, spatial):
    """mean_cpu's ``float scale = 1./(batch*spatial)``: double quotient, stored as float."""
    return np.float32(1.0 / (batch * spatial))


@helper(inline="always")
def variance_cpu_scale(batch, spatial):
    """variance_cpu's ``float scale = 1./(batch*spatial - 1)`` (unbiased)."""
    return np.float32(1.0 / (batch * spatial - 1))


@helper(inline="always")
def variance_step(acc, v, m):
    """``variance[i] += pow((x[index] - mean[i]), 2)``: the float difference, squared
    and added to ``(double)variance[i]`` in double (exact square), rounded to float."""
    d = np.float64(v - m)
    return np.float32(np.float64(acc) + d * d)


@helper(inline="always")
def eps_denominator(variance, eps, in_sqrt):
    """``sqrt(variance + eps)`` if ``in_sqrt`` else ``sqrt(variance) + eps``, as a double.

    ``variance + eps`` is a float addition; ``sqrt`` and ``+ eps`` after it are double.
    """
    if in_sqrt:
        return math.sqrt(np.float64(variance + eps))
    return math.sqrt(np.float64(variance)) + np.float64(eps)


@helper(inline="always")
def normalize(v, m, denom):
    """normalize_cpu's element ``(x[index] - mean[f])/denom``: float difference, double
    division, rounded once on store."""
    return np.float32(np.float64(v - m) / denom)


@helper(inline="always")
def mean_delta_factor(variance):
    """mean_delta_cpu's ``(-1./sqrt(variance[i] + .00001f))``, a double."""
    return -1.0 / math.sqrt(np.float64(variance + EPS))


@helper(inline="always")
def variance_delta_factor(variance):
    """variance_delta_cpu's ``-.5 * pow(variance[i] + .00001f, (float)(-3./2.))``, a double."""
    return -0.5 * math.pow(np.float64(variance + EPS), NEG_THREE_HALVES)


@helper(inline="always")
def times_double(acc, factor):
    """``acc *= factor`` for a float ``acc`` and a double ``factor``: ``(float)((double)acc*factor)``."""
    return np.float32(np.float64(acc) * factor)


@helper(inline="always")
def normalize_delta_terms(mean_delta, variance_delta, n):
    """normalize_delta_cpu's per-channel terms, ``n = spatial*batch``:
    ``variance_delta[f] * 2.`` (double) and ``mean_delta[f]/(spatial*batch)`` (the int
    becomes a float: float division, then promoted)."""
    return np.float64(variance_delta) * 2.0, np.float64(mean_delta / np.float32(n))


#: How normalize_delta_cpu's ``/(spatial*batch)`` is computed (see ``normalize_delta_by``).
DIVIDE, BY_RECIPROCAL = 0, 1


@helper(inline="always")
def exact_reciprocal(n):
    """``1./n`` as a double when it is exact, i.e. ``n`` (>= 1) is a power of two; else 0.0."""
    if n & (n - 1) == 0:
        return 1.0 / np.float64(n)
    return 0.0


@helper(inline="always")
def normalize_delta_by(d, v, m, denom, vd2, count, term_mean, how):
    """normalize_delta_cpu's element, ``how`` a constant::

        delta[index] = delta[index] * 1./denom
                     + variance_delta[f] * 2. * (x[index] - mean[f]) / (spatial * batch)
                     + mean_delta[f]/(spatial*batch);

    summed left to right in double, rounded once on store.  ``how == DIVIDE``:
    ``count = (double)(spatial*batch)`` and C's division.  ``how == BY_RECIPROCAL``:
    ``count = exact_reciprocal(spatial*batch)`` (nonzero: the count is a power of two)
    and a multiplication, which gives the same double for every operand: both
    operations round the same real number ``p * 2**-k`` once (docs/benchmarks.md,
    "Dividing by a power-of-two count")."""
    t = vd2 * np.float64(v - m)
    if how == BY_RECIPROCAL:
        t = t * count
    else:
        t = t / count
    return np.float32(np.float64(d) * 1.0 / denom + t + term_mean)


@helper(inline="always")
def normalize_delta(d, v, m, denom, vd2, n_d, term_mean):
    """normalize_delta_cpu's element with C's division, ``n_d = (double)(spatial*batch)``
    (``normalize_delta_by`` with ``DIVIDE``)."""
    return normalize_delta_by(d, v, m, denom, vd2, n_d, term_mean, DIVIDE)


@helper(inline="always")
def rolling(r, keep, new, stat):
    """``scal_cpu(keep)`` then ``axpy_cpu(new, stat)`` on one element, all float."""
    r = r * keep                                   # r *= keep
    return r + new * stat                          # r += new*stat
