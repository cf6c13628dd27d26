"""darknet_bn: Darknet's batch-normalization layer on the CPU, bit for bit.

Modules are named for their Darknet origin:

- ``darknet_bn.blas``: ``mean_cpu``, ``variance_cpu``, ``normalize_cpu``, ``axpy_cpu``,
  ``scal_cpu``, ``copy_cpu``, ``mean_delta_cpu``, ``variance_delta_cpu``,
  ``normalize_delta_cpu`` (src/blas.c)
- ``darknet_bn.convolutional_layer``: ``scale_bias``, ``add_bias``, ``backward_bias``
- ``darknet_bn.utils``: ``sum_array``
- ``darknet_bn.batchnorm_layer``: ``backward_scale_cpu`` and ``BatchNormLayer``
- ``darknet_bn.dialects``: every difference between the forks (pjreddie, AlexeyAB and
  hank-ai's C++ build), one record per fork
- ``darknet_bn.darknet``: ``.cfg`` parsing with Darknet's shape inference, ``.weights``
  batchnorm read/write for every fork, layers from records, PyTorch export, Darknet's
  BN folding (``fold_batchnorm``, ``fold_weights``) and ``check_model`` for converted models
  (``fix_model``/``fix_file``: repair them)
"""
from ._jit import warmup
from .batchnorm_layer import (BatchNormLayer, backward_batchnorm_layer, backward_scale_cpu,
                              forward_batchnorm_layer, update_batchnorm_layer)
from .blas import (axpy_cpu, copy_cpu, mean_cpu, mean_delta_cpu, normalize_cpu,
                   normalize_delta_cpu, scal_cpu, variance_cpu, variance_delta_cpu)
from .convolutional_layer import add_bias, backward_bias, scale_bias
from .darknet import (CfgError, WeightsFormatError, check_model, fix_file, fix_model,
                      fold_batchnorm, fold_weights,
                      make_batchnorm_layer_from_record, make_batchnorm_layers, parse_cfg,
                      read_weights, to_torch_batchnorm, write_weights)
from .dialects import DIALECTS, Dialect, get_dialect
from .utils import sum_array

__version__ = "0.2.0"

__all__ = [
    "BatchNormLayer", "DIALECTS", "Dialect", "get_dialect", "warmup",
    "forward_batchnorm_layer", "backward_batchnorm_layer", "update_batchnorm_layer",
    "mean_cpu", "variance_cpu", "normalize_cpu", "axpy_cpu", "scal_cpu", "copy_cpu",
    "mean_delta_cpu", "variance_delta_cpu", "normalize_delta_cpu",
    "scale_bias", "add_bias", "backward_bias", "backward_scale_cpu", "sum_array",
    "parse_cfg", "read_weights", "write_weights", "make_batchnorm_layer_from_record",
    "make_batchnorm_layers", "to_torch_batchnorm", "CfgError", "WeightsFormatError",
    "fold_batchnorm", "fold_weights", "check_model", "fix_model", "fix_file",
]
