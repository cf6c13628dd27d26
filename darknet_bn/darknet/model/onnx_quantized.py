"""Quantized ONNX graphs (``onnxruntime.quantization``'s QDQ and QOperator formats,
dynamic quantization) as the float graph they stand for, with quantized constants.

``dequantized_graph(graph, where)`` rewrites an ``OpGraph`` (``onnx_reader``'s):

- ``DequantizeLinear`` of stored integers (int8/uint8 weights per tensor or per
  channel, int32 biases): a ``Constant`` holding the dequantized values and their
  ``Quant`` (steps, saturation);
- ``QLinearConv``: a ``Conv`` of its input, with its weights and its int32 bias
  (scale: input scale x weight scale) dequantized; ``QLinearMatMul``: a
  ``MatMul``;
- ``ConvInteger`` / ``MatMulInteger`` (dynamic quantization) followed by a ``Cast``
  and a ``Mul`` by (input scale x weight scale): one ``Conv`` / ``MatMul`` with the
  weights dequantized by the weight scale;
- ``QuantizeLinear``, ``DequantizeLinear`` and ``DynamicQuantizeLinear`` of data:
  ``Identity`` (activation quantization is not judged: check judges parameters),
  and the other ``QLinear*`` ops (``com.microsoft``'s) data flow.

Every other node is kept.  A quantized op whose parameters are not constants is a
``CheckError`` naming the node.
"""
import numpy as np

from .graph import Constant, OpGraph, OpNode, Origin, Step
from .quantization import QUANTIZED, dequantize
from .units import CheckError

#: Quantize/dequantize of activations: the data passes (its rounding is not judged).
ACTIVATION_QUANTIZERS = frozenset({"QuantizeLinear", "DequantizeLinear",
                                   "DynamicQuantizeLinear"})

#: numpy dtype kind + size -> storage type name.
_STORAGE = {np.dtype(t): t for t in ("int8", "uint8", "int16", "uint16", "int32")}


class _Rewrite:
    def __init__(self, graph, where):
        self.graph, self.where = graph, where
        self.constants = dict(graph.constants)
        self.consumers = {}
        for node in graph.nodes:
            for t in node.inputs:
                if t:
                    self.consumers.setdefault(t, []).append(node)
        self.dropped = set()             # ids of nodes folded into another

    def const(self, node, i, what, required=True):
        name = node.inputs[i] if i < len(node.inputs) else ""
        c = self.constants.get(name) if name else None
        if c is None and required:
            raise CheckError(f"{self.where}: {node.op} node {node.name!r}: {what} "
                             f"({name!r}) is not a constant; check needs the quantized "
                             "parameters stored in the graph")
        if c is not None and c.origin is None:         # stored: where fix writes it back
            value = np.asarray(c.value)
            c = Constant(c.value, c.precision, c.quant,
                         Origin(name, (), value.shape, str(value.dtype)))
        return c

    def dequantized(self, node, q, scale, zero, axis, what, name):
        """A new quantized constant ``name`` from stored integers ``q``."""
        values = np.asarray(q.value)
        storage = _STORAGE.get(values.dtype)
        if storage is None:
            raise CheckError(f"{self.where}: {node.op} node {node.name!r}: {what} holds "
                             f"{values.dtype} values, not stored integers")
        try:
            value, quant = dequantize(values, scale, zero, axis, storage,
                                      f"{self.where}: {node.op} node {node.name!r}: {what}")
        except ValueError as e:
            raise CheckError(str(e)) from None
        origin = q.origin
        if origin is not None and origin.tensor is not None and not origin.steps:
            origin = Origin(origin.tensor, (Step("Quantize", values.shape, str(values.dtype),
                                                 quant=quant),), np.shape(value),
                            str(np.asarray(value).dtype))
        else:
            origin = Origin(why=f"{node.op} node {node.name!r} of computed integers")
        self.constants[name] = Constant(value, QUANTIZED, quant, origin)
        return name

    def single_consumer(self, tensor, op):
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and users[0].op == op else None


def _axis(node, default=1):
    return int(node.attrs.get("axis", default))


def _dequantize_linear(r, node):
    if node.inputs[0] not in r.constants:
        return [OpNode("Identity", node.name, node.inputs[:1], node.outputs[:1])]
    q = r.const(node, 0, "the stored integers")
    scale = r.const(node, 1, "the scale")
    zero = r.const(node, 2, "the zero point", required=False)
    r.dequantized(node, q, scale.value, None if zero is None else zero.value,
                  _axis(node), "the stored integers", node.outputs[0])
    return []


def _activation(r, node):
    out = [OpNode("Identity", node.name, node.inputs[:1], node.outputs[:1])]
    for extra in node.outputs[1:]:          # DynamicQuantizeLinear's scale and zero point
        if extra:
            out.append(OpNode("Identity", f"{node.name}/{extra}", node.inputs[:1], (extra,)))
    return out


def _qlinear_conv(r, node):
    x_scale = r.const(node, 1, "the input scale")
    w = r.const(node, 3, "the weight")
    w_scale = r.const(node, 4, "the weight scale")
    w_zero = r.const(node, 5, "the weight zero point", required=False)
    weight = r.dequantized(node, w, w_scale.value, None if w_zero is None else w_zero.value,
                           0, "the weight", f"{node.name}:weight")
    inputs = [node.inputs[0], weight]
    if len(node.inputs) > 8 and node.inputs[8]:
        b = r.const(node, 8, "the bias")
        scale = np.asarray(x_scale.value, np.float64).reshape(-1) * \
            np.asarray(w_scale.value, np.float64).reshape(-1)
        inputs.append(r.dequantized(node, b, scale, 0, 0, "the bias", f"{node.name}:bias"))
    return [OpNode("Conv", node.name, tuple(inputs), node.outputs[:1], dict(node.attrs))]


def _qlinear_matmul(r, node):
    b = r.const(node, 3, "the weight")
    b_scale = r.const(node, 4, "the weight scale")
    b_zero = r.const(node, 5, "the weight zero point", required=False)
    weight = r.dequantized(node, b, b_scale.value, None if b_zero is None else b_zero.value,
                           1, "the weight", f"{node.name}:weight")
    return [OpNode("MatMul", node.name, (node.inputs[0], weight), node.outputs[:1])]


def _integer_product(r, node):
    """``ConvInteger``/``MatMulInteger`` -> ``Cast`` -> ``Mul`` by (input scale x weight
    scale): one float op with the weights dequantized by the weight scale."""
    cast = r.single_consumer(node.outputs[0], "Cast")
    mul = r.single_consumer(cast.outputs[0], "Mul") if cast is not None else None
    other = None
    if mul is not None:
        other_name = next((t for t in mul.inputs if t != cast.outputs[0]), "")
        producer = next((n for n in r.graph.nodes if other_name in n.outputs), None)
        if producer is not None and producer.op == "Mul":
            other = next((r.constants[t] for t in producer.inputs if t in r.constants), None)
        elif other_name in r.constants:
            other = r.constants[other_name]
    if other is None:
        raise CheckError(f"{r.where}: {node.op} node {node.name!r}: its output is not "
                         "scaled by a constant weight scale (Cast, then Mul by input scale x "
                         "weight scale), as dynamic quantization writes it")
    w = r.const(node, 1, "the weight")
    w_zero = r.const(node, 3, "the weight zero point", required=False)
    conv = node.op == "ConvInteger"
    weight = r.dequantized(node, w, other.value, None if w_zero is None else w_zero.value,
                           0 if conv else 1, "the weight", f"{node.name}:weight")
    r.dropped.update({id(cast), id(mul)})
    return [OpNode("Conv" if conv else "MatMul", node.name, (node.inputs[0], weight),
                   mul.outputs[:1], dict(node.attrs) if conv else {})]


#: Quantized op type -> ``f(rewrite, node)`` returning the nodes that replace it.
REWRITES = {
    "DequantizeLinear": _dequantize_linear,
    "QuantizeLinear": _activation,
    "DynamicQuantizeLinear": _activation,
    "QLinearConv": _qlinear_conv,
    "QLinearMatMul": _qlinear_matmul,
    "ConvInteger": _integer_product,
    "MatMulInteger": _integer_product,
}


def is_quantized(graph):
    return any(node.op in REWRITES for node in graph.nodes)


def dequantized_graph(graph, where):
    """``graph`` with its quantized ops rewritten (module docstring)."""
    if not is_quantized(graph):
        return graph
    r = _Rewrite(graph, where)
    nodes = []
    for node in graph.nodes:
        rewrite = REWRITES.get(node.op)
        nodes.extend([node] if rewrite is None else rewrite(r, node))
    nodes = [n for n in nodes if id(n) not in r.dropped]
    return OpGraph(nodes, r.constants, graph.inputs)
