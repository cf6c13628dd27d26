"""PyTorch models to Darknet ``.weights`` and back: ``save_darknet_weights``,
``load_darknet_weights`` (re-exported by ``darknet_bn.torch``).

The model's conv/linear and batchnorm modules (torch's ``_BatchNorm`` modules,
``SyncBatchNorm`` included, or darknet_bn's own) are paired with the cfg's
``[convolutional]``, ``[connected]`` and ``[batchnorm]`` layers by the strict
pairing of ``darknet_bn.darknet.model`` (a live module by its data flow, traced on
one forward; a state_dict by unique shapes, then names carrying cfg indices such as
``module_list.N``, then order; every layer paired, no module left over, no choice
made on values).  Each layer's blocks go in
Darknet's order (``parse_cfg``'s ``LayerSpec.blocks``), as the model holds them:

- ``[convolutional]``/``[connected]`` with ``batch_normalize=1``: biases = the
  batchnorm's ``bias``, scales = its ``weight``, rolling_mean/rolling_variance =
  ``running_mean``/``running_var`` (Darknet's ``rolling_variance`` as stored,
  whatever the module's ``eps``), weights = the conv/linear ``weight``; the
  conv's own bias must be absent or zero (the file has no slot for it);
- without batchnorm: biases = the conv/linear ``bias`` (zeros if it has none),
  weights;
- ``[batchnorm]``: scales, rolling_mean, rolling_variance, and (AlexeyAB)
  biases first; pjreddie stores no biases, so the module's bias must be zero.

``[local]`` layers and weighted ``[shortcut]`` layers have no PyTorch
counterpart here: a ``ValueError`` naming the layer, as for a model that does
not pair.  Nothing is written unless every layer can be: the output goes
through a temporary file, renamed at the end.

The header is the fork's ``save_weights`` header: version 0.2, revision 0
(pjreddie) or 5 (AlexeyAB), ``seen`` as 64 bits; or, with
``header_from=PATH``, version, revision and ``seen`` copied from that
``.weights`` file (a file older than 0.2 keeps its 32-bit ``seen``).
"""
import os

import numpy as np

from ._validate import argument_name, routine_prefix
from .darknet.model import CheckError, pair_model, read_module, read_state_dict
from .darknet.parser import check_path
from .darknet.weights import (WeightsHeader, atomic_output, check_cfg_arg, check_size,
                              network_from, open_weights, read_header, type_name)
from .dialects import get_dialect

__all__ = ["save_darknet_weights", "load_darknet_weights"]

_F32 = np.dtype("<f4")


def _same_file(a, b):
    try:
        return os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    except OSError:
        return False


def _refuse_unsupported(routine, net):
    """``ValueError`` naming the first layer whose weights no PyTorch module supplies."""
    for spec in net.layers:
        if spec.section in ("convolutional", "connected", "batchnorm") or not spec.blocks:
            continue
        if spec.section == "local":
            why = ("a [local] layer (unshared weights per position) has no PyTorch "
                   "counterpart here")
        elif spec.section == "shortcut":
            why = ("a weighted [shortcut] (weights_type=...) has no PyTorch counterpart "
                   "here")
        else:
            why = f"a [{spec.section}] layer's weights have no PyTorch counterpart here"
        raise ValueError(f"{routine_prefix(routine)}layer {spec.index} [{spec.section}] (cfg line "
                         f"{spec.line}): {why}; the .weights file cannot be written from "
                         "the model")


def _is_state_dict(routine, model):
    """Whether ``model`` is a state_dict (else a module); ``TypeError`` for anything else."""
    import torch
    if isinstance(model, dict):
        return True
    if isinstance(model, torch.nn.Module):
        return False
    raise TypeError(f"{routine}: model must be a torch.nn.Module or a state_dict (a dict of "
                    f"tensors), got {type_name(model)}")


def _units(routine, model, net):
    """``ModelUnits`` of a live module (its data flow traced) or a state_dict."""
    import torch
    if isinstance(model, torch.nn.Module):
        return read_module(model, type(model).__name__, net)
    if isinstance(model, dict):
        return read_state_dict(model, None, "state_dict")
    raise TypeError(f"{routine}: model must be a torch.nn.Module or a state_dict (a dict of "
                    f"tensors), got {type_name(model)}")


def _pairs(routine, net, units):
    try:
        pairing = pair_model(net, units, strict=True, complete=True)
    except CheckError as e:
        raise ValueError(f"{routine_prefix(routine)}{e}") from None
    return {p.spec.index: p for p in pairing.pairs}


#: Where each ``.weights`` block of a layer lives in the model, by the layer's kind:
#: ``{block: (unit, tensor)}``, the unit being the paired conv/linear ("conv") or
#: batchnorm ("bn") module.  Read by both ``save_darknet_weights`` and
#: ``load_darknet_weights``; a layer's blocks and their order are ``LayerSpec.blocks``.
BLOCK_TENSORS = {
    "with batchnorm": {"biases": ("bn", "bias"), "scales": ("bn", "weight"),
                       "rolling_mean": ("bn", "running_mean"),
                       "rolling_variance": ("bn", "running_var"),
                       "weights": ("conv", "weight")},
    "without batchnorm": {"biases": ("conv", "bias"), "weights": ("conv", "weight")},
    "batchnorm": {"biases": ("bn", "bias"), "scales": ("bn", "weight"),
                  "rolling_mean": ("bn", "running_mean"),
                  "rolling_variance": ("bn", "running_var")},
}

#: The value a tensor the module does not have stands for (conv ``bias=False``,
#: batchnorm ``affine=False``).
ABSENT_VALUE = {"bias": 0.0, "weight": 1.0}


def _layer_kind(spec):
    if spec.section == "batchnorm":
        return "batchnorm"
    return "with batchnorm" if spec.bn_channels else "without batchnorm"


def _layer_units(where, spec, pair):
    """``(where, {unit: paired unit}, [(block, count, unit, tensor)])`` of one layer."""
    where = f"{routine_prefix(where)}layer {spec.index} [{spec.section}] (cfg line {spec.line})"
    table = BLOCK_TENSORS[_layer_kind(spec)]
    if table is BLOCK_TENSORS["with batchnorm"] and pair.bn is None:
        raise ValueError(f"{where} has batch_normalize=1 but the model's "
                         f"{pair.conv.name!r} has no batchnorm after it (folded?); the "
                         ".weights file stores the batchnorm blocks")
    units = {"conv": pair.conv, "bn": pair.bn}
    return where, units, [(name, count, *table[name]) for name, count in spec.blocks]


def _extra_bias(units, spec):
    """The bias the file has no slot for: a conv's own beside its batchnorm, a pjreddie
    ``[batchnorm]``'s (``(unit, reason)``), else None."""
    if spec.section == "batchnorm":
        if "biases" not in dict(spec.blocks):
            return units["bn"], "a pjreddie [batchnorm] section stores no biases"
    elif spec.bn_channels:
        return units["conv"], "its batchnorm's bias is the layer's biases block"
    return None


def _layer_blocks(routine, spec, pair):
    """``{block name: float32 array}`` of one paired layer, as the model holds them."""
    where, units, blocks = _layer_units(routine, spec, pair)
    extra = _extra_bias(units, spec)
    if extra is not None:
        unit, why = extra
        bias = unit.stored.get("bias")
        if bias is not None and np.any(np.asarray(bias) != 0):
            raise ValueError(f"{where}: {unit.name!r} has a nonzero bias beside its "
                             f"batchnorm, and the file has no slot for it ({why}): fold it "
                             "into the batchnorm's bias or running_mean first, or zero it"
                             if unit is units["conv"] else
                             f"{where}: {unit.name!r} has a nonzero bias, and the file has "
                             f"no slot for it ({why}): use another dialect or zero the bias")
    out = {}
    for name, count, role, tensor in blocks:
        value = units[role].stored.get(tensor)
        value = (np.full(count, ABSENT_VALUE[tensor], _F32) if value is None
                 else np.asarray(value, _F32).reshape(-1))
        if value.size != count:
            raise ValueError(f"{where}: the model's {name} has {value.size} values, the cfg "
                             f"{count}")
        out[name] = value
    return out


def _header(routine, dialect, seen, header_from):
    if header_from is None:
        if isinstance(seen, bool) or not isinstance(seen, (int, np.integer)):
            raise TypeError(f"{routine}: seen must be an int (images trained on), got "
                            f"{type_name(seen)}")
        header = WeightsHeader(0, 2, dialect.folding.save_weights_revision, int(seen))
    else:
        if seen != 0:
            raise ValueError(f"{routine}: pass seen= or header_from=, not both (header_from "
                             "copies seen)")
        f, _ = open_weights(os.fspath(header_from),
                            f"{argument_name('header_from')} .weights file")
        with f:
            header = read_header(header_from, f)
    header.validate(routine)
    return header


def save_darknet_weights(model, cfg, out, *, dialect, seen=0, header_from=None):
    """Write the ``.weights`` file Darknet reads for ``cfg`` from ``model``.

    ``model``: a ``torch.nn.Module`` whose conv/linear and batchnorm modules pair
    with the cfg's layers (module docstring), or its state_dict.  ``cfg``: a
    ``.cfg`` path or a ``Network``.  ``out``: the file to write (through a
    temporary file; never ``cfg`` or ``header_from``).  ``dialect``: the fork
    whose layout and header to write.  ``seen``: the header's image count;
    ``header_from``: a ``.weights`` file whose version, revision and ``seen`` to
    copy instead.  Returns ``out``.

    ``.weights`` -> ``load_darknet_weights`` -> ``save_darknet_weights(...,
    header_from=the input)`` reproduces the input byte for byte.  ``TypeError``/
    ``ValueError`` naming the argument or the layer (unpairable model, nonzero
    conv bias beside batchnorm, bias on a pjreddie ``[batchnorm]``, ``[local]``,
    weighted ``[shortcut]``) before anything is written.
    """
    routine = "save_darknet_weights"
    fork = get_dialect(dialect, routine)
    cfg = check_cfg_arg(routine, cfg, "cfg")
    out = check_path(routine, "out", out, "out.weights")
    if header_from is not None:
        header_from = check_path(routine, "header_from", header_from, "yolov4.weights")
    for name, path in (("cfg", cfg), ("header_from", header_from)):
        if isinstance(path, (str, bytes, os.PathLike)) and _same_file(out, path):
            raise ValueError(f"{routine_prefix(routine)}{argument_name('out')} "
                             f"{os.fspath(out)!r} is the {argument_name(name)} file; "
                             f"{routine} refuses to overwrite an input: pass another "
                             f"{argument_name('out')}")
    units = _units(routine, model, None) if _is_state_dict(routine, model) else None
    header = _header(routine, fork, seen, header_from)
    net = network_from(cfg, fork, routine)
    _refuse_unsupported(routine, net)
    if units is None:                                 # a live module: traced on the cfg
        units = _units(routine, model, net)
    return _write(routine, net, units, header, out)


def _write(routine, net, units, header, out):
    pairs = _pairs(routine, net, units)
    layers = [(spec, _layer_blocks(routine, spec, pairs[spec.index]))
              for spec in net.layers if spec.index in pairs]
    with atomic_output(routine, out) as dst:
        dst.write(header.to_bytes())
        for _, blocks in layers:
            for value in blocks.values():
                dst.write(value.tobytes())
    return out


def write_state_dict_weights(state, cfg, out, *, dialect, seen=0, header_from=None):
    """``save_darknet_weights`` of a loaded state_dict (``to-weights``)."""
    if not isinstance(state, dict):
        raise ValueError(f"not a state_dict (a dict of tensors) but {type(state).__name__}")
    return save_darknet_weights(state, cfg, out, dialect=dialect, seen=seen,
                                header_from=header_from)


def load_darknet_weights(model, cfg, weights, *, dialect):
    """Fill ``model`` (a ``torch.nn.Module`` pairing with ``cfg``) from a ``.weights``
    file: the inverse of ``save_darknet_weights``.  Conv/linear weights and biases,
    batchnorm ``weight``/``bias``/``running_mean``/``running_var`` are copied in
    place (on the modules' devices and dtypes); a conv's own bias beside a
    batchnorm is zeroed; a pjreddie ``[batchnorm]``'s bias (not in the file) is
    set to zero.  Returns ``model``.  Errors as ``save_darknet_weights``, and what
    reading the file raises (header, size), before any tensor is modified."""
    import torch
    routine = "load_darknet_weights"
    fork = get_dialect(dialect, routine)
    cfg = check_cfg_arg(routine, cfg, "cfg")
    path = check_path(routine, "weights", weights, "yolov4.weights")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{routine}: model must be a torch.nn.Module, got {type_name(model)}")
    net = network_from(cfg, fork, routine)
    _refuse_unsupported(routine, net)
    f, size = open_weights(os.fspath(path), ".weights file")
    with f:
        check_size(path, net, read_header(path, f), size)
        raw = np.fromfile(f, dtype=_F32)                      # every block, read once
    units = read_module(model, type(model).__name__, net)
    pairs = _pairs(routine, net, units)
    copies = []
    for spec in net.layers:
        pair = pairs.get(spec.index)
        if pair is None:
            continue
        where, paired, blocks = _layer_units(routine, spec, pair)
        for name, count, role, tensor_name in blocks:
            unit = paired[role]
            values = raw[spec.offsets[name]:spec.offsets[name] + count]
            tensor = getattr(unit.module, tensor_name)
            if tensor is None:
                if np.any(values != ABSENT_VALUE[tensor_name]):
                    raise ValueError(f"{where}: {unit.name!r} has no {tensor_name} (bias=False "
                                     f"or affine=False) but the file's {name} are not "
                                     f"{ABSENT_VALUE[tensor_name]:g}; build it with bias=True "
                                     "(conv/linear) or affine=True (batchnorm)")
                continue
            copies.append((tensor, values))
        extra = _extra_bias(paired, spec)
        if extra is not None and extra[0].module.bias is not None:
            copies.append((extra[0].module.bias, np.zeros(spec.out_c, _F32)))
    with torch.no_grad():
        for tensor, values in copies:
            tensor.copy_(torch.from_numpy(np.array(values, _F32)).reshape(tensor.shape))
    return model

