"""Quantized parameters: the dequantization math, steps through the op graph into units,
and the int8 judgement's boundary (half a step) on a hand-quantized QDQ conv.  The
files real tools write are in test_check_formats.py; here the values are set by hand
so the boundary can be placed exactly."""
import numpy as np
import pytest

from darknet_bn.darknet.model import Constant, OpGraph, OpNode, read_graph
from darknet_bn.darknet.model.quantization import dequantize

import _check_models as models


def test_dequantize_per_channel_steps_and_saturation():
    q = np.array([[-128, 0, 127], [5, -5, 1]], np.int8)
    value, quant = dequantize(q, [0.5, 0.25], [0, 1], 0, "int8", "w")
    assert np.array_equal(value, [[-64.0, 0.0, 63.5], [1.0, -1.5, 0.0]])
    assert np.array_equal(quant.steps(q.shape), [[0.5] * 3, [0.25] * 3])
    assert np.array_equal(quant.saturated, [[True, False, True], [False, False, False]])
    assert quant.describe() == "int8, per channel"
    _, per_tensor = dequantize(q, 0.1, 0, 0, "int8", "w")
    assert per_tensor.describe() == "int8, per tensor" and per_tensor.axis is None


@pytest.mark.parametrize("scale, zero, words", [
    ([0.0, 1.0], 0, "finite and nonzero"), ([np.inf, 1.0], 0, "finite and nonzero"),
    ([1.0, 1.0], [0, 0, 0], "3 zero points for 2 scales"),
    ([1.0, 1.0, 1.0], 0, "3 quantization parameters for axis 0")])
def test_bad_quantization_parameters_are_named(scale, zero, words):
    with pytest.raises(ValueError, match=words):
        dequantize(np.zeros((2, 3), np.int8), scale, zero, 0, "int8", "tensor 'w'")


def test_a_quantized_conv_unit_carries_its_steps():
    q = np.arange(-16, 16, dtype=np.int8).reshape(2, 1, 4, 4)
    w, wq = dequantize(q, [0.5, 0.125], 0, 0, "int8", "w")
    b, bq = dequantize(np.array([3, -7], np.int32), [0.01, 0.02], 0, 0, "int32", "b")
    graph = OpGraph([OpNode("Conv", "c0", ("x", "w", "b"), ("y",))],
                    {"w": Constant(w, "int8", wq), "b": Constant(b, "int8", bq)}, ("x",))
    unit = read_graph(graph, "hand-built").units[0]
    assert unit.precision == "int8" and unit.weight.shape == (2, 16)
    assert np.array_equal(unit.quantized["weight"].steps, np.repeat([[0.5], [0.125]], 16, 1))
    assert np.array_equal(unit.quantized["bias"].steps, [0.01, 0.02])
    assert unit.quantized["weight"].description == "int8, per channel"


def _qdq_conv(cfg, weights, fork, bump=0.0, clip=False):
    """A QDQ ONNX conv holding ``fork``'s folded conv of a one-layer cfg, quantized by
    hand per channel (symmetric, max|w|/127); ``bump``: one weight of channel 1 moved by
    that many steps (through its float value); ``clip``: channel 2's scale too small,
    so its largest weight sits clipped at 127."""
    from onnx import TensorProto, helper, numpy_helper

    from darknet_bn.darknet import read_weights
    from darknet_bn.darknet.check.judging import folded_reference
    from darknet_bn.dialects import get_dialect
    record = read_weights(cfg, weights, dialect=fork, layer_weights=True).layer(0)
    W, b = folded_reference(record, get_dialect(fork))
    scale = np.abs(W).max(axis=1) / 127
    if clip:
        scale[2] *= 0.9
    q = np.clip(np.round(W / scale[:, None]), -127, 127)
    q[1, 0] += bump
    bias_scale = scale * 0.01
    qb = np.round(b / bias_scale)
    shape = (W.shape[0], record.weights.size // W.shape[0] // 9, 3, 3)
    inits = [numpy_helper.from_array(q.reshape(shape).astype(np.int8), "wq"),
             numpy_helper.from_array(scale.astype(np.float32), "ws"),
             numpy_helper.from_array(qb.astype(np.int32), "bq"),
             numpy_helper.from_array(bias_scale.astype(np.float32), "bs")]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0),
             helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"], axis=0),
             helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [1, shape[1], 8, 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("fork", ["alexeyab", "pjreddie"])
def test_half_a_step_is_the_boundary(fork, tmp_path):
    pytest.importorskip("onnx")
    from darknet_bn.darknet import check_model
    cfg = tmp_path / "one.cfg"
    cfg.write_text(models.cfg_text(8, models.conv(4, 3)))
    weights = tmp_path / "one.weights"
    models.synthesize_weights(cfg, fork, weights, 11)
    row = check_model(_qdq_conv(cfg, weights, fork), cfg, weights, dialect=fork).layers[0]
    assert row.ok and row.precision == "int8" and row.max_rel_error <= 1.0, row
    assert row.quantization == "int8, per channel, int32 biases", row
    for bump in (1, -1):               # one step off: beyond half a step on that weight
        row = check_model(_qdq_conv(cfg, weights, fork, bump=bump), cfg, weights,
                          dialect=fork).layers[0]
        assert not row.ok and row.worst_channel == 1 and 1.0 < row.max_rel_error <= 3.0, row
        assert row.diagnosis.startswith("not a known converter mistake"), row.diagnosis


def test_clipped_weights_are_named(tmp_path):
    pytest.importorskip("onnx")
    from darknet_bn.darknet import check_model
    cfg = tmp_path / "one.cfg"
    cfg.write_text(models.cfg_text(8, models.conv(4, 3)))
    weights = tmp_path / "one.weights"
    models.synthesize_weights(cfg, "alexeyab", weights, 12)
    row = check_model(_qdq_conv(cfg, weights, "alexeyab", clip=True), cfg, weights,
                      dialect="alexeyab").layers[0]
    assert not row.ok and row.worst_channel == 2, row
    assert row.diagnosis.startswith("weights saturate in int8 at channels [2]"), row.diagnosis
