"""Check a converted model (ONNX, PyTorch) against Darknet's inference, layer by layer.

``check_model(converted, cfg, weights, dialect=..., eps=None)`` pairs Darknet's
batchnorm-carrying layers (cfg order) with the converted model's batchnorm
nodes/modules, or with its convolutions where the batchnorm was folded into
them, runs both on probe inputs and reports, per layer, the largest error and
what the converter most likely got wrong.

**Reference** (what the fork computes at inference, bit for bit):

- AlexeyAB: the folded conv (``fuse_conv_batchnorm``) for ``[convolutional]``;
  ``normalize_cpu`` (``(x - mean)/sqrt(var + .00001f)``) then ``scale_bias``,
  ``add_bias`` for ``[batchnorm]`` and ``[connected]``;
- pjreddie: ``(x - mean)/(sqrt(var) + .000001f)``, then scale and bias, everywhere.

**Probes.** For every output channel ``c`` the probe input is a 1x1 patch: one
pixel of value ``t`` at the position of the filter's largest weight ``w``, zeros
elsewhere.  A conv (folded or not) then computes ``w*t`` (every other product
is an exact zero) plus its bias, so the probe exercises that channel's filter,
bias and batchnorm without running a whole convolution.  ``t`` is chosen so that
the conv output ``z = w*t`` covers ``mean + k*sqrt(var)`` for ``k`` in
``PROBE_SIGMAS``, plus ``t = 0`` (the bias alone).  A ``[batchnorm]`` layer
gets ``z = t`` directly.

**Error.** ``|y_model - y_ref| / (|a*z| + |a*mean| + |b|)`` with ``a = scale/D``
(``D`` the fork's denominator) and ``b`` the bias: the error relative to the
size of the terms the output is computed from, which is what float32 rounding
bounds (a plain relative error explodes where the output cancels to ~0).
Also reported: the largest distance in float32 ulps.

**Tolerance** ``TOLERANCE = 8 * 2**-24`` (8 float32 unit roundoffs): each way of
computing the layer rounds each term a few times (PyTorch's eval kernel about 4
times on ``x*alpha`` and ``mean*alpha``, Darknet about 3), so two correct
implementations differ by at most ``8u`` times the terms; darknet_bn's own exact
exports measure at most ~5.4u (docs/darknet-files.md).  A wrong eps changes the
denominator by ``~|eps - eps'|/(2 var)``: 1e-5 instead of pjreddie's 1e-6 outside
the root is ~4e-6 at ``var = 1``, 8x the tolerance.  Where the variance is so
large that an eps mistake is below float32 resolution, the model computes
Darknet's numbers to float32 precision and passes.

**Diagnosis** of a failing layer: the model's per-channel response is compared
with what each known converter mistake would give (``HYPOTHESES``): eps value or
placement, mean/variance or scale/bias swapped, variance stored as a standard
deviation or biased, raw weights where folded ones were expected or the
reverse, the other fork's formula.  The best match within the tolerance is
reported, with the fix.
"""
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from ..dialects import DIALECTS, FOLDING, get_dialect
from .export import batchnorm_state_dict
from .fold import fold_record
from .parser import check_path
from .weights import (_check_cfg_arg, _network, _type_name, make_batchnorm_layer_from_record,
                      read_weights)

#: 8 float32 unit roundoffs (module docstring).
TOLERANCE = 8 * 2.0 ** -24

#: Probe conv outputs, in standard deviations around the rolling mean.
PROBE_SIGMAS = (-4.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 4.0)

#: The fork's denominator, in double: (x - mean) / D(var): where normalize_cpu adds its eps.
EXACT_FORM = {name: ("inside" if d.normalize_eps_in_sqrt else "outside", float(d.normalize_eps))
              for name, d in DIALECTS.items()}
_PJ_EPS = EXACT_FORM["pjreddie"][1]           # .000001f, added outside the root
#: eps values converters are known to use (docs/converters.md).
KNOWN_EPS = (1e-3, 1e-4, 1e-5, 1e-6, 0.0)

SECTIONS = ("convolutional", "connected", "batchnorm")


class CheckError(ValueError):
    """The converted model cannot be read or paired with the Darknet layers."""


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------
@dataclass
class LayerCheck:
    """One Darknet layer against its counterpart in the converted model."""
    index: int                 #: cfg layer index
    section: str               #: convolutional / connected / batchnorm
    channels: int
    form: str                  #: "batchnorm" (a BN node/module) or "folded" (into a conv)
    model_name: str            #: the node or module name(s) paired with it
    reference: str             #: what Darknet computes for this layer
    ok: bool
    max_rel_error: float
    max_ulp: int
    worst_channel: int
    diagnosis: str = ""


@dataclass
class CheckReport:
    """``check_model``'s result: ``ok`` when every layer is within ``tolerance``."""
    ok: bool
    dialect: str
    source: str
    tolerance: float
    layers: list = field(default_factory=list)

    def format_table(self):
        """The report as lines of text (the CLI prints them)."""
        head = (f"{'layer':>5} {'section':<13} {'chan':>5} {'form':<9} {'model':<24} "
                f"{'max rel err':>11} {'max ulp':>10} {'ok':<4} diagnosis")
        lines = [head]
        for r in self.layers:
            name = r.model_name if len(r.model_name) <= 24 else r.model_name[:21] + "..."
            lines.append(f"{r.index:>5} {r.section:<13} {r.channels:>5} {r.form:<9} "
                         f"{name:<24} {r.max_rel_error:>11.3g} {r.max_ulp:>10} "
                         f"{'ok' if r.ok else 'FAIL':<4} {r.diagnosis}")
        bad = [r for r in self.layers if not r.ok]
        lines.append(f"{len(self.layers) - len(bad)} of {len(self.layers)} layers within "
                     f"{self.tolerance:.3g} ({self.tolerance / 2 ** -24:.0f} float32 unit "
                     f"roundoffs) of {self.dialect}'s inference" +
                     ("" if not bad else f"; failing: {', '.join(str(r.index) for r in bad)}"))
        return lines


# --------------------------------------------------------------------------
# the converted model: units in order
# --------------------------------------------------------------------------
@dataclass
class Unit:
    """A conv/dense layer or a batchnorm of the converted model, as float arrays."""
    kind: str                  #: "conv", "dense" or "bn"
    name: str
    weight: object = None      #: conv/dense: (out, k) float; bn: scale
    bias: object = None
    mean: object = None
    var: object = None
    eps: object = None
    module: object = None      #: a live torch batchnorm module (run for the probes)

    @property
    def channels(self):
        return self.weight.shape[0] if self.weight is not None else self.mean.shape[0]


def _float(a):
    a = np.asarray(a)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)


def _onnx_units(path, model=None):
    """Units of an ONNX file (or of ``model``, an ``onnx.ModelProto``; ``path`` names it)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise CheckError(f"{path}: reading ONNX needs the onnx package: pip install "
                         "'darknet_bn[onnx]'") from None
    if model is None:
        try:
            model = onnx.load(path)
        except Exception as e:                          # protobuf DecodeError and friends
            raise CheckError(f"{path}: not a readable ONNX model ({type(e).__name__}: "
                             f"{str(e)[:200]})") from None
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(a.t)
    attrs = lambda node: {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def const(node, i):
        if i >= len(node.input) or not node.input[i]:
            return None
        if node.input[i] not in consts:
            raise CheckError(f"{path}: {node.op_type} node {node.name!r} input "
                             f"{node.input[i]!r} is not an initializer or constant; check "
                             "needs the parameters stored in the graph")
        return _float(consts[node.input[i]])

    units, producer = [], {}
    for node in graph.node:
        op, name = node.op_type, node.name or node.output[0]
        if op == "Conv":
            w = const(node, 1)
            units.append(Unit("conv", name, w.reshape(w.shape[0], -1), const(node, 2)))
        elif op == "Gemm":
            a = attrs(node)
            w = const(node, 1)
            w = w if a.get("transB", 0) else w.T
            b = const(node, 2)
            units.append(Unit("dense", name, w * a.get("alpha", 1.0),
                              None if b is None else b * a.get("beta", 1.0)))
        elif op == "MatMul" and len(node.input) > 1 and node.input[1] in consts:
            units.append(Unit("dense", name, const(node, 1).T))
        elif (op == "Add" and units and units[-1].kind == "dense" and units[-1].bias is None
              and producer.get(node.input[0]) is units[-1] and node.input[1] in consts):
            units[-1].bias = const(node, 1)
        elif op == "BatchNormalization":
            eps = attrs(node).get("epsilon", 1e-5)
            units.append(Unit("bn", name, const(node, 1), const(node, 2), const(node, 3),
                              const(node, 4), float(eps)))
        else:
            continue
        for out in node.output:
            producer[out] = units[-1]
    return units


def _torch_state_units(state, eps, source):
    import torch
    if not isinstance(state, dict):
        raise CheckError(f"{source}: not a state_dict (a dict of tensors) but "
                         f"{type(state).__name__}")
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    groups = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = value.detach().cpu().numpy()
    units = []
    for prefix, g in groups.items():
        if "running_mean" in g and "running_var" in g:
            c = g["running_mean"].shape[0]
            units.append(Unit("bn", prefix, _float(g.get("weight", np.ones(c, np.float32))),
                              _float(g.get("bias", np.zeros(c, np.float32))),
                              _float(g["running_mean"]), _float(g["running_var"]), eps))
        elif "weight" in g and g["weight"].ndim in (2, 3, 4, 5):
            w = _float(g["weight"])
            kind = "dense" if w.ndim == 2 else "conv"
            b = g.get("bias")
            units.append(Unit(kind, prefix, w.reshape(w.shape[0], -1),
                              None if b is None else _float(b)))
    return units


def _torch_module_units(module):
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.conv import _ConvNd
    darknet_torch = sys.modules.get("darknet_bn.torch")   # imported if the model holds one
    darknet_bn_modules = () if darknet_torch is None else (darknet_torch._DarknetBatchNorm,)
    units = []
    for name, m in module.named_modules():
        if isinstance(m, darknet_bn_modules):
            # darknet_bn's own module: its fork's normalize_cpu, described for the
            # diagnosis by the exact eps form (pjreddie: eps 0, var = (sqrt(v) + eps)^2).
            placement, e = EXACT_FORM[m.dialect.name]
            v = _float(m.running_var.detach().numpy())
            if placement == "outside":
                with np.errstate(all="ignore"):
                    v, e = (np.sqrt(v.astype(np.float64)) + e) ** 2, 0.0
            units.append(Unit("bn", name, *(_float(t.detach().numpy()) for t in
                                            (m.weight, m.bias, m.running_mean)), v, e, m))
        elif isinstance(m, _BatchNorm):
            if m.running_mean is None or m.running_var is None:
                raise CheckError(f"module {name!r}: a BatchNorm without running statistics "
                                 "(track_running_stats=False) normalizes with batch "
                                 "statistics; Darknet's inference uses rolling ones")
            c = m.num_features
            w = m.weight if m.weight is not None else torch.ones(c)
            b = m.bias if m.bias is not None else torch.zeros(c)
            units.append(Unit("bn", name, *(_float(t.detach().cpu().numpy()) for t in
                                            (w, b, m.running_mean, m.running_var)),
                              float(m.eps), m))
        elif isinstance(m, (_ConvNd, torch.nn.Linear)):
            w = _float(m.weight.detach().cpu().numpy())
            b = None if m.bias is None else _float(m.bias.detach().cpu().numpy())
            units.append(Unit("dense" if isinstance(m, torch.nn.Linear) else "conv", name,
                              w.reshape(w.shape[0], -1), b))
    return units


def load_units(converted, eps=None):
    """``(units, source, stores_eps)``: the converted model's conv/dense/bn units in order."""
    torch = sys.modules.get("torch")          # a live object means its package is imported
    if torch is not None and isinstance(converted, torch.nn.Module):
        return _torch_module_units(converted), type(converted).__name__, True
    if isinstance(converted, dict):
        if torch is None:
            raise CheckError("the state_dict passed is a dict but torch is not imported; "
                             "a state_dict holds torch tensors")
        return _torch_state_units(converted, eps, "state_dict"), "state_dict", False
    onnx = sys.modules.get("onnx")
    if onnx is not None and isinstance(converted, onnx.ModelProto):
        return _onnx_units("ONNX model", converted), "ONNX model", True
    path = check_path("check_model", "converted", converted, "model.onnx")
    if not os.path.isfile(path):
        what = "is not a file" if os.path.exists(path) else "does not exist"
        raise CheckError(f"{os.fspath(path)}: the converted model {what}")
    with open(path, "rb") as f:
        magic = f.read(4)
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext == ".onnx":
        return _onnx_units(path), os.fspath(path), True
    if ext in (".pt", ".pth", ".pkl", ".bin", ".ckpt") or magic[:2] == b"PK":
        try:
            import torch
        except ImportError:
            raise CheckError(f"{path}: reading a torch state_dict needs PyTorch: pip install "
                             "'darknet_bn[torch]'") from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckError(f"{path}: not a readable torch state_dict ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
        return _torch_state_units(state, eps, path), os.fspath(path), False
    raise CheckError(f"{path}: unknown model format; pass an .onnx file or a torch "
                     "state_dict (.pt/.pth)")


# --------------------------------------------------------------------------
# pairing
# --------------------------------------------------------------------------
@dataclass
class Pair:
    spec: object
    record: object             #: the Darknet BatchNormRecord (None for plain conv layers)
    conv: object = None        #: the model's conv/dense unit
    bn: object = None          #: the model's bn unit (None: folded into conv)


def _weights_count(spec):
    return dict(spec.blocks).get("weights", 0)


def _fits(spec, unit):
    if unit.kind == "bn":
        return spec.bn_channels and unit.channels == spec.bn_channels
    if spec.section == "batchnorm":
        return False
    return (unit.channels == spec.out_c and unit.weight.size == _weights_count(spec))


def pair_units(net, records, units):
    """Darknet's conv/connected/batchnorm layers with the model's units, in order.

    A Darknet layer with batchnorm takes the model's conv (if the model has
    convs) and the batchnorm right after it, or the conv alone when the model
    folded it; ``[batchnorm]`` takes a batchnorm.  Ambiguities (a folded conv
    followed by a standalone ``[batchnorm]``) are resolved by trying both.
    ``CheckError`` when no pairing uses every unit with matching shapes.
    """
    specs = [s for s in net.layers if s.section in SECTIONS]
    has_convs = any(u.kind != "bn" for u in units)
    if not has_convs:
        specs = [s for s in specs if s.bn_channels]
    best = {"depth": -1, "where": ""}
    failed = set()                     # (i, j) known not to lead to a full pairing

    def walk(i, j):
        if i == len(specs):
            return [] if j == len(units) else None
        if (i, j) in failed:
            return None
        spec = specs[i]
        options = []
        if spec.section == "batchnorm" or not has_convs:
            if j < len(units) and _fits(spec, units[j]) and units[j].kind == "bn":
                options.append((Pair(spec, records.get(spec.index), None, units[j]), j + 1))
        elif j < len(units) and units[j].kind != "bn" and _fits(spec, units[j]):
            conv = units[j]
            if spec.bn_channels:
                if j + 1 < len(units) and units[j + 1].kind == "bn" \
                        and _fits(spec, units[j + 1]):
                    options.append((Pair(spec, records[spec.index], conv, units[j + 1]), j + 2))
                options.append((Pair(spec, records[spec.index], conv, None), j + 1))
            else:
                options.append((Pair(spec, None, conv, None), j + 1))
        if i > best["depth"]:
            got = (f"{units[j].kind} {units[j].name!r} with {units[j].channels} channels"
                   if j < len(units) else "nothing (the model has no more units)")
            best.update(depth=i, where=f"layer {spec.index} [{spec.section}] (cfg line "
                        f"{spec.line}, {spec.out_c} channels) against the model's {got}")
        for pair, nj in options:
            rest = walk(i + 1, nj)
            if rest is not None:
                return [pair] + rest
        failed.add((i, j))
        return None

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * (len(specs) + len(units)) + 100))
    try:
        pairs = walk(0, 0)
    finally:
        sys.setrecursionlimit(limit)
    if pairs is None:
        n_bn = sum(u.kind == "bn" for u in units)
        raise CheckError(f"cannot pair the model's {len(units) - n_bn} conv/dense and {n_bn} "
                         f"batchnorm units with the cfg's {len(specs)} conv/connected/"
                         f"batchnorm layers ({len(net.bn_layers)} with batchnorm); first "
                         f"mismatch: {best['where']}. Is it the same network and cfg?")
    return [p for p in pairs if p.record is not None]


# --------------------------------------------------------------------------
# probes, reference, model response
# --------------------------------------------------------------------------
def _denominator(var, placement, eps):
    with np.errstate(invalid="ignore"):
        if placement == "inside":
            return np.sqrt(var + eps)
        return np.sqrt(var) + eps


def _params(record):
    s, m, v = (getattr(record, k).astype(np.float64) for k in
               ("scales", "rolling_mean", "rolling_variance"))
    b = (record.biases.astype(np.float64) if record.biases is not None
         else np.zeros(record.channels))
    return s, b, m, v


@dataclass
class Probe:
    """Per channel: the probe pixel's weight ``w`` and the probe values ``t`` and ``z``."""
    idx: np.ndarray            #: (C,) position of the probe pixel in the filter
    w: np.ndarray              #: (C,) float32 Darknet weight at that position (1: [batchnorm])
    t: np.ndarray              #: (C, P) float32 probe pixel values
    z: np.ndarray              #: (C, P) float32 Darknet conv output w*t


def make_probe(record):
    c = record.channels
    if record.weights is not None:
        W = record.weights.reshape(c, -1)
        with np.errstate(invalid="ignore"):
            idx = np.argmax(np.where(np.isfinite(W), np.abs(W), -1.0), axis=1)
        w = W[np.arange(c), idx]
    else:
        idx, w = np.zeros(c, np.int64), np.ones(c, np.float32)
    m = record.rolling_mean.astype(np.float64)
    v = record.rolling_variance.astype(np.float64)
    with np.errstate(invalid="ignore"):
        sd = np.where(np.isfinite(v) & (v > 0), np.sqrt(np.abs(v)), 1.0)
    m = np.where(np.isfinite(m), m, 0.0)
    k = np.array(PROBE_SIGMAS)
    target = m[:, None] + k[None, :] * sd[:, None]
    wd = w.astype(np.float64)[:, None]
    usable = np.isfinite(wd) & (wd != 0)
    with np.errstate(all="ignore"):
        t = np.where(usable, target / np.where(usable, wd, 1.0), k[None, :])
        t = np.concatenate([np.zeros((c, 1)), t], axis=1).astype(np.float32)
        z = (w[:, None] * t).astype(np.float32)          # the conv's float32 product
    return Probe(idx, w.astype(np.float32), t, z)


def reference_output(record, probe, dialect):
    """Darknet's float32 output for the probes, bit for bit, and its description."""
    folding = FOLDING[dialect]
    if record.section == "convolutional" and folding.inference_folds_conv:
        wf, bf = fold_record(record, dialect=dialect)
        c = record.channels
        wstar = wf.reshape(c, -1)[np.arange(c), probe.idx]
        with np.errstate(all="ignore"):
            y = (wstar[:, None] * probe.t).astype(np.float32) + bf[:, None]
        return y.astype(np.float32), "folded conv (fuse_conv_batchnorm)"
    c, p = probe.z.shape
    layer = make_batchnorm_layer_from_record(record, batch=1, h=1, w=p, dialect=dialect)
    y = np.array(layer.forward(np.ascontiguousarray(probe.z.reshape(1, c, 1, p)), train=False))
    form = "(x-mean)/sqrt(var+.00001f)" if dialect == "alexeyab" else \
        "(x-mean)/(sqrt(var)+.000001f)"
    return y.reshape(c, p).astype(np.float32), f"normalize_cpu {form}"


def _model_z(pair, probe):
    """The model's input to its batchnorm for the probes (float32 as the conv computes it)."""
    if pair.conv is None:
        return probe.z
    c = pair.record.channels
    w = pair.conv.weight[np.arange(c), probe.idx]
    with np.errstate(all="ignore"):
        z = (w[:, None] * probe.t.astype(w.dtype)).astype(w.dtype)
        if pair.conv.bias is not None:
            z = (z + pair.conv.bias[:, None]).astype(w.dtype)
    return z


def model_output(pair, probe):
    """The converted model's output for the probes."""
    z = _model_z(pair, probe)
    bn = pair.bn
    if bn is None:
        return z
    if bn.module is not None:
        import torch
        c, p = z.shape
        shape = {"BatchNorm1d": (1, c, p), "BatchNorm3d": (1, c, 1, 1, p)}.get(
            type(bn.module).__name__, (1, c, 1, p))
        if type(bn.module).__name__ == "DarknetBatchNorm1d":     # (N, C): probes as rows
            z, shape = np.ascontiguousarray(z.T), (p, c)
        was = bn.module.training
        bn.module.eval()
        try:
            with torch.no_grad():
                x = torch.from_numpy(np.ascontiguousarray(z.reshape(shape)))
                x = x.to(bn.module.running_mean.dtype)
                y = bn.module(x).detach().cpu().numpy()
        finally:
            bn.module.train(was)
        return y.T.reshape(c, p) if shape == (p, c) else y.reshape(c, p)
    alpha, beta = _bn_affine(bn)
    with np.errstate(all="ignore"):
        y = alpha[:, None] * z.astype(np.float64) + beta[:, None]
    return y.astype(z.dtype)


def _bn_affine(bn):
    """(alpha, beta) in double of a model batchnorm: y = alpha*x + beta."""
    s, b, m, v = (np.asarray(a, np.float64) for a in (bn.weight, bn.bias, bn.mean, bn.var))
    with np.errstate(all="ignore"):
        alpha = s / np.sqrt(v + bn.eps)
        return alpha, b - alpha * m


def model_response(pair, probe):
    """``(A, B)`` in double: the model computes ``A*t + B`` for probe pixel ``t``."""
    c = pair.record.channels
    if pair.conv is not None:
        w = pair.conv.weight[np.arange(c), probe.idx].astype(np.float64)
        cb = (np.zeros(c) if pair.conv.bias is None
              else pair.conv.bias.astype(np.float64))
    else:
        w, cb = probe.w.astype(np.float64), np.zeros(c)
    if pair.bn is None:
        return w, cb
    alpha, beta = _bn_affine(pair.bn)
    with np.errstate(all="ignore"):
        return alpha * w, alpha * cb + beta


def _scale(record, probe, dialect):
    """``|a*z| + |a*mean| + |b|`` per probe (the error's denominator)."""
    s, b, m, v = _params(record)
    with np.errstate(all="ignore"):
        a = s / _denominator(v, *EXACT_FORM[dialect])
        return (np.abs(a[:, None] * probe.z) + np.abs(a * m)[:, None] + np.abs(b)[:, None])


def relative_error(y, ref, scale):
    """Elementwise ``|y - ref| / scale``; 0 where both are NaN or the same infinity."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    with np.errstate(all="ignore"):
        err = np.abs(y - ref) / scale
        same = (y == ref) | (np.isnan(y) & np.isnan(ref))
        err = np.where(same, 0.0, err)
        err = np.where(np.isnan(err), np.inf, err)
    return err


def ulp_distance(a, b):
    """Elementwise distance in float32 ulps (0 where both are NaN)."""
    def ordered(x):
        i = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    a32, b32 = np.asarray(a, np.float32), np.asarray(b, np.float32)
    d = np.abs(ordered(a32) - ordered(b32))
    return np.where(np.isnan(a32) & np.isnan(b32), 0, d)


# --------------------------------------------------------------------------
# diagnosis
# --------------------------------------------------------------------------
def _eps_text(placement, eps):
    return (f"sqrt(var + {eps:.3g})" if placement == "inside" else f"(sqrt(var) + {eps:.3g})")


def _same_form(a, b):
    return a[0] == b[0] and math.isclose(a[1], b[1], rel_tol=1e-6, abs_tol=0.0)


def _eps_values(model_eps):
    """KNOWN_EPS and the model's own eps, without near-duplicates (1e-5 and .00001f)."""
    out = []
    for e in sorted(set(KNOWN_EPS) | ({model_eps} if model_eps is not None else set())):
        if not any(math.isclose(e, x, rel_tol=1e-6, abs_tol=0.0) for x in out):
            out.append(e)
    return out


def _fix(dialect, form):
    if form == "folded":
        if dialect == "alexeyab":
            return ("fold with darknet_bn.darknet.fold_batchnorm(..., dialect='alexeyab') "
                    "(= darknet-bn fold --dialect alexeyab)")
        return ("pjreddie does not fold at inference: keep a BatchNormalization with "
                "darknet_bn.darknet.batchnorm_state_dict (eps 0, running_var = "
                "(sqrt(var) + 1e-6)^2), or fold with scale/(sqrt(var) + 1e-6)")
    if dialect == "alexeyab":
        return ("export with darknet_bn.darknet.to_torch_batchnorm / batchnorm_state_dict "
                "(Darknet's blocks as stored, eps 1e-5)")
    return ("export with darknet_bn.darknet.to_torch_batchnorm / batchnorm_state_dict "
            "(eps 0, running_var = (sqrt(var) + 1e-6)^2)")


def _denominators(dialect, model_eps):
    """``[(form, text)]``: the fork's exact denominator (text None) and every eps
    value/placement converters use instead."""
    exact = EXACT_FORM[dialect]
    other = "pjreddie" if dialect == "alexeyab" else "alexeyab"
    out = [(exact, None)]
    for placement in ("inside", "outside"):
        for e in _eps_values(model_eps):
            if _same_form((placement, e), exact) or (placement == "outside" and e == 0):
                continue
            text = (f"eps: computes (x-mean)/{_eps_text(placement, e)}, {dialect} computes "
                    f"(x-mean)/{_eps_text(*exact)}")
            if _same_form((placement, e), EXACT_FORM[other]):
                text += f" (that is {other}'s normalization: wrong fork? --dialect {other})"
            out.append(((placement, e), text))
    return out


def _biased_ratio(s, v, w, A, form):
    """The constant c with var' = c*var if the model's response fits one, else None."""
    placement, e = form
    with np.errstate(all="ignore"):
        d = s * w / A
        vm = d * d - e if placement == "inside" else (d - e) ** 2
        c = vm / v
    good = np.isfinite(c) & (np.abs(v) > 1e-3)
    if not good.any():
        return None
    cm = float(np.median(c[good]))
    if not (0.5 <= cm < 1.0 - 1e-4) or np.max(np.abs(c[good] - cm)) > 1e-3 * cm:
        return None
    return cm


def hypotheses(record, probe, dialect, form, model_eps, A_mod):
    """``[(mistakes, diagnosis, A, B)]``: the response ``A*t + B`` each known converter
    mistake (or pair of mistakes: one structural, one eps) would give."""
    s, b, m, v = _params(record)
    w = probe.w.astype(np.float64)
    structural = [
        ("", {}),
        ("swap: rolling_mean and rolling_variance are swapped", dict(m_=v, v_=m)),
        ("swap: scales and biases are swapped", dict(s_=b, b_=s)),
        ("variance stored as a standard deviation (sqrt(var))", dict(v_=np.sqrt(np.abs(v)))),
    ]
    if form == "batchnorm":
        structural.append(("folded weights where raw ones were expected: the conv weights "
                           "already include the batchnorm scale, which the "
                           "BatchNormalization applies again; export Darknet's raw conv "
                           "weights (or drop the BatchNormalization)", dict(wmul=True)))
    out = []
    for den, eps_text in _denominators(dialect, model_eps):
        cases = list(structural)
        c = _biased_ratio(s, v, w, A_mod, den)
        if c is not None:
            cases.append((f"variance biased: it is {c:.6g} x Darknet's (divided by N instead "
                          f"of N-1, N ~ {1 / (1 - c):.0f}); Darknet stores the unbiased "
                          "rolling variance: store it unchanged", dict(v_=c * v)))
        for text, change in cases:
            s_, b_, m_, v_ = (change.get(k, d) for k, d in
                              (("s_", s), ("b_", b), ("m_", m), ("v_", v)))
            with np.errstate(all="ignore"):
                a = s_ / _denominator(v_, *den)
                A, B = a * w * (a if change.get("wmul") else 1.0), b_ - a * m_
            parts = [p for p in (text, eps_text) if p]
            if parts:
                out.append((len(parts), "; ".join(parts), A, B))
    for e in _eps_values(model_eps):
        if e:
            with np.errstate(all="ignore"):
                a = s / np.sqrt((np.sqrt(np.abs(v)) + _PJ_EPS) ** 2 + e)
            out.append((1, f"eps counted twice: running_var is already (sqrt(var) + 1e-6)^2 "
                        f"and eps {e:g} is added again: use eps 0 with that running_var",
                        a * w, b - a * m))
    if form == "folded":
        out.append((1, "raw weights where folded ones were expected: the conv has "
                    "Darknet's weights and biases unchanged, the batchnorm was dropped "
                    "instead of folded", w, b))
    return out


def diagnose(pair, probe, dialect, scale, A_mod, B_mod):
    """The simplest known mistake that explains the model's response within the
    tolerance (fewest mistakes first, then the smallest error), with its fix."""
    form = "batchnorm" if pair.bn is not None else "folded"
    model_eps = pair.bn.eps if pair.bn is not None else None
    t = probe.t.astype(np.float64)
    with np.errstate(all="ignore"):
        y_m = A_mod[:, None] * t + B_mod[:, None]
    best = None
    for count, text, A, B in hypotheses(pair.record, probe, dialect, form, model_eps, A_mod):
        with np.errstate(all="ignore"):
            y_h = A[:, None] * t + B[:, None]
        err = float(np.max(relative_error(y_m, y_h, scale)))
        if err <= TOLERANCE and (best is None or (count, err) < best[:2]):
            best = (count, err, text)
    if best is None:
        return _unexplained(pair, dialect)
    return f"{best[2]}; fix: {_fix(dialect, form)}"


def _unexplained(pair, dialect):
    """Which stored blocks differ from darknet_bn's exact export (``batchnorm_state_dict``)."""
    parts = []
    if pair.bn is not None:
        exact, _ = batchnorm_state_dict(pair.record, dialect=dialect)
        theirs = {"weight": pair.bn.weight, "bias": pair.bn.bias,
                  "running_mean": pair.bn.mean, "running_var": pair.bn.var}
        for k, x in theirs.items():
            x, y = np.asarray(x, np.float64), np.asarray(exact[k], np.float64)
            with np.errstate(all="ignore"):
                d = np.abs(x - y) / np.maximum(np.abs(y), 1e-30)
            d = np.where(np.isnan(x) & np.isnan(y), 0.0, np.where(np.isnan(d), np.inf, d))
            if np.max(d) > 1e-6:
                parts.append(k)
    what = (f" (differs from darknet_bn's exact export in {', '.join(parts)})"
            if parts else "")
    return ("not a known converter mistake: the parameters do not match Darknet's" + what +
            "; check the pairing and the values layer by layer")


# --------------------------------------------------------------------------
# check_model
# --------------------------------------------------------------------------
def check_layer(pair, dialect):
    record = pair.record
    probe = make_probe(record)
    ref, reference = reference_output(record, probe, dialect)
    y = model_output(pair, probe)
    scale = _scale(record, probe, dialect)
    err = relative_error(y, ref, scale)
    ulp = ulp_distance(y, ref)
    worst = int(np.unravel_index(int(np.argmax(err)), err.shape)[0]) if err.size else 0
    max_err = float(np.max(err)) if err.size else 0.0
    ok = max_err <= TOLERANCE
    names = " + ".join(u.name for u in (pair.conv, pair.bn) if u is not None)
    form = "batchnorm" if pair.bn is not None else "folded"
    diagnosis = ""
    if not ok:
        A, B = model_response(pair, probe)
        diagnosis = diagnose(pair, probe, dialect, scale, A, B)
    return LayerCheck(record.index, record.section, record.channels, form, names, reference,
                      ok, max_err, int(np.max(ulp)) if ulp.size else 0, worst, diagnosis)


def check_model(converted, cfg, weights, *, dialect, eps=None):
    """Compare a converted model with Darknet's inference, layer by layer: a ``CheckReport``.

    ``converted``: an ONNX file (``BatchNormalization`` nodes with their
    ``epsilon``, or batchnorm folded into ``Conv``/``Gemm`` weights and biases;
    needs the ``onnx`` package), a torch state_dict file (``.pt``/``.pth``,
    loaded with ``weights_only=True``; it stores no eps: pass ``eps``), or a
    live ``torch.nn.Module`` (its ``_BatchNorm`` modules carry their eps and
    are run on the probes), a state_dict (a dict of tensors) or an
    ``onnx.ModelProto``.  ``cfg``, ``weights``: the Darknet files (``cfg``
    may be a ``Network``).  ``dialect``: the fork whose inference is the
    reference.  ``eps``: only for a state_dict.

    Raises ``CheckError`` (a ``ValueError``) for an unreadable model or one
    whose layers cannot be paired with the cfg's; what ``read_weights`` raises
    for the Darknet files; ``TypeError``/``ValueError`` naming a wrong-typed
    argument, before any file is read.
    """
    r = "check_model"
    d = get_dialect(dialect, r).name
    cfg = _check_cfg_arg(r, cfg, "cfg")
    wpath = check_path(r, "weights", weights, "yolov4.weights")
    if eps is not None:
        if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
            raise TypeError(f"{r}: eps must be a real number (the eps the state_dict's "
                            f"model was built with) or None, got {_type_name(eps)}")
        eps = float(eps)
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"{r}: eps must be finite and >= 0, got {eps}")
    if converted is None or isinstance(converted, (int, float, list, tuple)):
        raise TypeError(f"{r}: converted must be an .onnx or .pt/.pth path, a "
                        f"torch.nn.Module, a state_dict or an onnx.ModelProto, got "
                        f"{_type_name(converted)}")
    net = _network(cfg, d, r)
    darknet = read_weights(net, wpath, dialect=d, layer_weights=True)
    units, source, stores_eps = load_units(converted, eps)
    if stores_eps and eps is not None:
        raise ValueError(f"{r}: eps={eps} given, but {source} stores its own eps per "
                         "batchnorm; pass eps only for a state_dict")
    if not stores_eps and eps is None and any(u.kind == "bn" for u in units):
        raise CheckError(f"{source}: a state_dict stores no eps; pass the eps its model is "
                         "built with (eps=..., --eps; PyTorch's default is 1e-5)")
    records = {rec.index: rec for rec in darknet.layers}
    pairs = pair_units(net, records, units)
    layers = [check_layer(p, d) for p in pairs]
    return CheckReport(all(l.ok for l in layers), d, source, TOLERANCE, layers)


__all__ = ["check_model", "CheckReport", "LayerCheck", "CheckError", "TOLERANCE"]
