"""Darknet's ``src/blas.c``: the batchnorm routines, one to one.

Dimensions (named once, as in Darknet)::

    batch    images in the batch                 (l.batch)
    filters  channels                            (l.out_c)
    spatial  elements of one channel plane       (l.out_h * l.out_w)
    index    (b*filters + f)*spatial + k         flat, batch-major, float32

Every routine keeps Darknet's name and argument order and writes in place like
the C.  The kernel ``_name`` runs ``prange`` over channels with the C's serial
order inside a channel, so each reduction is summed exactly as Darknet sums it.
Each C statement is quoted next to the line that computes it; the arithmetic
itself (C's float rules, the constants) lives in ``c_arith``, shared with the
fused kernels, and each fork's epsilon placement in ``dialects``.  The rules, in
the repository: ``docs/darknet-semantics.md``.

The public function validates every argument (dtype, length, contiguity,
writability, dimensions, aliasing) before its kernel runs.
"""
import numpy as np
from numba import prange

from ._jit import BUF, FLT, INT, kernel, sig
from ._validate import (check_buffer, check_dim, check_no_overlap, check_scalar,
                        check_two_values_per_channel)
from .c_arith import (mean_cpu_scale, normalize, normalize_delta, normalize_delta_terms,
                      times_double, variance_cpu_scale, variance_step)
from .dialects import (get_dialect, mean_delta_factor, normalize_delta_denominator,
                       normalize_denominator, variance_delta_factor)


def _bn_dims(routine, batch, filters, spatial):
    return (check_dim(routine, "batch", batch), check_dim(routine, "filters", filters),
            check_dim(routine, "spatial", spatial))


def _bn_buf(routine, name, arr, batch, filters, spatial, writable=False):
    return check_buffer(routine, name, arr, batch * filters * spatial, writable=writable,
                        what=f"batch*filters*spatial = {batch}*{filters}*{spatial}")


def _ch_buf(routine, name, arr, filters, writable=False):
    return check_buffer(routine, name, arr, filters, writable=writable,
                        what=f"one value per channel, filters = {filters}")


def _strided_buf(routine, name, arr, N, inc, writable=False):
    need = (N - 1) * inc + 1 if N > 0 else 0
    inc_name = "INC" + name                            # INCX for X, INCY for Y
    return check_buffer(routine, name, arr, need, writable=writable, at_least=True,
                        what=f"(N-1)*{inc_name}+1 with N={N}, {inc_name}={inc}")


# --------------------------------------------------------------------------
# mean_cpu
# --------------------------------------------------------------------------
@kernel(sig(BUF, INT, INT, INT, BUF))
def _mean_cpu(x, batch, filters, spatial, mean):
    scale = mean_cpu_scale(batch, spatial)             # float scale = 1./(batch*spatial)
    for i in prange(filters):
        acc = np.float32(0.0)                          # mean[i] = 0
        for j in range(batch):
            base = (j * filters + i) * spatial
            for k in range(spatial):
                acc += x[base + k]                     # float += float
        mean[i] = acc * scale                          # mean[i] *= scale


def mean_cpu(x, batch, filters, spatial, mean):
    """``mean_cpu`` (blas.c): ``mean[f] = (sum over b, k of x) * (float)(1./(batch*spatial))``.

    The sum is float32, sequential in (b, k) order from +0.0f.
    """
    routine = "mean_cpu"
    batch, filters, spatial = _bn_dims(routine, batch, filters, spatial)
    _bn_buf(routine, "x", x, batch, filters, spatial)
    _ch_buf(routine, "mean", mean, filters, writable=True)
    check_no_overlap(routine, ("mean", mean), ("x", x))
    _mean_cpu(x, batch, filters, spatial, mean)


# --------------------------------------------------------------------------
# variance_cpu
# --------------------------------------------------------------------------
@kernel(sig(BUF, BUF, INT, INT, INT, BUF))
def _variance_cpu(x, mean, batch, filters, spatial, variance):
    scale = variance_cpu_scale(batch, spatial)         # float scale = 1./(batch*spatial - 1)
    for i in prange(filters):
        m = mean[i]
        acc = np.float32(0.0)                          # variance[i] = 0
        for j in range(batch):
            base = (j * filters + i) * spatial
            for k in range(spatial):
                # variance[i] += pow((x[index] - mean[i]), 2)
                acc = variance_step(acc, x[base + k], m)
        variance[i] = acc * scale                      # variance[i] *= scale


def variance_cpu(x, mean, batch, filters, spatial, variance):
    """``variance_cpu`` (blas.c): unbiased variance, ``/(batch*spatial - 1)``.

    Each step is ``variance[i] += pow(x - mean, 2)``: a float32 difference, squared
    exactly in float64, added in float64 and rounded back to float32 every
    iteration.  Needs ``batch*spatial >= 2`` (Darknet divides by zero otherwise).
    """
    routine = "variance_cpu"
    batch, filters, spatial = _bn_dims(routine, batch, filters, spatial)
    check_two_values_per_channel(routine, batch, spatial)
    _bn_buf(routine, "x", x, batch, filters, spatial)
    _ch_buf(routine, "mean", mean, filters)
    _ch_buf(routine, "variance", variance, filters, writable=True)
    check_no_overlap(routine, ("variance", variance), ("x", x), ("mean", mean))
    _variance_cpu(x, mean, batch, filters, spatial, variance)


# --------------------------------------------------------------------------
# normalize_cpu
# --------------------------------------------------------------------------
@kernel(sig(BUF, BUF, BUF, INT, INT, INT, INT))
def _normalize_cpu(x, mean, variance, batch, filters, spatial, dialect):
    for f in prange(filters):
        m = mean[f]
        # pjreddie: sqrt(variance[f]) + .000001f; alexeyab: sqrt(variance[f] + .00001f);
        # hankai: sqrtf(variance[f] + .00001f), a float (its float division gives the
        # double quotient's bits, c_arith.normalize_by)
        denom = normalize_denominator(variance[f], dialect)
        for b in range(batch):
            base = (b * filters + f) * spatial
            for i in range(spatial):
                # x[index] = (x[index] - mean[f])/(denominator);
                x[base + i] = normalize(x[base + i], m, denom)


def normalize_cpu(x, mean, variance, batch, filters, spatial, *, dialect="pjreddie"):
    """``normalize_cpu`` (blas.c): ``x = (x - mean) / denominator``, in place.

    pjreddie: ``(x - mean)/(sqrt(variance) + .000001f)``;
    alexeyab: ``(x - mean)/sqrt(variance + .00001f)``.  The difference is float32;
    ``sqrt`` and the division are float64, rounded once on store.
    hankai: the alexeyab line in C++, ``sqrtf`` and a float division (computed here as
    the double division of the same floats, rounded once: the same bits).
    """
    routine = "normalize_cpu"
    dialect = get_dialect(dialect, routine)
    batch, filters, spatial = _bn_dims(routine, batch, filters, spatial)
    _bn_buf(routine, "x", x, batch, filters, spatial, writable=True)
    _ch_buf(routine, "mean", mean, filters)
    _ch_buf(routine, "variance", variance, filters)
    check_no_overlap(routine, ("x", x), ("mean", mean), ("variance", variance))
    _normalize_cpu(x, mean, variance, batch, filters, spatial, dialect.code)


# --------------------------------------------------------------------------
# axpy_cpu, scal_cpu, copy_cpu (BLAS level 1, strided)
# --------------------------------------------------------------------------
@kernel(sig(INT, FLT, BUF, INT, BUF, INT))
def _axpy_cpu(N, ALPHA, X, INCX, Y, INCY):
    for i in prange(N):
        Y[i * INCY] += ALPHA * X[i * INCX]             # float*float, then float+float


@kernel(sig(INT, FLT, BUF, INT))
def _scal_cpu(N, ALPHA, X, INCX):
    for i in prange(N):
        X[i * INCX] *= ALPHA


@kernel(sig(INT, BUF, INT, BUF, INT))
def _copy_cpu(N, X, INCX, Y, INCY):
    for i in prange(N):
        Y[i * INCY] = X[i * INCX]


def _blas1_args(r, N, **incs):
    """N >= 0 (0 is a no-op) and each stride (INCX, INCY) >= 1, as Python ints."""
    return (check_dim(r, "N", N, minimum=0),
            *(check_dim(r, name, value) for name, value in incs.items()))


def axpy_cpu(N, ALPHA, X, INCX, Y, INCY):
    """``axpy_cpu`` (blas.c): ``Y[i*INCY] += ALPHA*X[i*INCX]`` for i < N, in float32.

    ``ALPHA`` is rounded to float32 first, as C passes it as ``float``.  ``N = 0``
    is a no-op (as in C and BLAS); INCX, INCY must be >= 1.
    """
    routine = "axpy_cpu"
    N, INCX, INCY = _blas1_args(routine, N, INCX=INCX, INCY=INCY)
    ALPHA = check_scalar(routine, "ALPHA", ALPHA)
    _strided_buf(routine, "X", X, N, INCX)
    _strided_buf(routine, "Y", Y, N, INCY, writable=True)
    check_no_overlap(routine, ("Y", Y), ("X", X))
    _axpy_cpu(N, ALPHA, X, INCX, Y, INCY)


def scal_cpu(N, ALPHA, X, INCX):
    """``scal_cpu`` (blas.c): ``X[i*INCX] *= ALPHA`` for i < N, in float32."""
    routine = "scal_cpu"
    N, INCX = _blas1_args(routine, N, INCX=INCX)
    ALPHA = check_scalar(routine, "ALPHA", ALPHA)
    _strided_buf(routine, "X", X, N, INCX, writable=True)
    _scal_cpu(N, ALPHA, X, INCX)


def copy_cpu(N, X, INCX, Y, INCY):
    """``copy_cpu`` (blas.c): ``Y[i*INCY] = X[i*INCX]`` for i < N."""
    routine = "copy_cpu"
    N, INCX, INCY = _blas1_args(routine, N, INCX=INCX, INCY=INCY)
    _strided_buf(routine, "X", X, N, INCX)
    _strided_buf(routine, "Y", Y, N, INCY, writable=True)
    check_no_overlap(routine, ("Y", Y), ("X", X))
    _copy_cpu(N, X, INCX, Y, INCY)


# --------------------------------------------------------------------------
# mean_delta_cpu
# --------------------------------------------------------------------------
@kernel(sig(BUF, BUF, INT, INT, INT, BUF, INT))
def _mean_delta_cpu(delta, variance, batch, filters, spatial, mean_delta, dialect):
    for i in prange(filters):
        acc = np.float32(0.0)                          # mean_delta[i] = 0
        for j in range(batch):
            base = (j * filters + i) * spatial
            for k in range(spatial):
                acc += delta[base + k]                 # mean_delta[i] += delta[index]
        # mean_delta[i] *= (-1./sqrt(variance[i] + .00001f))    (hankai: sqrtf)
        mean_delta[i] = times_double(acc, mean_delta_factor(variance[i], dialect))


def mean_delta_cpu(delta, variance, batch, filters, spatial, mean_delta, *, dialect="pjreddie"):
    """``mean_delta_cpu`` (blas.c): ``mean_delta[f] = sum(delta) * (-1./sqrt(var + .00001f))``.

    Darknet's d(loss)/d(mean) omits the variance term ``dL/dvar * dvar/dmean``,
    which is zero in exact arithmetic (the deviations sum to 0) but not in float32.
    pjreddie and alexeyab: ``sqrt`` in double; hankai: ``sqrtf`` (C++'s float
    overload), then the same double division.
    """
    routine = "mean_delta_cpu"
    dialect = get_dialect(dialect, routine)
    batch, filters, spatial = _bn_dims(routine, batch, filters, spatial)
    _bn_buf(routine, "delta", delta, batch, filters, spatial)
    _ch_buf(routine, "variance", variance, filters)
    _ch_buf(routine, "mean_delta", mean_delta, filters, writable=True)
    check_no_overlap(routine, ("mean_delta", mean_delta), ("delta", delta), ("variance", variance))
    _mean_delta_cpu(delta, variance, batch, filters, spatial, mean_delta, dialect.code)


# --------------------------------------------------------------------------
# variance_delta_cpu
# --------------------------------------------------------------------------
@kernel(sig(BUF, BUF, BUF, BUF, INT, INT, INT, BUF, INT))
def _variance_delta_cpu(x, delta, mean, variance, batch, filters, spatial, variance_delta,
                        dialect):
    for i in prange(filters):
        m = mean[i]
        acc = np.float32(0.0)                          # variance_delta[i] = 0
        for j in range(batch):
            base = (j * filters + i) * spatial
            for k in range(spatial):
                # variance_delta[i] += delta[index]*(x[index] - mean[i])   (all float)
                acc += delta[base + k] * (x[base + k] - m)
        # variance_delta[i] *= -.5 * pow(variance[i] + .00001f, (float)(-3./2.))  (hankai: powf)
        variance_delta[i] = times_double(acc, variance_delta_factor(variance[i], dialect))


def variance_delta_cpu(x, delta, mean, variance, batch, filters, spatial, variance_delta, *,
                       dialect="pjreddie"):
    """``variance_delta_cpu`` (blas.c): ``sum(delta*(x-mean)) * -.5*pow(var+.00001f, -1.5)``.

    pjreddie and alexeyab: ``pow`` in double; hankai: ``powf`` (C++'s float overload,
    the C library's own), promoted to double for ``-.5 *``.
    """
    routine = "variance_delta_cpu"
    dialect = get_dialect(dialect, routine)
    batch, filters, spatial = _bn_dims(routine, batch, filters, spatial)
    _bn_buf(routine, "x", x, batch, filters, spatial)
    _bn_buf(routine, "delta", delta, batch, filters, spatial)
    _ch_buf(routine, "mean", mean, filters)
    _ch_buf(routine, "variance", variance, filters)
    _ch_buf(routine, "variance_delta", variance_delta, filters, writable=True)
    check_no_overlap(routine, ("variance_delta", variance_delta), ("x", x), ("delta", delta),
                     ("mean", mean), ("variance", variance))
    _variance_delta_cpu(x, delta, mean, variance, batch, filters, spatial, variance_delta,
                        dialect.code)


# --------------------------------------------------------------------------
# normalize_delta_cpu
# --------------------------------------------------------------------------
@kernel(sig(BUF, BUF, BUF, BUF, BUF, INT, INT, INT, BUF, INT))
def _normalize_delta_cpu(x, mean, variance, mean_delta, variance_delta,
                         batch, filters, spatial, delta, dialect):
    n = spatial * batch
    n_d = np.float64(n)                                # double / (spatial*batch)
    for f in prange(filters):
        # pjreddie: sqrt(variance[f] + .00001f); alexeyab: sqrt(variance[f]) + .00001f;
        # hankai: sqrtf(variance[f]) + .00001f, a float addition
        denom = normalize_delta_denominator(variance[f], dialect)
        m = mean[f]
        # variance_delta[f] * 2. and mean_delta[f]/(spatial*batch)
        vd2, term_mean = normalize_delta_terms(mean_delta[f], variance_delta[f], n)
        for j in range(batch):
            base = (j * filters + f) * spatial
            for k in range(spatial):
                idx = base + k
                # delta[index] = delta[index] * 1./(denominator)
                #     + variance_delta[f] * 2. * (x[index] - mean[f]) / (spatial * batch)
                #     + mean_delta[f]/(spatial*batch);
                delta[idx] = normalize_delta(delta[idx], x[idx], m, denom, vd2, n_d, term_mean)


def normalize_delta_cpu(x, mean, variance, mean_delta, variance_delta, batch, filters,
                        spatial, delta, *, dialect="pjreddie"):
    """``normalize_delta_cpu`` (blas.c): the input gradient, in place in ``delta``::

        delta = delta*1./denominator                      (float64)
              + variance_delta*2.*(x - mean)/(spatial*batch)  (float64)
              + mean_delta/(spatial*batch)                (float32 division)

    pjreddie: ``denominator = sqrt(var + .00001f)``; alexeyab: ``sqrt(var) + .00001f``;
    hankai: ``sqrtf(var) + .00001f`` (float root, float addition).  Note the biased
    ``1/(spatial*batch)`` against ``variance_cpu``'s unbiased one.
    """
    routine = "normalize_delta_cpu"
    dialect = get_dialect(dialect, routine)
    batch, filters, spatial = _bn_dims(routine, batch, filters, spatial)
    _bn_buf(routine, "x", x, batch, filters, spatial)
    for name, arr in (("mean", mean), ("variance", variance), ("mean_delta", mean_delta),
                      ("variance_delta", variance_delta)):
        _ch_buf(routine, name, arr, filters)
    _bn_buf(routine, "delta", delta, batch, filters, spatial, writable=True)
    check_no_overlap(routine, ("delta", delta), ("x", x), ("mean", mean), ("variance", variance),
                     ("mean_delta", mean_delta), ("variance_delta", variance_delta))
    _normalize_delta_cpu(x, mean, variance, mean_delta, variance_delta,
                         batch, filters, spatial, delta, dialect.code)
