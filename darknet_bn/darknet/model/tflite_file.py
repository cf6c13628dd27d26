"""A TFLite flatbuffer (``.tflite``) as plain arrays: its tensors and operators, read
with the ``tflite`` package (the schema's generated bindings, no TensorFlow).

``read_tflite(path)`` returns a ``TfliteGraph`` of the first subgraph: each tensor's
name, shape, storage type, data (constants: numpy, in the stored type) and
quantization (scales, zero points, axis; or None), each operator's name
(``CONV_2D``...) with its input and output tensor indices.  A file that is not a
TFLite model, or is truncated or damaged (a buffer beyond the file's end, a
constant of the wrong size), is a ``CheckError`` naming the file.
"""
import os
from dataclasses import dataclass

import numpy as np

from ..._extras import missing_package
from ..._validate import error_text
from .units import CheckError

#: The TFLite file identifier, bytes 4-8 of a ``.tflite`` file.
IDENTIFIER = b"TFL3"

#: TFLite TensorType -> (name, numpy dtype of the stored data).
_TYPES = {0: ("float32", "<f4"), 1: ("float16", "<f2"), 2: ("int32", "<i4"),
          3: ("uint8", "u1"), 4: ("int64", "<i8"), 6: ("bool", "?"), 7: ("int16", "<i2"),
          9: ("int8", "i1"), 10: ("float64", "<f8"), 16: ("uint32", "<u4"),
          17: ("uint16", "<u2")}


@dataclass
class TfliteTensor:
    name: str
    shape: tuple
    storage: str                 #: "float32", "float16", "int8", "int32"...
    data: object = None          #: numpy array of ``shape`` for a constant, else None
    quant: object = None         #: ``(scales, zero points, axis)`` of a quantized tensor
    offset: object = None        #: where a constant's bytes start in the file


@dataclass
class TfliteOp:
    name: str                    #: the builtin operator's name, ``CONV_2D``, or the custom code
    inputs: tuple                #: tensor indices (-1: an omitted optional input)
    outputs: tuple


@dataclass
class TfliteGraph:
    tensors: list
    ops: list
    inputs: tuple
    outputs: tuple


def import_tflite(what):
    try:
        import tflite
    except ImportError:
        raise CheckError(f"{what}: {missing_package('tflite', 'reading TFLite models')}") \
            from None
    return tflite


def _operator_names(tflite):
    from tflite.BuiltinOperator import BuiltinOperator
    return {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}


def _tensor_data(model, tensor, raw, where, name, shape, dtype):
    """``(data, offset in the file)`` of a constant tensor, or ``(None, None)``."""
    buffer = model.Buffers(tensor.Buffer())
    if buffer is None:
        return None, None
    offset = buffer.Offset()
    if offset > 1:                                    # data stored after the flatbuffer
        size = buffer.Size()
        if offset + size > len(raw):
            raise CheckError(f"{where}: tensor {name!r}: its data lies beyond the end of "
                             "the file (truncated?)")
        data = np.frombuffer(raw, dtype=np.uint8, count=size, offset=offset)
    elif buffer.DataLength() == 0:
        return None, None
    else:
        data = buffer.DataAsNumpy()
        offset = buffer._tab.Vector(buffer._tab.Offset(4))     # the vector's first byte
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if data.size != expected:
        raise CheckError(f"{where}: tensor {name!r} holds {data.size} bytes for shape "
                         f"{list(shape)} ({expected} expected): the file is truncated or "
                         "damaged")
    return np.frombuffer(data.tobytes(), dtype=dtype).reshape(shape), offset


def _tensor_quant(tensor, storage):
    q = tensor.Quantization()
    if q is None or q.ScaleLength() == 0 or storage.startswith("float"):
        return None
    zero = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(1, np.int64)
    return q.ScaleAsNumpy().copy(), np.asarray(zero).copy(), int(q.QuantizedDimension())


def _parse(raw, where):
    tflite = import_tflite(where)
    names = _operator_names(tflite)
    model = tflite.Model.GetRootAsModel(raw, 0)
    if model.SubgraphsLength() < 1:
        raise CheckError(f"{where}: a TFLite model without a subgraph")
    graph = model.Subgraphs(0)
    tensors = []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        name = (t.Name() or b"").decode("utf-8", "replace") or f"tensor {i}"
        storage, dtype = _TYPES.get(t.Type(), (f"type {t.Type()}", None))
        shape = tuple(int(s) for s in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        data = offset = None
        if dtype is not None and all(s >= 0 for s in shape):
            data, offset = _tensor_data(model, t, raw, where, name, shape, dtype)
        tensors.append(TfliteTensor(name, shape, storage, data,
                                    _tensor_quant(t, storage), offset))
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        codes.append(custom.decode("utf-8", "replace") if custom else
                     names.get(builtin, f"builtin operator {builtin}"))
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        index = op.OpcodeIndex()
        if not 0 <= index < len(codes):
            raise CheckError(f"{where}: operator {i} has no operator code: the file is "
                             "damaged")
        inputs = tuple(int(j) for j in op.InputsAsNumpy()) if op.InputsLength() else ()
        outputs = tuple(int(j) for j in op.OutputsAsNumpy()) if op.OutputsLength() else ()
        if any(j >= len(tensors) for j in inputs + outputs):
            raise CheckError(f"{where}: operator {i} ({codes[index]}) names a tensor the "
                             "file does not hold: the file is damaged")
        ops.append(TfliteOp(codes[index], inputs, outputs))
    graph_in = tuple(int(j) for j in graph.InputsAsNumpy()) if graph.InputsLength() else ()
    graph_out = tuple(int(j) for j in graph.OutputsAsNumpy()) if graph.OutputsLength() else ()
    return TfliteGraph(tensors, ops, graph_in, graph_out)


def read_tflite(path):
    """The ``TfliteGraph`` of the ``.tflite`` file at ``path``."""
    where = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8 or raw[4:8] != IDENTIFIER:
        raise CheckError(f"{where}: not a TFLite model (no {IDENTIFIER.decode()} identifier)")
    try:
        return _parse(raw, where)
    except CheckError:
        raise
    except Exception as e:            # offsets beyond the end: struct.error, IndexError...
        raise CheckError(f"{where}: a truncated or damaged TFLite file ({type(e).__name__}: "
                         f"{error_text(e, 120)})") from None
