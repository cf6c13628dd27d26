"""OpenVINO IR models (``.xml`` + ``.bin``) into the neutral op graph
(``graph.OpGraph``), read with OpenVINO's own reader (``openvino.Core().read_model``,
the ``openvino`` extra).

The ``.bin`` is the ``.xml``'s name with ``.bin``; it must exist and hold exactly the
bytes the ``.xml``'s constants address (a short or long file is another model's).
The ops, in ``model.get_ordered_ops()`` order, translate by ``TRANSLATIONS`` into
ONNX's vocabulary (the IR's layouts are ONNX's: NCHW, weights (out, in, kh, kw)):

- ``Constant`` -> a ``Constant`` (``op.get_data()``); f16 keeps precision float16,
  so ``save_model``'s default compression (``Constant`` f16 -> ``Convert`` f32) is
  judged in float16; ``Convert`` -> ``Cast``;
- ``Convolution`` -> ``Conv``; ``GroupConvolution`` (weights (G, out/G, in/G, kh,
  kw)) -> ``Reshape`` of the weights to (out, in/G, kh, kw) and a grouped ``Conv``;
  ``MatMul`` -> ``Gemm`` (``transpose_b`` as ``transB``) or ``MatMul``;
- ``Add``/``Multiply``/``Subtract``/``Divide`` -> ``Add``/``Mul``/``Sub``/``Div``
  (the bias ``Add`` after a ``Convolution``, batchnorm as ``Multiply``/``Add``);
  ``Reshape``, ``Transpose``, ``Squeeze``, ``Unsqueeze``, ``Sqrt``, ``Negative``:
  ONNX's, folded on constants;
- ``Parameter``: the model inputs; the ops of ``DATA_FLOW`` as they are; any other
  op is a ``CheckError`` naming it.
"""
import hashlib
import os
import xml.etree.ElementTree as ElementTree

import numpy as np

from ..._extras import missing_package
from ..._validate import error_text
from .graph import Constant, Origin, OpGraph, OpNode, read_graph
from .units import CheckError

#: IR element types that keep a narrower float precision.
_PRECISIONS = {"f16": "float16", "bf16": "bfloat16"}
#: ``Convert``'s destination types that ``Cast`` folds (others stop the folding).
_CAST_TO = {"f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64"}

#: Ops that carry no parameters check reads: data flow only.
DATA_FLOW = frozenset({
    "Result", "PRelu", "Relu", "Sigmoid", "Swish", "Mish", "HSwish", "HSigmoid", "Clamp",
    "Elu", "Gelu", "Tanh", "Exp", "Log", "Abs", "Floor", "Ceiling", "Round", "Erf",
    "Power", "Maximum", "Minimum", "SoftMax", "Softmax", "LogSoftmax", "MaxPool",
    "AvgPool", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd",
    "Concat", "Split", "VariadicSplit", "Interpolate", "Pad", "ShapeOf", "Gather",
    "GatherND", "GatherElements", "Slice", "StridedSlice", "Broadcast", "Tile", "Range",
    "Select", "Equal", "NotEqual", "Greater", "GreaterEqual", "Less", "LessEqual",
    "LogicalAnd", "LogicalOr", "LogicalNot", "FloorMod", "Mod", "SquaredDifference",
    "TopK", "NonMaxSuppression", "NonZero", "ScatterUpdate", "ScatterNDUpdate",
    "ScatterElementsUpdate", "DepthToSpace", "SpaceToDepth", "ShuffleChannels", "Sign",
    "FakeQuantize", "Convert_like", "ConvertLike", "RegionYolo", "ReorgYolo",
    "DetectionOutput", "Proposal", "PriorBox", "PriorBoxClustered", "Squeeze",
    "Unsqueeze", "Reshape", "Transpose",
})

#: IR ops and ONNX's names for them (inputs as they are).
RENAMED = {"Add": "Add", "Multiply": "Mul", "Subtract": "Sub", "Divide": "Div",
           "Sqrt": "Sqrt", "Negative": "Neg", "Convolution": "Conv"}


def import_openvino(what):
    try:
        import openvino
    except ImportError:
        raise CheckError(f"{what}: {missing_package('openvino', 'reading OpenVINO IR')}") \
            from None
    return openvino


def bin_path(xml_path):
    """The ``.bin`` beside an ``.xml``: its name with ``.bin`` for the suffix."""
    root, _ = os.path.splitext(os.fspath(xml_path))
    return root + ".bin"


def addressed_bytes(xml_path):
    """The bytes the ``.xml``'s constants address in the ``.bin`` (the largest
    ``offset + size`` of a ``Const`` layer's data), or None if unreadable."""
    try:
        root = ElementTree.parse(xml_path).getroot()
    except (ElementTree.ParseError, OSError):
        return None
    end = 0
    for layer in root.iter("layer"):
        data = layer.find("data")
        if layer.get("type") == "Const" and data is not None and data.get("size"):
            try:
                end = max(end, int(data.get("offset", 0)) + int(data.get("size")))
            except ValueError:
                return None
    return end


def load_openvino(path):
    """The ``openvino.Model`` of the IR ``.xml`` at ``path`` and its ``.bin``."""
    where = os.fspath(path)
    weights = bin_path(where)
    if not os.path.isfile(weights):
        raise CheckError(f"{where}: an OpenVINO IR needs its .bin beside it "
                         f"({os.path.basename(weights)} does not exist)")
    expected, size = addressed_bytes(where), os.path.getsize(weights)
    if expected is not None and size != expected:
        raise CheckError(f"{where}: {os.path.basename(weights)} holds {size} bytes, the "
                         f".xml's constants address {expected}: not this model's .bin "
                         "(truncated, or another model's)")
    ov = import_openvino(where)
    try:
        return ov.Core().read_model(where, weights)
    except Exception as e:
        raise CheckError(f"{where}: not a readable OpenVINO IR ({type(e).__name__}: "
                         f"{error_text(e.args[0] if e.args else e, 160)})") from None


def _tensor(output):
    node = output.get_node()
    return f"{node.get_name()}:{output.get_index()}"


def _element_type(op):
    return op.get_output_element_type(0).get_type_name()


def const_layers(xml_path):
    """``{(element type, shape, bytes): [layer ids]}``: the ``.xml``'s ``Const`` layers
    by what the ``.bin`` holds for them (OpenVINO renames unnamed layers when it reads a
    model, so a constant is found by its content)."""
    root = ElementTree.parse(xml_path).getroot()
    with open(bin_path(xml_path), "rb") as f:
        data = f.read()
    found = {}
    for layer in root.iter("layer"):
        d = layer.find("data")
        if layer.get("type") == "Const" and d is not None and d.get("size"):
            offset, size = int(d.get("offset", 0)), int(d.get("size"))
            shape = tuple(int(v) for v in (d.get("shape") or "").split(",") if v)
            key = (d.get("element_type"), shape,
                   hashlib.blake2b(data[offset:offset + size], digest_size=16).digest())
            found.setdefault(key, []).append(layer.get("id"))
    return found


#: OpenVINO element type names as the ``.xml`` writes them.
_XML_TYPES = {"f32": "f32", "f16": "f16", "float": "f32", "half": "f16"}


def const_origin(op, value, layers):
    """The ``Origin`` of a ``Constant`` op: ``"layer ID"`` of the one ``Const`` layer
    holding its bytes, or why it has none."""
    element = _XML_TYPES.get(_element_type(op), _element_type(op))
    digest = hashlib.blake2b(np.ascontiguousarray(value).tobytes(), digest_size=16).digest()
    ids = layers.get((element, tuple(value.shape), digest), [])
    if len(ids) != 1:
        why = ("a constant several Const layers of the .xml hold" if ids else
               "a constant OpenVINO computed when reading the .xml")
        return Origin(why=f"{why} ({op.get_friendly_name()})")
    return Origin(f"layer {ids[0]}", (), tuple(value.shape), str(value.dtype))


def openvino_graph(model, where, layers=None):
    """The ``OpGraph`` of an ``openvino.Model`` (module docstring); ``layers``
    (``const_layers``): where each constant is stored."""
    constants, nodes, inputs = {}, [], []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        name = op.get_friendly_name()
        ins = tuple(_tensor(i.get_source_output()) for i in op.inputs())
        outs = tuple(_tensor(o) for o in op.outputs())
        attrs = op.get_attributes()
        if kind == "Constant":
            value = np.array(op.get_data(), copy=True)
            constants[outs[0]] = Constant(
                value, _PRECISIONS.get(_element_type(op), "float32"),
                origin=None if layers is None else const_origin(op, value, layers))
        elif kind == "Parameter":
            inputs.append(outs[0])
        elif kind == "Convert":
            to = _CAST_TO.get(str(attrs.get("destination_type")), "unsupported")
            nodes.append(OpNode("Cast", name, ins, outs, {"to": to}))
        elif kind == "GroupConvolution":
            g, o, i, *k = op.get_input_shape(1)          # (G, out/G, in/G, kh, kw)
            shape = f"{name}:shape"
            constants[shape] = Constant(np.array([g * o, i, *k], np.int64))
            nodes += [OpNode("Reshape", f"{name}/weights", (ins[1], shape), (f"{name}:w",)),
                      OpNode("Conv", name, (ins[0], f"{name}:w"), outs, {"group": int(g)})]
        elif kind == "MatMul":
            if attrs.get("transpose_a"):
                nodes.append(OpNode("MatMul", name, ins[::-1], outs))    # not x @ W
            else:
                nodes.append(OpNode("Gemm", name, ins, outs,
                                    {"transB": int(bool(attrs.get("transpose_b")))}))
        elif kind in RENAMED:
            nodes.append(OpNode(RENAMED[kind], name, ins, outs))
        elif kind in DATA_FLOW:
            nodes.append(OpNode(kind, name, ins, outs, {}))
        else:
            raise CheckError(f"{where}: OpenVINO op {kind} ({name!r}) is not one check "
                             "reads; it reads convolutions, matrix products, elementwise "
                             "batchnorms and the data-flow ops around them")
    return OpGraph(nodes, constants, tuple(inputs))


def read_openvino(path):
    """``ModelUnits`` of the OpenVINO IR ``.xml`` at ``path`` (and its ``.bin``)."""
    where = os.fspath(path)
    model = load_openvino(where)
    return read_graph(openvino_graph(model, where, const_layers(where)), where)
