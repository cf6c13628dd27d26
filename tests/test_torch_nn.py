"""DarknetBatchNorm2d/1d as PyTorch batchnorm modules: the class, momentum, eps, state,
second-order gradients, autocast, the tools that find batchnorm by class
(swa_utils.update_bn, SyncBatchNorm.convert_sync_batchnorm, fuse_conv_bn_eval, the
quantization fusers) and convert_batchnorm's coverage.

Bit references are independent of the fused kernels the module calls:
``BatchNormLayer(kernel="blas")`` for the batch statistics and outputs, and
``darknet_bn.blas``'s ``scal_cpu``/``axpy_cpu`` for the rolling update.
"""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402
from torch.nn.modules.batchnorm import _BatchNorm  # noqa: E402

from _compare import assert_bits  # noqa: E402
from darknet_bn import BatchNormLayer  # noqa: E402
from darknet_bn.blas import axpy_cpu, scal_cpu  # noqa: E402
from darknet_bn.dialects import DIALECTS  # noqa: E402
from darknet_bn.torch import (DarknetBatchNorm1d, DarknetBatchNorm2d,  # noqa: E402
                              _DarknetBatchNorm, convert_batchnorm, rolling_factors)

FORKS = ("pjreddie", "alexeyab", "hankai")


def _np(t):
    return t.detach().numpy().reshape(-1).copy()


def _blas_layer(shape, dialect):
    n, c = shape[:2]
    h, w = (tuple(shape[2:]) + (1, 1))[:2]
    return BatchNormLayer(n, w, h, c, dialect=dialect, layer_type="convolutional",
                          kernel="blas")


def _rolled(rolling, batch_stat, momentum):
    """Darknet's update in float32: scal_cpu(1 - momentum), axpy_cpu(momentum)."""
    out = rolling.copy()
    scal_cpu(len(out), 1.0 - momentum, out, 1)
    axpy_cpu(len(out), momentum, batch_stat, 1, out, 1)
    return out


# ---------------------------------------------------------------- the class
@pytest.mark.parametrize("cls,base", [(DarknetBatchNorm2d, nn.BatchNorm2d),
                                      (DarknetBatchNorm1d, nn.BatchNorm1d)])
def test_is_a_torch_batchnorm(cls, base):
    m = cls(3, dialect="alexeyab")
    assert isinstance(m, base) and isinstance(m, _BatchNorm)
    assert isinstance(m, _DarknetBatchNorm)
    assert m.dialect.name == "alexeyab" and m.affine and m.track_running_stats
    assert "dialect='alexeyab'" in repr(m)


@pytest.mark.parametrize("kwargs,words", [
    ({"affine": False}, "affine=True"),
    ({"track_running_stats": False}, "track_running_stats=True"),
    ({"bias": False}, "bias=True"),
    ({"device": "meta"}, "CPU"),
    ({"dtype": torch.float64}, "float32"),
    ({"dtype": torch.bfloat16}, "float32"),
    ({"eps": 1e-3}, "fixed by the fork's formulas"),
    ({"momentum": 1.5}, "[0, 1]"),
    ({"momentum": -0.1}, "[0, 1]"),
    ({"momentum": "fast"}, "[0, 1]"),
])
def test_constructor_refuses(kwargs, words):
    with pytest.raises(ValueError) as e:
        DarknetBatchNorm2d(4, **kwargs)
    assert words in str(e.value), str(e.value)


def test_constructor_accepts_the_defaults_spelled_out():
    m = DarknetBatchNorm2d(4, 1e-5, 0.03, True, True, "cpu", torch.float32,
                           dialect="alexeyab")
    assert m.momentum == 0.03 and m.weight.dtype == torch.float32


# ---------------------------------------------------------------- eps
@pytest.mark.parametrize("fork", FORKS)
def test_eps_is_the_forks_and_read_only(fork):
    d = DIALECTS[fork]
    m = DarknetBatchNorm2d(2, dialect=fork)
    assert np.float32(m.eps) == d.normalize_eps
    m.eps = m.eps                                        # the same value is accepted
    with pytest.raises(ValueError, match="fixed by the fork's formulas") as e:
        m.eps = 1e-3
    assert "sqrt(var)" in str(e.value) and "pjreddie" in str(e.value)
    assert np.float32(m.eps) == d.normalize_eps


# ---------------------------------------------------------------- momentum
@pytest.mark.parametrize("fork", FORKS)
def test_default_momentum_is_darknets_factors(fork):
    """The default momentum gives the fork's float32 .99f/.01f or .9f/.1f bitwise."""
    d = DIALECTS[fork]
    m = DarknetBatchNorm2d(2, dialect=fork)
    keep, new = rolling_factors("test", m.momentum, m.num_batches_tracked)
    assert keep.dtype == new.dtype == np.float32
    assert (keep.view(np.int32), new.view(np.int32)) == (d.rolling_keep.view(np.int32),
                                                         d.rolling_new.view(np.int32))


def test_momentum_005_is_the_connected_layers_inline_factors():
    """AlexeyAB's and hank-ai's forward_connected_layer inline scal_cpu(.95f) and
    axpy_cpu(.05f) on the rolling statistics: momentum=0.05 gives those floats."""
    keep, new = rolling_factors("test", 0.05, torch.tensor(0))
    assert (keep.view(np.int32), new.view(np.int32)) == (np.float32(0.95).view(np.int32),
                                                         np.float32(0.05).view(np.int32))


def _train_steps(m, shape, dialect, momenta, seed):
    """Train steps of ``m``, each against the blas layer's batch statistics and
    Darknet's float32 update with that step's factor (``momenta[t]``)."""
    rng = np.random.default_rng(seed)
    print(f"seed {seed}")
    layer = _blas_layer(shape, dialect)
    rm, rv = _np(m.running_mean), _np(m.running_var)
    for t, momentum in enumerate(momenta):
        x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
        y = m(torch.from_numpy(x.copy()))
        out = layer.forward(x.reshape(-1), train=True).copy()
        rm, rv = _rolled(rm, layer.mean, momentum), _rolled(rv, layer.variance, momentum)
        assert_bits([(f"step{t} output", _np(y), out),
                     (f"step{t} running_mean", _np(m.running_mean), rm),
                     (f"step{t} running_var", _np(m.running_var), rv)],
                    context=f"{dialect} momentum {momentum}")
    return m


@pytest.mark.parametrize("fork", FORKS)
@pytest.mark.parametrize("momentum", [0.03, 0.5, 1.0])
def test_momentum_is_darknets_update_with_that_factor(fork, momentum):
    m = DarknetBatchNorm2d(5, dialect=fork, momentum=momentum)
    _train_steps(m, (3, 5, 4, 4), fork, [momentum] * 3, seed=1)


def test_momentum_set_after_construction_and_zero_freezes():
    m = DarknetBatchNorm1d(6, dialect="pjreddie")
    with torch.no_grad():
        m.running_mean.uniform_(-1, 1)
        m.running_var.uniform_(0.5, 2)
    m.momentum = 0.0
    before = (_np(m.running_mean), _np(m.running_var))
    _train_steps(m, (4, 6), "pjreddie", [0.0, 0.0], seed=2)
    assert_bits([("running_mean", _np(m.running_mean), before[0]),
                 ("running_var", _np(m.running_var), before[1])])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.momentum = 2


@pytest.mark.parametrize("fork", FORKS)
def test_momentum_none_is_the_cumulative_average(fork):
    """momentum=None: factor 1/num_batches_tracked (the count including this step)."""
    m = DarknetBatchNorm2d(4, dialect=fork, momentum=None)
    _train_steps(m, (2, 4, 3, 5), fork, [1.0, 1 / 2, 1 / 3, 1 / 4], seed=3)
    assert int(m.num_batches_tracked) == 4 and m.momentum is None


@pytest.mark.parametrize("fork", FORKS)
def test_swa_update_bn(fork):
    """swa_utils.update_bn finds the modules: Darknet's reset (zeros), the cumulative
    average over the loader, then the momentum and the eval mode are restored."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), DarknetBatchNorm2d(4, dialect=fork),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5),
                          DarknetBatchNorm1d(5, dialect=fork)).eval()
    with torch.no_grad():
        model[1].running_var.fill_(3.0)
    loader = [torch.randn(3, 3, 8, 8) for _ in range(3)]
    torch.optim.swa_utils.update_bn(loader, model)
    assert not model.training
    default = float(str(DIALECTS[fork].rolling_new))
    for i in (1, 5):
        assert model[i].momentum == default and int(model[i].num_batches_tracked) == 3
    # the reference: the same passes with momentum None from Darknet's initial state
    ref = nn.Sequential(*[m for m in model])                  # same conv/linear weights
    for i in (1, 5):
        ref[i] = type(model[i])(model[i].num_features, dialect=fork, momentum=None)
        with torch.no_grad():
            ref[i].weight.copy_(model[i].weight)
            ref[i].bias.copy_(model[i].bias)
    layers = {i: _blas_layer(s, fork) for i, s in ((1, (3, 4, 6, 6)), (5, (3, 5)))}
    stats = {i: (np.zeros(layers[i].c, np.float32), np.zeros(layers[i].c, np.float32))
             for i in layers}
    inputs = {}
    hooks = [ref[i].register_forward_hook(
        lambda mod, args, out, i=i: inputs.__setitem__(i, _np(args[0]))) for i in (1, 5)]
    ref.train()
    for k, x in enumerate(loader, 1):
        ref(x)
        for i, layer in layers.items():
            layer.forward(inputs[i], train=True)
            rm, rv = stats[i]
            stats[i] = (_rolled(rm, layer.mean, 1 / k), _rolled(rv, layer.variance, 1 / k))
    for h in hooks:
        h.remove()
    assert_bits([(f"bn{i} {name}", _np(getattr(model[i], name)), stats[i][j])
                 for i in (1, 5) for j, name in enumerate(("running_mean", "running_var"))],
                context=fork)


# ---------------------------------------------------------------- state
def test_reset_running_stats_and_parameters():
    m = DarknetBatchNorm2d(3)
    with torch.no_grad():
        for t in (m.weight, m.bias, m.running_mean, m.running_var):
            t.uniform_(1, 2)
    m.num_batches_tracked.fill_(5)
    m.reset_running_stats()
    assert torch.equal(m.running_var, torch.zeros(3)) and torch.equal(m.running_mean,
                                                                       torch.zeros(3))
    assert int(m.num_batches_tracked) == 0 and torch.all(m.weight >= 1)
    with torch.no_grad():
        m.running_var.fill_(2)
    m.reset_parameters()
    assert torch.equal(m.weight, torch.ones(3)) and torch.equal(m.bias, torch.zeros(3))
    assert torch.equal(m.running_var, torch.zeros(3))          # Darknet's calloc, not 1


def test_state_dict_without_num_batches_tracked_loads():
    """An older checkpoint (no num_batches_tracked, no version metadata) loads into
    the module as into nn.BatchNorm2d: the counter keeps its value."""
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.running_mean.normal_()
    old = {k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"}
    nn.BatchNorm2d(4).load_state_dict(old)
    m = DarknetBatchNorm2d(4)
    m.num_batches_tracked.fill_(2)
    m.load_state_dict(old)
    assert torch.equal(m.running_mean, bn.running_mean) and int(m.num_batches_tracked) == 2


# ---------------------------------------------------------------- 1d (N, C, L)
@pytest.mark.parametrize("fork", FORKS)
def test_1d_takes_n_c_l_as_spatial(fork):
    """(N, C, L) is Darknet's batchnorm with spatial = L: the same bits as 2d on
    (N, C, L, 1), train and eval, gradients included."""
    x = torch.randn(3, 5, 7)
    a, b = DarknetBatchNorm1d(5, dialect=fork), DarknetBatchNorm2d(5, dialect=fork)
    xa, xb = x.clone().requires_grad_(), x.clone().unsqueeze(-1).requires_grad_()
    ya, yb = a(xa), b(xb)
    g = torch.randn(3, 5, 7)
    ya.backward(g)
    yb.backward(g.unsqueeze(-1))
    assert ya.shape == (3, 5, 7)
    assert_bits([("output", _np(ya), _np(yb)), ("x.grad", _np(xa.grad), _np(xb.grad)),
                 ("weight.grad", _np(a.weight.grad), _np(b.weight.grad)),
                 ("running_var", _np(a.running_var), _np(b.running_var)),
                 ("eval", _np(a.eval()(x)), _np(b.eval()(x.unsqueeze(-1))))])


# ---------------------------------------------------------------- second order
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_second_order_gradient_is_a_clear_error(training):
    m = DarknetBatchNorm2d(3).train(training)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    (gx,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
    assert gx.shape == x.shape                     # first order with create_graph works
    with pytest.raises(NotImplementedError, match="second-order gradients"):
        gx.sum().backward()


# ---------------------------------------------------------------- autocast
class _Small(nn.Module):
    def __init__(self, fork):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = DarknetBatchNorm2d(6, dialect=fork)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(nn.functional.leaky_relu(self.bn(self.conv(x)), 0.1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("fork", FORKS)
def test_autocast(fork, dtype):
    """Under CPU autocast the conv hands the module bfloat16/float16; the module
    computes Darknet's float32 on the upcast input and returns float32: its output,
    running statistics and weight/bias gradients equal a float32 module's fed
    ``input.float()`` and the same output gradient, bitwise."""
    torch.manual_seed(5)
    model = _Small(fork)
    seen = {}
    model.bn.register_forward_hook(lambda mod, args, out: seen.update(z=args[0], y=out))
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
        seen["y"].retain_grad()
    out.float().square().sum().backward()
    assert seen["z"].dtype == dtype and seen["y"].dtype == torch.float32
    assert x.grad is not None and torch.isfinite(x.grad).all()
    ref = DarknetBatchNorm2d(6, dialect=fork)
    z = seen["z"].detach().float().requires_grad_()
    y = ref(z)
    y.backward(seen["y"].grad)
    assert_bits([("output", _np(seen["y"]), _np(y)),
                 ("running_var", _np(model.bn.running_var), _np(ref.running_var)),
                 ("weight.grad", _np(model.bn.weight.grad), _np(ref.weight.grad)),
                 ("bias.grad", _np(model.bn.bias.grad), _np(ref.bias.grad))], context=fork)
    model.eval()
    with torch.autocast("cpu", dtype=dtype), torch.no_grad():
        model(x)
    assert_bits([("eval output", _np(seen["y"]), _np(ref.eval()(seen["z"].float())))])
    with pytest.raises(TypeError, match=r"float\(\)"):         # no autocast: refused
        model.bn(seen["z"])


# ---------------------------------------------------------------- rewriting tools
def _filled(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        m.bias.copy_(torch.randn(m.num_features, generator=g))
        m.running_mean.copy_(torch.randn(m.num_features, generator=g))
        # tiny variances: where the two eps placements differ most
        m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1e-5)
    return m


def _darknet_eval(m, x):
    """The fork's eval function in float64 (the reference of both rewritten forms)."""
    d = m.dialect
    v = m.running_var.double().view(1, -1, 1, 1)
    den = (v + float(d.normalize_eps)).sqrt() if d.normalize_eps_in_sqrt else \
        v.sqrt() + float(d.normalize_eps)
    return ((x.double() - m.running_mean.double().view(1, -1, 1, 1)) / den
            * m.weight.double().view(1, -1, 1, 1) + m.bias.double().view(1, -1, 1, 1))


def _rel(a, b):
    return float(((a.double() - b).abs() / b.abs().clamp_min(1)).max())


#: A float32 evaluation of the right formula: a few roundings (torch folds the
#: statistics into x*alpha + beta), well under 2**-16; the wrong eps placement on
#: variances of ~1e-5 changes the denominator by tens of percent.
SAME, DIFFERENT = 2.0 ** -16, 0.01


@pytest.mark.parametrize("fork", FORKS)
def test_convert_sync_batchnorm(fork):
    """convert_sync_batchnorm turns the module into a SyncBatchNorm with the fork's
    eps and the module's momentum, so PyTorch's formula sqrt(var + eps): AlexeyAB's
    eval function survives (to float32 rounding), pjreddie's eps placement does not."""
    m = _filled(DarknetBatchNorm2d(6, dialect=fork, momentum=0.2), 6)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(m)).eval()
    s = model[0]
    assert type(s) is nn.SyncBatchNorm and s.weight is m.weight
    assert s.eps == m.eps and s.momentum == 0.2
    x = torch.randn(2, 6, 3, 3)
    with torch.no_grad():
        err = _rel(s(x), _darknet_eval(m, x))
    print(f"{fork}: max relative difference from the fork's eval function {err:.3g}")
    assert err <= SAME if fork != "pjreddie" else err >= DIFFERENT, err
    back = convert_batchnorm(model, dialect=fork)               # and back: Darknet's bits
    assert type(back[0]) is DarknetBatchNorm2d
    assert_bits([("output", _np(back[0].eval()(x)), _np(m.eval()(x)))])


@pytest.mark.parametrize("fork", FORKS)
def test_fuse_conv_bn_eval(fork):
    """torch.nn.utils.fuse_conv_bn_eval folds with bn.eps inside the root: right for
    AlexeyAB (to float32 rounding; its own fuse_conv_batchnorm does the same), not for
    pjreddie's eps outside the root."""
    torch.manual_seed(7)
    conv = nn.Conv2d(3, 6, 1, bias=False).eval()
    m = _filled(DarknetBatchNorm2d(6, dialect=fork), 7).eval()
    fused = torch.nn.utils.fuse_conv_bn_eval(conv, m)
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        err = _rel(fused(x), _darknet_eval(m, conv(x)))
    print(f"{fork}: max relative difference from the fork's eval function {err:.3g}")
    assert err <= SAME if fork != "pjreddie" else err >= DIFFERENT, err


@pytest.mark.parametrize("fork", FORKS)
def test_quantization_fusers(fork):
    """Eager fuse_modules looks the pair up by exact type and refuses it; the FX
    fusers (fuse_fx, torch.fx.experimental.optimization.fuse) match nn.BatchNorm2d
    modules by exact type too, trace the module as its op, and leave Darknet's bits."""
    from torch.ao.quantization import fuse_modules
    from torch.ao.quantization.quantize_fx import fuse_fx
    from torch.fx.experimental.optimization import fuse

    def model():
        torch.manual_seed(8)
        return nn.Sequential(nn.Conv2d(3, 6, 3), _filled(DarknetBatchNorm2d(6, dialect=fork), 8),
                             nn.ReLU()).eval()
    with pytest.raises(AssertionError, match="did not find fuser method"):
        fuse_modules(model(), [["0", "1"]])
    x = torch.randn(2, 3, 6, 6)
    want = model()(x)
    for fuser in (fuse_fx, fuse):
        g = fuser(model())
        assert not any(isinstance(mod, _BatchNorm) for mod in g.modules())
        assert "darknet_bn.batchnorm_infer" in g.code
        assert_bits([(fuser.__name__, _np(g(x)), _np(want))], context=fork)


# ---------------------------------------------------------------- convert_batchnorm
class _Custom(nn.BatchNorm2d):
    pass


def test_convert_batchnorm_coverage():
    """BatchNorm1d/2d, their subclasses and SyncBatchNorm are converted (SyncBatchNorm
    to 2d); BatchNorm3d and an uninitialized lazy batchnorm stay, named in one warning."""
    model = nn.Sequential(_Custom(3), nn.SyncBatchNorm(3), nn.BatchNorm1d(3),
                          DarknetBatchNorm2d(3, dialect="pjreddie"), nn.BatchNorm3d(3),
                          nn.LazyBatchNorm2d())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = convert_batchnorm(model, dialect="alexeyab")
    assert [type(m) for m in out] == [DarknetBatchNorm2d, DarknetBatchNorm2d,
                                      DarknetBatchNorm1d, DarknetBatchNorm2d,
                                      nn.BatchNorm3d, nn.LazyBatchNorm2d]
    assert out[3].dialect.name == "alexeyab"
    mine = [w for w in caught if "convert_batchnorm" in str(w.message)]
    assert len(mine) == 1
    text = str(mine[0].message)
    assert "'4' (BatchNorm3d)" in text and "'5' (LazyBatchNorm2d)" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_batchnorm(nn.Sequential(nn.BatchNorm2d(2)), dialect="pjreddie")  # no warning
