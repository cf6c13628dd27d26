"""Naive references for Darknet's BN folding: the C transcribed line by line.

Same conventions as ``naive.py``: ``F32(...)`` is a C ``float`` store,
``F64(...)`` a promotion to ``double``; ``dsqrt`` is C's ``sqrt`` (double in,
double out; NaN for a negative argument, as glibc's).  Plain Python loops,
nothing compiled by Numba.

Sources: AlexeyAB/darknet src/network.c ``fuse_conv_batchnorm``; pjreddie/darknet
src/convolutional_layer.c ``denormalize_convolutional_layer`` and
src/connected_layer.c ``denormalize_connected_layer``.
"""
import numpy as np

F32, F64 = np.float32, np.float64


def dsqrt(x):
    with np.errstate(invalid="ignore"):
        return np.sqrt(F64(x))


def fuse_conv_batchnorm(l_weights, l_biases, l_scales, l_rolling_mean, l_rolling_variance,
                        l_n, l_size, l_c, l_groups):
    """The body of ``fuse_conv_batchnorm``'s loop for one layer with batch_normalize."""
    for f in range(l_n):
        # l->biases[f] = l->biases[f] - (double)l->scales[f] * l->rolling_mean[f]
        #                / (sqrt((double)l->rolling_variance[f] + .00001));
        with np.errstate(all="ignore"):
            l_biases[f] = F32(F64(l_biases[f]) - F64(l_scales[f]) * F64(l_rolling_mean[f])
                              / (dsqrt(F64(l_rolling_variance[f]) + .00001)))
            # double precomputed = l->scales[f] / (sqrt((double)l->rolling_variance[f] + .00001));
            precomputed = F64(l_scales[f]) / (dsqrt(F64(l_rolling_variance[f]) + .00001))
        filter_size = l_size * l_size * l_c // l_groups
        for i in range(filter_size):
            w_index = f * filter_size + i
            with np.errstate(all="ignore"):
                l_weights[w_index] = F32(F64(l_weights[w_index]) * precomputed)   # *= double


def denormalize_convolutional_layer(l_weights, l_biases, l_scales, l_rolling_mean,
                                    l_rolling_variance, l_n, l_size, l_c, l_groups):
    for i in range(l_n):
        with np.errstate(all="ignore"):
            # float scale = l.scales[i]/sqrt(l.rolling_variance[i] + .00001);
            scale = F32(F64(l_scales[i]) / dsqrt(F64(l_rolling_variance[i]) + .00001))
        for j in range(l_c // l_groups * l_size * l_size):
            idx = i * l_c // l_groups * l_size * l_size + j
            with np.errstate(all="ignore"):
                l_weights[idx] = F32(l_weights[idx] * scale)           # float *= float
        with np.errstate(all="ignore"):
            l_biases[i] = F32(l_biases[i] - F32(l_rolling_mean[i] * scale))
        l_scales[i] = F32(1)
        l_rolling_mean[i] = F32(0)
        l_rolling_variance[i] = F32(1)


def denormalize_connected_layer(l_weights, l_biases, l_scales, l_rolling_mean,
                                l_rolling_variance, l_outputs, l_inputs):
    for i in range(l_outputs):
        with np.errstate(all="ignore"):
            # float scale = l.scales[i]/sqrt(l.rolling_variance[i] + .000001);
            scale = F32(F64(l_scales[i]) / dsqrt(F64(l_rolling_variance[i]) + .000001))
        for j in range(l_inputs):
            with np.errstate(all="ignore"):
                l_weights[i * l_inputs + j] = F32(l_weights[i * l_inputs + j] * scale)
        with np.errstate(all="ignore"):
            l_biases[i] = F32(l_biases[i] - F32(l_rolling_mean[i] * scale))
        l_scales[i] = F32(1)
        l_rolling_mean[i] = F32(0)
        l_rolling_variance[i] = F32(1)
