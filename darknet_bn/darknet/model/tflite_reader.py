"""TFLite models (``.tflite``) into the neutral op graph (``graph.OpGraph``).

The file is read by ``tflite_file`` (the ``tflite`` package's flatbuffer bindings;
no TensorFlow).  Tensors holding data become ``Constant``s: float32 as they are,
float16 with precision float16, quantized ones (int8 weights per channel, int32
biases, int8 elementwise constants) dequantized with their ``Quant``.
Operators translate by ``TRANSLATIONS`` into ONNX's vocabulary and layouts:

- ``CONV_2D`` (weights OHWI) -> ``Conv`` with OIHW weights; ``DEPTHWISE_CONV_2D``
  (weights 1HWC) -> a grouped ``Conv``; ``FULLY_CONNECTED`` (weights (out, in)) ->
  ``Gemm`` with ``transB``;
- ``MUL``/``ADD``/``SUB``/``DIV`` of data and a per-channel constant: the constant,
  which broadcasts over TFLite's NHWC channels (last axis), laid out as ONNX's
  NCHW channels ((C, 1, 1)) where the data is 4-D;
- ``DEQUANTIZE`` of a constant (float16 weights, int8 weights of dynamic-range
  files) -> that constant, keeping its precision;
- the data-flow operators of ``DATA_FLOW`` as they are (their outputs depend on their
  inputs); any other operator is a ``CheckError`` naming it.

Activations stay in NHWC; only the parameters' layouts matter to the units, and
activation quantization (``QUANTIZE``, int8 data tensors) is not judged.
"""
import numpy as np

from .graph import Constant, OpGraph, OpNode, Origin, Step, read_graph
from .quantization import QUANTIZED, dequantize
from .tflite_file import read_tflite
from .units import CheckError

#: Operators that carry no parameters check reads: data flow only.
DATA_FLOW = frozenset({
    "LEAKY_RELU", "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LOGISTIC", "TANH",
    "HARD_SWISH", "PRELU", "ELU", "GELU", "EXP", "LOG", "SQRT", "RSQRT", "SQUARE", "ABS",
    "NEG", "MAXIMUM", "MINIMUM", "SOFTMAX", "LOG_SOFTMAX", "MAX_POOL_2D",
    "AVERAGE_POOL_2D", "MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD",
    "CONCATENATION", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "PAD", "PADV2",
    "MIRROR_PAD", "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR", "SPLIT", "SPLIT_V",
    "SLICE", "STRIDED_SLICE", "GATHER", "GATHER_ND", "PACK", "UNPACK", "TILE",
    "BROADCAST_TO", "SHAPE", "CAST", "QUANTIZE", "DEQUANTIZE", "SPACE_TO_DEPTH",
    "DEPTH_TO_SPACE", "BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND", "SQUARED_DIFFERENCE",
    "POW", "FLOOR", "CEIL", "ROUND", "ARG_MAX", "ARG_MIN", "TOPK_V2", "WHERE", "SELECT",
    "SELECT_V2", "GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "EQUAL", "NOT_EQUAL",
    "FLOOR_DIV", "FLOOR_MOD", "RANGE", "FILL", "ZEROS_LIKE", "ONES_LIKE",
    "NON_MAX_SUPPRESSION_V4", "NON_MAX_SUPPRESSION_V5", "TFLite_Detection_PostProcess",
    "ADD_N", "L2_NORMALIZATION", "LOCAL_RESPONSE_NORMALIZATION",
})

#: TFLite's elementwise operators and ONNX's names for them.
ELEMENTWISE = {"ADD": "Add", "MUL": "Mul", "SUB": "Sub", "DIV": "Div"}


class _Translation:
    """The state of one translation: the file's tensors, the graph's constants and
    nodes, and names for new constants."""

    def __init__(self, tfl, where):
        self.tfl, self.where = tfl, where
        self.constants, self.nodes = {}, []
        for i, tensor in enumerate(tfl.tensors):
            if tensor.data is not None:
                self.constants[self.name(i)] = self.constant_of(i, tensor)

    def name(self, index):
        return "" if index < 0 else f"{index}:{self.tfl.tensors[index].name}"

    def constant_of(self, index, tensor):
        if tensor.quant is not None:
            scale, zero, axis = tensor.quant
            try:
                value, quant = dequantize(tensor.data, scale, zero, axis, tensor.storage,
                                          f"{self.where}: tensor {tensor.name!r}")
            except ValueError as e:
                raise CheckError(str(e)) from None
            stored = np.asarray(tensor.data)
            step = Step("Quantize", stored.shape, str(stored.dtype), quant=quant)
            return Constant(value, QUANTIZED, quant, Origin(self.name(index), (step,),
                                                            np.shape(value),
                                                            str(np.asarray(value).dtype)))
        precision = "float16" if tensor.storage == "float16" else "float32"
        value = np.asarray(tensor.data)
        return Constant(value, precision, origin=Origin(self.name(index), (), value.shape,
                                                        str(value.dtype)))

    def rank(self, index):
        return len(self.tfl.tensors[index].shape)

    def relaid(self, index, perm, suffix):
        """A new constant: input ``index``'s constant transposed by ``perm``."""
        name = self.name(index)
        c = self.constants.get(name)
        if c is None:
            return name                  # a computed weight: read_graph names it
        value = np.transpose(c.value, perm)
        quant = c.quant
        if quant is not None:
            sat = None if quant.saturated is None else np.transpose(quant.saturated, perm)
            axis = perm.index(quant.axis % c.value.ndim) if quant.axis is not None else None
            quant = quant.moved(axis, sat)
        new = f"{name}:{suffix}"
        self.constants[new] = Constant(np.ascontiguousarray(value), c.precision, quant,
                                       moved_origin(c, "Transpose", perm, value))
        return new

    def add(self, op, index, inputs, outputs, attrs=None):
        name = self.tfl.tensors[outputs[0]].name if outputs else f"operator {index}"
        self.nodes.append(OpNode(op, name, tuple(inputs),
                                 tuple(self.name(j) for j in outputs), attrs or {}))


def moved_origin(c, op, perm, value):
    """The ``Origin`` of constant ``c`` after ``op`` (``Transpose`` by ``perm``, or
    ``Reshape``) gave ``value``; None where ``c`` has none."""
    if c.origin is None or c.origin.tensor is None:
        return c.origin
    step = Step(op, tuple(np.shape(c.value)), str(np.asarray(c.value).dtype),
                None if perm is None else tuple(perm))
    return Origin(c.origin.tensor, c.origin.steps + (step,), tuple(np.shape(value)),
                  str(np.asarray(value).dtype))


def _conv(t, k, op):
    x, w, b = (list(op.inputs) + [-1, -1])[:3]
    t.add("Conv", k, [t.name(x), t.relaid(w, (0, 3, 1, 2), "oihw"), t.name(b)], op.outputs)


def _depthwise(t, k, op):
    x, w, b = (list(op.inputs) + [-1, -1])[:3]
    channels = t.tfl.tensors[x].shape[-1] if t.rank(x) == 4 else 1
    t.add("Conv", k, [t.name(x), t.relaid(w, (3, 0, 1, 2), "oihw"), t.name(b)], op.outputs,
          {"group": int(channels)})


def _fully_connected(t, k, op):
    x, w, b = (list(op.inputs) + [-1, -1])[:3]
    t.add("Gemm", k, [t.name(x), t.name(w), t.name(b)], op.outputs, {"transB": 1})


def _elementwise(t, k, op):
    names = [t.name(j) for j in op.inputs]
    data = [j for j in op.inputs if t.name(j) not in t.constants]
    if len(op.inputs) == 2 and len(data) == 1 and t.rank(data[0]) == 4:
        j = next(j for j in op.inputs if t.name(j) in t.constants)
        c = t.constants[t.name(j)]
        if c.value.size > 1 and c.value.shape[-1] == c.value.size:      # NHWC channels
            new = f"{t.name(j)}:nchw"
            quant = c.quant
            if quant is not None and quant.saturated is not None:
                quant = quant.moved(0, np.reshape(quant.saturated, (-1, 1, 1)))
            value = c.value.reshape(-1, 1, 1)
            t.constants[new] = Constant(value, c.precision, quant,
                                        moved_origin(c, "Reshape", None, value))
            names[op.inputs.index(j)] = new
    t.add(ELEMENTWISE[op.name], k, names, op.outputs)


def _dequantize(t, k, op):
    source = t.name(op.inputs[0])
    if source in t.constants:                     # float16 or int8 weights: a constant
        t.constants[t.name(op.outputs[0])] = t.constants[source]
        return
    t.add("DEQUANTIZE", k, [source], op.outputs)


#: TFLite operator -> ``f(translation, operator index, operator)``.
TRANSLATIONS = {
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _depthwise,
    "FULLY_CONNECTED": _fully_connected,
    "DEQUANTIZE": _dequantize,
    **{name: _elementwise for name in ELEMENTWISE},
}


def tflite_graph(tfl, where):
    """The ``OpGraph`` of a ``TfliteGraph`` (module docstring)."""
    t = _Translation(tfl, where)
    for k, op in enumerate(tfl.ops):
        translate = TRANSLATIONS.get(op.name)
        if translate is not None:
            translate(t, k, op)
        elif op.name in DATA_FLOW:
            t.add(op.name, k, [t.name(j) for j in op.inputs], op.outputs)
        else:
            raise CheckError(f"{where}: TFLite operator {op.name} (operator {k}) is not one "
                             "check reads; it reads convolutions, fully connected layers, "
                             "elementwise batchnorms and the data-flow operators around them")
    inputs = tuple(t.name(j) for j in tfl.inputs)
    return OpGraph(t.nodes, t.constants, inputs)


def read_tflite_model(path):
    """``ModelUnits`` of the ``.tflite`` file at ``path``."""
    where = str(path)
    return read_graph(tflite_graph(read_tflite(path), where), where)
