"""Naive references: Darknet's C transcribed line by line into plain Python.

Slow and obviously correct: the same loops, the same index expressions, the same
in-place writes to array elements as the C, and every C type promotion written
out with NumPy scalars:

    F32(...)   a C ``float`` store (round to float32)
    F64(...)   a promotion to ``double`` (exact)
    f32 op f32 stays float32 in NumPy scalar arithmetic, as in C on x86-64 SSE;
    math.sqrt / math.pow take and return double, like C's sqrt / pow.

Sources: pjreddie/darknet src/blas.c, convolutional_layer.c, batchnorm_layer.c,
utils.c; AlexeyAB/darknet where it differs (marked ``alexeyab``); hank-ai/darknet
(``hankai``): AlexeyAB's lines compiled as C++, where an unqualified ``sqrt`` or
``pow`` of a ``float`` is the float overload (``sqrtf``: float32 NumPy square root,
correctly rounded like SSE's ``sqrtss``; ``powf``: the C library's own, called
through ctypes), and ``float / float`` is a float32 NumPy division.
Everything here runs in the Python interpreter; nothing is compiled by Numba.
"""
import ctypes
import ctypes.util
import math

import numpy as np

F32, F64 = np.float32, np.float64

#: Forks whose layer code is AlexeyAB's (hankai: the same lines, compiled as C++).
ALEXEYAB_FLOW = ("alexeyab", "hankai")

_LIBM = ctypes.CDLL(ctypes.util.find_library("m"))
_LIBM.powf.restype = ctypes.c_float
_LIBM.powf.argtypes = (ctypes.c_float, ctypes.c_float)


def sqrtf(v):
    """C++'s ``sqrt(float)``: a float32 square root (IEEE, correctly rounded)."""
    return np.sqrt(F32(v))


def powf(x, y):
    """C++'s ``pow(float, float)``: the C library's ``powf`` (not correctly rounded)."""
    return F32(_LIBM.powf(F32(x), F32(y)))


# ---------------------------------------------------------------- blas.c
def mean_cpu(x, batch, filters, spatial, mean):
    scale = F32(1. / (batch * spatial))                 # float scale = 1./(batch * spatial);
    for i in range(filters):
        mean[i] = F32(0)
        for j in range(batch):
            for k in range(spatial):
                index = j * filters * spatial + i * spatial + k
                mean[i] = F32(mean[i] + x[index])        # mean[i] += x[index];
        mean[i] = F32(mean[i] * scale)                   # mean[i] *= scale;


def variance_cpu(x, mean, batch, filters, spatial, variance):
    scale = F32(1. / (batch * spatial - 1))
    for i in range(filters):
        variance[i] = F32(0)
        for j in range(batch):
            for k in range(spatial):
                index = j * filters * spatial + i * spatial + k
                # variance[i] += pow((x[index] - mean[i]), 2);
                diff = F32(x[index] - mean[i])
                variance[i] = F32(F64(variance[i]) + math.pow(F64(diff), 2))
        variance[i] = F32(variance[i] * scale)


def normalize_cpu(x, mean, variance, batch, filters, spatial, dialect="pjreddie"):
    for b in range(batch):
        for f in range(filters):
            for i in range(spatial):
                index = b * filters * spatial + f * spatial + i
                diff = F64(F32(x[index] - mean[f]))
                if dialect == "pjreddie":
                    # x[index] = (x[index] - mean[f])/(sqrt(variance[f]) + .000001f);
                    x[index] = F32(diff / (math.sqrt(F64(variance[f])) + F64(F32(.000001))))
                elif dialect == "hankai":
                    # the same line in C++: sqrtss, then divss (float / float)
                    x[index] = F32(x[index] - mean[f]) / sqrtf(F32(variance[f] + F32(.00001)))
                else:
                    # x[index] = (x[index] - mean[f])/(sqrt(variance[f] + .00001f));
                    x[index] = F32(diff / math.sqrt(F64(F32(variance[f] + F32(.00001)))))


def axpy_cpu(N, ALPHA, X, INCX, Y, INCY):
    ALPHA = F32(ALPHA)
    for i in range(N):
        Y[i * INCY] = F32(Y[i * INCY] + F32(ALPHA * X[i * INCX]))


def scal_cpu(N, ALPHA, X, INCX):
    ALPHA = F32(ALPHA)
    for i in range(N):
        X[i * INCX] = F32(X[i * INCX] * ALPHA)


def copy_cpu(N, X, INCX, Y, INCY):
    for i in range(N):
        Y[i * INCY] = X[i * INCX]


def mean_delta_cpu(delta, variance, batch, filters, spatial, mean_delta, dialect="pjreddie"):
    for i in range(filters):
        mean_delta[i] = F32(0)
        for j in range(batch):
            for k in range(spatial):
                index = j * filters * spatial + i * spatial + k
                mean_delta[i] = F32(mean_delta[i] + delta[index])
        # mean_delta[i] *= (-1./sqrt(variance[i] + .00001f));
        if dialect == "hankai":         # sqrtf, then the double division
            root = F64(sqrtf(F32(variance[i] + F32(.00001))))
        else:
            root = math.sqrt(F64(F32(variance[i] + F32(.00001))))
        mean_delta[i] = F32(F64(mean_delta[i]) * (-1. / root))


def variance_delta_cpu(x, delta, mean, variance, batch, filters, spatial, variance_delta,
                       dialect="pjreddie"):
    for i in range(filters):
        variance_delta[i] = F32(0)
        for j in range(batch):
            for k in range(spatial):
                index = j * filters * spatial + i * spatial + k
                # variance_delta[i] += delta[index]*(x[index] - mean[i]);
                prod = F32(delta[index] * F32(x[index] - mean[i]))
                variance_delta[i] = F32(variance_delta[i] + prod)
        # variance_delta[i] *= -.5 * pow(variance[i] + .00001f, (float)(-3./2.));
        if dialect == "hankai":         # pow(float, float) is powf in C++
            factor = -.5 * F64(powf(F32(variance[i] + F32(.00001)), F32(-3. / 2.)))
        else:
            factor = -.5 * math.pow(F64(F32(variance[i] + F32(.00001))), F64(F32(-3. / 2.)))
        variance_delta[i] = F32(F64(variance_delta[i]) * factor)


def normalize_delta_cpu(x, mean, variance, mean_delta, variance_delta, batch, filters,
                        spatial, delta, dialect="pjreddie"):
    for j in range(batch):
        for f in range(filters):
            for k in range(spatial):
                index = j * filters * spatial + f * spatial + k
                if dialect == "pjreddie":   # delta[index] * 1./(sqrt(variance[f] + .00001f))
                    first = F64(delta[index]) * 1. / math.sqrt(F64(F32(variance[f] + F32(.00001))))
                elif dialect == "hankai":   # delta[index] * 1./(sqrtf(variance[f]) + .00001f)
                    first = F64(delta[index]) * 1. / F64(F32(sqrtf(variance[f]) + F32(.00001)))
                else:                       # delta[index] * 1./(sqrt(variance[f]) + .00001f)
                    first = F64(delta[index]) * 1. / (math.sqrt(F64(variance[f])) + F64(F32(.00001)))
                # + variance_delta[f] * 2. * (x[index] - mean[f]) / (spatial * batch)
                second = F64(variance_delta[f]) * 2. * F64(F32(x[index] - mean[f])) / F64(spatial * batch)
                # + mean_delta[f]/(spatial*batch): float / int -> float
                third = F64(F32(mean_delta[f] / F32(spatial * batch)))
                delta[index] = F32(first + second + third)


# ------------------------------------------------- convolutional_layer.c
def scale_bias(output, scales, batch, n, size):
    for b in range(batch):
        for i in range(n):
            for j in range(size):
                output[(b * n + i) * size + j] = F32(output[(b * n + i) * size + j] * scales[i])


def add_bias(output, biases, batch, n, size):
    for b in range(batch):
        for i in range(n):
            for j in range(size):
                output[(b * n + i) * size + j] = F32(output[(b * n + i) * size + j] + biases[i])


def sum_array(a, n, start=0):                         # utils.c
    s = F32(0)
    for i in range(n):
        s = F32(s + a[start + i])
    return s


def backward_bias(bias_updates, delta, batch, n, size):
    for b in range(batch):
        for i in range(n):
            bias_updates[i] = F32(bias_updates[i] + sum_array(delta, size, size * (i + b * n)))


# ---------------------------------------------------- batchnorm_layer.c
def backward_scale_cpu(x_norm, delta, batch, n, size, scale_updates):
    for f in range(n):
        s = F32(0)
        for b in range(batch):
            for i in range(size):
                index = i + size * (f + n * b)
                s = F32(s + F32(delta[index] * x_norm[index]))
        scale_updates[f] = F32(scale_updates[f] + s)


class Layer:
    """The C struct: plain float32 arrays with Darknet's field names."""

    def __init__(self, batch, w, h, c, fork, layer_type):
        self.batch, self.out_w, self.out_h, self.out_c = batch, w, h, c
        self.outputs = w * h * c
        self.fork, self.type = fork, layer_type
        n = batch * self.outputs
        for name in ("output", "delta", "x", "x_norm"):
            setattr(self, name, np.zeros(n, np.float32))
        for name in ("mean", "variance", "rolling_mean", "rolling_variance", "scales", "biases",
                     "scale_updates", "bias_updates", "mean_delta", "variance_delta"):
            setattr(self, name, np.zeros(c, np.float32))
        self.scales[:] = 1


def forward_batchnorm_layer(l, net_input, train):
    """pjreddie and AlexeyAB (and hank-ai) ``forward_batchnorm_layer`` (CPU), side by side."""
    n, sp = l.outputs * l.batch, l.out_h * l.out_w
    # [batchnorm]: copy_cpu(net.input -> l.output); [convolutional]: the conv output
    copy_cpu(n, net_input, 1, l.output, 1)
    if l.fork == "pjreddie":
        copy_cpu(n, l.output, 1, l.x, 1)
    if train:
        mean_cpu(l.output, l.batch, l.out_c, sp, l.mean)
        variance_cpu(l.output, l.mean, l.batch, l.out_c, sp, l.variance)
        keep, new = (.99, .01) if l.fork == "pjreddie" else (.9, .1)
        scal_cpu(l.out_c, keep, l.rolling_mean, 1)
        axpy_cpu(l.out_c, new, l.mean, 1, l.rolling_mean, 1)
        scal_cpu(l.out_c, keep, l.rolling_variance, 1)
        axpy_cpu(l.out_c, new, l.variance, 1, l.rolling_variance, 1)
        if l.fork in ALEXEYAB_FLOW:
            copy_cpu(n, l.output, 1, l.x, 1)
        normalize_cpu(l.output, l.mean, l.variance, l.batch, l.out_c, sp, l.fork)
        copy_cpu(n, l.output, 1, l.x_norm, 1)
    else:
        normalize_cpu(l.output, l.rolling_mean, l.rolling_variance, l.batch, l.out_c, sp, l.fork)
    scale_bias(l.output, l.scales, l.batch, l.out_c, sp)
    add_bias(l.output, l.biases, l.batch, l.out_c, sp)


def backward_batchnorm_layer(l, delta_in, train, net_delta):
    """pjreddie and AlexeyAB (and hank-ai) ``backward_batchnorm_layer`` (CPU), side by side."""
    n, sp = l.outputs * l.batch, l.out_h * l.out_w
    copy_cpu(n, delta_in, 1, l.delta, 1)
    mean, variance = l.mean, l.variance
    if l.fork == "pjreddie":
        if not train:
            mean, variance = l.rolling_mean, l.rolling_variance
        backward_bias(l.bias_updates, l.delta, l.batch, l.out_c, sp)
    backward_scale_cpu(l.x_norm, l.delta, l.batch, l.out_c, sp, l.scale_updates)
    scale_bias(l.delta, l.scales, l.batch, l.out_c, sp)
    mean_delta_cpu(l.delta, variance, l.batch, l.out_c, sp, l.mean_delta, l.fork)
    variance_delta_cpu(l.x, l.delta, mean, variance, l.batch, l.out_c, sp, l.variance_delta,
                       l.fork)
    normalize_delta_cpu(l.x, mean, variance, l.mean_delta, l.variance_delta, l.batch, l.out_c,
                        sp, l.delta, l.fork)
    if l.type == "batchnorm":
        copy_cpu(n, l.delta, 1, net_delta, 1)


def update_batchnorm_layer(l, batch, learning_rate, momentum, decay):
    """AlexeyAB ``update_batchnorm_layer`` = the BN part of ``update_convolutional_layer``.

    pjreddie has no update for a standalone [batchnorm] layer on CPU.
    """
    if l.fork == "pjreddie" and l.type == "batchnorm":
        return
    rate = F32(F32(learning_rate) / F32(batch))          # learning_rate / batch
    axpy_cpu(l.out_c, rate, l.bias_updates, 1, l.biases, 1)
    scal_cpu(l.out_c, momentum, l.bias_updates, 1)
    axpy_cpu(l.out_c, rate, l.scale_updates, 1, l.scales, 1)
    scal_cpu(l.out_c, momentum, l.scale_updates, 1)
