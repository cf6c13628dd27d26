"""Repair a converted model so that its batchnorms compute the fork's inference, in
the model's own format (``fix_file``; ``darknet-bn fix``), or a live torch module in
place (``fix_model``).

Every layer ``check`` pairs with the cfg is rewritten from the ``.weights`` file, in
the form the model already has (the graph, the format and the precision stay; only
parameter values change, and the eps attribute where the format has one):

- a conv or dense layer followed by a batchnorm node/module: the conv gets Darknet's
  filter (and a zero bias where it has one), the batchnorm the scales, biases and
  rolling mean, and the variance and eps of ``Dialect.torch_form`` (pjreddie's
  ``sqrt(var) + 1e-6`` as ``running_var = (sqrt(var) + 1e-6)^2`` with eps 0).  A
  format without an eps (a state_dict) keeps the eps ``E`` its model is built with:
  the variance is then ``D^2 - E``, ``D`` the fork's denominator, in double;
- a batchnorm written as ``Mul``/``Add`` (``Sub``, ``Div``) of constants: the chain's
  writable constants give ``y = a*x + b`` with ``a = scale/D``, ``b = bias - a*mean``;
- a folded conv or dense layer: ``judging.folded_reference`` (AlexeyAB/hank-ai:
  ``fuse_conv_batchnorm``'s bits; pjreddie: ``scale/D`` on the filter in double,
  rounded once to the storage precision).

Values computed in double are rounded once to the stored tensor's dtype.  An ONNX
constant behind ``Identity``/``Cast``/``Reshape``/``Flatten``/``Squeeze``/
``Unsqueeze``/``Transpose`` is written back through the inverse of that chain
(``graph.Origin``); quantized integers are requantized with their stored scales
(``requantized``).  Formats: ONNX, TFLite, OpenVINO IR, torch state_dicts.  A
constant computed by other ops, a stored tensor two layers need with different
values, integers beyond the storage range with the stored scales (named by channel)
or a format not written here is a ``FixError`` (nothing is written).  ``fix_file``
runs ``check`` on the repaired model before writing it: OUT exists only when every
layer passes.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from ..dialects import get_dialect
from .check import CheckError, check_eps, check_model, read_converted, value_chooser
from .check.judging import folded_reference
from .kinds import ONNX, OPENVINO, TFLITE, TORCH, file_kind
from .model import AffineUnit, BatchNormUnit, ConvUnit, LinearUnit, pair_model
from .model.onnx_reader import load_onnx
from .model.openvino_reader import bin_path
from .model.tflite_file import read_tflite
from .model.torch_reader import darknet_dialect, load_torch_file
from .parser import check_path
from .weights import (atomic_output, check_cfg_arg, network_from, normal_file_mode,
                      read_weights, type_name)


class FixError(CheckError):
    """The model cannot be repaired in its own form (the reason says why); nothing was
    written."""


@dataclass
class Change:
    """One parameter rewritten: the unit, the parameter and its largest change."""
    unit: str
    param: str
    largest: float


@dataclass
class LayerFix:
    """One cfg layer: ``check``'s verdict (``ok_before``; None for a layer without
    batchnorm, which ``check`` does not judge) and diagnosis before, what changed."""
    index: int
    section: str
    ok_before: object
    diagnosis: str
    changes: list = field(default_factory=list)

    @property
    def largest(self):
        return max((c.largest for c in self.changes), default=0.0)


@dataclass
class FixReport:
    """``fix_file``'s result: ``layers`` (``LayerFix``), ``before``/``after`` (the
    ``CheckReport`` of the input and of the repaired model; ``after`` None on a dry
    run), ``out`` (the path written, None on a dry run)."""
    source: str
    dialect: str
    layers: list
    before: object
    after: object = None
    out: str = None

    @property
    def ok(self):
        return self.after is not None and self.after.ok

    def format_lines(self):
        """Per layer: its state before and ``check``'s diagnosis (without the fix), then
        each changed parameter with its largest change."""
        lines = []
        for layer in self.layers:
            state = {True: "ok", False: "FAIL", None: "(no batchnorm: not judged)"}[
                layer.ok_before]
            diagnosis = layer.diagnosis.split("; fix:")[0]
            lines.append(f"layer {layer.index:>3} [{layer.section}] {state}"
                         + (f" {diagnosis}" if diagnosis else ""))
            changed = [c for c in layer.changes if c.largest != 0]
            if not changed:
                lines.append("    unchanged")
            by_unit = {}
            for c in changed:
                by_unit.setdefault(c.unit, []).append(f"{c.param} {c.largest:.3g}")
            for unit, parts in by_unit.items():
                lines.append(f"    {unit}: largest change {', '.join(parts)}")
        return lines


# --------------------------------------------------------------------------
# the values each unit gets
# --------------------------------------------------------------------------
def _record_params(record):
    channels = record.channels
    biases = record.biases if record.biases is not None else np.zeros(channels, np.float32)
    return (record.scales.astype(np.float64), biases.astype(np.float64),
            record.rolling_mean.astype(np.float64), record.rolling_variance.astype(np.float64))


def _filters(record, unit):
    if record.weights is None:
        return None
    return record.weights.astype(np.float64).reshape(unit.channels, -1)


def batchnorm_values(record, dialect, fixed_eps=None):
    """``{"weight", "bias", "mean", "var"}`` and the eps of a batchnorm computing the
    fork's normalize_cpu: ``torch_form``, or with ``fixed_eps`` (a format storing no
    eps) the variance ``D^2 - eps``.  ``FixError`` where that variance is negative."""
    scale, bias, mean, var = _record_params(record)
    with np.errstate(all="ignore"):
        if fixed_eps is None:
            new_var, eps = dialect.torch_form(var, np.sqrt)
        else:
            d = dialect.normalize_form.denominator(var)
            new_var, eps = d * d - fixed_eps, fixed_eps
    bad = np.flatnonzero(new_var < 0)
    if bad.size:
        raise FixError(f"layer {record.index}: with the model's eps {fixed_eps:g} no "
                       f"variance gives Darknet's denominator on channels "
                       f"{bad[:8].tolist()}; store the model with eps 0")
    return {"weight": scale, "bias": bias, "mean": mean, "var": new_var}, eps


def pair_values(pair, record, dialect, fixed_eps=None):
    """``[(unit, {param: float64 values}, eps or None)]`` for one pair."""
    conv, bn = pair.conv, pair.bn
    out = []
    if bn is None:
        w, b = folded_reference(record, dialect)
        return [(conv, {"weight": w, "bias": b}, None)]
    if conv is not None:
        values = {"weight": _filters(record, conv)}
        if conv.bias is not None:
            values["bias"] = np.zeros(conv.channels)
        out.append((conv, values, None))
    if isinstance(bn, BatchNormUnit):
        values, eps = batchnorm_values(record, dialect, fixed_eps)
        out.append((bn, values, eps))
    else:
        scale, bias, mean, var = _record_params(record)
        with np.errstate(all="ignore"):
            a = scale / dialect.normalize_form.denominator(var)
        out.append((bn, {"alpha": a, "beta": bias - a * mean}, None))
    return out


def _largest(old, new):
    old = np.asarray(old, np.float64).reshape(-1)
    new = np.asarray(new, np.float64).reshape(-1)
    if old.shape != new.shape:
        return float("inf")
    with np.errstate(all="ignore"):
        d = np.abs(new - old)
    return float(np.nanmax(d)) if d.size else 0.0


# --------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------
def requantized(step, value, where):
    """``value`` (float64) as the stored integers of a ``Quantize`` step, with the
    stored scale and zero point (round half to even, as ``QuantizeLinear``);
    ``FixError`` naming the channels whose values do not fit the storage range."""
    quant, shape = step.quant, step.in_shape
    with np.errstate(all="ignore"):
        q = np.round(value / quant.along(quant.scale, shape)) + \
            quant.along(quant.zero_point if quant.zero_point is not None else 0, shape)
    info = np.iinfo(step.in_dtype)
    bad = ~np.isfinite(q) | (q < info.min) | (q > info.max)
    if bad.any():
        axis = (quant.axis or 0) % max(len(shape), 1) if quant.per_channel else None
        channels = (np.flatnonzero(np.any(np.moveaxis(bad, axis, 0).reshape(
            shape[axis], -1), axis=1)) if axis is not None else [])
        which = (f"channels {', '.join(map(str, channels[:12]))}"
                 + (f" (and {len(channels) - 12} more)" if len(channels) > 12 else "")
                 if axis is not None else "the tensor (per-tensor scale)")
        raise FixError(f"{where}: Darknet's values do not fit {step.in_dtype} with the stored "
                       f"scales in {which}; a scale is never changed: requantize the model")
    return q.astype(step.in_dtype)


def _invert(origin, value, where=""):
    """``value`` (the constant's values) as the stored tensor holds them."""
    value = np.asarray(value, np.float64).reshape(origin.shape).astype(origin.dtype)
    for step in reversed(origin.steps):
        if step.op == "Quantize":
            value = requantized(step, value.astype(np.float64), where)
            continue
        if step.op == "Transpose":
            value = np.transpose(value, np.argsort(step.perm))
        value = value.reshape(step.in_shape).astype(step.in_dtype)
    return value


class TensorWriter:
    """Collects the new values of a model's stored tensors (``put``), checking that a
    tensor two units share gets one value; a format's subclass reads (``read``) and
    writes them."""

    def __init__(self, where):
        self.where = where
        self.values, self.owner, self.eps = {}, {}, {}

    def stored(self, name):
        """The stored tensor ``name``'s values (new ones once ``put``)."""
        if name in self.values:
            return self.values[name]
        return self.read(name)

    def read(self, name):
        raise NotImplementedError

    def put(self, unit, param, origin, value):
        """Write ``value`` (the constant's values, float64) through ``origin``."""
        if origin is None:
            raise FixError(f"{self.where}: {unit.name!r} has no {param} to write")
        if origin.tensor is None:
            raise FixError(f"{self.where}: {unit.name!r}: its {param} is computed by "
                           f"{origin.why}, which cannot be written back; store it as a "
                           "constant")
        old = self.stored(origin.tensor)
        quantized = any(step.op == "Quantize" for step in origin.steps)
        if (old.dtype.kind != "f" and not quantized) or str(old.dtype) == "bfloat16":
            raise FixError(f"{self.where}: {unit.name!r}: {param} is stored as {old.dtype} "
                           "(float32, float16 and quantized integers are written)")
        new = _invert(origin, value, f"{self.where}: {unit.name!r} {param}").astype(old.dtype)
        if new.shape != old.shape:
            raise FixError(f"{self.where}: {unit.name!r}: {param} of shape {new.shape} for "
                           f"the stored {old.shape}")
        previous = self.owner.get(origin.tensor)
        if previous is not None and previous != unit.name and \
                self.values[origin.tensor].tobytes() != new.tobytes():
            raise FixError(f"{self.where}: the tensor {origin.tensor!r} is shared by "
                           f"{previous!r} and {unit.name!r}, which need different values")
        self.values[origin.tensor], self.owner[origin.tensor] = new, unit.name
        return _largest(old, new)

    def set_eps(self, unit, eps):
        raise FixError(f"{self.where}: {unit.name!r}: this format stores no eps")


class OnnxWriter(TensorWriter):
    """The stored tensors of an ONNX model: initializers and ``Constant`` nodes."""

    def __init__(self, model, where):
        super().__init__(where)
        self.model = model
        self.inits = {t.name: t for t in model.graph.initializer}
        self.const_nodes = {n.output[0]: n for n in model.graph.node
                            if n.op_type == "Constant" and n.output}

    def read(self, name):
        from onnx import numpy_helper
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.const_nodes.get(name)
        attr = next((a for a in node.attribute if a.name == "value"), None) if node else None
        if attr is None:
            raise FixError(f"{self.where}: the constant {name!r} is not a stored tensor")
        return numpy_helper.to_array(attr.t)

    def set_eps(self, unit, eps):
        self.eps[unit.origins["node"]] = eps

    def apply(self):
        """A copy of the model with the new values and eps."""
        import onnx
        from onnx import numpy_helper
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        inits = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.output and node.output[0] in self.values:
                for attr in node.attribute:
                    if attr.name == "value":
                        attr.t.CopyFrom(numpy_helper.from_array(self.values[node.output[0]],
                                                                attr.t.name))
            if node.output and node.output[0] in self.eps:
                eps = [a for a in node.attribute if a.name == "epsilon"]
                if eps:
                    eps[0].f = self.eps[node.output[0]]
                else:
                    node.attribute.append(onnx.helper.make_attribute(
                        "epsilon", self.eps[node.output[0]]))
        for name, value in self.values.items():
            if name in inits:
                inits[name].CopyFrom(numpy_helper.from_array(value, name))
        return model


#: OpenVINO IR element types written: name -> numpy dtype.
IR_TYPES = {"f32": "<f4", "f16": "<f2"}


class IrWriter(TensorWriter):
    """The stored tensors of an OpenVINO IR: each ``Const`` layer's bytes in the .bin at
    the offset its ``.xml`` gives (``openvino_reader.const_origin``: ``"layer ID"``)."""

    def __init__(self, xml_path):
        from xml.etree import ElementTree
        super().__init__(os.fspath(xml_path))
        self.consts = {}
        for layer in ElementTree.parse(xml_path).getroot().iter("layer"):
            data = layer.find("data")
            if layer.get("type") == "Const" and data is not None and data.get("size"):
                shape = tuple(int(v) for v in (data.get("shape") or "").split(",") if v)
                self.consts[f"layer {layer.get('id')}"] = (int(data.get("offset", 0)),
                                                  int(data.get("size")),
                                                  data.get("element_type"), shape)
        with open(bin_path(xml_path), "rb") as f:
            self.bin = f.read()

    def read(self, name):
        found = self.consts.get(name)
        if found is None:
            raise FixError(f"{self.where}: the constant {name!r} is not a Const layer of "
                           "the .xml")
        offset, size, element, shape = found
        if element not in IR_TYPES:
            raise FixError(f"{self.where}: the constant {name!r} is {element} (f32 and f16 "
                           "are written)")
        return np.frombuffer(self.bin, IR_TYPES[element], size // np.dtype(
            IR_TYPES[element]).itemsize, offset).reshape(shape).astype(IR_TYPES[element][1:])

    def apply(self):
        """The new .bin's bytes."""
        out = bytearray(self.bin)
        for name, value in self.values.items():
            offset, size, element, _ = self.consts[name]
            data = np.ascontiguousarray(value, IR_TYPES[element]).tobytes()
            if len(data) != size:
                raise FixError(f"{self.where}: {name!r}: {len(data)} bytes for {size}")
            out[offset:offset + size] = data
        return bytes(out)


class TfliteWriter(TensorWriter):
    """The stored tensors of a TFLite file: each constant's buffer bytes in the
    flatbuffer (``tflite_reader`` names a tensor ``index:name``)."""

    def __init__(self, path):
        super().__init__(os.fspath(path))
        self.tensors = read_tflite(path).tensors
        with open(path, "rb") as f:
            self.raw = f.read()

    def _tensor(self, name):
        index = int(name.partition(":")[0])
        tensor = self.tensors[index]
        if tensor.data is None or tensor.offset is None:
            raise FixError(f"{self.where}: the tensor {name!r} holds no stored data")
        return tensor

    def read(self, name):
        return np.asarray(self._tensor(name).data)

    def apply(self):
        """The new file's bytes."""
        out = bytearray(self.raw)
        for name, value in self.values.items():
            tensor = self._tensor(name)
            data = np.ascontiguousarray(value, tensor.data.dtype.newbyteorder("<")).tobytes()
            out[tensor.offset:tensor.offset + len(data)] = data
        return bytes(out)


def _current(writer, link):
    """A link's constant as the model holds it (per channel, or one value)."""
    return np.asarray(link.value, np.float64).reshape(-1)


def _affine(link, value):
    """``(m, c)`` of ``y = m*x + c`` for one link with constant ``value``."""
    if link.op == "Mul":
        return value, 0.0
    if link.op == "Div":
        return 1.0 / value, 0.0
    if link.op == "Add":
        return 1.0, value
    return (-1.0, value) if link.const_first else (1.0, -value)


def _compose(maps):
    a, b = 1.0, 0.0
    for m, c in maps:
        a, b = m * a, m * b + c
    return a, b


def write_chain(writer, unit, links, alpha, beta):
    """Give an affine chain's writable constants the values that make it ``alpha*x +
    beta`` (per channel): its last ``Mul``/``Div`` followed by an addition carries
    the factor, the last such addition the offset, the other writable links become
    identities; links computed by other ops keep their values."""
    writable = [lk.origin is not None and lk.origin.tensor is not None and
                not (lk.op == "Sub" and lk.const_first) for lk in links]
    mult = [i for i, lk in enumerate(links) if writable[i] and lk.op in ("Mul", "Div")]
    k = None
    for i in reversed(mult):
        if any(writable[j] and links[j].op in ("Add", "Sub") for j in range(i + 1, len(links))):
            k = i
            break
    adds = [j for j in range(len(links)) if writable[j] and links[j].op in ("Add", "Sub")
            and (k is None or j > k)]
    if not adds or (k is None and not np.allclose(alpha, _chain_alpha(writer, links))):
        raise FixError(f"{writer.where}: {unit.name!r}: its Mul/Add constants cannot be "
                       "written to give the batchnorm (no stored factor followed by a "
                       "stored addition)")
    j = adds[-1]
    maps = []
    for i, lk in enumerate(links):
        if i in (k, j):
            maps.append(None)
        elif writable[i]:
            maps.append((1.0, 0.0))
        else:
            maps.append(_affine(lk, _current(writer, lk)))
    identity = {"Mul": 1.0, "Div": 1.0, "Add": 0.0, "Sub": 0.0}
    with np.errstate(all="ignore"):
        if k is not None:
            pa, pb = _compose([m for m in maps[:k]])
            qa, qb = _compose([m for m in maps[k + 1:j]])
            sa, sb = _compose([m for m in maps[j + 1:]])
            m = alpha / (sa * qa * pa)
            c = (beta - sb) / sa - qa * m * pb - qb
        else:
            pa, pb = _compose(maps[:j])
            sa, sb = _compose(maps[j + 1:])
            c = (beta - sb) / sa - pb
    largest = 0.0
    for i, lk in enumerate(links):
        if not writable[i]:
            continue
        if i == k:
            value = m if lk.op == "Mul" else 1.0 / m
        elif i == j:
            value = c if lk.op == "Add" else -c
        else:
            value = np.full(_size(lk), identity[lk.op])
        value = np.asarray(value, np.float64).reshape(-1)
        if value.size != _size(lk):
            if np.all(value == value[0]):
                value = value[:1]
            else:
                raise FixError(f"{writer.where}: {unit.name!r}: the {lk.op} constant holds "
                               f"{_size(lk)} value(s) for {value.size} channels")
        largest = max(largest, writer.put(unit, lk.op, lk.origin, value))
    return largest


def _size(link):
    return int(np.prod(link.shape)) if link.shape else 1


def _chain_alpha(writer, links):
    maps = []
    for lk in links:
        maps.append(_affine(lk, _current(writer, lk)))
    return _compose(maps)[0]


def write_graph_unit(writer, unit, values, eps):
    """Record the new values of one unit of a graph (ONNX, OpenVINO IR) in ``writer``;
    ``[(parameter, largest change)]``."""
    changes = []
    origins = unit.origins
    if isinstance(unit, AffineUnit):
        changes.append(("alpha, beta", write_chain(writer, unit, origins.get("links", []),
                                                   values["alpha"], values["beta"])))
        return changes
    for param, value in values.items():
        if param == "weight" and not isinstance(unit, (ConvUnit, BatchNormUnit)):
            if origins.get("alpha", 1.0) != 1.0:
                raise FixError(f"{writer.where}: {unit.name!r}: a Gemm with alpha "
                               f"{origins['alpha']}; only alpha 1 is written")
            if origins.get("weight_transposed"):
                value = np.asarray(value).T
        if param == "bias" and origins.get("beta", 1.0) != 1.0:
            raise FixError(f"{writer.where}: {unit.name!r}: a Gemm with beta "
                           f"{origins['beta']}; only beta 1 is written")
        if param == "bias" and isinstance(unit, LinearUnit):
            changes.append((param, write_bias(writer, unit, value)))
            continue
        changes.append((param, writer.put(unit, param, origins.get(param), value)))
    if eps is not None:
        writer.set_eps(unit, eps)
        changes.append(("eps", abs(float(unit.eps) - eps)))
    return changes


def write_bias(writer, unit, bias):
    """A layer's bias: its own bias input, or the last stored addition after it."""
    links = unit.origins.get("bias_links", [])
    own = unit.origins.get("bias")
    fixed = np.zeros(unit.channels)
    targets = []
    if own is not None and own.tensor is not None:
        targets.append(("bias", own, None))
    for lk in links:
        if lk.origin is not None and lk.origin.tensor is not None:
            targets.append((lk.op, lk.origin, lk))
        else:
            fixed = fixed + _affine(lk, _current(writer, lk))[1]
    if not targets:
        raise FixError(f"{writer.where}: {unit.name!r}: its bias is not stored; "
                       "cannot write it")
    largest = 0.0
    for i, (param, origin, lk) in enumerate(targets):
        value = np.zeros(unit.channels)
        if i == len(targets) - 1:
            value = bias - fixed
            if lk is not None and lk.op == "Sub":
                value = -value
        largest = max(largest, writer.put(unit, param, origin, value))
    return largest


# --------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------
#: A unit's parameter -> the torch tensor's name.
TORCH_NAMES = {"weight": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}


def torch_put(tensors, unit, param, value):
    """Copy ``value`` into ``tensors[name]`` (a torch tensor, its dtype kept)."""
    import torch
    name = TORCH_NAMES[param]
    old = tensors.get(name)
    if old is None:
        if param == "bias" and not np.any(value):
            return 0.0
        raise FixError(f"{unit.name!r} has no {name} to write (e.g. affine=False or "
                       "bias=False); the values cannot be stored")
    if not old.is_floating_point():
        raise FixError(f"{unit.name!r}: {name} is {old.dtype} (floats are written)")
    new = torch.from_numpy(np.asarray(value, np.float64).reshape(tuple(old.shape)).copy())
    new = new.to(old.dtype)
    largest = _largest(old.detach().cpu().double().numpy(), new.double().numpy())
    with torch.no_grad():
        old.copy_(new.to(old.device))
    return largest


def _inner_state(state):
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            return state[key]
    return state


def write_torch_unit(tensors, unit, values, eps, module=None):
    """Write one unit into ``tensors`` ({leaf: tensor}); set a module's eps."""
    if isinstance(unit, AffineUnit):
        raise FixError(f"{unit.name!r}: a torch model with an affine batchnorm")
    if module is not None and darknet_dialect(module) is not None:
        raise FixError(f"{unit.name!r} is darknet_bn's {type(module).__name__}: it computes "
                       "its own fork's formula; load the .weights into it instead")
    changes = [(p, torch_put(tensors, unit, p, v)) for p, v in values.items()]
    if module is not None and eps is not None and float(module.eps) != eps:
        changes.append(("eps", abs(float(module.eps) - eps)))
        module.eps = eps
    return changes


# --------------------------------------------------------------------------
# the driver
# --------------------------------------------------------------------------
def plain_values(pair, floats):
    """A paired layer without batchnorm: its weights and biases as the file stores them
    (``floats``: the file's floats after its header)."""
    spec, conv = pair.spec, pair.conv
    blocks = dict(spec.blocks)
    if conv is None or "weights" not in blocks:
        return []
    take = {name: floats[spec.offsets[name]:][:blocks[name]].astype(np.float64)
            for name in ("weights", "biases") if name in blocks}
    values = {"weight": take["weights"].reshape(conv.channels, -1)}
    if "biases" in take:
        values["bias"] = take["biases"]
    return [(conv, values, None)]


def plan(model_units, net, darknet, dialect, fixed_eps):
    """``[(LayerFix, [(unit, values, eps)])]`` for every pair (layers without batchnorm
    too: a misread reaches them as well); ``FixError`` for a quantized unit."""
    records = {rec.index: rec for rec in darknet.layers}
    floats = np.fromfile(darknet.path, dtype="<f4", offset=darknet.header.nbytes)
    pairing = pair_model(net, model_units, choose=value_chooser(records, dialect))
    steps = []
    for pair in pairing.pairs:
        record = records.get(pair.spec.index)
        layer = LayerFix(pair.spec.index, pair.spec.section, None, "")
        if record is None:
            steps.append((layer, plain_values(pair, floats)))
        else:
            steps.append((layer, pair_values(pair, record, dialect, fixed_eps)))
    return steps


def _diagnoses(report, layers):
    rows = {row.index: row for row in report.layers}
    for layer in layers:
        row = rows.get(layer.index)
        if row is not None:
            layer.ok_before, layer.diagnosis = row.ok, row.diagnosis


def _setup(routine, cfg, weights, dialect):
    fork = get_dialect(dialect, routine)
    cfg = check_cfg_arg(routine, cfg, "cfg")
    wpath = check_path(routine, "weights", weights, "yolov4.weights")
    net = network_from(cfg, fork, routine)
    return fork, net, read_weights(net, wpath, dialect=fork, layer_weights=True)


def fix_model(model, cfg, weights, *, dialect):
    """Repair a live ``torch.nn.Module`` in place: every conv/linear and batchnorm module
    paired with a cfg layer gets the values computing the fork's inference (module
    docstring); a ``_BatchNorm`` gets ``torch_form``'s variance and eps (pjreddie:
    ``running_var = (sqrt(var) + 1e-6)^2``, ``eps = 0``).  The dtype and device of
    each tensor are kept.  Returns a ``FixReport``: the layers changed, ``before`` and
    ``after`` (the ``CheckReport``s of the module before and after; ``.ok`` is
    ``after.ok``).  ``FixError`` (nothing left changed) when a unit cannot hold its
    values."""
    routine = "fix_model"
    import torch
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{routine}: model must be a torch.nn.Module, got {type_name(model)}")
    fork, net, darknet = _setup(routine, cfg, weights, dialect)
    before = check_model(model, net, weights, dialect=fork)
    units = read_converted(model, None, routine, net)
    steps = plan(units, net, darknet, fork, None)
    modules = dict(model.named_modules())
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    epss = {name: m.eps for name, m in modules.items() if hasattr(m, "eps")}
    try:
        for layer, unit_values in steps:
            for unit, values, eps in unit_values:
                m = modules[unit.name]
                tensors = {TORCH_NAMES[p]: getattr(m, TORCH_NAMES[p], None) for p in values}
                tensors = {k: v for k, v in tensors.items() if v is not None}
                for param, largest in write_torch_unit(tensors, unit, values, eps, m):
                    layer.changes.append(Change(unit.name, param, largest))
    except BaseException:
        model.load_state_dict(saved)
        for name, eps in epss.items():
            modules[name].eps = eps
        raise
    layers = [layer for layer, _ in steps]
    _diagnoses(before, layers)
    after = check_model(model, net, weights, dialect=fork)
    return FixReport(type(model).__name__, fork.name, layers, before, after)


def write_steps(writer, steps):
    """Write every planned unit's values through ``writer`` (an ONNX, IR or TFLite
    writer), recording each parameter's largest change on its layer."""
    for layer, unit_values in steps:
        for unit, values, e in unit_values:
            for param, largest in write_graph_unit(writer, unit, values, e):
                layer.changes.append(Change(unit.name, param, largest))


def fix_file(cfg, weights, converted, out, *, dialect, eps=None, dry_run=False):
    """Write a repaired copy of the converted model file ``converted`` to ``out``
    (module docstring): a ``FixReport``.  ONNX (float32/float16 and int8 parameters),
    TFLite, OpenVINO IR (``out`` an ``.xml``, its ``.bin`` beside it) and torch
    state_dict files (``eps``: the eps the state_dict's model is built with).
    ``out`` must not be ``converted``; it is written through a temporary file, and
    only when ``check`` passes on the repaired model.  ``dry_run``: nothing is
    written; the report says what would change.  ``FixError`` (exit 1) when the
    model cannot be repaired in its form; ``CheckError``/``TypeError``/``ValueError``
    for bad input."""
    routine = "fix_file"
    fork = get_dialect(dialect, routine)
    cfg = check_cfg_arg(routine, cfg, "cfg")
    check_path(routine, "weights", weights, "yolov4.weights")
    model_path = check_path(routine, "converted", converted, "model.onnx")
    out = check_path(routine, "out", out, "fixed.onnx")
    eps = check_eps(routine, eps)
    if not isinstance(dry_run, bool):
        raise TypeError(f"{routine}: dry_run must be True or False, got {type_name(dry_run)}")
    if _same(model_path, out):
        raise ValueError(f"{routine}: out {os.fspath(out)!r} is the model file; fix never "
                         "overwrites its input: pass another out")
    fork, net, darknet = _setup(routine, cfg, weights, fork)
    before = check_model(model_path, net, weights, dialect=fork, eps=eps)
    kind = file_kind(model_path)
    name = os.fspath(model_path)
    if kind == ONNX or (kind is None and name.lower().endswith(".onnx")):
        proto = load_onnx(name)
        units = read_converted(proto, None, routine, net)
        writer = OnnxWriter(proto, name)
        steps = plan(units, net, darknet, fork, None)
        write_steps(writer, steps)
        repaired = writer.apply()

        def save(dst):
            dst.write(repaired.SerializeToString())
    elif kind == TORCH:
        import torch
        state = load_torch_file(name)
        units = read_converted(state, eps, routine, net)
        steps = plan(units, net, darknet, fork, eps)
        inner = _inner_state(state)
        for layer, unit_values in steps:
            for unit, values, e in unit_values:
                prefix = f"{unit.name}." if unit.name else ""
                tensors = {leaf: inner[prefix + leaf] for leaf in TORCH_NAMES.values()
                           if prefix + leaf in inner}
                for param, largest in write_torch_unit(tensors, unit, values, None):
                    layer.changes.append(Change(unit.name, param, largest))
        repaired = state

        def save(dst):
            torch.save(repaired, dst)
    elif kind == OPENVINO:
        if not os.fspath(out).lower().endswith(".xml"):
            raise ValueError(f"{routine}: out {os.fspath(out)!r}: an OpenVINO IR is written "
                             "as an .xml (its .bin beside it); pass a name ending in .xml")
        if _same(model_path, bin_path(out)):
            raise ValueError(f"{routine}: out's .bin {bin_path(out)!r} is the model's; fix "
                             "never overwrites its input: pass another out")
        units = read_converted(name, None, routine, net)
        writer = IrWriter(name)
        steps = plan(units, net, darknet, fork, None)
        write_steps(writer, steps)
        with open(name, "rb") as f:
            repaired = (f.read(), writer.apply())
        save = None
    elif kind == TFLITE:
        units = read_converted(name, None, routine, net)
        writer = TfliteWriter(name)
        steps = plan(units, net, darknet, fork, None)
        write_steps(writer, steps)
        repaired = writer.apply()

        def save(dst):
            dst.write(repaired)
    else:
        raise FixError(f"{name}: {kind or 'this format'} is not repaired by fix yet "
                       "(ONNX, TFLite, OpenVINO IR and torch state_dict files are)")
    layers = [layer for layer, _ in steps]
    _diagnoses(before, layers)
    report = FixReport(name, fork.name, layers, before)
    if dry_run:
        return report
    if kind == OPENVINO:
        report.after = write_checked(routine, [(out, repaired[0]), (bin_path(out),
                                                                     repaired[1])],
                                     out, net, weights, fork)
    elif kind == TFLITE:
        report.after = write_checked(routine, [(out, repaired)], out, net, weights, fork)
    else:
        report.after = check_model(repaired if kind != TORCH else _inner_state(repaired), net,
                                   weights, dialect=fork, eps=eps)
        _refuse_failing(name, report.after)
        with atomic_output(routine, out) as dst:
            save(dst)
    report.out = os.fspath(out)
    return report


def _refuse_failing(name, after):
    if not after.ok:
        failing = ", ".join(str(r.index) for r in after.layers if not r.ok)
        raise FixError(f"{name}: the repaired model still fails check on layers "
                       f"{failing}; nothing written")


def write_checked(routine, files, out, net, weights, dialect):
    """Write ``files`` (``[(path, bytes)]``: ``out`` first, then the files beside it)
    through temporary files in ``out``'s directory, checked (``check`` reads the first)
    before they are renamed: ``check``'s report; ``FixError`` (nothing left) when it
    fails.  The files get the mode ``open()`` gives a new file."""
    import tempfile
    directory = os.path.dirname(os.path.abspath(out))
    suffix = os.path.splitext(os.fspath(out))[1]
    try:
        fd, first = tempfile.mkstemp(prefix=".darknet-fix-", suffix=suffix, dir=directory)
    except OSError as e:
        raise OSError(e.errno, f"{routine}: cannot create the output file in "
                               f"{directory!r}: {e.strerror}", os.fspath(out)) from None
    os.close(fd)
    root = os.path.splitext(first)[0]
    temps = [first] + [root + os.path.splitext(os.fspath(p))[1] for p, _ in files[1:]]
    try:
        for tmp, (_, data) in zip(temps, files):
            with open(tmp, "wb") as f:
                f.write(data)
            os.chmod(tmp, normal_file_mode(tmp))
        after = check_model(first, net, weights, dialect=dialect)
        _refuse_failing(os.fspath(out), after)
        for tmp, (path, _) in reversed(list(zip(temps, files))):
            os.replace(tmp, path)
        return after
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _same(a, b):
    paths = [os.fspath(a)]
    if paths[0].lower().endswith(".xml"):
        paths.append(paths[0][:-4] + ".bin")
    for p in paths:
        try:
            if os.path.samefile(p, b):
                return True
        except OSError:
            if os.path.abspath(p) == os.path.abspath(b):
                return True
    return False


__all__ = ["fix_file", "fix_model", "FixReport", "LayerFix", "Change", "FixError",
           "pair_values", "batchnorm_values"]
