"""Model readers: an ONNX graph, a torch state_dict or a live torch module, as units.

``read_model(converted, eps)`` returns a ``ModelUnits``: the units, whether they
carry a data-flow graph (ONNX) or only an order (state_dicts, modules), the
source's name and whether the model stores its own eps.

**ONNX.** Nodes are taken in a topological order computed here (the file's order
does not matter).  Constants are initializers and ``Constant`` nodes, followed
through ``Identity``, ``Cast``, ``Reshape``, ``Flatten``, ``Squeeze``,
``Unsqueeze``, ``Transpose``, ``Sqrt``, ``Reciprocal``, ``Neg`` and the
arithmetic of two constants, keeping the narrowest float precision met on the
way (a float16 initializer cast to float32 is judged as float16).  Units:

- ``Conv`` (weight and bias constants), ``Gemm`` and ``MatMul`` with a constant
  weight: conv/dense;
- ``BatchNormalization``: a batchnorm with its ``epsilon``;
- a chain of ``Mul``/``Add``/``Sub``/``Div`` by per-channel constants: after a
  conv/dense whose only consumer it is, a chain of additions is that layer's
  bias, any other chain a batchnorm in affine form ``alpha*x + beta``; a chain
  elsewhere (per-channel constants of more than one value) a batchnorm too.

Each unit's ``sources`` are the units whose outputs reach its input through
other nodes (or ``MODEL_INPUT``).  Quantized graphs are refused.
"""
import os
import re
import sys
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..._extras import missing_package
from ..._validate import error_text
from ...dialects import Dialect
from ..kinds import (ONNX, STATE_DICT, TORCH, file_kind, pickled_classes,
                     pickled_module_class)
from ..parser import check_path
from .units import MODEL_INPUT, CheckError, Unit, as_float64, narrowest, precision_of

#: Names that carry a cfg layer index: module_list.N / models.N / layers.N prefixes,
#: or convolutional_N / conv_N / batch_norm_N / batchnorm_N / bn_N / connected_N leaves.
_INDEXED_PREFIX = re.compile(r"(?:^|\.)(?:module_list|models|layers|module_defs)\.(\d+)(?:\.|$)")
_INDEXED_LEAF = re.compile(
    r"(?:^|\.)(?:convolutional|conv|batch_norm|batchnorm|bn|connected|linear|fc)_(\d+)$")

#: Node types of quantized graphs, which check does not judge.
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                           "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})
#: Ops folded when every input is a constant.
_FOLDED_OPS = frozenset({"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                         "Transpose", "Sqrt", "Reciprocal", "Neg", "Mul", "Add", "Sub", "Div"})
_AFFINE_OPS = frozenset({"Mul", "Add", "Sub", "Div"})


@dataclass
class ModelUnits:
    units: list
    graph: bool                #: units carry ``sources`` (a data-flow graph)
    source: str
    stores_eps: bool
    consumers: dict = None     #: graph: unit -> units fed by it


def cfg_index_in_name(name):
    """The cfg layer index a module/parameter name carries, or None."""
    match = _INDEXED_PREFIX.search(name) or _INDEXED_LEAF.search(name)
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------
def _import_onnx(what):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise CheckError(f"{what}: {missing_package('onnx', 'reading ONNX')}") from None
    return onnx, numpy_helper


def _external_tensors(model):
    onnx, _ = _import_onnx("ONNX model")
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                tensors.append(attr.t)
    return [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL]


def load_onnx(path):
    """The ``ModelProto`` of an ONNX file, external data read only from inside its directory."""
    onnx, _ = _import_onnx(path)
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:                          # protobuf DecodeError and friends
        raise CheckError(f"{path}: not a readable ONNX model ({type(e).__name__}: "
                         f"{error_text(e)})") from None
    external = _external_tensors(model)
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


def topological_order(nodes, available):
    """``nodes`` in an order where each node comes after the producers of its inputs
    (Kahn's algorithm, keeping the file's order among ready nodes).  ``available``:
    tensor names defined before any node (graph inputs, initializers).  Nodes whose
    inputs are never produced come last, in file order."""
    producer = {}
    for i, node in enumerate(nodes):
        for out in node.output:
            if out:
                producer[out] = i
    waiting = [0] * len(nodes)
    users = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        deps = {producer[t] for t in node.input if t and t not in available and t in producer}
        waiting[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready = deque(i for i in range(len(nodes)) if waiting[i] == 0)
    order, seen = [], set()
    while ready:
        i = ready.popleft()
        order.append(i)
        seen.add(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
    order += [i for i in range(len(nodes)) if i not in seen]
    return [nodes[i] for i in order]


class _Constant:
    __slots__ = ("value", "precision")

    def __init__(self, value, precision):
        self.value, self.precision = value, precision


def _tensor_constant(tensor, where):
    onnx, numpy_helper = _import_onnx(where)
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
    return _Constant(np.asarray(value), precision)


def _attrs(node):
    onnx, _ = _import_onnx("ONNX model")
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _fold(node, inputs, where):
    """The constant a node computes from constant ``inputs`` (``_Constant`` each), or None."""
    op, a = node.op_type, _attrs(node)
    vals = [c.value if c is not None else None for c in inputs]
    precision = narrowest(*(c.precision for c in inputs if c is not None))
    x = vals[0] if vals else None
    try:
        if op == "Identity":
            out = x
        elif op == "Cast":
            onnx, _ = _import_onnx(where)
            to = a.get("to")
            if to == onnx.TensorProto.FLOAT16:
                precision, out = narrowest(precision, "float16"), x.astype(np.float16)
            elif to == onnx.TensorProto.BFLOAT16:
                precision, out = narrowest(precision, "bfloat16"), x.astype(np.float32)
            elif to in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
                out = x.astype(np.float32 if to == onnx.TensorProto.FLOAT else np.float64)
            else:
                return None
        elif op == "Reshape":
            shape = [int(s) for s in vals[1]]
            if not a.get("allowzero", 0):
                shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
            out = x.reshape(shape)
        elif op == "Flatten":
            axis = a.get("axis", 1)
            out = x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)
        elif op in ("Squeeze", "Unsqueeze"):
            axes = a.get("axes") if len(vals) < 2 or vals[1] is None else list(vals[1])
            if op == "Squeeze":
                out = np.squeeze(x, axis=None if axes is None else tuple(int(i) for i in axes))
            else:
                out = x
                for ax in sorted(int(i) % (x.ndim + len(axes)) for i in axes):
                    out = np.expand_dims(out, ax)
        elif op == "Transpose":
            out = np.transpose(x, a.get("perm"))
        elif op == "Sqrt":
            out = np.sqrt(x)
        elif op == "Reciprocal":
            out = 1 / x
        elif op == "Neg":
            out = -x
        else:
            out = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract,
                   "Div": np.divide}[op](vals[0], vals[1])
    except CheckError:
        raise
    except Exception as e:
        raise CheckError(f"{where}: {op} node {node.name!r} on constants fails "
                         f"({type(e).__name__}: {str(e)[:160]})") from None
    return _Constant(np.asarray(out), precision)


def _per_channel(value, axis):
    """``value`` as a vector along channel ``axis`` (-3: NCHW conv output, -1: dense),
    a scalar as shape (1,), or None if it varies along another axis."""
    v = np.asarray(value)
    if v.size == 1:
        return v.reshape(1)
    if v.ndim == 0:
        return None
    big = [i - v.ndim for i in range(v.ndim) if v.shape[i] > 1]
    if len(big) == 1 and big[0] == axis:
        return v.reshape(-1)
    return None


class _Chain:
    """Consecutive per-channel affine nodes: ``y = alpha*x + beta`` of its input."""

    def __init__(self, owner, sources, axis):
        self.owner, self.sources, self.axis = owner, sources, axis
        self.alpha, self.beta, self.names, self.ops, self.precision = 1.0, 0.0, [], [], "float32"
        self.additive_only, self.position = True, None

    def extend(self, node, const, const_first):
        value = const.value.astype(np.float64)
        op = node.op_type
        if op == "Mul":
            self.alpha, self.beta = self.alpha * value, self.beta * value
        elif op == "Add":
            self.beta = self.beta + value
        elif op == "Sub":
            if const_first:                          # value - x
                self.alpha, self.beta = -self.alpha, value - self.beta
            else:
                self.beta = self.beta - value
        else:                                        # Div(x, value)
            self.alpha, self.beta = self.alpha / value, self.beta / value
        if op in ("Mul", "Div") or (op == "Sub" and const_first):
            self.additive_only = False
        self.names.append(node.name or node.output[0])
        self.ops.append(op)
        self.precision = narrowest(self.precision, const.precision)


def read_onnx(model, where):
    """``ModelUnits`` of an ``onnx.ModelProto``."""
    graph = model.graph
    quantized = [n for n in graph.node if n.op_type in QUANTIZED_OPS]
    if quantized:
        raise CheckError(f"{where}: a quantized graph ({quantized[0].op_type} node "
                         f"{quantized[0].name!r}); check judges float models only: check the "
                         "float model before quantization")
    consts = {}
    for tensor in graph.initializer:
        consts[tensor.name] = _tensor_constant(tensor, where)
    available = set(consts) | {i.name for i in graph.input}
    nodes = topological_order(list(graph.node), available)
    consumers = {}
    for node in nodes:
        for t in node.input:
            if t:
                consumers.setdefault(t, []).append(node)

    units = []
    sources = {i.name: frozenset([MODEL_INPUT]) for i in graph.input if i.name not in consts}
    chains = {}                  # tensor -> _Chain it is the output of
    unit_of = {}                 # tensor -> unit it is the output of (before any chain)

    def const_input(node, i, what):
        if i >= len(node.input) or not node.input[i]:
            return None
        found = consts.get(node.input[i])
        if found is None:
            raise CheckError(f"{where}: {node.op_type} node {node.name!r}: {what} "
                             f"({node.input[i]!r}) is not an initializer or a constant; check "
                             "needs the parameters stored in the graph")
        return found

    def dyn_sources(node):
        found = set()
        for t in node.input:
            if t and t not in consts:
                found |= sources.get(t, frozenset())
        return frozenset(found)

    def add_unit(node, unit, data_input):
        unit.sources = sources.get(data_input, frozenset()) if data_input else frozenset()
        unit.order = len(units)
        units.append(unit)
        for out in node.output[:1]:
            sources[out] = frozenset([unit])
            unit_of[out] = unit

    for node in nodes:
        op, name = node.op_type, node.name or (node.output[0] if node.output else "?")
        inputs = [consts.get(t) if t else None for t in node.input]
        if op == "Constant":
            a = _attrs(node)
            if "value" in a:
                consts[node.output[0]] = _tensor_constant(a["value"], where)
            elif "value_float" in a or "value_floats" in a:
                consts[node.output[0]] = _Constant(
                    np.asarray(a.get("value_float", a.get("value_floats")), np.float32),
                    "float32")
            elif "value_int" in a or "value_ints" in a:
                consts[node.output[0]] = _Constant(
                    np.asarray(a.get("value_int", a.get("value_ints")), np.int64), "float32")
            continue
        if op in _FOLDED_OPS and node.input and all(
                t == "" or t in consts for t in node.input):
            folded = _fold(node, inputs, where)
            if folded is not None:
                consts[node.output[0]] = folded
                continue
        if op == "Conv":
            if len(node.input) < 2 or not node.input[1]:
                raise CheckError(f"{where}: Conv node {name!r} has no weight input")
            w = const_input(node, 1, "the weight")
            b = const_input(node, 2, "the bias")
            if w.value.ndim != 4:
                raise CheckError(f"{where}: Conv node {name!r}: weight of shape "
                                 f"{w.value.shape}; Darknet's convolutions are 2-D "
                                 "(out, in/groups, kh, kw)")
            out_c = w.value.shape[0]
            if b is not None and b.value.size != out_c:
                raise CheckError(f"{where}: Conv node {name!r}: bias of {b.value.size} "
                                 f"values for {out_c} filters")
            add_unit(node, Unit("conv", name, as_float64(w.value, name).reshape(out_c, -1),
                                None if b is None else as_float64(b.value, name).reshape(-1),
                                kernel_shape=tuple(w.value.shape),
                                precision=narrowest(w.precision, b and b.precision),
                                form="Conv"), node.input[0])
        elif op == "Gemm" or (op == "MatMul" and len(node.input) == 2
                              and node.input[1] in consts and node.input[0] not in consts):
            a = _attrs(node) if op == "Gemm" else {}
            if a.get("transA", 0) or len(node.input) < 2 or node.input[1] not in consts:
                raise CheckError(f"{where}: Gemm node {name!r}: only x @ W with a constant "
                                 "W (transA=0) is read")
            w = const_input(node, 1, "the weight")
            if w.value.ndim != 2:
                raise CheckError(f"{where}: {op} node {name!r}: weight of shape "
                                 f"{w.value.shape}; a dense layer's weight is 2-D")
            weight = as_float64(w.value, name)
            weight = weight if a.get("transB", 0) else weight.T
            weight = weight * float(a.get("alpha", 1.0))
            b = const_input(node, 2, "the bias") if op == "Gemm" else None
            bias = None
            if b is not None:
                bias = as_float64(b.value, name).reshape(-1) * float(a.get("beta", 1.0))
                if bias.size == 1:
                    bias = np.full(weight.shape[0], bias[0])
                if bias.size != weight.shape[0]:
                    raise CheckError(f"{where}: Gemm node {name!r}: bias of {bias.size} values "
                                     f"for {weight.shape[0]} outputs")
            add_unit(node, Unit("dense", name, weight, bias,
                                precision=narrowest(w.precision, b and b.precision), form=op),
                     node.input[0])
        elif op == "BatchNormalization":
            params = [const_input(node, i, what) for i, what in
                      ((1, "the scale"), (2, "the bias"), (3, "the mean"), (4, "the variance"))]
            if any(p is None for p in params):
                raise CheckError(f"{where}: BatchNormalization node {name!r} lacks an input")
            sizes = {p.value.size for p in params}
            if len(sizes) != 1:
                raise CheckError(f"{where}: BatchNormalization node {name!r}: scale, bias, "
                                 f"mean and variance have {[p.value.size for p in params]} "
                                 "values; they must be one per channel")
            scale, bias, mean, var = (as_float64(p.value, name).reshape(-1) for p in params)
            add_unit(node, Unit("bn", name, scale, bias, mean, var,
                                float(_attrs(node).get("epsilon", 1e-5)),
                                precision=narrowest(*(p.precision for p in params)),
                                form="BatchNormalization"), node.input[0])
        elif op in _AFFINE_OPS and len(node.input) == 2 and \
                sum(t in consts for t in node.input) == 1 and \
                not (op == "Div" and node.input[0] in consts):
            const_first = node.input[0] in consts
            data = node.input[1] if const_first else node.input[0]
            const = consts[node.input[0] if const_first else node.input[1]]
            chain = chains.get(data)
            owner = unit_of.get(data)
            if chain is None and owner is not None and owner.kind != "bn" \
                    and len(consumers.get(data, ())) == 1:
                chain = _Chain(owner, frozenset([owner]),
                               -3 if owner.kind == "conv" else -1)
            elif chain is not None and len(consumers.get(data, ())) != 1:
                chain = None
            axis = chain.axis if chain is not None else (
                -3 if const.value.ndim >= 3 else -1)
            vector = _per_channel(const.value, axis)
            if chain is None and (vector is None or vector.size < 2):
                sources[node.output[0]] = dyn_sources(node)      # not a batchnorm: data flow
                continue
            if vector is None:
                sources[node.output[0]] = dyn_sources(node)
                continue
            if chain is None:
                chain = _Chain(None, sources.get(data, frozenset()), axis)
            if chain.position is None:
                chain.position = (chain.owner.order if chain.owner is not None
                                  else len(units)) + 0.5
            chain.extend(node, _Constant(vector, const.precision), const_first)
            chains[node.output[0]] = chain
            sources[node.output[0]] = frozenset([chain])
        else:
            for out in node.output:
                if out:
                    sources[out] = dyn_sources(node)
    return _finish_chains(units, chains, where)


def _finish_chains(units, chains, where):
    """Chains become biases or affine batchnorms; sources resolve to units."""
    final = list(dict.fromkeys(chains.values()))
    resolved = {}
    for chain in final:
        owner = chain.owner
        channels = owner.channels if owner is not None else max(np.size(chain.alpha),
                                                                 np.size(chain.beta))
        alpha = np.broadcast_to(np.asarray(chain.alpha, np.float64), (channels,)).copy()
        beta = np.broadcast_to(np.asarray(chain.beta, np.float64), (channels,)).copy()
        if owner is not None and chain.additive_only and np.all(alpha == 1.0):
            owner.bias = beta if owner.bias is None else owner.bias + beta
            owner.precision = narrowest(owner.precision, chain.precision)
            owner.form += " + Add"
            resolved[chain] = owner
            continue
        unit = Unit("bn", " + ".join(chain.names), alpha=alpha, beta=beta,
                    precision=chain.precision, form="/".join(dict.fromkeys(chain.ops)),
                    order=chain.position)
        resolved[chain] = unit
        units.append(unit)

    def resolve(source_set):
        return frozenset(resolved[s] if isinstance(s, _Chain) else s for s in source_set)

    for chain in final:
        unit = resolved[chain]
        if unit.kind == "bn" and unit is not chain.owner:
            unit.sources = resolve(chain.sources)
    for unit in units:
        unit.sources = resolve(unit.sources)
    units.sort(key=lambda u: u.order)
    for i, unit in enumerate(units):
        unit.order = i
    for unit in units:              # a conv whose bias chain became its bias is not its own
        unit.sources = frozenset(s for s in unit.sources if s is not unit)
    consumers = {unit: [] for unit in units}
    for unit in units:
        for source in unit.sources:
            if source is not MODEL_INPUT and source in consumers:
                consumers[source].append(unit)
    return ModelUnits(units, True, where, True, consumers)


# --------------------------------------------------------------------------
# torch: state_dicts and live modules
# --------------------------------------------------------------------------
def _numpy(tensor):
    """A torch tensor as a CPU numpy array (float32 for floats narrower than that) and
    its precision."""
    import torch
    t = tensor.detach()
    precision = precision_of(t.dtype)
    if t.is_floating_point() and t.dtype != torch.float64:
        t = t.to("cpu", torch.float32)
    return t.cpu().numpy(), precision


def read_state_dict(state, eps, where):
    """``ModelUnits`` of a state_dict: parameter groups by module prefix, in key order."""
    import torch
    if not isinstance(state, dict):
        raise CheckError(f"{where}: not a state_dict (a dict of tensors) but "
                         f"{type(state).__name__}")
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    groups = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = _numpy(value)
    units = []
    for prefix, g in groups.items():
        precision = narrowest(*(p for _, p in g.values()))
        if "running_mean" in g and "running_var" in g:
            channels = g["running_mean"][0].shape[0]
            arrays = {k: g[k][0] if k in g else default for k, default in
                      (("weight", np.ones(channels, np.float32)),
                       ("bias", np.zeros(channels, np.float32)),
                       ("running_mean", None), ("running_var", None))}
            if any(np.size(a) != channels for a in arrays.values()):
                raise CheckError(f"{where}: {prefix!r}: batchnorm tensors of sizes "
                                 f"{[np.size(a) for a in arrays.values()]}, not one per channel")
            scale, bias, mean, var = (as_float64(a, prefix).reshape(-1) for a in arrays.values())
            units.append(Unit("bn", prefix, scale, bias, mean, var, eps, precision=precision,
                              form="state_dict batchnorm", stored=arrays))
        elif "weight" in g and g["weight"][0].ndim in (2, 4):
            w = g["weight"][0]
            b = g.get("bias", (None,))[0]
            kind = "dense" if w.ndim == 2 else "conv"
            if b is not None and b.size != w.shape[0]:
                raise CheckError(f"{where}: {prefix!r}: bias of {b.size} values for "
                                 f"{w.shape[0]} outputs")
            units.append(Unit(kind, prefix, as_float64(w, prefix).reshape(w.shape[0], -1),
                              None if b is None else as_float64(b, prefix).reshape(-1),
                              kernel_shape=w.shape if w.ndim == 4 else None,
                              precision=precision, form=f"state_dict {kind}",
                              stored={"weight": w, "bias": b}))
    for i, u in enumerate(units):
        u.order, u.cfg_index = i, cfg_index_in_name(u.name)
    return ModelUnits(units, False, where, False)


def darknet_dialect(module):
    """The fork of a darknet_bn batchnorm module (``DarknetBatchNorm2d/1d``, or any
    ``_BatchNorm`` carrying a ``Dialect`` as its ``dialect``), else None.  ``check``
    sits below ``darknet_bn.torch`` in the package's layers, so it recognizes the
    modules by that public attribute rather than by importing their class."""
    dialect = getattr(module, "dialect", None)
    return dialect if isinstance(dialect, Dialect) else None


def read_module(module, where):
    """``ModelUnits`` of a live ``torch.nn.Module`` (read on the CPU, any device/dtype).

    darknet_bn's own batchnorm modules come first (their fork's normalize_cpu,
    described by its exact eps form); any other ``_BatchNorm`` (SyncBatchNorm
    included) by its parameters and eps, or, if its class overrides ``forward``,
    by running a float32 CPU copy on the probes.
    """
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.conv import _ConvNd

    standard_forwards = {_BatchNorm.forward, torch.nn.SyncBatchNorm.forward}
    units = []
    for name, m in module.named_modules():
        dialect = darknet_dialect(m) if isinstance(m, _BatchNorm) else None
        if dialect is not None:
            arrays = {k: _numpy(getattr(m, k))[0] for k in
                      ("weight", "bias", "running_mean", "running_var")}
            scale, bias, mean, var = (as_float64(a, name) for a in arrays.values())
            with np.errstate(all="ignore"):
                var, eps = dialect.torch_form(var, np.sqrt)
            units.append(Unit("bn", name, scale, bias, mean, var, eps, module=m,
                              form=f"{type(m).__name__}({dialect.name})", stored=arrays))
        elif isinstance(m, _BatchNorm):
            if m.running_mean is None or m.running_var is None:
                raise CheckError(f"module {name!r}: a BatchNorm without running statistics "
                                 "(track_running_stats=False) normalizes with batch "
                                 "statistics; Darknet's inference uses rolling ones")
            channels = m.num_features
            read = {k: _numpy(getattr(m, k)) if getattr(m, k) is not None else
                    (np.full(channels, 1.0 if k == "weight" else 0.0, np.float32), "float32")
                    for k in ("weight", "bias", "running_mean", "running_var")}
            arrays = {k: a for k, (a, _) in read.items()}
            scale, bias, mean, var = (as_float64(a, name) for a in arrays.values())
            custom = type(m).forward not in standard_forwards
            units.append(Unit("bn", name, scale, bias, mean, var, float(m.eps), module=m,
                              run_module=custom, form=type(m).__name__, stored=arrays,
                              precision=narrowest(*(p for _, p in read.values()))))
        elif isinstance(m, (_ConvNd, torch.nn.Linear)):
            w, wp = _numpy(m.weight)
            b, bp = _numpy(m.bias) if m.bias is not None else (None, None)
            kind = "dense" if isinstance(m, torch.nn.Linear) else "conv"
            units.append(Unit(kind, name, as_float64(w, name).reshape(w.shape[0], -1),
                              None if b is None else as_float64(b, name),
                              kernel_shape=tuple(w.shape) if w.ndim == 4 else None,
                              precision=narrowest(wp, bp), module=m, form=type(m).__name__,
                              stored={"weight": w, "bias": b}))
    for i, u in enumerate(units):
        u.order, u.cfg_index = i, cfg_index_in_name(u.name)
    return ModelUnits(units, False, type(module).__name__, True)


# --------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------
def load_torch_file(path, what="a torch state_dict"):
    """``torch.load(path, weights_only=True)`` on the CPU; ``CheckError`` naming what
    the file is when it is not a state_dict (an ONNX model, a pickled ``nn.Module``,
    a Darknet file...)."""
    kind = file_kind(path)
    if kind is not None and kind != TORCH:
        raise CheckError(f"{path}: expected {STATE_DICT}; this file is {kind}")
    try:
        import torch
    except ImportError:
        raise CheckError(f"{path}: {missing_package('torch', f'reading {what}')}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        module = pickled_module_class(path)
        if module is not None:
            raise CheckError(f"{path}: expected {STATE_DICT}; this file is a pickled "
                             f"nn.Module ({module}, torch.save(model)): save "
                             "model.state_dict() instead") from None
        classes = [c for c in pickled_classes(path)
                   if not c.startswith(("torch.", "collections.", "builtins."))]
        if kind == TORCH and classes:
            raise CheckError(f"{path}: expected {STATE_DICT}; this file pickles other "
                             f"objects ({', '.join(classes[:3])})") from None
        if kind is None and not isinstance(e, OSError):
            raise CheckError(f"{path}: expected {STATE_DICT}; this file is not a PyTorch "
                             "file") from None
        raise CheckError(f"{path}: not a readable torch state_dict ({type(e).__name__}: "
                         f"{error_text(e)})") from None


def read_model(converted, eps=None, routine="check_model"):
    """``ModelUnits`` of ``converted``: a live module, a state_dict, an ONNX
    ``ModelProto``, or a path to an ``.onnx`` / ``.pt`` file."""
    torch = sys.modules.get("torch")          # a live object means its package is imported
    if torch is not None and isinstance(converted, torch.nn.Module):
        return read_module(converted, type(converted).__name__)
    if isinstance(converted, dict):
        if torch is None:
            raise CheckError("the state_dict passed is a dict but torch is not imported; "
                             "a state_dict holds torch tensors")
        return read_state_dict(converted, eps, "state_dict")
    onnx = sys.modules.get("onnx")
    if onnx is not None and isinstance(converted, onnx.ModelProto):
        if _external_tensors(converted):
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
    what = f"the converted model is {kind}" if kind is not None else "unknown model format"
    raise CheckError(f"{name}: {what}; pass an ONNX model or a torch state_dict "
                     "(torch.save(model.state_dict(), path))")
