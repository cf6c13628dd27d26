"""The "fused" execution path of ``BatchNormLayer``: bit-identical to the "blas" path.

Dimensions::

    batch     images in the batch                  (l.batch)
    filters   channels                             (l.out_c)
    spatial   elements of one channel plane        (l.out_h * l.out_w)
    index     (b*filters + f)*spatial + k          flat, batch-major, float32
    G         channels interleaved per thread in the serial chains (LANES = 8)

The "blas" path (``batchnorm_layer._forward_blas`` / ``_backward_blas``) calls
Darknet's routines one after another, each sweeping the whole tensor.  Here one
kernel does a whole forward (or backward) and works channel by channel, so the
channel's plane set is re-read from cache rather than memory, and elementwise
chains are fused into a single pass.  Nothing is reassociated: every channel's
sums run in Darknet's order (batch j outer, spatial k inner, from +0.0f), with
Darknet's float32/float64 rules (see ``blas.py`` for each routine's C), so the
bits are those of the "blas" path, buffer for buffer, including the copies
Darknet makes (``x``, ``x_norm``, ``net.delta``).

Latency hiding.  A channel's reduction is one serial dependency chain; the one
in ``variance_cpu`` is float32 -> float64 add -> float32 on every element, about
10 cycles of latency per element.  The forward reductions therefore run ``G``
channels' chains interleaved in one loop (independent chains, each in its own
order), which keeps the FP units busy (variance_cpu: 6.4 -> 1.85 cycles/element
single-threaded).  The backward's first pass already has four independent
chains per channel (backward_bias, backward_scale, mean_delta, variance_delta
sums); it interleaves two channels (2.3 -> 1.95 cycles/element).  The input
copy to ``x`` is done in the vectorized normalize pass, not in the scalar mean
pass.  Elementwise passes are vectorized by LLVM; their cost is the float64
division C prescribes.

Rejected alternatives (kept here so they are not retried):

- Multiplying by a per-channel reciprocal instead of dividing by the
  denominator (normalize_cpu, normalize_delta_cpu's first term): after the
  rounding to float32 it differs only for quotients next to a float32 rounding
  midpoint (~1 in 2**31), so every random test passes, but it is not Darknet's
  arithmetic: ``tests/test_fused.py::test_normalize_divides_exactly_on_hard_quotients``
  and ``::test_normalize_delta_divides_exactly_on_hard_quotients`` fail with it.
- A reciprocal multiply with a rounding-boundary check and an exact fallback per
  plane (bit-identical by construction): measured no faster than the division
  on this machine (AMD Zen 4: vectorized float64 division ~0.8 cycles/element),
  so not worth its complexity.
- Replacing the division by a bit test on ``x*(1/d)`` (low 29 bits of the float64
  product away from the float32 rounding midpoint, else divide): 1.02 vs 0.83
  cycles/element single-threaded, slower than the division.
- Variance chains of 16 channels run as one vectorizable loop over channels
  (strided loads, accumulators in a buffer): 1.89 vs 1.83 cycles/element for
  the 8 scalar lanes; no gain.
- One running float32 sum for ``backward_bias`` instead of per-plane sums added
  in batch order: ``test_fused_matches_blas_random`` fails (``bias_updates``, 4 ulp).
- Computing the mean and the variance in one pass (sum and sum of squares):
  not Darknet's arithmetic; ``variance_cpu`` needs the finished mean.
- Splitting one channel's reduction across threads: changes the summation order.
- Indexing the flat buffers with ``base + k``: Numba's negative-index wraparound
  on a possibly negative int stops LLVM's vectorizer (see ``_plane``).
"""
import math

import numpy as np
from numba import prange

from ._jit import BUF, FLT, INT, helper, kernel, sig
from .dialects import PJREDDIE

BUF64 = "float64[::1]"                    # float64 scratch (per-channel denominators)

LANES = 8                                  # channels interleaved per chain loop (G)

_EPS_NORMALIZE_PJ = np.float32(0.000001)   # .000001f in pjreddie's normalize_cpu
_EPS = np.float32(0.00001)                 # .00001f everywhere else
_NEG_THREE_HALVES = np.float64(np.float32(-3.0 / 2.0))   # (float)(-3./2.)


# --------------------------------------------------------------------------
# Scalar helpers: one C statement each, shared by every kernel below
# --------------------------------------------------------------------------
@helper(inline="always")
def _var_step(acc, v, m):
    """``variance[i] += pow((x[index] - mean[i]), 2)``: float diff, double add, float store."""
    d = np.float64(v - m)
    return np.float32(np.float64(acc) + d * d)


@helper(inline="always")
def _normalize_denom(variance, dialect):
    """normalize_cpu's denominator (float64) for one channel."""
    if dialect == PJREDDIE:     # sqrt(variance[f]) + .000001f
        return math.sqrt(np.float64(variance)) + np.float64(_EPS_NORMALIZE_PJ)
    return math.sqrt(np.float64(variance + _EPS))          # sqrt(variance[f] + .00001f)


@helper(inline="always")
def _normalize_delta_denom(variance, dialect):
    """normalize_delta_cpu's denominator (float64) for one channel."""
    if dialect == PJREDDIE:     # sqrt(variance[f] + .00001f)
        return math.sqrt(np.float64(variance + _EPS))
    return math.sqrt(np.float64(variance)) + np.float64(_EPS)   # sqrt(variance[f]) + .00001f


@helper(inline="always")
def _rolling(rolling, keep, new, stat):
    """scal_cpu(keep) then axpy_cpu(new, stat) on one element: all float32."""
    r = rolling * keep
    return r + new * stat


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
def _planes8(a, batch, filters, spatial, j, f):
    """The (j, f..f+7) planes of a flat buffer, for the interleaved chains."""
    return (_plane(a, filters, spatial, j, f), _plane(a, filters, spatial, j, f + 1),
            _plane(a, filters, spatial, j, f + 2), _plane(a, filters, spatial, j, f + 3),
            _plane(a, filters, spatial, j, f + 4), _plane(a, filters, spatial, j, f + 5),
            _plane(a, filters, spatial, j, f + 6), _plane(a, filters, spatial, j, f + 7))


# --------------------------------------------------------------------------
# Forward, training: mean, variance, rolling update, normalize, x_norm, scale, bias
# --------------------------------------------------------------------------
@helper(inline="always")
def _mean_lanes(src, batch, filters, spatial, f):
    """mean_cpu sums for channels f..f+7, interleaved; writes the copy ``x = src``.

    Returns the eight float32 sums (before ``*= scale``)."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
    for j in range(batch):
        s0, s1, s2, s3, s4, s5, s6, s7 = _planes8(src, batch, filters, spatial, j, f)
        for k in range(spatial):
            v0 = s0[k]; v1 = s1[k]; v2 = s2[k]; v3 = s3[k]
            v4 = s4[k]; v5 = s5[k]; v6 = s6[k]; v7 = s7[k]
            a0 += v0; a1 += v1; a2 += v2; a3 += v3
            a4 += v4; a5 += v5; a6 += v6; a7 += v7
    return a0, a1, a2, a3, a4, a5, a6, a7


@helper(inline="always")
def _variance_lanes(src, mean, batch, filters, spatial, f):
    """variance_cpu sums for channels f..f+7, interleaved (eight independent chains)."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
    m0 = mean[f]; m1 = mean[f + 1]; m2 = mean[f + 2]; m3 = mean[f + 3]
    m4 = mean[f + 4]; m5 = mean[f + 5]; m6 = mean[f + 6]; m7 = mean[f + 7]
    for j in range(batch):
        s0, s1, s2, s3, s4, s5, s6, s7 = _planes8(src, batch, filters, spatial, j, f)
        for k in range(spatial):
            a0 = _var_step(a0, s0[k], m0)
            a1 = _var_step(a1, s1[k], m1)
            a2 = _var_step(a2, s2[k], m2)
            a3 = _var_step(a3, s3[k], m3)
            a4 = _var_step(a4, s4[k], m4)
            a5 = _var_step(a5, s5[k], m5)
            a6 = _var_step(a6, s6[k], m6)
            a7 = _var_step(a7, s7[k], m7)
    return a0, a1, a2, a3, a4, a5, a6, a7


@helper(inline="always")
def _mean_one(src, batch, filters, spatial, f):
    """mean_cpu's sum for channel f alone; writes the copy ``x = src``."""
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
            acc = _var_step(acc, sv[k], m)
    return acc


@helper(inline="always")
def _normalize_scale_bias(src, output, x, x_norm, mean, variance, scales, biases,
                          batch, filters, spatial, f, dialect):
    """One channel of normalize_cpu -> copy_cpu(x_norm) -> scale_bias -> add_bias."""
    m = mean[f]
    denom = _normalize_denom(variance[f], dialect)
    s = scales[f]
    b = biases[f]
    for j in range(batch):
        sv = _plane(src, filters, spatial, j, f)
        xv = _plane(x, filters, spatial, j, f)
        nv = _plane(x_norm, filters, spatial, j, f)
        ov = _plane(output, filters, spatial, j, f)
        for k in range(spatial):
            v = sv[k]
            xv[k] = v                                         # copy_cpu(output -> x)
            xn = np.float32(np.float64(v - m) / denom)        # normalize_cpu
            nv[k] = xn                                        # copy_cpu(output -> x_norm)
            ov[k] = xn * s + b              # scale_bias, add_bias: float*float, float+float


@kernel(sig(BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, INT, INT, INT, FLT, FLT, INT))
def _forward_train(src, output, x, x_norm, mean, variance, rolling_mean, rolling_variance,
                   scales, biases, batch, filters, spatial, keep, new, dialect):
    """forward_batchnorm_layer with net.train = 1, every channel in one kernel.

    Replaces, per channel: copy_cpu(input -> output), copy_cpu(output -> x),
    mean_cpu, variance_cpu, scal_cpu/axpy_cpu on rolling_mean and
    rolling_variance, normalize_cpu, copy_cpu(output -> x_norm), scale_bias,
    add_bias.  ``src`` is the layer input (or ``output`` itself when the data is
    already there); it is read three times (mean, variance, normalize), the later
    reads mostly from cache.  ``output`` is only written by the last pass.
    """
    mean_scale = np.float32(1.0 / (batch * spatial))        # mean_cpu: 1./(batch*spatial)
    var_scale = np.float32(1.0 / (batch * spatial - 1))     # variance_cpu: unbiased
    ngroups = (filters + LANES - 1) // LANES
    for g in prange(ngroups):
        f0 = g * LANES
        if f0 + LANES <= filters:
            s0, s1, s2, s3, s4, s5, s6, s7 = _mean_lanes(src, batch, filters, spatial, f0)
            mean[f0] = s0 * mean_scale; mean[f0 + 1] = s1 * mean_scale
            mean[f0 + 2] = s2 * mean_scale; mean[f0 + 3] = s3 * mean_scale
            mean[f0 + 4] = s4 * mean_scale; mean[f0 + 5] = s5 * mean_scale
            mean[f0 + 6] = s6 * mean_scale; mean[f0 + 7] = s7 * mean_scale
            s0, s1, s2, s3, s4, s5, s6, s7 = _variance_lanes(src, mean, batch, filters,
                                                             spatial, f0)
            variance[f0] = s0 * var_scale; variance[f0 + 1] = s1 * var_scale
            variance[f0 + 2] = s2 * var_scale; variance[f0 + 3] = s3 * var_scale
            variance[f0 + 4] = s4 * var_scale; variance[f0 + 5] = s5 * var_scale
            variance[f0 + 6] = s6 * var_scale; variance[f0 + 7] = s7 * var_scale
        else:
            for f in range(f0, filters):
                mean[f] = _mean_one(src, batch, filters, spatial, f) * mean_scale
                variance[f] = _variance_one(src, mean[f], batch, filters, spatial,
                                            f) * var_scale
        for f in range(f0, min(f0 + LANES, filters)):
            rolling_mean[f] = _rolling(rolling_mean[f], keep, new, mean[f])
            rolling_variance[f] = _rolling(rolling_variance[f], keep, new, variance[f])
            _normalize_scale_bias(src, output, x, x_norm, mean, variance, scales, biases,
                                  batch, filters, spatial, f, dialect)


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
        m = rolling_mean[f]
        denom = _normalize_denom(rolling_variance[f], dialect)
        s = scales[f]
        b = biases[f]
        for j in range(batch):
            sv = _plane(src, filters, spatial, j, f)
            ov = _plane(output, filters, spatial, j, f)
            if save_x:
                xv = _plane(x, filters, spatial, j, f)
                for k in range(spatial):
                    v = sv[k]
                    xv[k] = v
                    ov[k] = np.float32(np.float64(v - m) / denom) * s + b
            else:
                for k in range(spatial):
                    ov[k] = np.float32(np.float64(sv[k] - m) / denom) * s + b


# --------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------
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
            d = df[k]
            plane_f += d                                # backward_bias
            scale_f += d * nf[k]                        # backward_scale_cpu
            ds = d * sf                                 # scale_bias(l.delta, l.scales)
            md_f += ds                                  # mean_delta_cpu
            vd_f += ds * (xf[k] - mf)                   # variance_delta_cpu
            d = dg[k]
            plane_g += d
            scale_g += d * ng[k]
            ds = d * sg
            md_g += ds
            vd_g += ds * (xg[k] - mg)
        bias_f += plane_f
        bias_g += plane_g
    return bias_f, scale_f, md_f, vd_f, bias_g, scale_g, md_g, vd_g


@helper(inline="always")
def _backward_channel(dsrc, delta, net_delta, x, mean, variance, scales, bias_updates,
                      scale_updates, mean_delta, variance_delta, batch, filters, spatial,
                      dialect, do_backward_bias, write_net_delta, f, bias, scale, md_sum,
                      vd_sum):
    """Channel f: store the reductions, then normalize_delta_cpu (+ the net.delta copy)."""
    if do_backward_bias:
        bias_updates[f] = bias
    scale_updates[f] += scale
    var = variance[f]
    # mean_delta[i] *= (-1./sqrt(variance[i] + .00001f))
    md = np.float32(np.float64(md_sum) * (-1.0 / math.sqrt(np.float64(var + _EPS))))
    # variance_delta[i] *= -.5 * pow(variance[i] + .00001f, (float)(-3./2.))
    vd = np.float32(np.float64(vd_sum)
                    * (-0.5 * math.pow(np.float64(var + _EPS), _NEG_THREE_HALVES)))
    mean_delta[f] = md
    variance_delta[f] = vd
    # normalize_delta_cpu: reads the scaled delta, recomputed as dsrc*scales (bit-equal)
    n = spatial * batch
    n_d = np.float64(n)                                 # double / int
    n_f = np.float32(n)                                 # float / int: int becomes float
    m = mean[f]
    s = scales[f]
    denom = _normalize_delta_denom(var, dialect)
    vd2 = np.float64(vd) * 2.0                          # variance_delta[f] * 2.
    term_mean = np.float64(md / n_f)                    # float division, then promoted
    for j in range(batch):
        dv = _plane(dsrc, filters, spatial, j, f)
        xv = _plane(x, filters, spatial, j, f)
        ov = _plane(delta, filters, spatial, j, f)
        if write_net_delta:
            nv = _plane(net_delta, filters, spatial, j, f)
            for k in range(spatial):
                ds = dv[k] * s
                r = np.float32(np.float64(ds) * 1.0 / denom
                               + vd2 * np.float64(xv[k] - m) / n_d + term_mean)
                ov[k] = r
                nv[k] = r                               # copy_cpu(l.delta -> net.delta)
        else:
            for k in range(spatial):
                ds = dv[k] * s
                ov[k] = np.float32(np.float64(ds) * 1.0 / denom
                                   + vd2 * np.float64(xv[k] - m) / n_d + term_mean)


@kernel(sig(BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF,
            INT, INT, INT, INT, INT, INT))
def _backward(dsrc, delta, net_delta, x, x_norm, mean, variance, scales,
              bias_updates, scale_updates, mean_delta, variance_delta,
              batch, filters, spatial, dialect, do_backward_bias, write_net_delta):
    """backward_batchnorm_layer, two passes per channel, channels in pairs.

    Pass 1 (``_backward_sums2``) replaces copy_cpu(delta -> l.delta),
    backward_bias (when ``do_backward_bias``), backward_scale_cpu, scale_bias on
    delta, and the sums of mean_delta_cpu and variance_delta_cpu.  Pass 2
    (``_backward_channel``) replaces normalize_delta_cpu and
    copy_cpu(l.delta -> net.delta) when ``write_net_delta``.  ``dsrc`` is the
    incoming delta (or ``delta`` itself); it is read twice, the second time
    mostly from cache.
    """
    npairs = (filters + 1) // 2
    for p in prange(npairs):
        f = 2 * p
        g = min(f + 1, filters - 1)                     # g == f for an odd last channel
        bf, sf, mf, vf, bg, sg, mg, vg = _backward_sums2(
            dsrc, x_norm, x, mean, scales, bias_updates, batch, filters, spatial, f, g)
        _backward_channel(dsrc, delta, net_delta, x, mean, variance, scales, bias_updates,
                          scale_updates, mean_delta, variance_delta, batch, filters, spatial,
                          dialect, do_backward_bias, write_net_delta, f, bf, sf, mf, vf)
        if g != f:
            _backward_channel(dsrc, delta, net_delta, x, mean, variance, scales,
                              bias_updates, scale_updates, mean_delta, variance_delta, batch,
                              filters, spatial, dialect, do_backward_bias, write_net_delta,
                              g, bg, sg, mg, vg)


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


@kernel(sig(BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF64, INT, INT, FLT, FLT,
            INT))
def _forward_train_rows(src, output, x, x_norm, mean, variance, rolling_mean,
                        rolling_variance, scales, biases, denom, batch, filters, keep, new,
                        dialect):
    """``_forward_train`` for spatial == 1; ``denom`` is float64 scratch (filters)."""
    mean_scale = np.float32(1.0 / batch)               # 1./(batch*spatial)
    var_scale = np.float32(1.0 / (batch - 1))          # 1./(batch*spatial - 1)
    nblocks = (filters + ROW_BLOCK - 1) // ROW_BLOCK
    for blk in prange(nblocks):
        f0 = blk * ROW_BLOCK
        f1 = min(f0 + ROW_BLOCK, filters)
        nf = f1 - f0
        mv = mean[f0:f1]
        vv = variance[f0:f1]
        dn = denom[f0:f1]
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
                vv[i] = _var_step(vv[i], sv[i], mv[i])
        for i in range(nf):
            vv[i] = vv[i] * var_scale
            rolling_mean[f0 + i] = _rolling(rolling_mean[f0 + i], keep, new, mv[i])
            rolling_variance[f0 + i] = _rolling(rolling_variance[f0 + i], keep, new, vv[i])
            dn[i] = _normalize_denom(vv[i], dialect)
        sc = scales[f0:f1]
        bi = biases[f0:f1]
        for j in range(batch):
            lo = j * filters + f0
            sv = src[lo:lo + nf]
            xv = x[lo:lo + nf]
            nv = x_norm[lo:lo + nf]
            ov = output[lo:lo + nf]
            for i in range(nf):
                v = sv[i]
                xv[i] = v                                      # copy_cpu(output -> x)
                xn = np.float32(np.float64(v - mv[i]) / dn[i])  # normalize_cpu
                nv[i] = xn                                     # copy_cpu(output -> x_norm)
                ov[i] = xn * sc[i] + bi[i]                     # scale_bias, add_bias


@kernel(sig(BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF64, INT, INT, INT, INT))
def _forward_infer_rows(src, output, x, rolling_mean, rolling_variance, scales, biases,
                        denom, batch, filters, dialect, save_x):
    """``_forward_infer`` for spatial == 1; ``denom`` is float64 scratch (filters)."""
    nblocks = (filters + ROW_BLOCK - 1) // ROW_BLOCK
    for blk in prange(nblocks):
        f0 = blk * ROW_BLOCK
        f1 = min(f0 + ROW_BLOCK, filters)
        nf = f1 - f0
        dn = denom[f0:f1]
        rm = rolling_mean[f0:f1]
        sc = scales[f0:f1]
        bi = biases[f0:f1]
        for i in range(nf):
            dn[i] = _normalize_denom(rolling_variance[f0 + i], dialect)
        for j in range(batch):
            lo = j * filters + f0
            sv = src[lo:lo + nf]
            ov = output[lo:lo + nf]
            if save_x:
                xv = x[lo:lo + nf]
                for i in range(nf):
                    v = sv[i]
                    xv[i] = v
                    ov[i] = np.float32(np.float64(v - rm[i]) / dn[i]) * sc[i] + bi[i]
            else:
                for i in range(nf):
                    ov[i] = np.float32(np.float64(sv[i] - rm[i]) / dn[i]) * sc[i] + bi[i]


@kernel(sig(BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF, BUF64,
            INT, INT, INT, INT, INT))
def _backward_rows(dsrc, delta, net_delta, x, x_norm, mean, variance, scales,
                   bias_updates, scale_updates, mean_delta, variance_delta, acc, acc64,
                   batch, filters, dialect, do_backward_bias, write_net_delta):
    """``_backward`` for spatial == 1.  Scratch: ``acc`` float32 (2*filters: the
    bias and scale sums), ``acc64`` float64 (3*filters: normalize_delta_cpu's
    denominator, variance_delta*2., mean_delta/(spatial*batch))."""
    n_d = np.float64(batch)                            # double / int (spatial*batch)
    n_f = np.float32(batch)                            # float / int
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
            md[i] = np.float32(np.float64(md[i]) * (-1.0 / math.sqrt(np.float64(var + _EPS))))
            vd[i] = np.float32(np.float64(vd[i])
                               * (-0.5 * math.pow(np.float64(var + _EPS), _NEG_THREE_HALVES)))
            dn[i] = _normalize_delta_denom(var, dialect)
            vd2[i] = np.float64(vd[i]) * 2.0
            tm[i] = np.float64(md[i] / n_f)
        for j in range(batch):
            lo = j * filters + f0
            dv = dsrc[lo:lo + nf]
            xv = x[lo:lo + nf]
            ov = delta[lo:lo + nf]
            if write_net_delta:
                gv = net_delta[lo:lo + nf]
                for i in range(nf):
                    ds = dv[i] * sc[i]
                    r = np.float32(np.float64(ds) * 1.0 / dn[i]
                                   + vd2[i] * np.float64(xv[i] - mv[i]) / n_d + tm[i])
                    ov[i] = r
                    gv[i] = r
            else:
                for i in range(nf):
                    ds = dv[i] * sc[i]
                    ov[i] = np.float32(np.float64(ds) * 1.0 / dn[i]
                                       + vd2[i] * np.float64(xv[i] - mv[i]) / n_d + tm[i])


def _workspace(l):
    """Per-layer scratch for the spatial == 1 kernels, allocated on first use only."""
    ws = l.__dict__.get("_fused_workspace")
    if ws is None or ws[0].shape[0] != 2 * l.out_c:
        ws = (np.zeros(2 * l.out_c, np.float32), np.zeros(3 * l.out_c, np.float64))
        l._fused_workspace = ws
    return ws


# --------------------------------------------------------------------------
# The path functions registered in batchnorm_layer.PATHS["fused"]
# --------------------------------------------------------------------------
def forward_fused(l, input, train):
    """``forward_batchnorm_layer``, fused; same contract as ``_forward_blas``."""
    d, sp = l.dialect, l.out_h * l.out_w
    src = l.output if input is None else input
    if sp == 1:
        acc64 = _workspace(l)[1]
        if train:
            _forward_train_rows(src, l.output, l.x, l.x_norm, l.mean, l.variance,
                                l.rolling_mean, l.rolling_variance, l.scales, l.biases, acc64,
                                l.batch, l.out_c, d.rolling_keep, d.rolling_new, d.code)
        else:
            _forward_infer_rows(src, l.output, l.x, l.rolling_mean, l.rolling_variance,
                                l.scales, l.biases, acc64, l.batch, l.out_c, d.code,
                                int(d.copy_x_in_inference))
    elif train:
        _forward_train(src, l.output, l.x, l.x_norm, l.mean, l.variance, l.rolling_mean,
                       l.rolling_variance, l.scales, l.biases, l.batch, l.out_c, sp,
                       d.rolling_keep, d.rolling_new, d.code)
    else:
        _forward_infer(src, l.output, l.x, l.rolling_mean, l.rolling_variance, l.scales,
                       l.biases, l.batch, l.out_c, sp, d.code, int(d.copy_x_in_inference))


def backward_fused(l, delta, train, mean, variance, net_delta):
    """``backward_batchnorm_layer``, fused; same contract as ``_backward_blas``."""
    d, sp = l.dialect, l.out_h * l.out_w
    dsrc = l.delta if delta is None else delta
    write_net = net_delta is not None
    if sp == 1:
        acc, acc64 = _workspace(l)
        _backward_rows(dsrc, l.delta, net_delta if write_net else l.delta, l.x, l.x_norm, mean,
                       variance, l.scales, l.bias_updates, l.scale_updates, l.mean_delta,
                       l.variance_delta, acc, acc64, l.batch, l.out_c, d.code,
                       int(d.backward_bias_in_bn), int(write_net))
        return
    _backward(dsrc, l.delta, net_delta if write_net else l.delta, l.x, l.x_norm, mean,
              variance, l.scales, l.bias_updates, l.scale_updates, l.mean_delta,
              l.variance_delta, l.batch, l.out_c, sp, d.code, int(d.backward_bias_in_bn),
              int(write_net))
