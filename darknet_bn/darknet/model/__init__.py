"""The converted model: its conv/dense layers and batchnorms as typed units, and their
pairing with a Darknet cfg's layers.  Used by ``darknet_bn.darknet.check`` (judging)
and ``darknet_bn.torch_weights`` (``.weights`` load/save).

- ``units``: ``ConvUnit``, ``DenseUnit``, ``BatchNormUnit``, ``AffineUnit``
  (and their bases ``Unit``, ``LinearUnit``, ``NormUnit``), ``ModelUnits``,
  ``CheckError``;
- ``graph``: the neutral op graph every graph format is translated into
  (``OpGraph``, ``OpNode``, ``Constant``, ``Quant``) and ``read_graph``, its
  units (one handler per op type, ``OP_HANDLERS``; constant folding by ``FOLDS``);
- ``onnx_reader``: ONNX into that graph (``onnx_graph``, ``read_onnx``, ``load_onnx``);
- ``torch_reader``: state_dicts and live modules (``read_state_dict``,
  ``read_module``, ``trace_module``: a live module's data flow);
- ``pairing``: ``pair_model``, units with cfg layers.

- ``tflite_reader`` (with ``tflite_file``), ``openvino_reader``: TFLite files and
  OpenVINO IR into the same graph; ``onnx_quantized``: int8 ONNX graphs as float ops
  on quantized constants (``quantization``: dequantized values, their steps).

``read_model(converted, eps)`` dispatches on what ``converted`` is.
"""
import os
import sys

from ..kinds import ONNX, OPENVINO, TFLITE, TORCH, file_kind
from ..parser import check_path
from .graph import (FOLDS, OP_HANDLERS, Constant, OpGraph, OpNode, Quant, read_graph,
                    topological_order)
from .onnx_reader import external_tensors, load_onnx, onnx_graph, read_onnx
from .openvino_reader import bin_path, openvino_graph, read_openvino
from .tflite_reader import read_tflite_model, tflite_graph
from .pairing import (WEIGHTED_SECTIONS, Pair, Pairing, PairingError, cfg_sources, fits,
                      pair_model)
from .torch_reader import (TraceError, darknet_dialect, load_torch_file,
                           probe_shape, read_module, read_state_dict, trace_module)
from .units import (MODEL_INPUT, UNIT_ROUNDOFF, AffineUnit, BatchNormUnit, CheckError,
                    ConvUnit, DenseUnit, GraphInput, LinearUnit, ModelUnits, NormUnit, Unit,
                    as_float64, cfg_index_in_name, narrowest, precision_of)


def read_model(converted, eps=None, routine="check_model", net=None):
    """``ModelUnits`` of ``converted``: a live module, a state_dict, an ONNX
    ``ModelProto``, or a path to an ``.onnx`` / ``.pt`` file.  ``net``: the cfg's
    ``Network``, for tracing a live module's data flow (``read_module``)."""
    torch = sys.modules.get("torch")          # a live object means its package is imported
    if torch is not None and isinstance(converted, torch.nn.Module):
        return read_module(converted, type(converted).__name__, net)
    if isinstance(converted, dict):
        if torch is None:
            raise CheckError("the state_dict passed is a dict but torch is not imported; "
                             "a state_dict holds torch tensors")
        return read_state_dict(converted, eps, "state_dict")
    onnx = sys.modules.get("onnx")
    if onnx is not None and isinstance(converted, onnx.ModelProto):
        if external_tensors(converted):
            raise CheckError("ONNX model: its initializers keep their data in external "
                             "files; pass the .onnx path so they are read from its directory")
        return read_onnx(converted, "ONNX model")
    path = check_path(routine, "converted", converted, "model.onnx")
    name = os.fspath(path)
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "does not exist"
        raise CheckError(f"{name}: the converted model {what}")
    kind = file_kind(path)
    if kind == ONNX or (kind is None and name.lower().endswith(".onnx")):
        return read_onnx(load_onnx(name), name)
    if kind == TORCH:
        return read_state_dict(load_torch_file(name), eps, name)
    if kind == TFLITE:
        return read_tflite_model(name)
    if kind == OPENVINO:
        return read_openvino(name)
    if kind is None and name.lower().endswith(".bin") and \
            os.path.isfile(name[:-4] + ".xml"):
        raise CheckError(f"{name}: the weights of an OpenVINO IR; pass the .xml "
                         f"({os.path.basename(name[:-4])}.xml), its .bin is read beside it")
    what = f"the converted model is {kind}" if kind is not None else "unknown model format"
    raise CheckError(f"{name}: {what}; pass an ONNX model (float or int8), a TFLite file, "
                     "an OpenVINO IR .xml or a torch state_dict "
                     "(torch.save(model.state_dict(), path))")


__all__ = ["read_model", "ModelUnits", "Unit", "LinearUnit", "ConvUnit", "DenseUnit",
           "NormUnit", "BatchNormUnit", "AffineUnit", "CheckError", "PairingError",
           "MODEL_INPUT", "GraphInput", "UNIT_ROUNDOFF", "as_float64", "narrowest",
           "precision_of", "OpGraph", "OpNode", "Constant", "Quant", "OP_HANDLERS", "FOLDS",
           "read_graph", "topological_order", "onnx_graph", "read_onnx", "load_onnx",
           "external_tensors", "read_state_dict", "read_module", "load_torch_file",
           "cfg_index_in_name", "darknet_dialect", "trace_module", "probe_shape", "TraceError",
           "pair_model", "Pair", "Pairing",
           "cfg_sources", "fits", "WEIGHTED_SECTIONS", "read_tflite_model", "tflite_graph",
           "read_openvino", "openvino_graph", "bin_path"]
