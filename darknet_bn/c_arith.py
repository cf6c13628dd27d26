"""Darknet's batchnorm arithmetic under C's float rules, each constant and formula once.

The one-to-one routines (``blas.py``) and the fused kernels (``fused.py``) both
call these helpers; each is inlined (``inline="always"``), so the loops compile
as if written out in place.  C's rules (docs/darknet-semantics.md): ``float op
float`` rounds to float32; a double literal, ``sqrt``, ``pow`` or a ``double``
operand makes the sub-expression float64, rounded to float32 when stored into a
``float``; ``float / int`` converts the int to float32.  C++ with the float
overloads of ``sqrt`` and ``pow`` in scope (hank-ai's fork) makes ``sqrt`` and
``pow`` of a float return a float (``sqrtf``, ``powf``); the helpers take that as a
flag.  Which epsilon goes where, and which of C's or C++'s calls each fork makes,
is in ``dialects.DIALECTS`` (``dialects.normalize_denominator`` and its siblings).
"""
import math

import numpy as np

from ._jit import helper

#: ``.00001f``: the epsilon of every batchnorm formula except pjreddie's normalize_cpu.
EPS = np.float32(0.00001)
#: ``.000001f``: pjreddie's normalize_cpu epsilon.
EPS_NORMALIZE_PJ = np.float32(0.000001)
#: ``(float)(-3./2.)``: variance_delta_cpu's exponent, a float.  C promotes it to double
#: for ``pow(double, double)``; C++'s ``pow(float, float)`` (``powf``) takes it as it is.
NEG_THREE_HALVES = np.float32(-3.0 / 2.0)


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
def c_sqrt(v, float_overloads):
    """``sqrt(v)`` of a float ``v``, as a double: C's ``sqrt((double)v)``, or with C++'s
    float overloads ``sqrtf(v)``, a float (promoted exactly where the C uses it as a
    double).  The float root is the double root rounded once to float: both roots are
    correctly rounded (IEEE 754), and rounding twice through double cannot differ from
    rounding once for ``sqrt`` (53 >= 2*24 + 2)."""
    root = math.sqrt(np.float64(v))
    if float_overloads:
        return np.float64(np.float32(root))
    return root


@helper(inline="always")
def eps_denominator(variance, eps, in_sqrt, float_overloads):
    """``sqrt(variance + eps)`` if ``in_sqrt`` else ``sqrt(variance) + eps``, as a double.

    ``variance + eps`` is a float addition; ``sqrt`` is ``c_sqrt``.  After C's double
    root, ``+ eps`` is a double addition; after C++'s float one, a float addition.
    """
    if in_sqrt:
        return c_sqrt(variance + eps, float_overloads)
    if float_overloads:
        return np.float64(np.float32(c_sqrt(variance, float_overloads)) + eps)
    return c_sqrt(variance, float_overloads) + np.float64(eps)


#: How normalize_cpu's division is computed (see ``normalize_by``).
DOUBLE_QUOTIENT, FLOAT_QUOTIENT = 0, 1


@helper(inline="always")
def normalize_by(v, m, denom, how):
    """normalize_cpu's element ``(x[index] - mean[f])/denom``, ``how`` a constant:

    - ``DOUBLE_QUOTIENT``: float difference, double division by the double ``denom``,
      rounded once on store (C: the denominator is a double).
    - ``FLOAT_QUOTIENT``: ``denom`` holds a float (C++'s ``sqrtf``: ``c_sqrt`` with
      the overloads), and the division is float / float.  It gives the bits of
      ``DOUBLE_QUOTIENT`` on the same operands (a quotient of floats rounded to
      double and then to float is the quotient rounded once: 53 >= 2*24 + 2), in
      vectors twice as wide.
    """
    if how == FLOAT_QUOTIENT:
        return (v - m) / np.float32(denom)
    return np.float32(np.float64(v - m) / denom)


@helper(inline="always")
def normalize(v, m, denom):
    """normalize_cpu's element with a double denominator (``normalize_by`` with
    ``DOUBLE_QUOTIENT``): float difference, double division, rounded once on store."""
    return normalize_by(v, m, denom, DOUBLE_QUOTIENT)


@helper(inline="always")
def mean_delta_factor(variance, float_overloads):
    """mean_delta_cpu's ``(-1./sqrt(variance[i] + .00001f))``, a double: the root is
    ``c_sqrt``, the division a double one in C and C++ alike."""
    return -1.0 / c_sqrt(variance + EPS, float_overloads)


@helper(inline="always")
def variance_delta_factor(variance, float_overloads):
    """variance_delta_cpu's ``-.5 * pow(variance[i] + .00001f, (float)(-3./2.))``, a double.

    C: ``pow(double, double)``.  C++'s float overloads: ``powf(float, float)``, the C
    library's own (``math.pow`` on two float32 values lowers to ``llvm.pow.f32``, a
    call of the process's ``powf``; it is not correctly rounded, so nothing else would
    give its bits), promoted to double for ``-.5 *``.
    """
    if float_overloads:
        return -0.5 * np.float64(math.pow(variance + EPS, NEG_THREE_HALVES))
    return -0.5 * math.pow(np.float64(variance + EPS), np.float64(NEG_THREE_HALVES))


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
