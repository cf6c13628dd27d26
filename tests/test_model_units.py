"""darknet_bn.darknet.model's building blocks: typed units refuse invalid states, and a
neutral op graph built by hand (as a TFLite or OpenVINO translator would) gives the
units the ONNX reader gives."""
import numpy as np
import pytest

from darknet_bn.darknet.model import (MODEL_INPUT, AffineUnit, BatchNormUnit, CheckError,
                                      Constant, ConvUnit, DenseUnit, GraphInput, OpGraph,
                                      OpNode, Quant, Unit, read_graph)

SEED = 20261207


def test_units_refuse_invalid_states():
    w = np.ones((4, 9))
    with pytest.raises(TypeError, match="abstract"):
        Unit(name="u")
    with pytest.raises(CheckError, match="bias of 3 values for 4 channels"):
        ConvUnit(name="c", weight=w, bias=np.zeros(3))
    with pytest.raises(CheckError, match="kernel shape"):
        ConvUnit(name="c", weight=w, kernel_shape=(4, 1, 2, 2))
    with pytest.raises(CheckError, match="weight of shape"):
        DenseUnit(name="d", weight=np.ones(4))
    with pytest.raises(CheckError, match="var of 3 values"):
        BatchNormUnit(name="b", weight=np.ones(4), bias=np.zeros(4), mean=np.zeros(4),
                      var=np.ones(3), eps=1e-5)
    with pytest.raises(CheckError, match="precision"):
        AffineUnit(name="a", alpha=np.ones(4), beta=np.zeros(4), precision="float8")
    with pytest.raises(CheckError, match="run_module without a module"):
        BatchNormUnit(name="b", weight=np.ones(4), bias=np.zeros(4), mean=np.zeros(4),
                      var=np.ones(4), eps=1e-5, run_module=True)
    with pytest.raises(TypeError):
        ConvUnit("c", w)                                # keywords only


def test_affine_of_a_batchnorm_unit_is_its_formula():
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")
    scale, bias, mean = rng.normal(size=(3, 5))
    var = rng.uniform(0.1, 2, 5)
    unit = BatchNormUnit(name="b", weight=scale, bias=bias, mean=mean, var=var, eps=1e-3)
    alpha, beta = unit.affine()
    x = rng.normal(size=5)
    # float64 on both sides: the two forms of one formula agree to a few ulps of double
    np.testing.assert_allclose(alpha * x + beta, scale * (x - mean) / np.sqrt(var + 1e-3)
                               + bias, rtol=1e-12, atol=1e-12)


def _conv_graph(quant=None):
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    params = {f"p{i}": Constant(rng.uniform(0.5, 1.5, 4).astype(np.float32)) for i in range(4)}
    constants = {"w": Constant(w, "float16", quant), **params,
                 "shape": Constant(np.array([1, 4, 1, 1], np.int64))}
    nodes = [  # in no particular order: the reader sorts them
        OpNode("LeakyRelu", "act", ("bn",), ("y",), {"alpha": 0.1}),
        OpNode("BatchNormalization", "bn", ("c", "p0", "p1", "p2", "p3"), ("bn",),
               {"epsilon": 1e-4}),
        OpNode("Conv", "conv", ("x", "w"), ("c",), {}),
        OpNode("Add", "other", ("x2", "folded"), ("z",), {}),
        OpNode("Reshape", "r", ("p1", "shape"), ("folded",), {}),
    ]
    return OpGraph(nodes, constants, ("x", "x2")), w


def test_a_hand_built_op_graph_gives_units():
    graph, w = _conv_graph()
    model = read_graph(graph, "hand-built")
    conv, bn, affine = model.units
    assert isinstance(conv, ConvUnit) and conv.precision == "float16"
    assert np.array_equal(conv.weight, w.reshape(4, -1).astype(np.float64))
    assert conv.sources == frozenset([MODEL_INPUT])
    assert isinstance(bn, BatchNormUnit) and bn.eps == pytest.approx(1e-4)
    assert bn.sources == frozenset([conv]) and model.consumers[conv] == [bn]
    # a per-channel Add on the second input: a batchnorm in affine form fed by it
    assert isinstance(affine, AffineUnit)
    assert affine.sources == frozenset([GraphInput("x2")])


def test_a_quantized_constant_carries_its_steps_into_the_unit():
    graph, _ = _conv_graph(Quant(scale=np.float32(0.1), zero_point=0))
    unit = read_graph(graph, "hand-built").units[0]
    steps = unit.quantized["weight"].steps
    assert steps.shape == unit.weight.shape and np.all(steps == np.float32(0.1))
    assert unit.quantized["weight"].description == "int8, per tensor"
