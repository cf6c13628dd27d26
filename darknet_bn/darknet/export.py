"""Export Darknet batchnorm parameters as a PyTorch ``BatchNorm`` state_dict.

Darknet's inference (``forward_batchnorm_layer`` with ``train = 0``) computes,
per channel ``f`` (``normalize_cpu`` then ``scale_bias``, ``add_bias``)::

    AlexeyAB:  y = scales[f] * (x - m) / sqrt(v + .00001f) + biases[f]
    pjreddie:  y = scales[f] * (x - m) / (sqrt(v) + .000001f) + biases[f]

with ``m, v`` the rolling statistics.  PyTorch's eval-mode ``BatchNorm`` computes
``weight * (x - running_mean) / sqrt(running_var + eps) + bias``, so:

- AlexeyAB maps directly: ``eps = 1e-5``.  So does hank-ai's fork (``hankai``, the
  same formula with ``sqrtf`` and a float division: the same value up to float32
  rounding, as PyTorch's own arithmetic is).
- pjreddie puts its epsilon outside the square root
  (``Dialect.normalize_eps_in_sqrt`` is False); the same denominator is obtained
  with ``eps = 0`` and ``running_var = (sqrt(v) + .000001f)**2`` (computed in
  float64 as the C does, then rounded once to float32).

Both are ``Dialect.torch_form``.
- pjreddie's ``[batchnorm]`` stores no biases: ``bias`` is zero.

"Same formula" is not "same bits": PyTorch's CPU kernel folds the statistics
into ``alpha = weight/sqrt(var+eps)``, ``beta = bias - mean*alpha`` and computes
``x*alpha + beta`` in float32, while Darknet computes ``(x-m)/sqrt(...)`` in
float64 and rounds, then multiplies and adds in float32.  The results agree to
a few float32 roundings of the terms involved (see ``docs/darknet-files.md`` for
the measured differences), not bit for bit; ``darknet_bn``'s own
``BatchNormLayer`` is the bit-exact reference.
"""
import numpy as np

from ..dialects import get_dialect
from .weights import check_record, check_weights

def batchnorm_state_dict(record, *, dialect=None):
    """``(state_dict, eps)`` reproducing ``record``'s Darknet inference in PyTorch.

    ``state_dict`` has PyTorch's ``BatchNorm`` keys with numpy values (so torch
    is not needed): ``weight`` (= scales), ``bias`` (= biases, zeros where the
    file stores none), ``running_mean``, ``running_var`` (rewritten for
    pjreddie, see the module doc) and ``num_batches_tracked`` (0: Darknet keeps
    no such counter and eval mode does not use it).  Load it with
    ``module.load_state_dict({k: torch.from_numpy(v) ...})`` into a
    ``BatchNorm2d`` (``BatchNorm1d`` for ``[connected]``) built with ``eps``.
    ``TypeError`` if ``record`` is not a ``BatchNormRecord``; ``ValueError`` if
    its arrays are not ``(channels,)``.
    """
    return _state_dict("batchnorm_state_dict", record, dialect)


def _state_dict(routine, record, dialect):
    check_record(routine, record)
    for name, arr in record.arrays().items():
        if arr.shape != (record.channels,):
            raise ValueError(f"{routine}: record.{name} has shape {arr.shape}, expected "
                             f"({record.channels},) (record.channels)")
    dialect = get_dialect(record.dialect if dialect is None else dialect, routine)
    with np.errstate(invalid="ignore"):                 # sqrt(negative) is NaN, as in C
        var, eps = dialect.torch_form(record.rolling_variance.astype(np.float64), np.sqrt)
    bias = record.biases if record.biases is not None else np.zeros(record.channels, np.float32)
    state = {"weight": record.scales.copy(), "bias": bias.copy(),
             "running_mean": record.rolling_mean.copy(), "running_var": var.astype(np.float32),
             "num_batches_tracked": np.array(0, dtype=np.int64)}
    return state, eps


def to_torch_batchnorm(record, *, dialect=None):
    """A ``torch.nn.BatchNorm2d`` (``BatchNorm1d`` for ``[connected]``) in eval mode,
    loaded with ``batchnorm_state_dict(record)``.  Needs PyTorch.  Arguments are
    checked (as ``batchnorm_state_dict``) before torch is imported."""
    state, eps = _state_dict("to_torch_batchnorm", record, dialect)
    import torch

    cls = torch.nn.BatchNorm1d if record.section == "connected" else torch.nn.BatchNorm2d
    module = cls(record.channels, eps=eps)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return module.eval()


def export_state_dicts(weights):
    """``{cfg layer index: (state_dict, eps)}`` for every record of a ``DarknetWeights``.

    ``TypeError`` if ``weights`` is not one (e.g. None, a list of records).
    """
    check_weights("export_state_dicts", weights)
    return {rec.index: _state_dict("export_state_dicts", rec, None) for rec in weights.layers}
