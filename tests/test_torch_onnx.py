"""ONNX export of models holding DarknetBatchNorm2d/1d, with both of torch's exporters.

The model is the fork's bn-zoo network (``data/golden/cfg/<fork>/bn-zoo.cfg`` and its
``.weights``: ``[convolutional]``, ``[batchnorm]``, ``[connected]`` with batchnorm,
maxpool, shortcut, route, upsample), built from nn.Conv2d/nn.Linear and the modules
``from_darknet`` returns.  Checked: the exported graph holds only standard ONNX ops,
``check_model`` of the file against the cfg/.weights passes, onnxruntime's output
agrees with PyTorch's eval output, and every batchnorm layer exported alone is within
``check``'s tolerance of Darknet's bits.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")               # torch.onnx.export's default (dynamo)

from torch import nn  # noqa: E402

from darknet_bn.darknet import parse_cfg  # noqa: E402
from darknet_bn.darknet.check import TOLERANCE, check_model  # noqa: E402
from darknet_bn.golden import data_dir  # noqa: E402
from darknet_bn.torch import DarknetBatchNorm1d, DarknetBatchNorm2d, from_darknet  # noqa: E402

FORKS = ("pjreddie", "alexeyab")
EXPORTERS = {"dynamo": True, "torchscript": False}
#: ONNX's standard operator set (the default domain): no custom domain may appear.
STANDARD = {s.name for s in onnx.defs.get_all_schemas() if s.domain == ""}
SEED = 20


def _files(fork):
    root = data_dir() / "cfg" / fork
    return root / "bn-zoo.cfg", root / "bn-zoo.weights"


class BnZoo(nn.Module):
    """bn-zoo.cfg as PyTorch layers (Darknet's pad=1 is padding size//2; leaky 0.1)."""

    def __init__(self, fork):
        super().__init__()
        cfg, weights = _files(fork)
        net = parse_cfg(cfg, dialect=fork)
        raw = np.fromfile(weights, dtype="<f4", offset=20)      # header: 0.2, 64-bit seen
        bn = from_darknet(cfg, weights, dialect=fork)
        spec = {s.index: s for s in net.layers}

        def block(i, name, n):
            return torch.from_numpy(raw[spec[i].offsets[name]:][:n].copy())

        def conv(i):
            s = spec[i]
            m = nn.Conv2d(s.c, s.filters, s.size, s.stride, s.size // 2, bias=i not in bn)
            with torch.no_grad():
                m.weight.copy_(block(i, "weights", m.weight.numel()).view(m.weight.shape))
                if m.bias is not None:
                    m.bias.copy_(block(i, "biases", s.filters))
            return m

        def dense(i):
            s = spec[i]
            m = nn.Linear(s.inputs, s.outputs, bias=i not in bn)
            with torch.no_grad():
                m.weight.copy_(block(i, "weights", m.weight.numel()).view(m.weight.shape))
                if m.bias is not None:
                    m.bias.copy_(block(i, "biases", s.outputs))
            return m

        self.conv0, self.bn0, self.bn1 = conv(0), bn[0], bn[1]
        self.conv3, self.bn3, self.conv4 = conv(3), bn[3], conv(4)
        self.conv7, self.bn7, self.bn9 = conv(7), bn[7], bn[9]
        self.fc11, self.bn11, self.fc12 = dense(11), bn[11], dense(12)
        self.act = nn.LeakyReLU(0.1)

    def forward(self, x):
        x = self.bn1(self.act(self.bn0(self.conv0(x))))           # layers 0, 1
        l2 = nn.functional.max_pool2d(x, 2, 2)
        l3 = self.act(self.bn3(self.conv3(l2)))
        l5 = self.conv4(l3) + l3                                  # shortcut from=-2
        x = torch.cat([l5, l2], 1)                                # route -1,-4
        x = self.act(self.bn7(self.conv7(x)))
        x = self.bn9(nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
        x = nn.functional.max_pool2d(x, 4, 4).flatten(1)
        x = self.act(self.bn11(self.fc11(x)))
        return self.fc12(x)


def _export(model, args, path, exporter):
    torch.onnx.export(model, args, str(path), dynamo=EXPORTERS[exporter])
    return onnx.load(str(path))


def _run(path, graph, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {graph.graph.input[0].name: x})[0]


def _ops(graph):
    return {(n.domain or "", n.op_type) for n in graph.graph.node}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("fork", FORKS)
def test_bn_zoo_export_checks_and_runs(fork, exporter, tmp_path):
    """The whole network: standard ops only, ``check_model`` ok (``darknet-bn check``
    exits 0 exactly then), and onnxruntime's output within a float32-derived bound
    of PyTorch's eval output (printed: the max difference relative to max |y|)."""
    model = BnZoo(fork).eval()
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")
    x = (rng.standard_normal((2, 3, 32, 32)) * 2).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    path = tmp_path / f"bn-zoo-{fork}-{exporter}.onnx"
    graph = _export(model, (torch.from_numpy(x),), path, exporter)
    ops = _ops(graph)
    assert all(domain == "" and op in STANDARD for domain, op in ops), ops
    cfg, weights = _files(fork)
    report = check_model(str(path), cfg, weights, dialect=fork)
    assert report.ok, "\n".join(report.format_table())     # darknet-bn check: exit 0
    y = _run(path, graph, x)
    rel = float(np.abs(y - ref).max() / np.abs(ref).max())
    print(f"{fork} {exporter}: ops {sorted(op for _, op in ops)}; onnxruntime vs PyTorch "
          f"eval, max |diff| / max |y| = {rel:.3g} ({rel / 2 ** -24:.1f} u)")
    # 12 layers, each within TOLERANCE (8u) of the terms it sums (test below); the
    # network's outputs are of the size of its terms, so a bound of 12 * 8u, doubled
    # for the convs' own summation order, holds whenever every layer is right.
    assert rel <= 2 * 12 * TOLERANCE


def _layer_error(y, ref, module, z):
    """check's error: |y - ref| / (|a*z| + |a*mean| + |b|), a = weight/denominator."""
    d = module.dialect
    v = module.running_var.detach().double().numpy()
    den = np.sqrt(v + float(d.normalize_eps)) if d.normalize_eps_in_sqrt else \
        np.sqrt(v) + float(d.normalize_eps)
    a = module.weight.detach().double().numpy() / den
    shape = (1, -1) + (1,) * (z.ndim - 2)
    a, mean = a.reshape(shape), module.running_mean.detach().double().numpy().reshape(shape)
    b = module.bias.detach().double().numpy().reshape(shape)
    terms = np.abs(a * z) + np.abs(a * mean) + np.abs(b)
    return float((np.abs(y.astype(np.float64) - ref) / terms).max())


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("fork", FORKS)
def test_each_layer_within_check_tolerance(fork, exporter, tmp_path):
    """Every batchnorm module of bn-zoo exported alone (the eval form as ONNX's
    BatchNormalization, or folded) and run by onnxruntime on its own input in the
    network: within TOLERANCE of the module's (Darknet's) output."""
    model = BnZoo(fork).eval()
    rng = np.random.default_rng(SEED + 1)
    print(f"seed {SEED + 1}")
    inputs = {}
    hooks = [m.register_forward_hook(lambda mod, args, out, n=n: inputs.__setitem__(n, args[0]))
             for n, m in model.named_children() if n.startswith("bn")]
    with torch.no_grad():
        model(torch.from_numpy((rng.standard_normal((2, 3, 32, 32)) * 2).astype(np.float32)))
    for h in hooks:
        h.remove()
    assert len(inputs) == 6
    worst = 0.0
    for name, z in inputs.items():
        module = getattr(model, name)
        assert isinstance(module, DarknetBatchNorm1d if name == "bn11" else DarknetBatchNorm2d)
        path = tmp_path / f"{name}.onnx"
        graph = _export(module, (z,), path, exporter)
        assert {op for _, op in _ops(graph)} == {"BatchNormalization"}
        with torch.no_grad():
            ref = module(z).double().numpy()
        err = _layer_error(_run(path, graph, z.numpy()), ref, module, z.double().numpy())
        assert err <= TOLERANCE, (name, err)
        worst = max(worst, err)
    print(f"{fork} {exporter}: worst layer error {worst:.3g} ({worst / 2 ** -24:.2f} u)")


def _bn_attrs(graph):
    node = next(n for n in graph.graph.node if n.op_type == "BatchNormalization")
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
    eps = next(a.f for a in node.attribute if a.name == "epsilon")
    return eps, consts[node.input[4]]


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("fork", FORKS)
def test_exported_batchnormalization_is_batchnorm_state_dict(fork, exporter, tmp_path):
    """The BatchNormalization node holds export.batchnorm_state_dict's form bitwise:
    AlexeyAB eps .00001f and the variance as it is, pjreddie eps 0 and the variance
    (sqrt(v) + .000001f)**2 (float64, rounded once)."""
    from darknet_bn.darknet import read_weights
    from darknet_bn.darknet.export import batchnorm_state_dict
    cfg, weights = _files(fork)
    rec = next(r for r in read_weights(cfg, weights, dialect=fork).layers if r.index == 9)
    module = from_darknet(cfg, weights, dialect=fork)[9]
    graph = _export(module, (torch.randn(2, rec.channels, 4, 4),), tmp_path / "bn.onnx",
                    exporter)
    eps, var = _bn_attrs(graph)
    state, want_eps = batchnorm_state_dict(rec, dialect=fork)
    assert np.float32(eps) == np.float32(want_eps)
    assert np.array_equal(var.view(np.int32), state["running_var"].view(np.int32))


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_training_mode_export_is_an_error(exporter, tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), DarknetBatchNorm2d(4)).train()
    kwargs = {"dynamo": EXPORTERS[exporter]}
    if exporter == "torchscript":
        kwargs["training"] = torch.onnx.TrainingMode.TRAINING
    with pytest.raises(Exception) as e:
        torch.onnx.export(model, (torch.randn(2, 3, 8, 8),), str(tmp_path / "t.onnx"),
                          **kwargs)
    chain, err = [], e.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__ or err.__context__
    assert any("call model.eval() before torch.onnx.export" in text for text in chain), chain
    assert not (tmp_path / "t.onnx").exists()


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_hankai_module_exports_alexeyabs_form(exporter, tmp_path):
    """hank-ai's module exports as AlexeyAB's: BatchNormalization with eps .00001f and
    the rolling variance as it is (what hank-ai's own exporter writes with -dontfuse);
    onnxruntime within check's tolerance of the module's (Darknet's C++) output."""
    seed = SEED + 2
    rng = np.random.default_rng(seed)
    print(f"seed {seed}")
    c = 24
    module = DarknetBatchNorm2d(c, dialect="hankai").eval()
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32)))
        module.bias.copy_(torch.from_numpy(rng.normal(0, 0.5, c).astype(np.float32)))
        module.running_mean.copy_(torch.from_numpy(rng.normal(0, 1, c).astype(np.float32)))
        module.running_var.copy_(torch.from_numpy((10 ** rng.uniform(-6, 1, c)).astype(
            np.float32)))
    z = torch.from_numpy((rng.standard_normal((2, c, 5, 7)) * 2).astype(np.float32))
    path = tmp_path / "hankai.onnx"
    graph = _export(module, (z,), path, exporter)
    assert {op for _, op in _ops(graph)} == {"BatchNormalization"}
    eps, var = _bn_attrs(graph)
    assert np.float32(eps) == np.float32(1e-5)
    want = module.running_var.numpy()
    assert np.array_equal(var.view(np.int32), want.view(np.int32))
    with torch.no_grad():
        ref = module(z).double().numpy()
    err = _layer_error(_run(path, graph, z.numpy()), ref, module, z.double().numpy())
    print(f"hankai {exporter}: layer error {err:.3g} ({err / 2 ** -24:.2f} u)")
    assert err <= TOLERANCE
