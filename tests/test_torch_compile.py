"""torch.compile(fullgraph=True) of the Darknet modules: no graph break, eager's bits.

The custom ops are opaque to the compiler (registered fake implementations give
it the shapes), so the compiled module runs the same kernels: outputs,
gradients and running statistics must equal eager's bitwise.  A fresh inductor
cache directory makes every run compile from scratch; the time is printed.
"""
import os
import time
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _compare import assert_bits  # noqa: E402
import darknet_bn  # noqa: E402
from darknet_bn.torch import DarknetBatchNorm1d, DarknetBatchNorm2d  # noqa: E402


def _np(t):
    return t.detach().numpy().reshape(-1).copy()


def _exact_conv(conv):
    """Small integer weights and bias: with integer inputs every sum the conv takes is
    exact, so inductor's conv (another summation order than eager's on some CPUs) gives
    eager's bits, and the batchnorm after it is compared on the same input."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-3, 4, conv.weight.shape, generator=gen).float())
        conv.bias.copy_(torch.randint(-3, 4, conv.bias.shape, generator=gen).float())
    return conv


def _integers(*shape):
    return torch.randint(-4, 5, shape).float()


def _pair(cls, c, dialect):
    torch.manual_seed(0)
    a, b = cls(c, dialect=dialect), cls(c, dialect=dialect)
    with torch.no_grad():
        for m in (a, b):
            m.weight.copy_(torch.linspace(0.5, 1.5, c))
            m.bias.copy_(torch.linspace(-0.3, 0.3, c))
            m.running_var.fill_(1.0)
    return a, b


@pytest.fixture
def fresh_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("cls,shape", [(DarknetBatchNorm2d, (4, 6, 5, 7)),
                                       (DarknetBatchNorm1d, (8, 10))],
                         ids=["2d", "1d"])
@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab", "hankai"])
def test_compile_fullgraph_matches_eager(fresh_compiler, cls, shape, dialect):
    eager, compiled = _pair(cls, shape[1], dialect)
    t0 = time.perf_counter()
    fn = torch.compile(compiled, fullgraph=True)
    rng = np.random.default_rng(1)
    checks = []
    for step, mode in enumerate(("train", "train", "eval")):
        x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
        g = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
        for m in (eager, compiled):
            m.train(mode == "train")
            m.weight.grad = m.bias.grad = None
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, yc = eager(xe), fn(xc)
        ye.backward(g)
        yc.backward(g)
        if step == 0:
            print(f"{cls.__name__} {dialect}: first compiled step (compile + run) "
                  f"{time.perf_counter() - t0:.1f} s")
        checks += [(f"{step} {mode} output", _np(yc), _np(ye)),
                   (f"{step} {mode} x.grad", _np(xc.grad), _np(xe.grad)),
                   (f"{step} {mode} weight.grad", _np(compiled.weight.grad),
                    _np(eager.weight.grad)),
                   (f"{step} {mode} bias.grad", _np(compiled.bias.grad), _np(eager.bias.grad)),
                   (f"{step} running_mean", _np(compiled.running_mean), _np(eager.running_mean)),
                   (f"{step} running_var", _np(compiled.running_var), _np(eager.running_var))]
    assert int(compiled.num_batches_tracked) == int(eager.num_batches_tracked) == 2
    assert_bits(checks, context=f"{cls.__name__} {dialect}")


def test_compile_in_a_model(fresh_compiler):
    """conv -> Darknet BN -> ReLU, compiled whole (fullgraph): the BN's output and
    running statistics are eager's."""
    torch.manual_seed(0)

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(_exact_conv(torch.nn.Conv2d(3, 8, 3, padding=1)),
                                   DarknetBatchNorm2d(8, dialect="alexeyab"), torch.nn.ReLU())
    eager, compiled = model(), model()
    fn = torch.compile(compiled, fullgraph=True)
    x = _integers(2, 3, 9, 9)
    ye, yc = eager(x), fn(x)
    assert_bits([("output", _np(yc), _np(ye)),
                 ("running_var", _np(compiled[1].running_var), _np(eager[1].running_var))])


def test_compile_dynamic_batch(fresh_compiler):
    """Batch sizes that change between calls (dynamo recompiles with symbolic shapes;
    the fake implementations take them): still eager's bits."""
    eager, compiled = _pair(DarknetBatchNorm2d, 6, "pjreddie")
    fn = torch.compile(compiled, fullgraph=True)
    checks = []
    for n in (2, 3, 5):
        x = torch.randn(n, 6, 4, 3)
        xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        ye, yc = eager(xe), fn(xc)
        ye.sum().backward()
        yc.sum().backward()
        checks += [(f"N={n} output", _np(yc), _np(ye)), (f"N={n} x.grad", _np(xc.grad),
                                                          _np(xe.grad)),
                   (f"N={n} running_var", _np(compiled.running_var), _np(eager.running_var))]
    assert_bits(checks)


def test_compile_momentum_none_and_autocast(fresh_compiler):
    """fullgraph with momentum=None (the factor read from num_batches_tracked inside
    the op) and under CPU autocast (bfloat16 conv, float32 batchnorm): eager's bits."""
    def model():
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1),
                                DarknetBatchNorm2d(8, dialect="pjreddie", momentum=None))
        return m
    eager, compiled = model(), model()
    fn = torch.compile(compiled, fullgraph=True)
    checks = []
    for step in range(3):
        x = torch.randn(2, 3, 6, 6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ye, yc = eager(x), fn(x)
        assert ye.dtype == yc.dtype == torch.float32
        checks += [(f"{step} output", _np(yc), _np(ye)),
                   (f"{step} running_mean", _np(compiled[1].running_mean),
                    _np(eager[1].running_mean))]
    assert int(compiled[1].num_batches_tracked) == 3
    assert_bits(checks)


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab", "hankai"])
def test_jit_trace_and_torch_export_record_the_ops(dialect):
    """torch.jit.trace and torch.export record the custom ops, not constants: the
    traced/exported eval module run on a new input gives the module's bits for it."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3),
                                DarknetBatchNorm2d(4, dialect=dialect)).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2)
    x, x2 = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, (x,))
    assert "darknet_bn::batchnorm_infer" in str(traced.inlined_graph)
    # Warnings raised in the package's own files (not torch's deprecation notes, which
    # name the caller: a checkout's path may itself contain "darknet_bn").
    package = os.path.dirname(darknet_bn.__file__) + os.sep
    ours = [w for w in caught if str(w.filename).startswith(package)]
    assert not ours, [str(w.message) for w in ours]      # the module's checks warn not
    exported = torch.export.export(model, (x,))
    assert "darknet_bn.batchnorm_infer" in str(exported.graph)
    want = model(x2)
    assert_bits([("jit.trace", _np(traced(x2)), _np(want)),
                 ("torch.export", _np(exported.module()(x2)), _np(want))], context=dialect)


def _frozen(dialect):
    torch.manual_seed(2)
    model = torch.nn.Sequential(_exact_conv(torch.nn.Conv2d(3, 4, 3)),
                                DarknetBatchNorm2d(4, dialect=dialect)).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2)
    return model.requires_grad_(False)


def test_compile_eval_under_no_grad(fresh_compiler):
    """The eager eval fast path is not what dynamo traces: a fullgraph compile under
    no_grad holds the op and gives eager's bits on inputs it was not compiled with."""
    model = _frozen("alexeyab")
    fn = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        fn(_integers(2, 3, 8, 8))
        x = _integers(2, 3, 8, 8)
        assert_bits([("output", _np(fn(x)), _np(model(x)))])


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab", "hankai"])
def test_eval_fast_path_is_not_recorded_as_a_constant(dialect, monkeypatch):
    """Under no_grad with nothing requiring grad, an eager eval call skips the custom
    op (counted through the op's prologue). jit.trace, torch.export and make_fx of
    the same call still record the op: run on a new input, they give the module's
    bits for that input, not the traced input's."""
    import darknet_bn.torch as dt
    from torch.fx.experimental.proxy_tensor import make_fx
    calls = []
    real = dt._prepare
    monkeypatch.setattr(dt, "_prepare", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    model = _frozen(dialect)
    x, x2 = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want, want2 = model(x), model(x2)
        assert calls == []                                   # the fast path ran
        with torch.enable_grad():
            model[1].weight.requires_grad_(True)
            assert_bits([("op path", _np(model(x)), _np(want))], context=dialect)
            model[1].weight.requires_grad_(False)
        assert calls == ["batchnorm_infer"]
        traced = torch.jit.trace(model, (x,))
        exported = torch.export.export(model, (x,))
        graphed = make_fx(model)(x)
        recorded = [("jit.trace", traced), ("torch.export", exported.module()),
                    ("make_fx", graphed)]
        assert "darknet_bn::batchnorm_infer" in str(traced.inlined_graph)
        assert "darknet_bn.batchnorm_infer" in str(exported.graph)
        assert "darknet_bn.batchnorm_infer" in graphed.code
        assert not torch.equal(want, want2)
        assert_bits([(name, _np(f(x2)), _np(want2)) for name, f in recorded],
                    context=dialect)
