"""Darknet model files: ``.cfg`` parsing with Darknet's shape inference, ``.weights``
batchnorm read/write for every fork, ``BatchNormLayer`` construction and PyTorch export.

- ``parser``: ``read_cfg``, ``parse_cfg`` -> ``Network`` of ``LayerSpec`` (src/parser.c)
- ``weights``: ``read_weights``, ``write_weights``, ``make_batchnorm_layer_from_record``
- ``export``: ``batchnorm_state_dict``, ``to_torch_batchnorm``
- ``fold``: ``fold_batchnorm``, ``fold_weights``, ``folded_cfg`` and Darknet's
  ``fuse_conv_batchnorm``, ``denormalize_convolutional_layer``,
  ``denormalize_connected_layer``, ``denormalize_net``
- ``model``: a converted model (ONNX, torch state_dict, live module) as typed units,
  and ``pair_model``, their pairing with the cfg's layers (shared by ``check`` and
  ``darknet_bn.torch.save_darknet_weights``/``load_darknet_weights``)
- ``check``: ``check_model`` (a converted ONNX/PyTorch model against Darknet's inference)
- ``fix``: ``fix_file``, ``fix_model`` (a repaired model, in its own format)
"""
from .check import CheckError, CheckReport, LayerCheck, check_model
from .fix import FixError, FixReport, fix_file, fix_model
from .export import batchnorm_state_dict, export_state_dicts, to_torch_batchnorm
from .fold import (FoldResult, denormalize_connected_layer, denormalize_convolutional_layer,
                   denormalize_net, fold_batchnorm, fold_weights, folded_cfg,
                   fuse_conv_batchnorm)
from .parser import (CfgError, LayerSpec, Network, UnsupportedCfgError,
                     parse_cfg, read_cfg)
from .weights import (BatchNormRecord, DarknetWeights, WeightsFormatError, WeightsHeader,
                      make_batchnorm_layer_from_record, make_batchnorm_layers, read_header,
                      read_weights, write_weights)

__all__ = [
    "parse_cfg", "read_cfg", "Network", "LayerSpec", "CfgError", "UnsupportedCfgError",
    "read_weights", "write_weights", "read_header", "DarknetWeights",
    "WeightsHeader", "BatchNormRecord", "WeightsFormatError",
    "make_batchnorm_layer_from_record", "make_batchnorm_layers",
    "batchnorm_state_dict", "to_torch_batchnorm", "export_state_dicts",
    "fold_batchnorm", "fold_weights", "fuse_conv_batchnorm", "denormalize_convolutional_layer",
    "denormalize_connected_layer", "denormalize_net", "folded_cfg", "FoldResult",
    "check_model", "CheckReport", "LayerCheck", "CheckError",
    "fix_file", "fix_model", "FixReport", "FixError",
]
