"""Training for real: examples/train_darknet_bn.py's model, converted, trained with SGD.

The Darknet modules' rolling statistics after the run must be exactly what
BatchNormLayer computes from the same batchnorm inputs (captured with forward
pre-hooks and replayed, bitwise), and must differ from nn.BatchNorm2d's.
"""
import copy
import filecmp
import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from _compare import assert_bits  # noqa: E402
from darknet_bn import BatchNormLayer  # noqa: E402
from darknet_bn.torch import DarknetBatchNorm2d, convert_batchnorm  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DATA = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg"


def _example(name="train_darknet_bn"):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("dialect", ["pjreddie", "alexeyab", "hankai"])
def test_training_with_sgd(dialect):
    ex = _example()
    reference = ex.make_model()
    model = convert_batchnorm(copy.deepcopy(reference), dialect=dialect)
    bns = {i: m for i, m in enumerate(model) if isinstance(m, DarknetBatchNorm2d)}
    assert sorted(bns) == [1, 5]
    start = {i: (m.running_mean.clone(), m.running_var.clone(), m.weight.detach().clone())
             for i, m in bns.items()}
    inputs = {i: [] for i in bns}
    hooks = [m.register_forward_pre_hook(
        lambda mod, args, i=i: inputs[i].append(args[0].detach().numpy().copy()))
        for i, m in bns.items()]
    steps, subdivisions = 3, 2
    losses = ex.train(model, steps, subdivisions=subdivisions)
    for h in hooks:
        h.remove()
    ex.train(reference, steps, subdivisions=subdivisions)
    assert len(losses) == steps and all(np.isfinite(losses))
    checks = []
    for i, m in bns.items():
        assert len(inputs[i]) == steps * subdivisions == int(m.num_batches_tracked)
        n, c, h, w = inputs[i][0].shape
        layer = BatchNormLayer(n, w, h, c, dialect=dialect, layer_type="convolutional")
        layer.rolling_mean[:] = start[i][0].numpy()
        layer.rolling_variance[:] = start[i][1].numpy()
        for x in inputs[i]:
            layer.forward(x.reshape(-1), train=True)
        checks += [(f"layer {i} running_mean", m.running_mean.numpy(), layer.rolling_mean),
                   (f"layer {i} running_var", m.running_var.numpy(), layer.rolling_variance)]
        assert not torch.equal(m.weight.detach(), start[i][2])          # SGD moved the scales
        assert not torch.equal(m.running_mean, reference[i].running_mean)
        assert not torch.equal(m.running_var, reference[i].running_var)
    assert_bits(checks, context=dialect)


def test_example_runs(capsys):
    _example().main(["--dialect", "alexeyab", "--steps", "1"])
    out = capsys.readouterr().out
    assert "running_var" in out and "Darknet alexeyab" in out


# examples/darknet_round_trip.py: .cfg/.weights -> PyTorch -> one step -> .weights -> check
@pytest.mark.parametrize("fork", ["alexeyab", "pjreddie"])
def test_round_trip_example(fork, tmp_path, capfd):
    pytest.importorskip("onnxscript")          # torch.onnx.export's default exporter
    status = _example("darknet_round_trip").main(["--dialect", fork, "--out", str(tmp_path)])
    out = capfd.readouterr().out
    assert "untouched.weights: byte-identical" in out
    assert filecmp.cmp(DATA / fork / "bn-zoo.weights", tmp_path / "untouched.weights",
                       shallow=False)
    # the step changed the weights, and the header was copied from the input
    tuned = (tmp_path / "tuned.weights").read_bytes()
    original = (DATA / fork / "bn-zoo.weights").read_bytes()
    assert len(tuned) == len(original) and tuned != original
    assert tuned[:20] == original[:20]          # version 0.2: three int32 and a 64-bit seen
    assert "6 of 6 layers within the tolerance" in out, out
    assert status == 0
