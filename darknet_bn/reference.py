"""Float64 references for batch normalization's gradient, to measure Darknet against.

Everything here is plain vectorized NumPy in float64: exact arithmetic up to
float64 rounding, no Darknet bits.  Per channel ``c`` the ``m = batch*spatial``
values ``x_i`` are normalized together.  Tensors are batch-major like Darknet's
buffers (flat index ``(b*c + ch)*spatial + k``); any array with
``batch*c*spatial`` elements in that order is accepted (flat, or
``(batch, c, h, w)``) and results come back in the shape of ``x``.  ``dy`` is
the true gradient ``dL/dy`` (Darknet's ``delta`` is its negative).

Notation, per channel::

    mu   = (1/m) sum_i x_i                d_i = x_i - mu
    v    = (1/m) sum_i d_i^2              (standard BN: biased)
    s2   = (1/(m-1)) sum_i d_i^2          (Darknet's variance_cpu: unbiased)
    xhat = d * r                          r = 1/sqrt(v + eps) for standard BN
    y    = gamma*xhat + beta              g = dL/dxhat = gamma*dy

Standard BN (THNN/Caffe/MXNet, PyTorch's training mode)::

    dx     = gamma*r * (dy - mean(dy) - xhat*mean(dy*xhat))
    dgamma = sum(dy*xhat),   dbeta = sum(dy)

Darknet's forward is a different function: unbiased ``s2`` and, per fork,

    pjreddie  xhat = d / (sqrt(s2) + 1e-6)          r(s2) = 1/(sqrt(s2) + 1e-6)
    alexeyab  xhat = d / sqrt(s2 + 1e-5)            r(s2) = (s2 + 1e-5)^(-1/2)

(``1e-6``/``1e-5`` are the float32 literals ``.000001f``/``.00001f``).  For any
``xhat = d*r(S/n)`` with ``S = sum d^2`` the chain rule gives, because
``sum_i d_i = 0``::

    dx = r*(g - mean(g)) + (2*d/n) * r'(S/n) * sum(g*d)

with ``n = m`` for standard BN and ``n = m-1`` for Darknet's forward.  Darknet's
backward (``mean_delta_cpu``, ``variance_delta_cpu``, ``normalize_delta_cpu``)
instead evaluates the standard formula with ``n = m`` on the unbiased ``s2`` and
with ``eps = 1e-5`` inside the root (pjreddie) or outside it (alexeyab), i.e.
the mirror image of each fork's forward: see ``darknet_backward_formula``.
"""
import numpy as np

from ._validate import check_dim
from .c_arith import EPS, EPS_NORMALIZE_PJ
from .dialects import get_dialect

#: The float32 literals of Darknet's C (``c_arith``), as the float64 values they hold.
EPS_PJ_NORMALIZE = float(EPS_NORMALIZE_PJ)       # .000001f, pjreddie normalize_cpu
EPS_DARKNET = float(EPS)                         # .00001f, everywhere else
#: Standard BN epsilon (PyTorch's default).
EPS_STANDARD = 1e-5


# --------------------------------------------------------------------------
# arguments and layout
# --------------------------------------------------------------------------
def _dims(routine, batch, c, spatial, *, train=True):
    batch, c, spatial = (check_dim(routine, "batch", batch), check_dim(routine, "c", c),
                         check_dim(routine, "spatial", spatial))
    if train and batch * spatial < 2:
        raise ValueError(
            f"{routine}: batch*spatial = {batch * spatial} leaves one value per channel; "
            "batch statistics (and Darknet's unbiased variance) need batch*spatial >= 2")
    return batch, c, spatial


def _values(routine, name, values, batch, c, spatial):
    """``values`` as a new float64 (batch, c, spatial) array; ``batch = spatial = 1``
    (one value per channel, broadcast against tensors) also accepts one number."""
    a = np.asarray(values)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{routine}: {name} must hold real numbers, got "
                        f"{type(values).__name__} of dtype {a.dtype}")
    a = a.astype(np.float64)                        # a copy: the caller's is untouched
    if a.ndim == 0 and batch == spatial == 1:
        a = np.full(c, a)
    if a.size != batch * c * spatial:
        what = (f"one value per channel, c = {c}" if batch == spatial == 1 else
                f"batch*c*spatial = {batch}*{c}*{spatial} = {batch * c * spatial}, batch-major")
        raise ValueError(f"{routine}: {name} has {a.size} elements (shape {a.shape}); "
                         f"pass {what}")
    return a.reshape(batch, c, spatial)


def _channels(routine, c, **values):
    """Per-channel arguments as (1, c, 1) float64 arrays, in keyword order."""
    return [_values(routine, name, v, 1, c, 1) for name, v in values.items()]


def _given(routine, stats, c):
    """``stats=(mean, variance)`` as two (1, c, 1) arrays, or None."""
    if stats is not None and len(stats) != 2:
        raise ValueError(f"{routine}: stats must be a (mean, variance) pair, got {len(stats)} "
                         "items")
    return None if stats is None else _channels(routine, c, mean=stats[0], variance=stats[1])


def _out(a, like):
    """Reshape a (batch, c, spatial) result to the caller's layout of ``x``."""
    shape = np.shape(like)
    return a.reshape(shape) if len(shape) else a.reshape(-1)


def _csum(a):
    """Per-channel sum over batch and spatial positions, kept as (1, c, 1)."""
    return a.sum(axis=(0, 2), keepdims=True)


def _cmean(a):
    return a.mean(axis=(0, 2), keepdims=True)


def batch_statistics(x, batch, c, spatial, *, unbiased=False):
    """Per-channel ``(mean, variance)`` of ``x`` in float64, each of shape (c,).

    ``variance = sum (x - mean)^2 / n`` with ``n = m`` (biased, standard BN) or
    ``n = m - 1`` (``unbiased=True``, Darknet's ``variance_cpu``), ``m = batch*spatial``.
    """
    routine = "batch_statistics"
    batch, c, spatial = _dims(routine, batch, c, spatial)
    x = _values(routine, "x", x, batch, c, spatial)
    mean, var = _moments(x, unbiased)
    return mean.reshape(c), var.reshape(c)


def _moments(x, unbiased):
    m = x.shape[0] * x.shape[2]
    mean = _cmean(x)
    var = _csum((x - mean) ** 2) / (m - 1 if unbiased else m)
    return mean, var


# --------------------------------------------------------------------------
# Standard batch normalization
# --------------------------------------------------------------------------
def batchnorm_forward(x, gamma, beta, batch, c, spatial, eps=EPS_STANDARD, *, stats=None):
    """Standard BN forward: ``y = gamma*(x - mu)/sqrt(v + eps) + beta``.

    ``mu`` and ``v`` are the batch mean and the *biased* batch variance
    ``(1/m) sum (x - mu)^2`` (PyTorch's training mode).  ``stats=(mean, variance)``
    uses those per-channel values instead (inference mode: constants).
    """
    routine = "batchnorm_forward"
    batch, c, spatial = _dims(routine, batch, c, spatial, train=stats is None)
    xs = _values(routine, "x", x, batch, c, spatial)
    gamma, beta = _channels(routine, c, gamma=gamma, beta=beta)
    st = _given(routine, stats, c)
    mean, var = _moments(xs, unbiased=False) if st is None else st
    return _out(gamma * (xs - mean) / np.sqrt(var + eps) + beta, x)


def batchnorm_backward_exact(x, dy, gamma, batch, c, spatial, eps=EPS_STANDARD):
    """Exact gradient of ``batchnorm_forward`` (training mode): ``(dx, dgamma, dbeta)``.

    The compact form of THNN/Caffe/MXNet, with ``r = 1/sqrt(v + eps)``::

        dbeta  = sum(dy)
        dgamma = sum(dy * xhat)
        dx     = gamma * r * (dy - dbeta/m - xhat * dgamma/m)

    i.e. ``dy`` minus its projection on the constants and on ``xhat``, scaled.
    ``dgamma`` and ``dbeta`` have shape (c,); ``dx`` the shape of ``x``.
    """
    routine = "batchnorm_backward_exact"
    batch, c, spatial = _dims(routine, batch, c, spatial)
    xs = _values(routine, "x", x, batch, c, spatial)
    dys = _values(routine, "dy", dy, batch, c, spatial)
    gamma, = _channels(routine, c, gamma=gamma)
    m = batch * spatial
    mean, var = _moments(xs, unbiased=False)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (xs - mean) * invstd
    dbeta = _csum(dys)                                  # sum over the plane: "sum"
    dgamma = _csum(dys * xhat)                          # dot(xhat, dy) = "dotp"*invstd
    dx = gamma * invstd * (dys - dbeta / m - xhat * dgamma / m)
    return _out(dx, x), dgamma.reshape(c), dbeta.reshape(c)


def batchnorm_backward_staged(x, dy, gamma, batch, c, spatial, eps=EPS_STANDARD):
    """The same gradient as ``batchnorm_backward_exact``, by CS231N's staged chain rule.

    A second, independent implementation (the paper's derivation), with the
    term of ``dL/dmu`` that is zero in exact arithmetic kept::

        dxhat = dy * gamma
        dvar  = -1/2 * sum(dxhat * (x - mu)) * (v + eps)^(-3/2)
        dmu   = -sum(dxhat) / sqrt(v + eps)  +  dvar * (-2/m) * sum(x - mu)
        dx    = dxhat / sqrt(v + eps)  +  dvar * 2*(x - mu)/m  +  dmu/m

    Returns ``(dx, dgamma, dbeta)``.
    """
    routine = "batchnorm_backward_staged"
    batch, c, spatial = _dims(routine, batch, c, spatial)
    xs = _values(routine, "x", x, batch, c, spatial)
    dys = _values(routine, "dy", dy, batch, c, spatial)
    gamma, = _channels(routine, c, gamma=gamma)
    m = batch * spatial
    mean, var = _moments(xs, unbiased=False)
    d = xs - mean
    xhat = d / np.sqrt(var + eps)
    dgamma, dbeta = _csum(dys * xhat), _csum(dys)
    dxhat = dys * gamma
    dvar = -0.5 * _csum(dxhat * d) * (var + eps) ** -1.5
    dmu = -_csum(dxhat) / np.sqrt(var + eps) + dvar * (-2.0 / m) * _csum(d)
    term_xhat = dxhat / np.sqrt(var + eps)
    term_var = dvar * 2.0 * d / m
    term_mean = dmu / m
    return _out(term_xhat + term_var + term_mean, x), dgamma.reshape(c), dbeta.reshape(c)


# --------------------------------------------------------------------------
# Darknet's forward, and its exact derivative
# --------------------------------------------------------------------------
def _darknet_r(dialect, s2):
    """``(r, dr/ds2)`` of the dialect's normalization ``xhat = d * r(s2)``."""
    eps = float(dialect.normalize_eps)
    if dialect.normalize_eps_in_sqrt:     # (x - mean)/sqrt(var + eps)
        r = 1.0 / np.sqrt(s2 + eps)
        return r, -0.5 * r ** 3
    root = np.sqrt(s2)                    # (x - mean)/(sqrt(var) + eps)
    r = 1.0 / (root + eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        dr = -r * r / (2.0 * root)        # not differentiable at s2 = 0
    return r, dr


def darknet_forward(x, gamma, beta, batch, c, spatial, *, dialect, stats=None):
    """Darknet's forward formula in float64 (``forward_batchnorm_layer``'s math).

    ``y = gamma * (x - mu) * r(s2) + beta`` with the *unbiased* ``s2`` of
    ``variance_cpu`` and the dialect's normalization::

        pjreddie  r(s2) = 1/(sqrt(s2) + 1e-6)
        alexeyab  r(s2) = 1/sqrt(s2 + 1e-5)

    ``stats=(mean, variance)`` normalizes with those values instead (Darknet's
    inference mode with ``rolling_mean``/``rolling_variance``).
    With ``gamma=1, beta=0`` this is Darknet's ``x_norm``.
    """
    routine = "darknet_forward"
    dia = get_dialect(dialect, routine)
    batch, c, spatial = _dims(routine, batch, c, spatial, train=stats is None)
    xs = _values(routine, "x", x, batch, c, spatial)
    gamma, beta = _channels(routine, c, gamma=gamma, beta=beta)
    st = _given(routine, stats, c)
    mean, s2 = _moments(xs, unbiased=True) if st is None else st
    return _out(gamma * (xs - mean) * _darknet_r(dia, s2)[0] + beta, x)


def darknet_backward_exact(x, dy, gamma, batch, c, spatial, *, dialect):
    """Exact ``dL/dx`` of the dialect's own training-mode forward (``darknet_forward``).

    With ``d = x - mu``, ``s2 = sum d^2/(m-1)``, ``xhat = d*r(s2)``, ``g = gamma*dy``::

        term_xhat = r * g                          (through xhat's numerator)
        term_mean = -r * sum(g) / m                (through mu)
        term_var  = r'(s2) * sum(g*d) * 2*d/(m-1)  (through s2; its own mu path is 0)
        dx        = term_xhat + term_mean + term_var

    pjreddie: ``r = 1/(sqrt(s2) + 1e-6)``, ``r' = -r^2/(2 sqrt(s2))`` (undefined,
    NaN, for a constant channel); alexeyab: ``r = (s2 + 1e-5)^(-1/2)``,
    ``r' = -r^3/2``.  This is what Darknet's backward approximates.  The
    parameter gradients are exact in Darknet already: ``dgamma = sum(dy*x_norm)``
    (``backward_scale_cpu``), ``dbeta = sum(dy)`` (``backward_bias``).
    """
    routine = "darknet_backward_exact"
    dia = get_dialect(dialect, routine)
    batch, c, spatial = _dims(routine, batch, c, spatial)
    xs = _values(routine, "x", x, batch, c, spatial)
    dys = _values(routine, "dy", dy, batch, c, spatial)
    gamma, = _channels(routine, c, gamma=gamma)
    m = batch * spatial
    mean, s2 = _moments(xs, unbiased=True)
    d = xs - mean
    rr, dr = _darknet_r(dia, s2)
    g = gamma * dys
    term_xhat = rr * g
    term_mean = -rr * _csum(g) / m
    with np.errstate(invalid="ignore"):
        term_var = dr * _csum(g * d) * 2.0 * d / (m - 1)
    return _out(term_xhat + term_mean + term_var, x)


def darknet_backward_formula(x, dy, gamma, batch, c, spatial, *, dialect, mean=None,
                             variance=None, divisor="m"):
    """Darknet's backward *algorithm*, evaluated in float64 (not Darknet's bits).

    The formulas of ``mean_delta_cpu``, ``variance_delta_cpu`` and
    ``normalize_delta_cpu`` with ``g = gamma*dy`` and ``d = x - mean``::

        mean_delta     = -sum(g) / sqrt(var + 1e-5)
        variance_delta = -1/2 * sum(g*d) * (var + 1e-5)^(-3/2)
        dx = g*a + variance_delta * 2*d/n + mean_delta/m
             a = 1/sqrt(var + 1e-5)      (pjreddie)
             a = 1/(sqrt(var) + 1e-5)    (alexeyab)

    ``n = m`` as in Darknet (``divisor="m"``), or ``n = m-1`` (``divisor="m-1"``,
    the divisor that matches ``variance_cpu``, to isolate that mismatch).
    ``mean``/``variance`` (per channel) default to the exact mean and unbiased
    variance of ``x``; pass the layer's float32 ``mean``/``variance`` to evaluate
    the formula on the statistics Darknet actually had.  ``mean_delta`` omits the
    ``variance_delta * (-2/m) * sum(d)`` term, as Darknet does: zero for the exact
    mean, not for a rounded one.  Sign: ``dy`` is ``dL/dy``; Darknet, given
    ``delta = -dy``, computes the negative of this.
    """
    routine = "darknet_backward_formula"
    dia = get_dialect(dialect, routine)
    if divisor not in ("m", "m-1"):
        raise ValueError(f"{routine}: divisor must be 'm' (Darknet) or 'm-1', got {divisor!r}")
    batch, c, spatial = _dims(routine, batch, c, spatial)
    xs = _values(routine, "x", x, batch, c, spatial)
    dys = _values(routine, "dy", dy, batch, c, spatial)
    gamma, = _channels(routine, c, gamma=gamma)
    if (mean is None) != (variance is None):
        raise ValueError(f"{routine}: pass both mean and variance, or neither")
    if mean is None:
        mu, var = _moments(xs, unbiased=True)
    else:
        mu, var = _channels(routine, c, mean=mean, variance=variance)
    m = batch * spatial
    n = m if divisor == "m" else m - 1
    d = xs - mu
    g = gamma * dys
    mean_delta = -_csum(g) / np.sqrt(var + EPS_DARKNET)
    variance_delta = -0.5 * _csum(g * d) * (var + EPS_DARKNET) ** -1.5
    if dia.normalize_delta_eps_in_sqrt:
        a = 1.0 / np.sqrt(var + EPS_DARKNET)
    else:
        a = 1.0 / (np.sqrt(var) + EPS_DARKNET)
    term_xhat = g * a
    term_var = variance_delta * 2.0 * d / n
    term_mean = mean_delta / m
    return _out(term_xhat + term_var + term_mean, x)


# --------------------------------------------------------------------------
# The interview trap: mean and variance treated as constants
# --------------------------------------------------------------------------
def stats_as_constants_backward(x, dy, gamma, batch, c, spatial, eps=EPS_STANDARD, *,
                                dialect=None, stats=None):
    """``dL/dx`` when the mean and variance are treated as constants: ``g * r``.

    ``dx = gamma * dy * r`` with ``r = 1/sqrt(v + eps)`` (standard BN,
    ``dialect=None``; ``v`` biased) or the dialect's ``r(s2)`` (unbiased ``s2``;
    ``eps`` is then the dialect's own and the argument is ignored).  This is
    the wrong answer to "are mean/variance constants?" in training mode (it
    drops the projection terms of the exact gradient) and the *right* gradient
    in inference mode, where ``stats=(rolling_mean, rolling_variance)`` really
    are constants of the forward.  ``stats`` defaults to the batch statistics.
    """
    routine = "stats_as_constants_backward"
    dia = None if dialect is None else get_dialect(dialect, routine)
    batch, c, spatial = _dims(routine, batch, c, spatial, train=stats is None)
    xs = _values(routine, "x", x, batch, c, spatial)      # only its statistics matter
    dys = _values(routine, "dy", dy, batch, c, spatial)
    gamma, = _channels(routine, c, gamma=gamma)
    st = _given(routine, stats, c)
    var = _moments(xs, unbiased=dia is not None)[1] if st is None else st[1]
    rr = 1.0 / np.sqrt(var + eps) if dia is None else _darknet_r(dia, var)[0]
    return _out(gamma * dys * rr, x)


# --------------------------------------------------------------------------
# Finite differences
# --------------------------------------------------------------------------
def finite_difference_grad(f, x, h=None, *, rel_step=6e-6):
    """Gradient of a scalar function ``f`` at ``x`` by central differences, float64.

    ``grad_i = (f(x + h_i e_i) - f(x - h_i e_i)) / (2 h_i)``.  Its error is about
    ``h^2 |f'''|/6`` (truncation) plus ``eps64 |f| / h`` (rounding); the default
    step ``h = rel_step * max(std(x), max|x| * 1e-3, tiny)``, with ``rel_step`` near
    ``eps64^(1/3) = 6e-6``, balances the two for a function varying on the scale
    of ``x``'s spread.  ``h`` may be a positive number (same step everywhere).
    Costs ``2 * x.size`` calls of ``f``; returns an array shaped like ``x``.
    """
    x0 = _values("finite_difference_grad", "x", x, 1, np.size(x), 1).reshape(np.shape(x))
    if h is None:
        h = rel_step * max(float(np.std(x0)), float(np.max(np.abs(x0), initial=0)) * 1e-3,
                           1e-30)
    if not h > 0:
        raise ValueError(f"finite_difference_grad: the step h = {h!r} must be positive "
                         "(pass h > 0, or rel_step > 0)")
    flat = x0.reshape(-1)
    grad = np.empty_like(flat)
    for i in range(flat.size):
        keep = flat[i]
        xp, xm = keep + h, keep - h
        flat[i] = xp
        fp = float(f(x0))
        flat[i] = xm
        fm = float(f(x0))
        flat[i] = keep
        grad[i] = (fp - fm) / (xp - xm)          # the step actually taken, after rounding
    return grad.reshape(x0.shape)
