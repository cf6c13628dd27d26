"""The "fused" execution path of ``BatchNormLayer``: bit-identical to the "blas" path.

Dimensions::

    batch     images in the batch                  (l.batch)
    filters   channels                             (l.out_c)
    spatial   elements of one channel plane        (l.out_h * l.out_w)
    index     (b*filters + f)*spatial + k          flat, batch-major, float32
    LANES     channels in the lanes of one vec8 (8); WIDE = 16, two vec8 chains

The "blas" path (``batchnorm_layer._forward_blas`` / ``_backward_blas``) calls
Darknet's routines one after another, each sweeping the whole tensor.  Here one
kernel does a whole forward (or backward) and works channel by channel, so the
channel's plane set is re-read from cache rather than memory, and elementwise
chains are fused into a single pass.  Nothing is reassociated: every channel's
sums run in Darknet's order (batch j outer, spatial k inner, from +0.0f), with
Darknet's float32/float64 rules (``c_arith``, shared with ``blas.py``), so the
bits are those of the "blas" path, buffer for buffer, including the copies
Darknet makes (``x``, ``x_norm``, ``net.delta``).

Channel groups (``darknet_bn._simd``).  A channel's reduction is one serial
dependency chain, which cannot be vectorized along the channel without
changing Darknet's summation order.  The reductions are vectorized *across*
channels instead: eight channels' chains run in the eight lanes of a ``vec8``,
their planes read eight positions at a time and transposed (8x8), so every
lane advances its own chain one position per vector operation, in its
channel's order and with the scalar C operation.  The forward statistics use
groups of 16 channels (two vec8 chains interleaved, which hides the ~13-cycle
latency of variance_cpu's float -> double -> float step); the backward's four
sums (backward_bias, backward_scale_cpu, mean_delta_cpu, variance_delta_cpu)
use groups of 8.  Positions left over after the 8-position blocks
(spatial % 8) continue each lane's chain in scalar code, and channels left over
after the groups use the scalar one-channel and channel-pair helpers.
``groups`` picks smaller groups when there are too few channels to give every
thread one.  The input copy to ``x`` is done in the vectorized normalize pass,
not in the statistics pass.  Elementwise passes are vectorized by LLVM; their
cost is the float64 arithmetic C prescribes (conversions and division).  When
``spatial*batch`` is a power of two, normalize_delta_cpu's ``/(spatial*batch)``
is a multiplication by the exact reciprocal (``c_arith.normalize_delta_by``):
the same rounding of the same real number, so the same bits.

The passes (``stats8``, ``stats16``, ``normalize_scale_bias``, ``infer_channel``,
``backward_sums8``, ``backward_channel``) are public so that ``make profile``
can time each alone (and the benchmarks' exact reference kernel can run the
inference pass alone); they are inlined into the kernels and check nothing.

Measurements, and the alternatives tried and rejected (so they are not
retried): docs/benchmarks.md.
"""
import numba
import numpy as np
from numba import prange

from ._jit import BUF, FLT, INT, helper, kernel, sig
from ._simd import LANES, vadd, vload, vmul, vsplat, vstore, vsub, vtranspose, vvar_step
from .c_arith import (BY_RECIPROCAL, DIVIDE, DOUBLE_QUOTIENT, FLOAT_QUOTIENT, exact_reciprocal,
                      mean_cpu_scale, normalize_by, normalize_delta_by, normalize_delta_terms,
                      rolling, times_double, variance_cpu_scale, variance_step)
from .dialects import (mean_delta_factor, normalize_delta_denominator, normalize_denominator,
                       normalize_quotient, variance_delta_factor)

BUF64 = "float64[::1]"                    # float64 scratch (per-channel denominators)

WIDE = 2 * LANES                           # channels per group when two vec8 chains interleave


# --------------------------------------------------------------------------
# Layout helpers (the arithmetic is in c_arith)
# --------------------------------------------------------------------------
@helper(inline="always")
def _plane(a, filters, spatial, j, f):
    """The (j, f) plane of a flat buffer as a view: ``a[(j*filters + f)*spatial :][:spatial]``.

    Loops index the view with the nonnegative ``k`` of ``range(spatial)``; indexing
    the flat buffer with ``base + k`` instead makes Numba emit negative-index
    wraparound selects, which stop LLVM from vectorizing the elementwise loops
    (normalize: 5.2 -> 1.05 cycles/element single-threaded on (16,64,28,28)).
    """
    base = (j * filters + f) * spatial
    return a[base:base + spatial]


@helper(inline="always")
def _rows8(a, base, stride):
    """Positions k..k+7 of eight consecutive channel planes, ``a[base + c*stride:][:8]``."""
    return (vload(a, base), vload(a, base + stride), vload(a, base + 2 * stride),
            vload(a, base + 3 * stride), vload(a, base + 4 * stride),
            vload(a, base + 5 * stride), vload(a, base + 6 * stride),
            vload(a, base + 7 * stride))


MEAN, VARIANCE = 0, 1                      # the two forward chains of a channel group


@helper(inline="always")
def _step(kind, acc, v, m):
    """One position of eight lanes' chains: mean_cpu's ``mean[i] += x[index]`` or
    variance_cpu's ``variance[i] += pow(x[index] - mean[i], 2)``."""
    if kind == MEAN:
        return vadd(acc, v)
    return vvar_step(acc, v, m)


@helper(inline="always")
def _tail(kind, acc, buf, src, mean, filters, spatial, j, f0, k0):
    """Continue eight lanes' chains (channels f0..f0+7) over positions k0.. of plane j,
    in scalar code (the positions after the last 8-position block)."""
    vstore(buf, 0, acc)
    for c in range(LANES):
        sv = _plane(src, filters, spatial, j, f0 + c)
        m = mean[f0 + c]
        a = buf[c]
        for k in range(k0, spatial):
            if kind == MEAN:
                a += sv[k]
            else:
                a = variance_step(a, sv[k], m)
        buf[c] = a
    return vload(buf, 0)


@helper(inline="always")
def _chains8(kind, src, m, mean, batch, filters, spatial, f0, buf):
    """The ``kind`` chain of channels f0..f0+7, one vec8 lane per channel, over every
    plane in Darknet's order (planes j = 0, 1, ...; positions k = 0, 1, ...), eight
    positions per transposed block, the plane's remainder (spatial % 8) by ``_tail``."""
    sp8 = spatial - spatial % LANES
    acc = vsplat(np.float32(0.0))
    for j in range(batch):
        base = (j * filters + f0) * spatial
        for k in range(0, sp8, LANES):
            v = vtranspose(*_rows8(src, base + k, spatial))
            for p in range(LANES):
                acc = _step(kind, acc, v[p], m)
        if sp8 < spatial:
            acc = _tail(kind, acc, buf, src, mean, filters, spatial, j, f0, sp8)
    return acc


@helper(inline="always")
def _chains16(kind, src, m, m2, mean, batch, filters, spatial, f0, buf):
    """``_chains8`` for channels f0..f0+15: two vec8 chains interleaved, which hides the
    latency of variance_cpu's float -> double -> float step."""
    sp8 = spatial - spatial % LANES
    hi = LANES * spatial                                       # plane offset of f0+8
    acc = vsplat(np.float32(0.0))
    acc2 = acc
    for j in range(batch):
        base = (j * filters + f0) * spatial
        for k in range(0, sp8, LANES):
            v = vtranspose(*_rows8(src, base + k, spatial))
            w = vtranspose(*_rows8(src, base + hi + k, spatial))
            for p in range(LANES):
                acc = _step(kind, acc, v[p], m)
                acc2 = _step(kind, acc2, w[p], m2)
        if sp8 < spatial:
            acc = _tail(kind, acc, buf, src, mean, filters, spatial, j, f0, sp8)
            acc2 = _tail(kind, acc2, buf, src, mean, filters, spatial, j, f0 + LANES, sp8)
    return acc, acc2


@helper(inline="always")
def stats8(src, mean, variance, batch, filters, spatial, f0, mean_scale, var_scale, buf):
    """mean_cpu then variance_cpu for channels f0..f0+7, one vec8 lane per channel."""
    zero = vsplat(np.float32(0.0))
    m = vmul(_chains8(MEAN, src, zero, mean, batch, filters, spatial, f0, buf),
             vsplat(mean_scale))                               # mean[i] *= scale
    vstore(mean, f0, m)
    acc = _chains8(VARIANCE, src, m, mean, batch, filters, spatial, f0, buf)
    vstore(variance, f0, vmul(acc, vsplat(var_scale)))        # variance[i] *= scale


@helper(inline="always")
def stats16(src, mean, variance, batch, filters, spatial, f0, mean_scale, var_scale, buf):
    """``stats8`` for channels f0..f0+15 (two interleaved vec8 chains)."""
    zero = vsplat(np.float32(0.0))
    acc, acc2 = _chains16(MEAN, src, zero, zero, mean, batch, filters, spatial, f0, buf)
    scale = vsplat(mean_scale)
    m = vmul(acc, scale)
    m2 = vmul(acc2, scale)
    vstore(mean, f0, m)
    vstore(mean, f0 + LANES, m2)
    acc, acc2 = _chains16(VARIANCE, src, m, m2, mean, batch, filters, spatial, f0, buf)
    scale = vsplat(var_scale)
    vstore(variance, f0, vmul(acc, scale))
    vstore(variance, f0 + LANES, vmul(acc2, scale))


@helper(inline="always")
def _mean_one(src, batch, filters, spatial, f):
    """mean_cpu's sum for channel f alone."""
    acc = np.float32(0.0)
    for j in range(batch):
        sv = _plane(src, filters, spatial, j, f)
        for k in range(spatial):
            acc += sv[k]
    return acc


@helper(inline="always")
def _variance_one(src, m, batch, filters, spatial, f):
    """variance_cpu's sum for channel f alone."""
    acc = np.float32(0.0)
    for j in range(batch):
        sv = _plane(src, filters, spatial, j, f)
        for k in range(spatial):
            acc = variance_step(acc, sv[k], m)
    return acc


@helper(inline="always")
def normalize_scale_bias(src, output, x, x_norm, mean, variance, scales, biases,
                          batch, filters, spatial, f, dialect, save_x):
    """One channel of [copy_cpu(x) when ``save_x``] -> normalize_cpu -> copy_cpu(x_norm)
    -> scale_bias -> add_bias.  The division is the fork's (``normalize_quotient``): a
    float one vectorizes twice as wide as a double one."""
    denom = normalize_denominator(variance[f], dialect)
    if normalize_quotient(dialect) == FLOAT_QUOTIENT:
        _normalize_planes(src, output, x, x_norm, mean[f], denom, scales[f], biases[f], batch,
                          filters, spatial, f, save_x, FLOAT_QUOTIENT)
    else:
        _normalize_planes(src, output, x, x_norm, mean[f], denom, scales[f], biases[f], batch,
                          filters, spatial, f, save_x, DOUBLE_QUOTIENT)


@helper(inline="always")
def _normalize_planes(src, output, x, x_norm, m, denom, s, b, batch, filters, spatial, f,
                      save_x, how):
    """``normalize_scale_bias`` over channel f's planes, ``how`` a constant
    (``c_arith.normalize_by``)."""
    for j in range(batch):
        sv = _plane(src, filters, spatial, j, f)
        nv = _plane(x_norm, filters, spatial, j, f)
        ov = _plane(output, filters, spatial, j, f)
        if save_x:
            xv = _plane(x, filters, spatial, j, f)
            for k in range(spatial):
                v = sv[k]
                xv[k] = v                                     # copy_cpu(output -> x)
                xn = normalize_by(v, m, denom, how)           # normalize_cpu
                nv[k] = xn                                    # copy_cpu(output -> x_norm)
                ov[k] = xn * s + b          # scale_bias, add_bias: float*float, float+float
        else:
            for k in range(spatial):
                xn = normalize_by(sv[k], m, denom, how)
                nv[k] = xn
                ov[k] = xn * s + b


@kernel(sig(BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, INT, INT, INT, FLT, FLT, INT,
            INT, INT))
def _forward_train(src, output, x, x_norm, mean, variance, rolling_mean, rolling_variance,
                   scales, biases, batch, filters, spatial, keep, new, dialect, group, save_x):
    """forward_batchnorm_layer with net.train = 1, every channel in one kernel.

    Replaces, per channel: copy_cpu(input -> output), copy_cpu(output -> x),
    mean_cpu, variance_cpu, scal_cpu/axpy_cpu on rolling_mean and
    rolling_variance, normalize_cpu, copy_cpu(output -> x_norm), scale_bias,
    add_bias.  ``src`` is the layer input (or ``output`` itself when the data is
    already there); it is read three times (mean, variance, normalize), the later
    reads mostly from cache.  ``output`` is only written by the last pass.
    ``group`` (8 or 16, see ``groups``) channels per parallel item: their
    statistics run as vec8 lanes; leftover channels (filters % 8) one by one.
    ``save_x`` = 0 skips Darknet's copy to ``x`` (for callers that keep the input
    themselves, such as ``darknet_bn.torch``); the other buffers' bits are the same.
    """
    mean_scale = mean_cpu_scale(batch, spatial)
    var_scale = variance_cpu_scale(batch, spatial)
    ngroups = (filters + group - 1) // group
    for g in prange(ngroups):
        f0 = g * group
        f1 = min(f0 + group, filters)
        buf = np.empty(LANES, np.float32)
        f = f0
        if f1 - f0 == WIDE:
            stats16(src, mean, variance, batch, filters, spatial, f, mean_scale, var_scale,
                     buf)
            f = f1
        while f + LANES <= f1:
            stats8(src, mean, variance, batch, filters, spatial, f, mean_scale, var_scale,
                    buf)
            f += LANES
        for c in range(f, f1):
            mean[c] = _mean_one(src, batch, filters, spatial, c) * mean_scale
            variance[c] = _variance_one(src, mean[c], batch, filters, spatial, c) * var_scale
        for c in range(f0, f1):
            rolling_mean[c] = rolling(rolling_mean[c], keep, new, mean[c])
            rolling_variance[c] = rolling(rolling_variance[c], keep, new, variance[c])
            normalize_scale_bias(src, output, x, x_norm, mean, variance, scales, biases,
                                  batch, filters, spatial, c, dialect, save_x)


# --------------------------------------------------------------------------
# Forward, inference: normalize with the rolling statistics, scale, bias
# --------------------------------------------------------------------------
@kernel(sig(BUF, BUF, BUF, BUF, BUF, BUF, BUF, INT, INT, INT, INT, INT))
def _forward_infer(src, output, x, rolling_mean, rolling_variance, scales, biases,
                   batch, filters, spatial, dialect, save_x):
    """forward_batchnorm_layer with net.train = 0, in one pass per channel.

    Replaces copy_cpu(input -> output), copy_cpu(output -> x) when ``save_x``
    (pjreddie copies x before the train/inference branch), normalize_cpu with
    rolling_mean/rolling_variance, scale_bias, add_bias.
    """
    for f in prange(filters):
        infer_channel(src, output, x, rolling_mean, rolling_variance, scales, biases, batch,
                      filters, spatial, f, dialect, save_x)


@helper(inline="always")
def infer_channel(src, output, x, rolling_mean, rolling_variance, scales, biases, batch,
                  filters, spatial, f, dialect, save_x):
    """Channel f of ``_forward_infer``: its denominator, then ``_infer_planes`` with the
    fork's division (``normalize_quotient``)."""
    denom = normalize_denominator(rolling_variance[f], dialect)
    if normalize_quotient(dialect) == FLOAT_QUOTIENT:
        _infer_planes(src, output, x, rolling_mean[f], denom, scales[f], biases[f], batch,
                      filters, spatial, f, save_x, FLOAT_QUOTIENT)
    else:
        _infer_planes(src, output, x, rolling_mean[f], denom, scales[f], biases[f], batch,
                      filters, spatial, f, save_x, DOUBLE_QUOTIENT)


@helper(inline="always")
def _infer_planes(src, output, x, m, denom, s, b, batch, filters, spatial, f, save_x, how):
    """Channel f's planes (normalize_cpu with mean ``m`` and denominator ``denom``,
    scale_bias ``s``, add_bias ``b``; the input copied to ``x`` when ``save_x``),
    ``how`` a constant (``c_arith.normalize_by``)."""
    for j in range(batch):
        sv = _plane(src, filters, spatial, j, f)
        ov = _plane(output, filters, spatial, j, f)
        if save_x:
            xv = _plane(x, filters, spatial, j, f)
            for k in range(spatial):
                v = sv[k]
                xv[k] = v
                ov[k] = normalize_by(v, m, denom, how) * s + b
        else:
            for k in range(spatial):
                ov[k] = normalize_by(sv[k], m, denom, how) * s + b


# --------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------
@helper(inline="always")
def _backward_step(d, xn, xv, m, s, plane, scale, md, vd):
    """One element of a channel's four backward chains, all float32, in the C's order."""
    plane += d                                          # backward_bias (sum_array)
    scale += d * xn                                     # backward_scale_cpu
    ds = d * s                                          # scale_bias(l.delta, l.scales)
    md += ds                                            # mean_delta_cpu
    vd += ds * (xv - m)                                 # variance_delta_cpu
    return plane, scale, md, vd


@helper(inline="always")
def _backward_sums2(dsrc, x_norm, x, mean, scales, bias_updates,
                    batch, filters, spatial, f, g):
    """The four backward reductions of channels f and g, interleaved (g == f allowed).

    Per channel: backward_bias (per-plane sums from +0.0f, added to
    bias_updates in batch order), backward_scale_cpu's sum of delta*x_norm (raw
    delta), and mean_delta_cpu's and variance_delta_cpu's sums of the *scaled*
    delta (``delta*scales`` rounded to float32, as scale_bias stores it).
    Eight independent float32 chains, each in Darknet's order.
    """
    mf = mean[f]; sf = scales[f]
    mg = mean[g]; sg = scales[g]
    bias_f = bias_updates[f]; bias_g = bias_updates[g]
    scale_f = md_f = vd_f = np.float32(0.0)
    scale_g = md_g = vd_g = np.float32(0.0)
    for j in range(batch):
        df = _plane(dsrc, filters, spatial, j, f)
        nf = _plane(x_norm, filters, spatial, j, f)
        xf = _plane(x, filters, spatial, j, f)
        dg = _plane(dsrc, filters, spatial, j, g)
        ng = _plane(x_norm, filters, spatial, j, g)
        xg = _plane(x, filters, spatial, j, g)
        plane_f = plane_g = np.float32(0.0)             # sum_array(delta + ..., size)
        for k in range(spatial):
            plane_f, scale_f, md_f, vd_f = _backward_step(df[k], nf[k], xf[k], mf, sf, plane_f,
                                                          scale_f, md_f, vd_f)
            plane_g, scale_g, md_g, vd_g = _backward_step(dg[k], ng[k], xg[k], mg, sg, plane_g,
                                                          scale_g, md_g, vd_g)
        bias_f += plane_f
        bias_g += plane_g
    return bias_f, scale_f, md_f, vd_f, bias_g, scale_g, md_g, vd_g


@helper(inline="always")
def backward_sums8(dsrc, x_norm, x, mean, scales, bias_updates, batch, filters, spatial, f0,
                    buf):
    """``_backward_sums2`` for channels f0..f0+7, one vec8 lane per channel.

    Leaves the four results in ``buf`` (32 floats): backward_bias (bias_updates
    plus the plane sums, in batch order), backward_scale_cpu's, mean_delta_cpu's
    and variance_delta_cpu's sums, 8 channels each.  Every lane runs its
    channel's four chains in Darknet's order; the remainder of each plane
    (spatial % 8) continues them in scalar code.
    """
    sp8 = spatial - spatial % LANES
    m = vload(mean, f0)
    s = vload(scales, f0)
    bias = vload(bias_updates, f0)
    zero = vsplat(np.float32(0.0))
    scale = zero
    md = zero
    vd = zero
    for j in range(batch):
        base = (j * filters + f0) * spatial
        plane = zero                                   # sum_array(delta + ..., size)
        for k in range(0, sp8, LANES):
            dd = vtranspose(*_rows8(dsrc, base + k, spatial))
            nn = vtranspose(*_rows8(x_norm, base + k, spatial))
            xx = vtranspose(*_rows8(x, base + k, spatial))
            for p in range(LANES):
                d = dd[p]
                plane = vadd(plane, d)                 # backward_bias
                scale = vadd(scale, vmul(d, nn[p]))    # backward_scale_cpu
                ds = vmul(d, s)                        # scale_bias(l.delta, l.scales)
                md = vadd(md, ds)                      # mean_delta_cpu
                vd = vadd(vd, vmul(ds, vsub(xx[p], m)))   # variance_delta_cpu
        if sp8 < spatial:
            vstore(buf, 0, plane)
            vstore(buf, LANES, scale)
            vstore(buf, 2 * LANES, md)
            vstore(buf, 3 * LANES, vd)
            for c in range(LANES):
                dv = _plane(dsrc, filters, spatial, j, f0 + c)
                nv = _plane(x_norm, filters, spatial, j, f0 + c)
                xv = _plane(x, filters, spatial, j, f0 + c)
                mc = mean[f0 + c]
                sc = scales[f0 + c]
                a_plane = buf[c]
                a_scale = buf[LANES + c]
                a_md = buf[2 * LANES + c]
                a_vd = buf[3 * LANES + c]
                for k in range(sp8, spatial):
                    a_plane, a_scale, a_md, a_vd = _backward_step(
                        dv[k], nv[k], xv[k], mc, sc, a_plane, a_scale, a_md, a_vd)
                buf[c] = a_plane
                buf[LANES + c] = a_scale
                buf[2 * LANES + c] = a_md
                buf[3 * LANES + c] = a_vd
            plane = vload(buf, 0)
            scale = vload(buf, LANES)
            md = vload(buf, 2 * LANES)
            vd = vload(buf, 3 * LANES)
        bias = vadd(bias, plane)
    vstore(buf, 0, bias)
    vstore(buf, LANES, scale)
    vstore(buf, 2 * LANES, md)
    vstore(buf, 3 * LANES, vd)


@helper(inline="always")
def backward_channel(dsrc, delta, net_delta, x, mean, variance, scales, bias_updates,
                      scale_updates, mean_delta, variance_delta, batch, filters, spatial,
                      dialect, do_backward_bias, write_net_delta, f, bias, scale, md_sum,
                      vd_sum):
    """Channel f: store the reductions, then normalize_delta_cpu (+ the net.delta copy)."""
    if do_backward_bias:
        bias_updates[f] = bias
    scale_updates[f] += scale
    var = variance[f]
    md = times_double(md_sum, mean_delta_factor(var, dialect))      # mean_delta_cpu
    vd = times_double(vd_sum, variance_delta_factor(var, dialect))  # variance_delta_cpu
    mean_delta[f] = md
    variance_delta[f] = vd
    # normalize_delta_cpu: reads the scaled delta, recomputed as dsrc*scales (bit-equal)
    n = spatial * batch
    m = mean[f]
    s = scales[f]
    denom = normalize_delta_denominator(var, dialect)
    vd2, term_mean = normalize_delta_terms(md, vd, n)
    inv_n = exact_reciprocal(n)
    if inv_n != 0.0:                            # a power-of-two count: same bits, no division
        _normalize_delta_planes(dsrc, delta, net_delta, x, batch, filters, spatial, f, m, s,
                                denom, vd2, inv_n, term_mean, write_net_delta, BY_RECIPROCAL)
    else:
        _normalize_delta_planes(dsrc, delta, net_delta, x, batch, filters, spatial, f, m, s,
                                denom, vd2, np.float64(n), term_mean, write_net_delta, DIVIDE)


@helper(inline="always")
def _normalize_delta_planes(dsrc, delta, net_delta, x, batch, filters, spatial, f, m, s,
                            denom, vd2, count, term_mean, write_net_delta, how):
    """normalize_delta_cpu over channel f's planes (+ the net.delta copy); ``count``
    and ``how`` as in ``c_arith.normalize_delta_by``."""
    for j in range(batch):
        dv = _plane(dsrc, filters, spatial, j, f)
        xv = _plane(x, filters, spatial, j, f)
        ov = _plane(delta, filters, spatial, j, f)
        if write_net_delta:
            nv = _plane(net_delta, filters, spatial, j, f)
            for k in range(spatial):
                r = normalize_delta_by(dv[k] * s, xv[k], m, denom, vd2, count, term_mean, how)
                ov[k] = r
                nv[k] = r                               # copy_cpu(l.delta -> net.delta)
        else:
            for k in range(spatial):
                ov[k] = normalize_delta_by(dv[k] * s, xv[k], m, denom, vd2, count, term_mean,
                                           how)


@kernel(sig(BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF,
            INT, INT, INT, INT, INT, INT, INT))
def _backward(dsrc, delta, net_delta, x, x_norm, mean, variance, scales,
              bias_updates, scale_updates, mean_delta, variance_delta,
              batch, filters, spatial, dialect, do_backward_bias, write_net_delta, group):
    """backward_batchnorm_layer, two passes per channel, ``group`` (8 or 2) channels per item.

    Pass 1 (``backward_sums8`` for a full group of 8, else ``_backward_sums2`` on
    pairs) replaces copy_cpu(delta -> l.delta), backward_bias (when
    ``do_backward_bias``), backward_scale_cpu, scale_bias on delta, and the sums
    of mean_delta_cpu and variance_delta_cpu.  Pass 2 (``backward_channel``)
    replaces normalize_delta_cpu and copy_cpu(l.delta -> net.delta) when
    ``write_net_delta``.  ``dsrc`` is the incoming delta (or ``delta`` itself);
    it is read twice, the second time mostly from cache.
    """
    nitems = (filters + group - 1) // group
    for it in prange(nitems):
        f0 = it * group
        f1 = min(f0 + group, filters)
        if f1 - f0 == LANES:
            buf = np.empty(4 * LANES, np.float32)
            backward_sums8(dsrc, x_norm, x, mean, scales, bias_updates, batch, filters,
                            spatial, f0, buf)
            for c in range(LANES):
                backward_channel(dsrc, delta, net_delta, x, mean, variance, scales,
                                  bias_updates, scale_updates, mean_delta, variance_delta,
                                  batch, filters, spatial, dialect, do_backward_bias,
                                  write_net_delta, f0 + c, buf[c], buf[LANES + c],
                                  buf[2 * LANES + c], buf[3 * LANES + c])
        else:
            for f in range(f0, f1, 2):
                g = min(f + 1, f1 - 1)                  # g == f for an odd last channel
                bf, sf, mf, vf, bg, sg, mg, vg = _backward_sums2(
                    dsrc, x_norm, x, mean, scales, bias_updates, batch, filters, spatial, f, g)
                backward_channel(dsrc, delta, net_delta, x, mean, variance, scales,
                                  bias_updates, scale_updates, mean_delta, variance_delta,
                                  batch, filters, spatial, dialect, do_backward_bias,
                                  write_net_delta, f, bf, sf, mf, vf)
                if g != f:
                    backward_channel(dsrc, delta, net_delta, x, mean, variance, scales,
                                      bias_updates, scale_updates, mean_delta, variance_delta,
                                      batch, filters, spatial, dialect, do_backward_bias,
                                      write_net_delta, g, bg, sg, mg, vg)


# --------------------------------------------------------------------------
# spatial == 1 (FC-like layers, [connected] with batch_normalize): channels in rows
# --------------------------------------------------------------------------
# With one element per plane, channel f of image j sits at j*filters + f: the
# channels of one image are contiguous.  The kernels below keep every channel's
# chain in Darknet's order (j = 0, 1, ...) but run the channels of a row block
# side by side, so the loop over channels vectorizes.  The per-channel running
# values live in the layer's own per-channel buffers (mean, variance,
# mean_delta, variance_delta) or in a per-layer workspace (``_workspace``),
# allocated once, never per call.  The plane-by-plane kernels above would
# spend their time slicing one-element planes (15x slower than PyTorch on
# (256,1024,1,1)).
ROW_BLOCK = 256                            # channels per prange item


@kernel(sig(BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF64, BUF, INT, INT, FLT, FLT,
            INT, INT))
def _forward_train_rows(src, output, x, x_norm, mean, variance, rolling_mean,
                        rolling_variance, scales, biases, denom, denom32, batch, filters, keep,
                        new, dialect, save_x):
    """``_forward_train`` for spatial == 1; ``denom`` (float64) and ``denom32`` (float32)
    are scratch of ``filters`` values: the denominators of a double division, or of a
    float one (which then vectorizes at the float width)."""
    mean_scale = mean_cpu_scale(batch, 1)
    var_scale = variance_cpu_scale(batch, 1)
    nblocks = (filters + ROW_BLOCK - 1) // ROW_BLOCK
    for blk in prange(nblocks):
        f0 = blk * ROW_BLOCK
        f1 = min(f0 + ROW_BLOCK, filters)
        nf = f1 - f0
        mv = mean[f0:f1]
        vv = variance[f0:f1]
        for i in range(nf):
            mv[i] = np.float32(0.0)                    # mean[i] = 0
        for j in range(batch):
            sv = src[j * filters + f0:j * filters + f1]
            for i in range(nf):
                mv[i] += sv[i]                         # mean[i] += x[index]
        for i in range(nf):
            mv[i] = mv[i] * mean_scale
            vv[i] = np.float32(0.0)
        for j in range(batch):
            sv = src[j * filters + f0:j * filters + f1]
            for i in range(nf):
                vv[i] = variance_step(vv[i], sv[i], mv[i])
        for i in range(nf):
            vv[i] = vv[i] * var_scale
            rolling_mean[f0 + i] = rolling(rolling_mean[f0 + i], keep, new, mv[i])
            rolling_variance[f0 + i] = rolling(rolling_variance[f0 + i], keep, new, vv[i])
        sc = scales[f0:f1]
        bi = biases[f0:f1]
        if normalize_quotient(dialect) == FLOAT_QUOTIENT:
            dn32 = denom32[f0:f1]
            for i in range(nf):
                dn32[i] = np.float32(normalize_denominator(vv[i], dialect))
            _normalize_rows(src, output, x, x_norm, mv, dn32, sc, bi, batch, filters, f0, nf,
                            save_x, FLOAT_QUOTIENT)
        else:
            dn = denom[f0:f1]
            for i in range(nf):
                dn[i] = normalize_denominator(vv[i], dialect)
            _normalize_rows(src, output, x, x_norm, mv, dn, sc, bi, batch, filters, f0, nf,
                            save_x, DOUBLE_QUOTIENT)


@helper(inline="always")
def _normalize_rows(src, output, x, x_norm, mv, dn, sc, bi, batch, filters, f0, nf, save_x,
                    how):
    """The normalize pass of ``_forward_train_rows`` for channels f0..f0+nf-1 of every
    row; ``mv``, ``dn``, ``sc``, ``bi``: the block's per-channel values; ``how`` a
    constant (``c_arith.normalize_by``)."""
    for j in range(batch):
        lo = j * filters + f0
        sv = src[lo:lo + nf]
        nv = x_norm[lo:lo + nf]
        ov = output[lo:lo + nf]
        if save_x:
            xv = x[lo:lo + nf]
            for i in range(nf):
                v = sv[i]
                xv[i] = v                                  # copy_cpu(output -> x)
                xn = normalize_by(v, mv[i], dn[i], how)    # normalize_cpu
                nv[i] = xn                                 # copy_cpu(output -> x_norm)
                ov[i] = xn * sc[i] + bi[i]                 # scale_bias, add_bias
        else:
            for i in range(nf):
                xn = normalize_by(sv[i], mv[i], dn[i], how)
                nv[i] = xn
                ov[i] = xn * sc[i] + bi[i]


#: Inference on rows goes row by row (each thread a contiguous run of images) when a
#: row's per-channel vectors (mean, denominator, scales, biases: 16 - 20 bytes per
#: channel) fit in L1 beside the streams; wider layers go by channel blocks.
INFER_ROW_FILTERS = 1024


@kernel(sig(BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF64, BUF, INT, INT, INT, INT))
def _forward_infer_rows(src, output, x, rolling_mean, rolling_variance, scales, biases,
                        denom, denom32, batch, filters, dialect, save_x):
    """``_forward_infer`` for spatial == 1; ``denom``/``denom32`` as in
    ``_forward_train_rows``.  Every output element is computed alone, so the order of
    the loops changes no bit.

    Up to ``INFER_ROW_FILTERS`` channels the threads split the images (one parallel
    region; the denominators first, serially).  Rejected for those widths: the
    channel blocks of the wider layers, where each thread walks a block of 256
    channels down all the images, i.e. 1 KiB pieces at a stride of one row.  With
    1024 channels that stride is exactly 4 KiB, every piece of every stream falls
    in the same cache sets and page offsets row after row, and the time depended on
    where the caller's input and the module's vectors start: 1.2 - 1.8x between
    input offsets at 256x1024 (hank-ai's float division; 1.05 - 1.14x for the C
    forks), against 1.01 - 1.09x row by row, which was also 20 - 50 % faster
    (docs/benchmarks.md, "Input placement").  Row by row loses on 64x4096 (vectors
    of 64 - 80 KiB no longer fit in L1: 1.3 - 1.5x slower), hence the bound.  A second
    parallel region for the denominators cost 20 - 30 us per call on 2 threads."""
    how = normalize_quotient(dialect)
    if filters <= INFER_ROW_FILTERS:
        if how == FLOAT_QUOTIENT:
            for f in range(filters):
                denom32[f] = np.float32(normalize_denominator(rolling_variance[f], dialect))
            for j in prange(batch):
                _infer_rows(src, output, x, rolling_mean, denom32, scales, biases, j, j + 1,
                            filters, 0, filters, save_x, FLOAT_QUOTIENT)
        else:
            for f in range(filters):
                denom[f] = normalize_denominator(rolling_variance[f], dialect)
            for j in prange(batch):
                _infer_rows(src, output, x, rolling_mean, denom, scales, biases, j, j + 1,
                            filters, 0, filters, save_x, DOUBLE_QUOTIENT)
        return
    nblocks = (filters + ROW_BLOCK - 1) // ROW_BLOCK
    for blk in prange(nblocks):
        f0 = blk * ROW_BLOCK
        f1 = min(f0 + ROW_BLOCK, filters)
        nf = f1 - f0
        rm = rolling_mean[f0:f1]
        sc = scales[f0:f1]
        bi = biases[f0:f1]
        if how == FLOAT_QUOTIENT:
            dn32 = denom32[f0:f1]
            for i in range(nf):
                dn32[i] = np.float32(normalize_denominator(rolling_variance[f0 + i], dialect))
            _infer_rows(src, output, x, rm, dn32, sc, bi, 0, batch, filters, f0, nf, save_x,
                        FLOAT_QUOTIENT)
        else:
            dn = denom[f0:f1]
            for i in range(nf):
                dn[i] = normalize_denominator(rolling_variance[f0 + i], dialect)
            _infer_rows(src, output, x, rm, dn, sc, bi, 0, batch, filters, f0, nf, save_x,
                        DOUBLE_QUOTIENT)


@helper(inline="always")
def _infer_rows(src, output, x, rm, dn, sc, bi, j0, j1, filters, f0, nf, save_x, how):
    """Images j0..j1-1 of ``_forward_infer_rows``, channels f0..f0+nf-1 (``rm``, ``dn``,
    ``sc``, ``bi`` start at channel f0), ``how`` a constant (``c_arith.normalize_by``)."""
    for j in range(j0, j1):
        lo = j * filters + f0
        sv = src[lo:lo + nf]
        ov = output[lo:lo + nf]
        if save_x:
            xv = x[lo:lo + nf]
            for i in range(nf):
                v = sv[i]
                xv[i] = v
                ov[i] = normalize_by(v, rm[i], dn[i], how) * sc[i] + bi[i]
        else:
            for i in range(nf):
                ov[i] = normalize_by(sv[i], rm[i], dn[i], how) * sc[i] + bi[i]


@kernel(sig(BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF64,
            INT, INT, INT, INT, INT))
def _backward_rows(dsrc, delta, net_delta, x, x_norm, mean, variance, scales,
                   bias_updates, scale_updates, mean_delta, variance_delta, acc, acc64,
                   batch, filters, dialect, do_backward_bias, write_net_delta):
    """``_backward`` for spatial == 1.  Scratch: ``acc`` float32 (2*filters: the
    bias and scale sums), ``acc64`` float64 (3*filters: normalize_delta_cpu's
    denominator, variance_delta*2., mean_delta/(spatial*batch))."""
    n_d = np.float64(batch)                            # (double)(spatial*batch)
    inv_n = exact_reciprocal(batch)
    nblocks = (filters + ROW_BLOCK - 1) // ROW_BLOCK
    for blk in prange(nblocks):
        f0 = blk * ROW_BLOCK
        f1 = min(f0 + ROW_BLOCK, filters)
        nf = f1 - f0
        bacc = acc[f0:f1]
        sacc = acc[filters + f0:filters + f1]
        mv = mean[f0:f1]
        sc = scales[f0:f1]
        md = mean_delta[f0:f1]
        vd = variance_delta[f0:f1]
        for i in range(nf):
            bacc[i] = bias_updates[f0 + i]
            sacc[i] = np.float32(0.0)
            md[i] = np.float32(0.0)
            vd[i] = np.float32(0.0)
        for j in range(batch):
            lo = j * filters + f0
            dv = dsrc[lo:lo + nf]
            nv = x_norm[lo:lo + nf]
            xv = x[lo:lo + nf]
            for i in range(nf):
                d = dv[i]
                bacc[i] += np.float32(0.0) + d         # backward_bias: sum_array of 1, then +=
                sacc[i] += d * nv[i]                   # backward_scale_cpu
                ds = d * sc[i]                         # scale_bias(l.delta, l.scales)
                md[i] += ds                            # mean_delta_cpu
                vd[i] += ds * (xv[i] - mv[i])          # variance_delta_cpu
        dn = acc64[f0:f1]
        vd2 = acc64[filters + f0:filters + f1]
        tm = acc64[2 * filters + f0:2 * filters + f1]
        for i in range(nf):
            if do_backward_bias:
                bias_updates[f0 + i] = bacc[i]
            scale_updates[f0 + i] += sacc[i]
            var = variance[f0 + i]
            md[i] = times_double(md[i], mean_delta_factor(var, dialect))
            vd[i] = times_double(vd[i], variance_delta_factor(var, dialect))
            dn[i] = normalize_delta_denominator(var, dialect)
            vd2[i], tm[i] = normalize_delta_terms(md[i], vd[i], batch)
        if inv_n != 0.0:                       # a power-of-two batch: same bits, no division
            _normalize_delta_rows(dsrc, delta, net_delta, x, mv, sc, dn, vd2, tm, batch,
                                  filters, f0, nf, inv_n, write_net_delta, BY_RECIPROCAL)
        else:
            _normalize_delta_rows(dsrc, delta, net_delta, x, mv, sc, dn, vd2, tm, batch,
                                  filters, f0, nf, n_d, write_net_delta, DIVIDE)


@helper(inline="always")
def _normalize_delta_rows(dsrc, delta, net_delta, x, mv, sc, dn, vd2, tm, batch, filters,
                          f0, nf, count, write_net_delta, how):
    """normalize_delta_cpu (+ the net.delta copy) for channels f0..f0+nf-1 of every row;
    ``mv``, ``sc``, ``dn``, ``vd2``, ``tm``: the block's per-channel values."""
    for j in range(batch):
        lo = j * filters + f0
        dv = dsrc[lo:lo + nf]
        xv = x[lo:lo + nf]
        ov = delta[lo:lo + nf]
        if write_net_delta:
            gv = net_delta[lo:lo + nf]
            for i in range(nf):
                r = normalize_delta_by(dv[i] * sc[i], xv[i], mv[i], dn[i], vd2[i], count, tm[i],
                                       how)
                ov[i] = r
                gv[i] = r
        else:
            for i in range(nf):
                ov[i] = normalize_delta_by(dv[i] * sc[i], xv[i], mv[i], dn[i], vd2[i], count,
                                           tm[i], how)


def groups(filters):
    """Channels per parallel item, ``(forward statistics, backward sums)``.

    Two interleaved vec8 chains (16 channels) are the fastest forward
    statistics, and a vec8 of 8 channels the fastest backward sums, as long as
    every thread still gets a group; with fewer channels, smaller groups keep
    both cores busy (8 channels, and pairs of channels in the backward).  Only
    the speed depends on this choice, never the bits (every channel's chains
    keep their order); ``tests/test_fused.py`` checks each choice against the
    blas path.
    """
    threads = numba.get_num_threads()
    forward = WIDE if filters >= WIDE * threads else LANES
    backward = LANES if filters >= LANES * threads else 2
    return forward, backward


# --------------------------------------------------------------------------
# The kernel API: flat buffers, a Dialect, a Workspace
# --------------------------------------------------------------------------
# The three functions below are the fused path's public entry points, called by
# ``BatchNormLayer``, ``darknet_bn.torch`` and the benchmarks.  They pick the
# kernel layout (planes, or rows when spatial == 1) and the channel groups, and
# take their scratch space from the caller's ``Workspace``.  They do not check
# their arguments: every buffer must be a C-contiguous float32 numpy array of
# the size named below, the output buffers disjoint from the inputs (except
# where an input is the output itself, as noted), and ``dialect`` a built-in
# ``Dialect``, and the flags (``save_x``, ``do_backward_bias``, ``write_net_delta``)
# ints 0 or 1 (the kernels are compiled for int64 flags: a bool would compile
# another specialization).  The callers validate first (``BatchNormLayer``, the torch ops);
# checking on every call would cost the small shapes their speed.  A wrong
# size reads or writes out of bounds.
#
#   tensors      batch*filters*spatial floats: src, output, x, x_norm, dsrc, delta, net_delta
#   per channel  filters floats: mean, variance, rolling_*, scales, biases, *_updates, *_delta
class Workspace:
    """Scratch space for the kernels beyond the caller's buffers (the spatial == 1
    kernels' per-channel accumulators and denominators).  It grows to the largest
    channel count it has served and is reused: nothing is allocated per call once
    grown.  One workspace serves one call at a time (one per layer, one per thread)."""

    __slots__ = ("acc", "acc64")

    def __init__(self):
        self.acc = np.zeros(0, np.float32)
        self.acc64 = np.zeros(0, np.float64)

    def rows(self, filters):
        """``(acc, acc64)``: float32 scratch of ``2*filters`` and float64 of ``3*filters``."""
        if self.acc.shape[0] < 2 * filters:
            self.acc = np.zeros(2 * filters, np.float32)
            self.acc64 = np.zeros(3 * filters, np.float64)
        return self.acc[:2 * filters], self.acc64[:3 * filters]


@kernel(sig(BUF, BUF64, INT, INT))
def _normalize_denominators(variance, out, filters, dialect):
    for f in prange(filters):
        out[f] = normalize_denominator(variance[f], dialect)


def normalize_denominators(variance, out, dialect):
    """normalize_cpu's per-channel denominators, in double, into ``out`` (float64,
    ``len(variance)``): what the inference kernel divides by (the derivative of the
    eval function needs them)."""
    _normalize_denominators(variance, out, variance.shape[0], dialect.code)


def forward_train(src, output, x, x_norm, mean, variance, rolling_mean, rolling_variance,
                  scales, biases, batch, filters, spatial, keep, new, dialect, workspace,
                  save_x):
    """forward_batchnorm_layer with net.train = 1 (see ``_forward_train``): writes
    ``output``, ``x`` (when ``save_x``), ``x_norm``, ``mean``, ``variance`` and the
    rolling statistics (``scal_cpu(keep)`` then ``axpy_cpu(new)``, float32 factors).
    ``src`` is the input, or ``output`` itself when the data is already there."""
    if spatial == 1:
        acc, acc64 = workspace.rows(filters)
        _forward_train_rows(src, output, x, x_norm, mean, variance, rolling_mean,
                            rolling_variance, scales, biases, acc64, acc, batch, filters, keep,
                            new, dialect.code, save_x)
    else:
        _forward_train(src, output, x, x_norm, mean, variance, rolling_mean, rolling_variance,
                       scales, biases, batch, filters, spatial, keep, new, dialect.code,
                       groups(filters)[0], save_x)


def forward_infer(src, output, x, rolling_mean, rolling_variance, scales, biases, batch,
                  filters, spatial, dialect, workspace, save_x):
    """forward_batchnorm_layer with net.train = 0 (see ``_forward_infer``): writes
    ``output`` and, when ``save_x``, ``x``.  ``src`` may be ``output`` itself."""
    if spatial == 1:
        acc, acc64 = workspace.rows(filters)
        _forward_infer_rows(src, output, x, rolling_mean, rolling_variance, scales, biases,
                            acc64, acc, batch, filters, dialect.code, save_x)
    else:
        _forward_infer(src, output, x, rolling_mean, rolling_variance, scales, biases, batch,
                       filters, spatial, dialect.code, save_x)


def backward(dsrc, delta, net_delta, x, x_norm, mean, variance, scales, bias_updates,
             scale_updates, mean_delta, variance_delta, batch, filters, spatial, dialect,
             workspace, do_backward_bias, write_net_delta):
    """backward_batchnorm_layer (see ``_backward``): writes ``delta`` (and ``net_delta``
    when ``write_net_delta``; pass ``delta`` there otherwise), ``mean_delta``,
    ``variance_delta``, adds to ``scale_updates`` and, when ``do_backward_bias``, to
    ``bias_updates``.  ``dsrc`` is the incoming gradient, or ``delta`` itself;
    ``mean``/``variance`` the statistics the backward uses."""
    if spatial == 1:
        acc, acc64 = workspace.rows(filters)
        _backward_rows(dsrc, delta, net_delta, x, x_norm, mean, variance, scales, bias_updates,
                       scale_updates, mean_delta, variance_delta, acc, acc64, batch, filters,
                       dialect.code, do_backward_bias, write_net_delta)
    else:
        _backward(dsrc, delta, net_delta, x, x_norm, mean, variance, scales, bias_updates,
                  scale_updates, mean_delta, variance_delta, batch, filters, spatial,
                  dialect.code, do_backward_bias, write_net_delta, groups(filters)[1])


# --------------------------------------------------------------------------
# Where a fresh store stream starts (4K aliasing)
# --------------------------------------------------------------------------
# The elementwise passes load one array (the caller's input or delta) and store
# others at the same index.  When a stored array starts a little *after* a loaded
# one in a 4 KiB page (0 < store - load < ~700 bytes, mod 4 KiB), a load is held
# behind an unrelated earlier store whose address has the same low 12 bits (4K
# aliasing): the same kernel took up to 1.2 - 1.4x as long (docs/benchmarks.md,
# "Input placement").  Arrays the kernels allocate themselves (the torch ops' fresh
# outputs, their x_norm scratch) therefore start half a page away from the arrays
# they are computed from.  Buffers a user may hold views of are never moved.
PAGE_BYTES = 4096
_PAGE_FLOATS = PAGE_BYTES // 4
_LINE = 64                                 # bytes: every placed start is cache-line aligned


def far_offset(loads):
    """The page offset (bytes, a multiple of 64) farthest, around the 4 KiB page, from
    every page offset in ``loads`` (the arrays a pass loads): the middle of the largest
    gap between them; half a page after a single one."""
    if len(loads) == 1:
        return (loads[0] + PAGE_BYTES // 2) % PAGE_BYTES // _LINE * _LINE
    points = sorted({offset % PAGE_BYTES for offset in loads})
    gaps = [((points[(i + 1) % len(points)] - p) % PAGE_BYTES or PAGE_BYTES, p)
            for i, p in enumerate(points)]
    gap, start = max(gaps)
    return (start + gap // 2) % PAGE_BYTES // _LINE * _LINE


def page_offset(address):
    """``address % 4096``: where an address falls in its 4 KiB page."""
    return address % PAGE_BYTES


class PlacedBuffer:
    """A reusable float32 buffer whose views can start at any page offset: it keeps
    one page of slack and hands out ``view(n, offset)``.  Grows to the largest ``n``
    asked for; views from before a growth stay valid (they keep the old memory)."""

    __slots__ = ("raw",)

    def __init__(self):
        self.raw = np.empty(0, np.float32)

    def view(self, n, offset):
        if self.raw.shape[0] < n + _PAGE_FLOATS:
            self.raw = np.empty(n + _PAGE_FLOATS, np.float32)
        return placed_view(self.raw, n, offset)


@helper
def data_address(array):
    """The address of ``array``'s first element: ``__array_interface__["data"][0]`` at
    a fifth of its cost (0.3 against 1.6 us; the module's eval path asks on every call)."""
    return array.ctypes.data


def placed_view(raw, n, offset):
    """``n`` floats of ``raw`` (which has at least ``n + 1024``) starting at page
    offset ``offset`` bytes (a multiple of 4)."""
    skip = (offset - data_address(raw)) % PAGE_BYTES // 4
    return raw[skip:skip + n]


def placed_empty(n, offset):
    """A new float32 array of ``n`` elements starting at page offset ``offset`` (one
    page of slack; numpy's allocation, so large arrays get transparent huge pages)."""
    return placed_view(np.empty(n + _PAGE_FLOATS, np.float32), n, offset)
