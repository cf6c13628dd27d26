"""darknet_bn.torch: the PyTorch modules against BatchNormLayer and Darknet's fixtures.

Every comparison is bitwise (``_compare.assert_bits``).  The reference is
``BatchNormLayer(kernel="blas")`` (Darknet's blas.c routines one by one, checked
against Darknet's C in test_batchnorm_layer.py; not the fused kernels the module
calls) fed with ``delta = grad_output``, with fresh (zero) ``scale_updates`` and
``bias_updates`` before each backward: the module's gradients are one call's
updates, accumulated from zero.
"""
import pickle
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _compare import assert_bits  # noqa: E402
from _routines import REGIMES, _regime  # noqa: E402
from darknet_bn import BatchNormLayer  # noqa: E402
from darknet_bn.darknet import make_batchnorm_layer_from_record, read_weights  # noqa: E402
from darknet_bn.golden import data_dir, layer_cases  # noqa: E402
from darknet_bn.torch import (DarknetBatchNorm1d, DarknetBatchNorm2d,  # noqa: E402
                              _DarknetBatchNorm, convert_batchnorm, from_darknet)

FORKS = ("pjreddie", "alexeyab", "hankai")
#: The forks with a recorded bn-zoo (hank-ai's parser refuses its [batchnorm] sections).
ZOO_FORKS = ("pjreddie", "alexeyab")


def _np(t):
    return t.detach().numpy().reshape(-1).copy()


def _module(shape, dialect, params, bias_grad="darknet", keep_x_norm=True):
    cls = DarknetBatchNorm2d if len(shape) == 4 else DarknetBatchNorm1d
    m = cls(shape[1], dialect=dialect, bias_grad=bias_grad, keep_x_norm=keep_x_norm)
    with torch.no_grad():
        for t, name in ((m.weight, "scales"), (m.bias, "biases"),
                        (m.running_mean, "rolling_mean"), (m.running_var, "rolling_variance")):
            t.copy_(torch.from_numpy(params[name]))
    return m


def _layer(shape, dialect, params):
    n, c = shape[:2]
    h, w = (tuple(shape[2:]) + (1, 1))[:2]           # (N, C, L): spatial = L
    layer = BatchNormLayer(n, w, h, c, dialect=dialect, layer_type="convolutional",
                           kernel="blas")
    for name, v in params.items():
        getattr(layer, name)[:] = v
    return layer


def _params(rng, c):
    return {"scales": rng.uniform(0.5, 1.5, c).astype(np.float32),
            "biases": rng.normal(0, 0.5, c).astype(np.float32),
            "rolling_mean": rng.normal(0, 1, c).astype(np.float32),
            "rolling_variance": rng.uniform(0.5, 2, c).astype(np.float32)}


def _check_train_steps(shape, dialect, regime, seed, steps=2, bias_grad="darknet",
                       keep_x_norm=True):
    """``steps`` train steps then one eval forward, module vs layer, every value bitwise."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    params = _params(rng, c)
    m = _module(shape, dialect, params, bias_grad, keep_x_norm)
    layer = _layer(shape, dialect, params)
    n = int(np.prod(shape))
    ctx = f"{dialect} {shape} {regime} seed={seed} bias_grad={bias_grad} keep={keep_x_norm}"
    for t in range(steps):
        x = _regime(rng, regime, n).astype(np.float32).reshape(shape)
        g = rng.standard_normal(n).astype(np.float32).reshape(shape)
        xt = torch.from_numpy(x.copy()).requires_grad_()
        m.weight.grad = m.bias.grad = None
        y = m(xt)
        y.backward(torch.from_numpy(g))
        layer.scale_updates[:] = 0
        layer.bias_updates[:] = 0
        out = layer.forward(x.reshape(-1), train=True).copy()
        grad = layer.backward(g.reshape(-1), train=True)
        bias = layer.bias_updates
        if bias_grad == "sum" and dialect == "alexeyab":      # backward_bias, as pjreddie's
            bias = _layer(shape, "pjreddie", params).bias_updates
            from darknet_bn import backward_bias
            backward_bias(bias, g.reshape(-1), shape[0], c, n // (shape[0] * c))
        assert_bits([(f"step{t} output", _np(y), out),
                     (f"step{t} x.grad", _np(xt.grad), grad),
                     (f"step{t} weight.grad", _np(m.weight.grad), layer.scale_updates),
                     (f"step{t} bias.grad", _np(m.bias.grad), bias),
                     (f"step{t} running_mean", _np(m.running_mean), layer.rolling_mean),
                     (f"step{t} running_var", _np(m.running_var), layer.rolling_variance)],
                    context=ctx)
        assert int(m.num_batches_tracked) == t + 1
    m.eval()
    x = _regime(rng, regime, n).astype(np.float32).reshape(shape)
    y = m(torch.from_numpy(x))
    assert_bits([("eval output", _np(y), layer.forward(x.reshape(-1), train=False))],
                context=ctx)
    assert int(m.num_batches_tracked) == steps                # eval does not count


# ---------------------------------------------------------------- random shapes
SHAPES_2D = [(2, 3, 1, 1), (4, 19, 5, 7), (3, 8, 13, 13), (2, 40, 3, 9), (1, 17, 4, 4),
             (5, 33, 2, 1)]
SHAPES_1D = [(2, 3), (8, 33), (16, 300), (5, 1), (3, 7, 5), (2, 4, 1)]   # (N, C[, L])


@pytest.mark.parametrize("keep_x_norm", [True, False], ids=["kept", "recomputed"])
@pytest.mark.parametrize("dialect", FORKS)
@pytest.mark.parametrize("shape", SHAPES_2D + SHAPES_1D, ids=str)
def test_random_shapes_match_layer(shape, dialect, keep_x_norm):
    """Both ways the backward gets x_norm: the module's buffer and the recompute."""
    for seed, regime in enumerate(REGIMES):
        _check_train_steps(shape, dialect, regime, seed, keep_x_norm=keep_x_norm)


@pytest.mark.parametrize("shape", [(4, 19, 5, 7), (8, 33)], ids=str)
def test_bias_grad_sum_opt_in(shape):
    """``bias_grad="sum"``: backward_bias for AlexeyAB too; the default gives zeros."""
    _check_train_steps(shape, "alexeyab", "normal", 7, bias_grad="sum")
    m = _module(shape, "alexeyab", _params(np.random.default_rng(8), shape[1]))
    m(torch.randn(shape, requires_grad=True)).sum().backward()
    assert torch.equal(m.bias.grad, torch.zeros(shape[1]))


@pytest.mark.parametrize("dialect", FORKS)
def test_negative_zero_x_norm(dialect):
    """With keep_x_norm=False the backward recomputes x_norm; a -0.0 there (x = -0.0
    in a zero-mean channel) becomes +0.0, which changes no gradient bit."""
    rng = np.random.default_rng(3)
    shape = (2, 4, 3, 3)
    x = rng.standard_normal(shape).astype(np.float32)
    x[:, 1] = 0.0
    x[0, 1, 0, :] = -0.0
    g = rng.standard_normal(shape).astype(np.float32)
    g[0, 1, 0, 0] = np.inf
    params = _params(rng, 4)
    m, layer = _module(shape, dialect, params, keep_x_norm=False), _layer(shape, dialect, params)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    m(xt).backward(torch.from_numpy(g))
    layer.forward(x.reshape(-1), train=True)
    assert np.signbit(layer.x_norm.reshape(shape)[0, 1, 0, 1])       # -0.0 really occurs
    grad = layer.backward(g.reshape(-1), train=True)
    assert_bits([("x.grad", _np(xt.grad), grad),
                 ("weight.grad", _np(m.weight.grad), layer.scale_updates)], context=dialect)


@pytest.mark.parametrize("dialect", FORKS)
def test_sign_convention(dialect):
    """Darknet feeds the negative gradient; its backward is linear and sign-symmetric,
    so the module's gradients are the layer's with ``-grad_output`` negated, up to the
    sign of zeros (compared with -0.0 and +0.0 identified, everything else bitwise)."""
    rng = np.random.default_rng(11)
    shape = (3, 6, 4, 5)
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    g[:, 2] = 0.0                                             # zero gradients: signed zeros
    params = _params(rng, 6)
    m, layer = _module(shape, dialect, params), _layer(shape, dialect, params)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    m(xt).backward(torch.from_numpy(g))
    layer.forward(x.reshape(-1), train=True)
    grad = -layer.backward(-g.reshape(-1), train=True)

    def unsign_zero(a):
        a = np.array(a, np.float32)
        a[a == 0] = 0.0
        return a
    assert_bits([("x.grad", unsign_zero(_np(xt.grad)), unsign_zero(grad)),
                 ("weight.grad", unsign_zero(_np(m.weight.grad)),
                  unsign_zero(-layer.scale_updates))], context=dialect)
    if dialect == "pjreddie":
        assert_bits([("bias.grad", unsign_zero(_np(m.bias.grad)),
                      unsign_zero(-layer.bias_updates))])


# ---------------------------------------------------------------- golden fixtures
@pytest.mark.parametrize("case", layer_cases(), ids=lambda c: c.name)
def test_golden_replay(case):
    """Darknet's recorded train, train, train, inference sequence through the module:
    output, x.grad, running statistics, and weight.grad (the fixtures' scale_updates
    accumulate from a nonzero start: init + grad in float32).  The fixtures'
    bias_updates accumulate plane by plane onto their nonzero start, so bias.grad is
    checked against BatchNormLayer in the random tests instead; the inference-mode
    backward is Darknet's, not the module's (see the module doc)."""
    z = case.arrays()
    shape = (case.batch, case.c, case.h, case.w)
    m = DarknetBatchNorm2d(case.c, dialect=case.fork)
    with torch.no_grad():
        for t, name in ((m.weight, "scales"), (m.bias, "biases"),
                        (m.running_mean, "rolling_mean"), (m.running_var, "rolling_variance")):
            t.copy_(torch.from_numpy(z[f"init_{name}"]))
    scale_updates = z["init_scale_updates"]
    checks = []
    for t, mode in enumerate(case.steps):
        x = torch.from_numpy(z[f"step{t}_input"].reshape(shape).copy())
        if mode == "train":
            m.train()
            x.requires_grad_()
            m.weight.grad = None
            y = m(x)
            y.backward(torch.from_numpy(z[f"step{t}_delta_in"].reshape(shape)))
            scale_updates = scale_updates + _np(m.weight.grad)
            checks += [(f"step{t} x.grad", _np(x.grad), z[f"step{t}_bwd_delta"]),
                       (f"step{t} weight.grad", scale_updates, z[f"step{t}_bwd_scale_updates"])]
        else:
            m.eval()
            y = m(x)
        checks += [(f"step{t} output", _np(y), z[f"step{t}_fwd_output"]),
                   (f"step{t} running_mean", _np(m.running_mean),
                    z[f"step{t}_fwd_rolling_mean"]),
                   (f"step{t} running_var", _np(m.running_var),
                    z[f"step{t}_fwd_rolling_variance"])]
    assert case.steps.count("train") == 3 and case.steps[-1] != "train"
    assert_bits(checks, context=case.name)


# ---------------------------------------------------------------- module behaviour
def test_state_dict_names_and_batchnorm2d_load():
    bn = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
            t.copy_(torch.randn(5))
    bn.num_batches_tracked.fill_(7)
    m = DarknetBatchNorm2d(5)
    assert list(m.state_dict()) == list(bn.state_dict())
    m.load_state_dict(bn.state_dict())
    for k, v in bn.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    m1 = DarknetBatchNorm1d(5)
    m1.load_state_dict(torch.nn.BatchNorm1d(5).state_dict())


def test_initial_values_are_darknets():
    """make_batchnorm_layer: scales 1, biases and rolling statistics 0."""
    m = DarknetBatchNorm2d(3)
    layer = BatchNormLayer(1, 1, 1, 3)
    assert_bits([("weight", _np(m.weight), layer.scales), ("bias", _np(m.bias), layer.biases),
                 ("running_mean", _np(m.running_mean), layer.rolling_mean),
                 ("running_var", _np(m.running_var), layer.rolling_variance)])
    assert "dialect='pjreddie'" in repr(m)


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
def test_non_contiguous_input_is_copied(layout):
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((3, 6, 5, 4)).astype(np.float32))
    if layout == "channels_last":
        xs = x.to(memory_format=torch.channels_last)
    else:
        xs = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not xs.is_contiguous()
    a, b = DarknetBatchNorm2d(6, dialect="alexeyab"), DarknetBatchNorm2d(6, dialect="alexeyab")
    xa, xb = x.clone().requires_grad_(), xs.detach().clone().requires_grad_()
    g = torch.randn(3, 6, 5, 4)
    ya, yb = a(xa), b(xb)
    ya.backward(g)
    yb.backward(g)
    assert yb.is_contiguous()
    assert_bits([("output", _np(ya), _np(yb.contiguous())),
                 ("x.grad", _np(xa.grad), _np(xb.grad.contiguous())),
                 ("running_var", _np(a.running_var), _np(b.running_var))])


def test_expanded_grad_output():
    """``y.sum().backward()`` hands the backward an expanded (stride 0) gradient."""
    x = torch.randn(2, 3, 4, 4)
    a, b = DarknetBatchNorm2d(3), DarknetBatchNorm2d(3)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a(xa).sum().backward()
    b(xb).backward(torch.ones(2, 3, 4, 4))
    assert_bits([("x.grad", _np(xa.grad), _np(xb.grad))])


@pytest.mark.parametrize("dialect", FORKS)
def test_eval_gradient_is_the_eval_functions_derivative(dialect):
    """Eval-mode autograd: d/dx of the eval function, checked against a float64
    finite-difference-free formula: y is affine in x per channel, slope w/denom
    (tolerance: one float32 rounding of the slope, 2**-23 relative)."""
    m = _module((2, 3, 4, 4), dialect, _params(np.random.default_rng(2), 3)).eval()
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    m(x).sum().backward()
    var = m.running_var.double()
    denom = var.sqrt() + 1e-6 if dialect == "pjreddie" else (var + 1e-5).sqrt()
    slope = (m.weight.double() / denom).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert torch.allclose(x.grad.double(), slope, rtol=2 ** -22, atol=0)
    assert torch.equal(m.bias.grad, torch.full((3,), 32.0))


def test_pickle_round_trip():
    m = DarknetBatchNorm2d(4, dialect="alexeyab", bias_grad="sum")
    m2 = pickle.loads(pickle.dumps(m))
    assert m2.dialect is m.dialect and m2.bias_grad == "sum"
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(m(x), m2(x))


@pytest.mark.parametrize("dialect", FORKS)
def test_eval_fast_path_follows_the_modules_tensors(dialect):
    """The eval fast path keeps numpy views of the four per-channel tensors between
    calls.  Every way a user changes them is seen by the next call, bit for bit
    against the op path (``batchnorm_infer`` through the dispatcher, which keeps no
    views): values written in place, ``load_state_dict``, a new Parameter, ``.data``
    replaced, ``.to()`` giving new tensors, a deepcopy and a pickle (whose views are
    their own) and a copy changed after it was made."""
    import copy
    rng = np.random.default_rng(24)
    print("seed 24")
    m = _module((2, 5, 3, 3), dialect, _params(rng, 5)).eval()
    x = torch.from_numpy(rng.normal(0, 1, (2, 5, 3, 3)).astype(np.float32))

    def same(module, context):
        with torch.no_grad():
            fast = module(x)
        slow = torch.ops.darknet_bn.batchnorm_infer(
            x, module.weight.detach(), module.bias.detach(), module.running_mean,
            module.running_var, module.dialect.code)
        assert_bits([("output", _np(fast), _np(slow))], context=f"{dialect}: {context}")
        return fast

    first = same(m, "first call")
    with torch.no_grad():
        m.weight.mul_(2)
        m.running_mean.add_(0.25)
    assert not torch.equal(same(m, "in-place"), first)
    m.load_state_dict(_module((2, 5, 3, 3), dialect, _params(rng, 5)).state_dict())
    same(m, "load_state_dict")
    m.weight = torch.nn.Parameter(torch.full((5,), 3.0))
    same(m, "new Parameter")
    m.running_var.data = torch.full((5,), 0.5)
    same(m, ".data replaced")
    m.bias.data = m.bias.data.clone() + 1
    same(m, "bias .data replaced")
    before = same(m, "before the copies")
    for context, twin in (("deepcopy", copy.deepcopy(m)),
                          ("pickle", pickle.loads(pickle.dumps(m)))):
        assert torch.equal(same(twin, context), before)
        with torch.no_grad():
            twin.bias.sub_(1)
        same(twin, f"{context} changed")
        assert torch.equal(same(m, f"original after the {context} changed"), before)
    m.to(torch.float32).to("cpu")
    m.double().float()
    same(m, ".double().float(): new tensors")


def test_import_darknet_bn_does_not_import_torch():
    code = "import sys, darknet_bn; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- bad input
def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


def _unchanged(m, before):
    return all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


BAD_INPUTS = [
    ("float64", lambda: torch.randn(2, 3, 4, 4, dtype=torch.float64), TypeError, "float()"),
    ("float16", lambda: torch.randn(2, 3, 4, 4).half(), TypeError, "float()"),
    ("int", lambda: torch.ones(2, 3, 4, 4, dtype=torch.int32), TypeError, "float32"),
    ("meta", lambda: torch.empty(2, 3, 4, 4, device="meta"), ValueError, "cpu()"),
    ("3d", lambda: torch.randn(2, 3, 4), ValueError, "(N, C, H, W)"),
    ("channels", lambda: torch.randn(2, 4, 4, 4), ValueError, "channels"),
    ("one value per channel", lambda: torch.randn(1, 3, 1, 1), ValueError, "batch*h*w = 1"),
    ("empty", lambda: torch.randn(0, 3, 4, 4), ValueError, "no elements"),
    ("numpy", lambda: np.zeros((2, 3, 4, 4), np.float32), TypeError, "torch.Tensor"),
    ("sparse", lambda: torch.randn(2, 3, 4, 4).to_sparse(), TypeError, "to_dense"),
]


@pytest.mark.parametrize("name,make,exc,fix", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input(name, make, exc, fix):
    m = DarknetBatchNorm2d(3)
    with torch.no_grad():
        m.running_var.fill_(1.5)
    before = _state(m)
    with pytest.raises(exc, match=None) as e:
        m(make())
    assert fix in str(e.value), str(e.value)
    assert _unchanged(m, before)


class _ReportsCuda(torch.Tensor):
    """A CPU tensor that reports a CUDA device (the check reads ``input.device``)."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def test_bad_input_cuda():
    x = (torch.randn(2, 3, 4, 4, device="cuda") if torch.cuda.is_available()
         else torch.randn(2, 3, 4, 4).as_subclass(_ReportsCuda))
    assert x.device.type == "cuda"
    m = DarknetBatchNorm2d(3)
    before = _state(m)
    with pytest.raises(ValueError, match=r"input.cpu\(\)"):
        m(x)
    assert _unchanged(m, before)


def test_bad_input_1d():
    m = DarknetBatchNorm1d(3)
    before = _state(m)
    with pytest.raises(ValueError, match=r"\(N, C\) or \(N, C, L\)"):
        m(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="batch\\*h\\*w = 1"):
        m(torch.randn(1, 3))
    assert _unchanged(m, before)
    m.eval()
    m(torch.randn(1, 3))                     # inference with one image is fine


def test_bad_module_state():
    m = DarknetBatchNorm2d(3).double()
    before = _state(m)
    with pytest.raises(TypeError, match=r"module.float\(\)"):
        m(torch.randn(2, 3, 4, 4))
    assert _unchanged(m, before)


@pytest.mark.parametrize("kwargs,exc", [
    ({"num_features": 0}, ValueError), ({"num_features": 2.0}, TypeError),
    ({"num_features": True}, TypeError), ({"num_features": 2, "dialect": "darknet"}, ValueError),
    ({"num_features": 2, "dialect": 1}, TypeError),
    ({"num_features": 2, "bias_grad": "none"}, ValueError)])
def test_bad_constructor_arguments(kwargs, exc):
    with pytest.raises(exc):
        DarknetBatchNorm2d(**kwargs)


# ---------------------------------------------------------------- convert_batchnorm
class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(4, eps=1e-3, momentum=0.03)
        self.inner = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.BatchNorm2d(4))
        self.fc = torch.nn.Linear(4, 6)
        self.bn1 = torch.nn.BatchNorm1d(6)


def test_convert_batchnorm_nested():
    torch.manual_seed(0)
    model = torch.nn.Sequential(_Block(), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2)
                mod.num_batches_tracked.fill_(3)
    model[0].inner[1].weight.requires_grad_(False)
    model[0].eval()
    old = {name: mod for name, mod in model.named_modules()
           if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)}
    olds = {name: (mod.weight, mod.bias, mod.running_mean.clone(), mod.running_var.clone(),
                   mod.training) for name, mod in old.items()}
    out = convert_batchnorm(model, dialect="alexeyab")
    assert out is model
    new = dict(out.named_modules())
    for name, (w, b, rm, rv, training) in olds.items():
        mod = new[name]
        want = DarknetBatchNorm1d if name.endswith("bn1") else DarknetBatchNorm2d
        assert type(mod) is want, name
        assert mod.weight is w and mod.bias is b, name          # the same Parameters
        assert torch.equal(mod.running_mean, rm) and torch.equal(mod.running_var, rv)
        assert int(mod.num_batches_tracked) == 3 and mod.training == training
        assert mod.dialect.name == "alexeyab"
    assert not new["0.inner.1"].weight.requires_grad
    assert all(isinstance(mod, _DarknetBatchNorm) for mod in out.modules()
               if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm))
    top = convert_batchnorm(torch.nn.BatchNorm2d(3), dialect="pjreddie", bias_grad="sum",
                            keep_x_norm=False)
    assert type(top) is DarknetBatchNorm2d
    assert top.bias_grad == "sum" and not top.keep_x_norm


def test_convert_batchnorm_refuses_before_replacing():
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3),
                                torch.nn.BatchNorm2d(3, affine=False))
    with pytest.raises(ValueError, match="affine=True"):
        convert_batchnorm(model, dialect="pjreddie")
    assert type(model[0]) is torch.nn.BatchNorm2d            # nothing replaced
    with pytest.raises(TypeError, match=r"model.float\(\)"):
        convert_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3).double()),
                          dialect="pjreddie")
    with pytest.raises(TypeError, match="nn.Module"):
        convert_batchnorm([torch.nn.BatchNorm2d(3)], dialect="pjreddie")
    with pytest.raises(ValueError, match="dialect"):
        convert_batchnorm(torch.nn.BatchNorm2d(3), dialect="darknet")


# ---------------------------------------------------------------- from_darknet
@pytest.mark.parametrize("fork", ZOO_FORKS)
def test_from_darknet_bn_zoo(fork):
    """Every BN layer of the fork's bn-zoo: module eval output == BatchNormLayer's
    inference with the same record, bitwise; parameters are the file's floats."""
    root = data_dir() / "cfg" / fork
    cfg, weights = root / "bn-zoo.cfg", root / "bn-zoo.weights"
    modules = from_darknet(cfg, weights, dialect=fork)
    records = read_weights(cfg, weights, dialect=fork).layers
    assert sorted(modules) == [r.index for r in records] and len(records) >= 3
    sections = set()
    rng = np.random.default_rng(4)
    for rec in records:
        m = modules[rec.index]
        sections.add(rec.section)
        assert not m.training and m.dialect.name == fork
        assert isinstance(m, DarknetBatchNorm1d if rec.section == "connected"
                          else DarknetBatchNorm2d)
        spec = rec.spec
        h, w = (1, 1) if rec.section == "connected" else (spec.out_h, spec.out_w)
        batch = 2
        layer = make_batchnorm_layer_from_record(rec, batch=batch, h=h, w=w)
        shape = (batch, rec.channels) + ((h, w) if rec.section != "connected" else ())
        x = (rng.standard_normal(shape) * 3).astype(np.float32)
        assert_bits([(f"layer {rec.index} {rec.section} output", _np(m(torch.from_numpy(x))),
                      layer.forward(x.reshape(-1), train=False)),
                     ("scales", _np(m.weight), rec.scales),
                     ("rolling_variance", _np(m.running_var), rec.rolling_variance)],
                    context=f"{fork} bn-zoo")
    assert {"convolutional", "batchnorm", "connected"} <= sections


def test_from_darknet_errors():
    root = data_dir() / "cfg" / "pjreddie"
    with pytest.raises(ValueError, match="dialect"):
        from_darknet(root / "bn-zoo.cfg", root / "bn-zoo.weights", dialect="yolo")
    with pytest.raises(TypeError):
        from_darknet(root / "bn-zoo.cfg", root / "bn-zoo.weights")
    with pytest.raises(OSError):
        from_darknet(root / "bn-zoo.cfg", root / "missing.weights", dialect="pjreddie")


def test_torch_thread_count_is_kept():
    """Numba's OpenMP layer shares libgomp with torch; a kernel call must not change
    ``torch.get_num_threads()`` (it would change other ops' threads, and their bits).
    Only the OpenMP layer with more than one Numba thread can change it."""
    import numba
    DarknetBatchNorm2d(4)(torch.randn(2, 4, 3, 3))           # a parallel kernel has run
    layer, n = numba.threading_layer(), numba.get_num_threads()
    if layer != "omp" or n < 2:
        pytest.skip(f"Numba's threading layer is {layer!r} with {n} thread(s): a kernel "
                    "cannot change torch's OpenMP thread count here")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        m = DarknetBatchNorm2d(32)
        x = torch.randn(4, 32, 6, 6, requires_grad=True)
        m(x).sum().backward()
        m.eval()
        m(x).sum().backward()
        DarknetBatchNorm1d(32)(torch.randn(4, 32)).sum().backward()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_ops_check_their_arguments():
    """The custom ops are reachable as torch.ops.darknet_bn.*: mismatched sizes are
    refused before a kernel touches memory."""
    ops = torch.ops.darknet_bn
    x, v, nbt = torch.randn(2, 3, 4, 4), torch.ones(3), torch.tensor(0)
    with pytest.raises(ValueError, match="weight"):
        ops.batchnorm_train(x, torch.ones(5), v, v.clone(), v.clone(), nbt, 0.1, 0, False, 0)
    with pytest.raises(ValueError, match="momentum"):
        ops.batchnorm_train(x, v, v, v.clone(), v.clone(), nbt, 1.5, 0, False, 0)
    with pytest.raises(ValueError, match="grad_output"):
        ops.batchnorm_train_backward(torch.randn(2, 3, 4, 5), x, v, v, v, 0, False, 0,
                                     torch.zeros(1, dtype=torch.int64))
    with pytest.raises(TypeError, match="float32"):
        ops.batchnorm_infer(x.double(), v, v, v, v, 0)
    with pytest.raises(ValueError, match="dialect"):
        ops.batchnorm_infer(x, v, v, v, v, 7)
    with pytest.raises(ValueError, match="batch\\*h\\*w >= 2"):
        ops.batchnorm_train(torch.randn(1, 3, 1, 1), v, v, v.clone(), v.clone(), nbt, None, 0,
                            False, 0)


@pytest.mark.parametrize("dialect", FORKS)
def test_nan_and_inf_propagate_as_in_darknet(dialect):
    """A NaN or Inf in a channel spreads through that channel exactly as in Darknet
    (bitwise, NaN payloads included): output, x.grad, statistics."""
    rng = np.random.default_rng(9)
    shape = (3, 5, 4, 4)
    x = rng.standard_normal(shape).astype(np.float32)
    x[1, 1, 2, 2] = np.nan
    x[0, 3, 0, 1] = np.inf
    g = rng.standard_normal(shape).astype(np.float32)
    params = _params(rng, 5)
    m, layer = _module(shape, dialect, params), _layer(shape, dialect, params)
    xt = torch.from_numpy(x.copy()).requires_grad_()
    y = m(xt)
    y.backward(torch.from_numpy(g))
    out = layer.forward(x.reshape(-1), train=True).copy()
    grad = layer.backward(g.reshape(-1), train=True)
    assert np.isnan(out).any()
    assert_bits([("output", _np(y), out), ("x.grad", _np(xt.grad), grad),
                 ("weight.grad", _np(m.weight.grad), layer.scale_updates),
                 ("running_mean", _np(m.running_mean), layer.rolling_mean),
                 ("running_var", _np(m.running_var), layer.rolling_variance)], context=dialect)


# ---------------------------------------------------------------- the x_norm buffer
@pytest.fixture
def recomputes(monkeypatch):
    """Counts the backward's x_norm recomputes."""
    import darknet_bn.torch as dt
    calls = []
    real = dt._normalize

    def counting(*args):
        calls.append(1)
        return real(*args)
    monkeypatch.setattr(dt, "_normalize", counting)
    return calls


def _pair_kept_recomputed(shape, dialect="pjreddie"):
    params = _params(np.random.default_rng(12), shape[1])
    return (_module(shape, dialect, params, keep_x_norm=True),
            _module(shape, dialect, params, keep_x_norm=False))


def _grads(m, xs, combine):
    """Forward every x through ``m``, then one backward of ``combine(outputs)``."""
    m.weight.grad = m.bias.grad = None
    xs = [x.clone().requires_grad_() for x in xs]
    combine([m(x) for x in xs]).backward()
    return [(f"x{i}.grad", _np(x.grad)) for i, x in enumerate(xs)] + [
        ("weight.grad", _np(m.weight.grad)), ("bias.grad", _np(m.bias.grad))]


@pytest.mark.parametrize("dialect", FORKS)
def test_kept_x_norm_two_forwards_before_backward(dialect, recomputes):
    """Two forwards of one module, then one backward: the buffer holds the second
    forward's x_norm, so the first backward recomputes its own.  Same bits as a
    module that always recomputes."""
    shape = (3, 5, 4, 4)
    kept, recomputed = _pair_kept_recomputed(shape, dialect)
    torch.manual_seed(1)
    xs = [torch.randn(shape), torch.randn(shape) * 2 + 1]
    g = torch.randn(shape)

    def combine(ys):
        return (ys[0] * g).sum() + (ys[1] * g.flip(0)).sum()
    a = _grads(kept, xs, combine)
    assert len(recomputes) == 1                    # the first forward's backward only
    b = _grads(recomputed, xs, combine)
    assert len(recomputes) == 3
    assert_bits([(name, u, v) for (name, u), (_, v) in zip(a, b)], context=dialect)
    _grads(kept, xs[:1], lambda ys: ys[0].sum())   # forward, backward: the buffer's
    assert len(recomputes) == 3


def test_kept_x_norm_dropped_by_eval(recomputes):
    shape = (2, 3, 4, 4)
    kept, recomputed = _pair_kept_recomputed(shape)
    x, g = torch.randn(shape), torch.randn(shape)
    out = []
    for m in (kept, recomputed):
        xr = x.clone().requires_grad_()
        y = m(xr)
        m.eval()                                   # frees the buffer before the backward
        y.backward(g)
        out.append(_np(xr.grad))
    assert len(recomputes) == 2
    assert_bits([("x.grad", out[0], out[1])])


def test_kept_x_norm_threads_share_a_module():
    """Threads training one module at once: a call that finds the buffer in use does
    without it; every thread's x.grad is the recomputing module's (bitwise)."""
    import threading
    shape = (4, 8, 6, 6)
    kept, recomputed = _pair_kept_recomputed(shape)
    torch.manual_seed(2)
    xs = [torch.randn(shape) * (1 + i) for i in range(6)]
    want = [_grads(recomputed, [x], lambda ys: ys[0].square().sum())[0][1] for x in xs]
    got = [None] * len(xs)

    def work(i):
        for _ in range(5):
            xr = xs[i].clone().requires_grad_()
            kept(xr).square().sum().backward()
            got[i] = _np(xr.grad)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert_bits([(f"thread {i} x.grad", got[i], want[i]) for i in range(len(xs))])


def test_kept_x_norm_copies_get_their_own_buffer():
    import copy
    m = DarknetBatchNorm2d(3)
    m2 = copy.deepcopy(m)
    m3 = pickle.loads(pickle.dumps(m))
    keys = {m._x_norm_cache, m2._x_norm_cache, m3._x_norm_cache}
    assert len(keys) == 3 and 0 not in keys
    assert DarknetBatchNorm2d(3, keep_x_norm=False)._x_norm_cache == 0
    with pytest.raises(TypeError, match="keep_x_norm"):
        DarknetBatchNorm2d(3, keep_x_norm="yes")
