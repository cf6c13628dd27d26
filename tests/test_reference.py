"""The float64 references (darknet_bn.reference) against finite differences and torch.

Tolerances (float64 only; nothing here is a Darknet bit pattern):

- Finite differences: a central difference with step h has truncation error
  ~ (h/sigma)^2 relative to the gradient (the forward varies on the scale sigma,
  the channel's spread) and rounding error ~ eps64 * |error of L| / h, where L =
  sum(dy*y) is a sum of n terms whose rounding grows like sqrt(n) * (1 + max|x|/sigma)
  (x - mean cancels max|x|/sigma digits).  ``fd_tolerance`` is 10x their sum.
- Two float64 evaluations of the same gradient (compact vs staged, torch vs
  NumPy) differ by reduction-order rounding: ``16 * (m + 10) * eps64``.
Errors are measured against ``gradient_scale``, the norm of ``gamma*dy*r``, the
largest term of every formula: the exact dx can cancel to almost nothing (at
m = 2 it is ~0), so a norm of dx itself would not bound the rounding.
"""
import numpy as np
import pytest

from darknet_bn import reference as R

EPS64 = np.finfo(np.float64).eps
DIALECTS = ("pjreddie", "alexeyab", "hankai")

#: (batch, c, spatial, location, scale) of x = location + scale*N(0, 1)
CASES = [
    pytest.param(2, 3, 1, 0.0, 1.0, id="m2"),
    pytest.param(1, 2, 7, 0.0, 1.0, id="batch1-m7"),
    pytest.param(3, 2, 5, 0.0, 1.0, id="m15"),
    pytest.param(4, 2, 4, 100.0, 1.0, id="offset-m16"),
    pytest.param(3, 2, 5, 0.0, 1e-3, id="tiny-m15"),
]


def make(batch, c, spatial, loc, scale, seed=0):
    rng = np.random.default_rng(seed)
    x = loc + scale * rng.standard_normal((batch, c, spatial))
    dy = rng.standard_normal((batch, c, spatial))
    gamma = rng.uniform(0.5, 1.5, c)
    beta = rng.standard_normal(c)
    return x, dy, gamma, beta


def sigma(x):
    return float(x.std(axis=(0, 2)).min())


def gradient_scale(x, dy, gamma, r):
    return float(np.linalg.norm(gamma.reshape(1, -1, 1) * dy * r))


def fd_tolerance(x, h):
    s = sigma(x)
    truncation = (h / s) ** 2
    rounding = EPS64 * np.sqrt(x.size) * (1 + np.abs(x).max() / s) * s / h
    return 10 * (truncation + rounding)


def fd_step(x):
    return 6e-6 * sigma(x)


def fd_of(forward, x, dy):
    h = fd_step(x)
    return R.finite_difference_grad(lambda xx: np.sum(dy * forward(xx)), x, h), h


def r_standard(x, eps=R.EPS_STANDARD):
    return 1 / np.sqrt(x.var(axis=(0, 2), keepdims=True) + eps)


def r_darknet(x, dialect):
    s2 = x.var(axis=(0, 2), keepdims=True, ddof=1)
    if dialect == "pjreddie":
        return 1 / (np.sqrt(s2) + R.EPS_PJ_NORMALIZE)
    return 1 / np.sqrt(s2 + R.EPS_DARKNET)


def rel(a, b, scale):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / scale)


# --------------------------------------------------------------------------
# finite differences
# --------------------------------------------------------------------------
@pytest.mark.parametrize("batch,c,spatial,loc,scale", CASES)
def test_standard_exact_matches_finite_differences(batch, c, spatial, loc, scale):
    x, dy, gamma, beta = make(batch, c, spatial, loc, scale)
    fd, h = fd_of(lambda xx: R.batchnorm_forward(xx, gamma, beta, batch, c, spatial), x, dy)
    dx, dgamma, dbeta = R.batchnorm_backward_exact(x, dy, gamma, batch, c, spatial)
    g = gradient_scale(x, dy, gamma, r_standard(x))
    assert rel(dx, fd, g) < fd_tolerance(x, h)
    staged = R.batchnorm_backward_staged(x, dy, gamma, batch, c, spatial)[0]
    assert rel(staged, fd, g) < fd_tolerance(x, h)
    # parameter gradients: L is linear in beta and in gamma
    hp = 1e-3
    fd_gamma = R.finite_difference_grad(
        lambda gg: np.sum(dy * R.batchnorm_forward(x, gg, beta, batch, c, spatial)), gamma, hp)
    fd_beta = R.finite_difference_grad(
        lambda bb: np.sum(dy * R.batchnorm_forward(x, gamma, bb, batch, c, spatial)), beta, hp)
    # linear in the parameter: only rounding, eps64 * sum|dy*y| / h
    tol = 10 * EPS64 * np.abs(dy).sum() * 2 / hp
    assert np.abs(dgamma - fd_gamma).max() < tol
    assert np.abs(dbeta - fd_beta).max() < tol


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("batch,c,spatial,loc,scale", CASES)
def test_darknet_exact_matches_finite_differences(dialect, batch, c, spatial, loc, scale):
    x, dy, gamma, beta = make(batch, c, spatial, loc, scale, seed=1)
    fd, h = fd_of(lambda xx: R.darknet_forward(xx, gamma, beta, batch, c, spatial,
                                               dialect=dialect), x, dy)
    dx = R.darknet_backward_exact(x, dy, gamma, batch, c, spatial, dialect=dialect)
    assert rel(dx, fd, gradient_scale(x, dy, gamma, r_darknet(x, dialect))) < fd_tolerance(x, h)


@pytest.mark.parametrize("dialect", (None,) + DIALECTS)
@pytest.mark.parametrize("batch,c,spatial,loc,scale", CASES[2:])
def test_stats_as_constants_is_the_gradient_with_frozen_statistics(dialect, batch, c, spatial,
                                                                   loc, scale):
    """With stats=(mean, var) given, the forward's statistics are constants."""
    x, dy, gamma, beta = make(batch, c, spatial, loc, scale, seed=2)
    stats = (x.mean(axis=(0, 2)) + 0.1 * scale, x.var(axis=(0, 2)) * 1.3)
    if dialect is None:
        fwd = lambda xx: R.batchnorm_forward(xx, gamma, beta, batch, c, spatial, stats=stats)
        r = 1 / np.sqrt(stats[1] + R.EPS_STANDARD)
    else:
        fwd = lambda xx: R.darknet_forward(xx, gamma, beta, batch, c, spatial,
                                           dialect=dialect, stats=stats)
        r = (1 / (np.sqrt(stats[1]) + R.EPS_PJ_NORMALIZE) if dialect == "pjreddie"
             else 1 / np.sqrt(stats[1] + R.EPS_DARKNET))
    fd, h = fd_of(fwd, x, dy)
    dx = R.stats_as_constants_backward(x, dy, gamma, batch, c, spatial, dialect=dialect,
                                       stats=stats)
    assert rel(dx, fd, gradient_scale(x, dy, gamma, r.reshape(1, -1, 1))) < fd_tolerance(x, h)


@pytest.mark.parametrize("dialect", (None,) + DIALECTS)
def test_finite_differences_reject_the_wrong_gradients(dialect):
    """The FD checks above can fail: the trap and Darknet's formula are far outside them."""
    batch, c, spatial = 3, 2, 5
    x, dy, gamma, beta = make(batch, c, spatial, 0.0, 1.0, seed=3)
    if dialect is None:
        fd, h = fd_of(lambda xx: R.batchnorm_forward(xx, gamma, beta, batch, c, spatial), x, dy)
        wrong = [R.stats_as_constants_backward(x, dy, gamma, batch, c, spatial)]
        g = gradient_scale(x, dy, gamma, r_standard(x))
    else:
        fd, h = fd_of(lambda xx: R.darknet_forward(xx, gamma, beta, batch, c, spatial,
                                                   dialect=dialect), x, dy)
        wrong = [R.stats_as_constants_backward(x, dy, gamma, batch, c, spatial, dialect=dialect),
                 R.darknet_backward_formula(x, dy, gamma, batch, c, spatial, dialect=dialect),
                 R.batchnorm_backward_exact(x, dy, gamma, batch, c, spatial)[0]]
        g = gradient_scale(x, dy, gamma, r_darknet(x, dialect))
    for dx in wrong:
        assert rel(dx, fd, g) > 1e4 * fd_tolerance(x, h)


def test_darknet_formula_with_divisor_m_minus_1_differs_only_by_eps_placement():
    """alexeyab with divisor m-1: only the eps in the first term still differs from exact."""
    batch, c, spatial = 4, 3, 6
    x, dy, gamma, _ = make(batch, c, spatial, 0.0, 1.0, seed=4)
    m = batch * spatial
    formula = R.darknet_backward_formula(x, dy, gamma, batch, c, spatial, dialect="alexeyab",
                                         divisor="m-1")
    exact = R.darknet_backward_exact(x, dy, gamma, batch, c, spatial, dialect="alexeyab")
    g = gradient_scale(x, dy, gamma, r_darknet(x, "alexeyab"))
    # alexeyab: only the first term's eps moves: 1/(sqrt(v)+eps) vs 1/sqrt(v+eps),
    # a relative change of at most eps/sqrt(v) (v >= ~0.1 here)
    bound = R.EPS_DARKNET / np.sqrt(x.var(axis=(0, 2), ddof=1).min())
    assert rel(formula, exact, g) < bound
    assert rel(formula, exact, g) > 1e3 * 16 * (m + 10) * EPS64   # but it does move


# --------------------------------------------------------------------------
# two implementations of the standard gradient
# --------------------------------------------------------------------------
@pytest.mark.parametrize("batch,c,spatial,loc,scale", CASES)
def test_compact_and_staged_forms_agree(batch, c, spatial, loc, scale):
    x, dy, gamma, _ = make(batch, c, spatial, loc, scale, seed=5)
    a = R.batchnorm_backward_exact(x, dy, gamma, batch, c, spatial)
    b = R.batchnorm_backward_staged(x, dy, gamma, batch, c, spatial)
    m = batch * spatial
    tol = 16 * (m + 10) * EPS64 * (1 + np.abs(x).max() / sigma(x))
    assert rel(a[0], b[0], gradient_scale(x, dy, gamma, r_standard(x))) < tol
    # dgamma = sum(dy*xhat), dbeta = sum(dy): sums of m terms of size |dy|
    for pa, pb in zip(a[1:], b[1:]):
        assert np.abs(pa - pb).max() < tol * np.abs(dy).sum()


def test_results_keep_the_layout_and_leave_inputs_alone():
    batch, c, h, w = 2, 3, 2, 2
    x, dy, gamma, beta = make(batch, c, h * w, 0.0, 1.0, seed=6)
    x4, dy4 = x.reshape(batch, c, h, w), dy.reshape(batch, c, h, w)
    x_copy = x4.copy()
    dx4 = R.batchnorm_backward_exact(x4, dy4, gamma, batch, c, h * w)[0]
    assert dx4.shape == (batch, c, h, w)
    flat = R.darknet_backward_exact(x.reshape(-1), dy.reshape(-1), gamma, batch, c, h * w,
                                    dialect="pjreddie")
    assert flat.shape == (batch * c * h * w,)
    assert np.array_equal(x4, x_copy)
    # float32 inputs are promoted, not rounded
    y32 = R.batchnorm_forward(x.astype(np.float32), gamma, beta, batch, c, h * w)
    assert y32.dtype == np.float64


def test_pjreddie_exact_is_nan_on_a_constant_channel():
    """sqrt(s2) has no derivative at s2 = 0: documented NaN, other channels unaffected."""
    x, dy, gamma, _ = make(2, 2, 3, 0.0, 1.0, seed=7)
    x[:, 0, :] = 0.5
    dx = R.darknet_backward_exact(x, dy, gamma, 2, 2, 3, dialect="pjreddie")
    assert np.isnan(dx[:, 0]).all() and np.isfinite(dx[:, 1]).all()
    dx = R.darknet_backward_exact(x, dy, gamma, 2, 2, 3, dialect="alexeyab")
    assert np.isfinite(dx).all()


# --------------------------------------------------------------------------
# torch float64 autograd (optional)
# --------------------------------------------------------------------------
#: (batch, c, h, w, location, scale): shapes from m = 2 to 2048, offset and tiny inputs
TORCH_CASES = [
    pytest.param(2, 3, 1, 1, 0.0, 1.0, id="m2"),
    pytest.param(3, 4, 3, 2, 0.5, 2.0, id="m18"),
    pytest.param(3, 2, 5, 1, 0.0, 1e-3, id="tiny-m15"),
    pytest.param(4, 2, 4, 4, 100.0, 1.0, id="offset-m64"),
    pytest.param(8, 2, 16, 16, 0.0, 1.0, id="m2048"),
]


def _torch_case(batch, c, h, w, loc, scale, seed):
    x, dy, gamma, beta = make(batch, c, h * w, loc, scale, seed=seed)
    return x.reshape(batch, c, h, w), dy.reshape(batch, c, h, w), gamma, beta


def _torch_tol(batch, h, w, x):
    return 16 * (batch * h * w + 10) * EPS64 * (1 + np.abs(x).max() / sigma(
        x.reshape(x.shape[0], x.shape[1], -1)))


def _torch_darknet_xhat(torch, xt, mean, var, dialect):
    """Darknet's normalization in torch ops (mean/var: tensors, constants or not)."""
    if dialect == "pjreddie":
        return (xt - mean) / (torch.sqrt(var) + R.EPS_PJ_NORMALIZE)
    return (xt - mean) / torch.sqrt(var + R.EPS_DARKNET)


@pytest.mark.parametrize("batch,c,h,w,loc,scale", TORCH_CASES)
def test_standard_exact_and_staged_match_torch_autograd(batch, c, h, w, loc, scale):
    torch = pytest.importorskip("torch")
    x, dy, gamma, beta = _torch_case(batch, c, h, w, loc, scale, seed=8)
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    y = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True,
                                       eps=R.EPS_STANDARD)
    y.backward(torch.tensor(dy))
    xs, dys = x.reshape(batch, c, -1), dy.reshape(batch, c, -1)
    g = gradient_scale(xs, dys, gamma, r_standard(xs))
    tol = _torch_tol(batch, h, w, x)
    for dx, dgamma, dbeta in (R.batchnorm_backward_exact(x, dy, gamma, batch, c, h * w),
                              R.batchnorm_backward_staged(x, dy, gamma, batch, c, h * w)):
        assert rel(dx, xt.grad.numpy(), g) < tol
        assert np.abs(dgamma - gt.grad.numpy()).max() < tol * np.abs(dy).sum()
        assert np.abs(dbeta - bt.grad.numpy()).max() < tol * np.abs(dy).sum()
    yref = R.batchnorm_forward(x, gamma, beta, batch, c, h * w)
    assert np.abs(yref - y.detach().numpy()).max() < tol * 10


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("batch,c,h,w,loc,scale", TORCH_CASES)
def test_darknet_exact_matches_torch_autograd(dialect, batch, c, h, w, loc, scale):
    torch = pytest.importorskip("torch")
    x, dy, gamma, beta = _torch_case(batch, c, h, w, loc, scale, seed=9)
    xt = torch.tensor(x, requires_grad=True)
    mu = xt.mean(dim=(0, 2, 3), keepdim=True)
    s2 = xt.var(dim=(0, 2, 3), keepdim=True, unbiased=True)
    y = torch.tensor(gamma).view(1, c, 1, 1) * _torch_darknet_xhat(torch, xt, mu, s2, dialect)
    y.backward(torch.tensor(dy))
    dx = R.darknet_backward_exact(x, dy, gamma, batch, c, h * w, dialect=dialect)
    xs = x.reshape(batch, c, -1)
    g = gradient_scale(xs, dy.reshape(batch, c, -1), gamma, r_darknet(xs, dialect))
    tol = _torch_tol(batch, h, w, x)
    assert rel(dx, xt.grad.numpy(), g) < tol
    yref = R.darknet_forward(x, gamma, 0.0, batch, c, h * w, dialect=dialect)
    assert np.abs(yref - y.detach().numpy()).max() < tol * 10


@pytest.mark.parametrize("dialect", (None,) + DIALECTS)
@pytest.mark.parametrize("given", (True, False), ids=("rolling-stats", "batch-stats"))
@pytest.mark.parametrize("batch,c,h,w,loc,scale", TORCH_CASES)
def test_stats_as_constants_matches_torch_with_frozen_statistics(dialect, given, batch, c, h,
                                                                 w, loc, scale):
    """Given statistics (inference mode; torch's eval-mode batch_norm for standard BN), or
    the batch's own statistics detached from the graph (the trap, in training mode)."""
    torch = pytest.importorskip("torch")
    x, dy, gamma, beta = _torch_case(batch, c, h, w, loc, scale, seed=10)
    xs = x.reshape(batch, c, -1)
    xt = torch.tensor(x, requires_grad=True)
    if given:
        mean = xs.mean(axis=(0, 2)) + scale * np.linspace(-1, 1, c)
        var = xs.var(axis=(0, 2)) * np.linspace(0.5, 4, c)
        stats, mt, vt = (mean, var), torch.tensor(mean), torch.tensor(var)
    else:
        stats = None
        mt = xt.detach().mean(dim=(0, 2, 3))
        vt = xt.detach().var(dim=(0, 2, 3), unbiased=dialect is not None)
    if dialect is None:
        y = torch.nn.functional.batch_norm(xt, mt, vt, torch.tensor(gamma), torch.tensor(beta),
                                           training=False, eps=R.EPS_STANDARD)
        rr = 1 / np.sqrt(vt.numpy() + R.EPS_STANDARD)
    else:
        y = torch.tensor(gamma).view(1, c, 1, 1) * _torch_darknet_xhat(
            torch, xt, mt.view(1, c, 1, 1), vt.view(1, c, 1, 1), dialect)
        rr = (1 / (np.sqrt(vt.numpy()) + R.EPS_PJ_NORMALIZE) if dialect == "pjreddie"
              else 1 / np.sqrt(vt.numpy() + R.EPS_DARKNET))
    y.backward(torch.tensor(dy))
    dx = R.stats_as_constants_backward(x, dy, gamma, batch, c, h * w, dialect=dialect,
                                       stats=stats)
    g = gradient_scale(xs, dy.reshape(batch, c, -1), gamma, rr.reshape(1, c, 1))
    assert rel(dx, xt.grad.numpy(), g) < _torch_tol(batch, h, w, x)
    if given:
        # the same constants on both sides: an elementwise product of three numbers
        assert np.allclose(dx, xt.grad.numpy(), rtol=8 * EPS64, atol=0)


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------
def test_validation_names_the_argument():
    x, dy, gamma, beta = make(2, 3, 4, 0.0, 1.0)
    with pytest.raises(ValueError, match="x has 23 elements"):
        R.batchnorm_forward(x.reshape(-1)[:-1], gamma, beta, 2, 3, 4)
    with pytest.raises(ValueError, match="gamma has 2 elements"):
        R.batchnorm_backward_exact(x, dy, gamma[:2], 2, 3, 4)
    with pytest.raises(TypeError, match="dy must hold real numbers"):
        R.darknet_backward_exact(x, dy.astype(complex), gamma, 2, 3, 4, dialect="pjreddie")
    with pytest.raises(TypeError, match="x must hold real numbers"):
        R.batchnorm_backward_staged("x", dy, gamma, 2, 3, 4)
    with pytest.raises(ValueError, match="unknown dialect"):
        R.darknet_backward_exact(x, dy, gamma, 2, 3, 4, dialect="yolo")
    with pytest.raises(TypeError, match="dialect"):
        R.darknet_forward(x, gamma, beta, 2, 3, 4)              # keyword-only, required
    with pytest.raises(ValueError, match="batch\\*spatial = 1"):
        R.batchnorm_backward_exact(x[:1, :, :1], dy[:1, :, :1], gamma, 1, 3, 1)
    with pytest.raises(TypeError, match="batch must be an integer"):
        R.batchnorm_forward(x, gamma, beta, 2.0, 3, 4)
    with pytest.raises(ValueError, match="divisor"):
        R.darknet_backward_formula(x, dy, gamma, 2, 3, 4, dialect="alexeyab", divisor="n")
    with pytest.raises(ValueError, match="both mean and variance"):
        R.darknet_backward_formula(x, dy, gamma, 2, 3, 4, dialect="alexeyab", mean=[0, 0, 0])
    with pytest.raises(ValueError, match="variance has 2 elements"):
        R.stats_as_constants_backward(x, dy, gamma, 2, 3, 4, stats=([0] * 3, [1, 1]))
    with pytest.raises(ValueError, match="stats must be a \\(mean, variance\\) pair"):
        R.batchnorm_forward(x, gamma, beta, 2, 3, 4, stats=np.zeros(3))
    with pytest.raises(TypeError, match="x must hold real numbers"):
        R.finite_difference_grad(np.sum, None)
    with pytest.raises(ValueError, match="h = 0 must be positive"):
        R.finite_difference_grad(np.sum, x, h=0)


def test_inference_stats_allow_a_single_value_per_channel():
    """With given statistics nothing is estimated from the batch: m = 1 is fine."""
    x = np.array([1.0, 2.0])
    y = R.batchnorm_forward(x, 1.0, 0.0, 1, 2, 1, stats=([0, 0], [1, 1]))
    assert np.allclose(y, x / np.sqrt(1 + R.EPS_STANDARD), rtol=4 * EPS64, atol=0)
