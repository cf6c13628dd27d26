"""The NumPy CS231N batch norm (float32), the baseline a plain NumPy port reaches.

``batchnorm_forward``/``batchnorm_backward`` of the CS231N assignment, written
for (N, C, H, W) tensors (statistics over N, H, W) with the usual vectorized
NumPy expressions.  Not bit-compatible with Darknet (different summation order,
biased variance, exact d(mean)); it is here only as a speed reference.
"""
import numpy as np

AXES = (0, 2, 3)


def _bc(v):
    return v.reshape(1, -1, 1, 1)


def forward_train(x, gamma, beta, running_mean, running_var, momentum=0.99, eps=1e-5):
    mu = x.mean(axis=AXES)
    var = x.var(axis=AXES)
    std = np.sqrt(var + np.float32(eps))
    x_hat = (x - _bc(mu)) / _bc(std)
    out = _bc(gamma) * x_hat + _bc(beta)
    running_mean *= np.float32(momentum)
    running_mean += np.float32(1 - momentum) * mu
    running_var *= np.float32(momentum)
    running_var += np.float32(1 - momentum) * var
    return out, (x_hat, gamma, std)


def backward(dout, cache):
    x_hat, gamma, std = cache
    m = dout.size // dout.shape[1]
    dbeta = dout.sum(axis=AXES)
    dgamma = (dout * x_hat).sum(axis=AXES)
    dx_hat = dout * _bc(gamma)
    dx = (_bc(np.float32(1.0) / std) / np.float32(m)) * (
        np.float32(m) * dx_hat - _bc(dx_hat.sum(axis=AXES))
        - x_hat * _bc((dx_hat * x_hat).sum(axis=AXES)))
    return dx, dgamma, dbeta


def forward_infer(x, gamma, beta, running_mean, running_var, eps=1e-5):
    std = np.sqrt(running_var + np.float32(eps))
    return _bc(gamma) * (x - _bc(running_mean)) / _bc(std) + _bc(beta)
