"""ONNX models into the neutral op graph (``graph.OpGraph``), and their units.

``load_onnx(path)`` reads a file (external data only from inside its
directory); ``onnx_graph(model, where)`` translates an ``onnx.ModelProto``:
initializers and ``Constant`` nodes become ``Constant``s (float16 and bfloat16
tensors keep their precision), the other nodes ``OpNode``s with their
attributes as Python values (``Cast``'s ``to`` as a dtype name), the graph
inputs that are not initializers the data inputs in order.  Quantized graphs
(QDQ, QOperator, dynamic) are rewritten by ``onnx_quantized.dequantized_graph`` into
float ops on quantized constants.  ``read_onnx`` = ``read_graph(onnx_graph(...))``.
"""
import os

import numpy as np

from ..._extras import missing_package
from ..._validate import error_text
from .graph import Constant, OpGraph, OpNode, read_graph
from .onnx_quantized import dequantized_graph
from .units import CheckError

def import_onnx(what):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise CheckError(f"{what}: {missing_package('onnx', 'reading ONNX')}") from None
    return onnx, numpy_helper


def external_tensors(model):
    onnx, _ = import_onnx("ONNX model")
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                tensors.append(attr.t)
    return [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


def load_onnx(path):
    """The ``ModelProto`` of an ONNX file, external data read only from inside its directory."""
    onnx, _ = import_onnx(path)
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:                          # protobuf DecodeError and friends
        raise CheckError(f"{path}: not a readable ONNX model ({type(e).__name__}: "
                         f"{error_text(e)})") from None
    external = external_tensors(model)
    if external:
        base = os.path.realpath(os.path.dirname(os.path.abspath(path)))
        for tensor in external:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            target = os.path.realpath(os.path.join(base, location))
            if (not location or os.path.isabs(location)
                    or os.path.commonpath([base, target]) != base):
                raise CheckError(f"{path}: initializer {tensor.name!r} keeps its data at "
                                 f"{location!r}, outside the model's directory; external "
                                 "data must stay inside it")
            if not os.path.isfile(target):
                raise CheckError(f"{path}: initializer {tensor.name!r}: external data file "
                                 f"{location!r} does not exist")
        try:
            from onnx.external_data_helper import load_external_data_for_model
            load_external_data_for_model(model, base)
        except Exception as e:
            raise CheckError(f"{path}: cannot read the external data ({type(e).__name__}: "
                             f"{error_text(e)})") from None
    return model


def tensor_constant(tensor, where):
    """A ``TensorProto`` as a ``Constant`` (bfloat16 widened to float32)."""
    onnx, numpy_helper = import_onnx(where)
    try:
        value = numpy_helper.to_array(tensor)
    except Exception as e:
        raise CheckError(f"{where}: tensor {tensor.name!r} cannot be read ({type(e).__name__}: "
                         f"{error_text(e, 160)}); the file is "
                         "damaged (an initializer of the wrong size?)") from None
    precision = "float32"
    if tensor.data_type == onnx.TensorProto.BFLOAT16:
        precision = "bfloat16"
        value = np.asarray(value)
        if value.dtype == np.uint16:                  # older onnx: the raw bits
            value = (value.astype(np.uint32) << 16).view(np.float32)
        value = value.astype(np.float32)
    elif tensor.data_type == onnx.TensorProto.FLOAT16:
        precision = "float16"
    return Constant(np.asarray(value), precision)


def _cast_target(onnx, to):
    names = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16",
             onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.DOUBLE: "float64"}
    return names.get(to, f"onnx type {to}")


def constant_node_value(attrs, where):
    """The ``Constant`` of a ``Constant`` node's attributes, or None (a string, a
    sparse tensor)."""
    if "value" in attrs:
        return tensor_constant(attrs["value"], where)
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32),
                       ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return Constant(np.asarray(attrs[key], dtype), "float32")
    return None


def onnx_graph(model, where):
    """The ``OpGraph`` of an ``onnx.ModelProto``."""
    onnx, _ = import_onnx(where)
    graph = model.graph
    constants = {t.name: tensor_constant(t, where) for t in graph.initializer}
    nodes = []
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant":
            value = constant_node_value(attrs, where)
            if value is not None and node.output:
                constants[node.output[0]] = value
            continue
        if node.op_type == "Cast" and "to" in attrs:
            attrs["to"] = _cast_target(onnx, attrs["to"])
        nodes.append(OpNode(node.op_type, node.name, tuple(node.input), tuple(node.output),
                            attrs))
    inputs = tuple(i.name for i in graph.input if i.name not in constants)
    return OpGraph(nodes, constants, inputs)


def read_onnx(model, where):
    """``ModelUnits`` of an ``onnx.ModelProto``."""
    return read_graph(dequantized_graph(onnx_graph(model, where), where), where)
