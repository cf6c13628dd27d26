"""A neutral op graph, and its units: what every graph format (ONNX, TFLite, OpenVINO IR)
is translated into before ``read_graph`` finds the conv/dense layers and batchnorms.

**What a translator produces** (``onnx_reader`` is one): an ``OpGraph`` of

- ``nodes``: ``OpNode(op, name, inputs, outputs, attrs)`` in any order (a
  topological order is computed here).  ``op`` uses ONNX's op-type vocabulary
  and ONNX's tensor layouts: ``Conv`` (inputs: data, weight (out, in/groups, kh,
  kw), optional bias), ``Gemm`` (``transA``/``transB``/``alpha``/``beta``
  attrs), ``MatMul`` (data @ constant), ``BatchNormalization`` (data, scale,
  bias, mean, var; ``epsilon`` attr), ``Mul``/``Add``/``Sub``/``Div`` (data and
  a per-channel constant broadcasting over NCHW or (N, C)), and the shape and
  arithmetic ops of ``FOLDS`` (folded when their inputs are constants).  Every
  other op is data flow only: its outputs depend on its non-constant inputs.
  ``inputs``/``outputs``: tensor names ("" for an absent optional input);
  ``attrs``: a dict of Python values (ints, floats, lists; ``Cast``'s ``to`` as
  a dtype name: "float16", "bfloat16", "float32", "float64", anything else not
  folded);
- ``constants``: ``{tensor name: Constant(value, precision, quant)}``, the
  stored parameters and constant nodes: ``value`` a numpy array (bfloat16
  values widened to float32), ``precision`` the float precision it was stored
  in ("float32", "float16", "bfloat16"; "int8" for a quantized tensor), ``quant``
  a ``quantization.Quant(scale, zero_point, axis, storage, saturated)`` for a
  quantized tensor, whose ``value`` then holds the dequantized values (None for
  float).  A unit read from quantized constants carries each one's steps
  (``Unit.quantized``; an affine chain carries its constants' half steps to
  ``alpha`` and ``beta``);
- ``inputs``: the data inputs (tensor names, not constants) in the model's
  order.  The first is the model input; any other (per-layer exports, a
  subgraph cut from the middle) starts pairing wherever its layer fits.

**Units** (``read_graph``): ``OP_HANDLERS`` maps an op type to its handler:
``Conv``: a ``ConvUnit``; ``Gemm``, ``MatMul`` with a constant weight: a
``DenseUnit``; ``BatchNormalization``: a ``BatchNormUnit``; ``Mul``/``Add``/
``Sub``/``Div`` by a per-channel constant: a chain, which after a conv/dense
whose only consumer it is becomes that layer's bias (additions only) or an
``AffineUnit`` (``alpha*x + beta``), and elsewhere (per-channel constants of
more than one value) an ``AffineUnit`` too.  Constants are folded through
``FOLDS`` (op type -> function of the constant inputs' values and the attrs),
keeping the narrowest float precision met on the way (a float16 initializer
cast to float32 is judged as float16).  Each unit's ``sources`` are the units
whose outputs reach its input through other nodes, or the input it reads
(``MODEL_INPUT`` for the first, a ``GraphInput`` for any other).
"""
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .quantization import Quant, QuantizedParam, quantized_param
from .units import (MODEL_INPUT, AffineUnit, BatchNormUnit, CheckError, ConvUnit, DenseUnit,
                    GraphInput, LinearUnit, ModelUnits, NormUnit, as_float64, cfg_index_in_name,
                    consumers_of, narrowest)


@dataclass(frozen=True)
class Step:
    """One op between a stored tensor and a constant a unit reads: ``op``, its
    ``perm`` (``Transpose``), the shape and dtype of its input; ``quant``: the
    ``Quant`` of a ``Quantize`` step (stored integers dequantized)."""
    op: str
    in_shape: tuple
    in_dtype: str
    perm: tuple = None
    quant: object = None


@dataclass(frozen=True)
class Origin:
    """Where a constant's values are stored: the stored ``tensor`` (a name of the
    translator's ``constants``) and the invertible ``steps`` (``INVERTIBLE``) from it,
    or ``tensor`` None and ``why`` (the op that computed it)."""
    tensor: str = None
    steps: tuple = ()
    shape: tuple = ()
    dtype: str = "float32"
    why: str = ""


@dataclass
class Constant:
    """A constant tensor: its ``value``, the float ``precision`` it was stored in, and
    its quantization (None for a float constant); ``origin``: where its values are
    stored (``Origin``; set by ``read_graph`` for a graph's constants)."""
    value: np.ndarray
    precision: str = "float32"
    quant: Quant = None
    origin: Origin = None


@dataclass
class OpNode:
    """One op: ONNX's op type, its input and output tensor names, its attributes."""
    op: str
    name: str
    inputs: tuple
    outputs: tuple
    attrs: dict = field(default_factory=dict)


@dataclass
class OpGraph:
    """A model as ops over named tensors (module docstring)."""
    nodes: list
    constants: dict
    inputs: tuple


def topological_order(nodes, available):
    """``nodes`` in an order where each node comes after the producers of its inputs
    (Kahn's algorithm, keeping the given order among ready nodes).  ``available``:
    tensor names defined before any node (graph inputs, constants).  Nodes whose
    inputs are never produced come last, in the given order."""
    producer = {}
    for i, node in enumerate(nodes):
        for out in node.outputs:
            if out:
                producer[out] = i
    waiting = [0] * len(nodes)
    users = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        deps = {producer[t] for t in node.inputs if t and t not in available and t in producer}
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


# --------------------------------------------------------------------------
# constant folding
# --------------------------------------------------------------------------
def _reshape(vals, a):
    x = vals[0]
    shape = [int(s) for s in vals[1]]
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _flatten(vals, a):
    x, axis = vals[0], a.get("axis", 1)
    return x.reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), -1)


def _axes(vals, a):
    return a.get("axes") if len(vals) < 2 or vals[1] is None else list(vals[1])


def _squeeze(vals, a):
    axes = _axes(vals, a)
    return np.squeeze(vals[0], axis=None if axes is None else tuple(int(i) for i in axes))


def _unsqueeze(vals, a):
    out, axes = vals[0], _axes(vals, a)
    for ax in sorted(int(i) % (vals[0].ndim + len(axes)) for i in axes):
        out = np.expand_dims(out, ax)
    return out


#: ``Cast`` targets: the precision they narrow to and the numpy dtype of the value.
CAST_TO = {"float16": ("float16", np.float16), "bfloat16": ("bfloat16", np.float32),
           "float32": (None, np.float32), "float64": (None, np.float64)}

#: Ops folded when every input is a constant: op type -> ``f(values, attrs)``.
FOLDS = {
    "Identity": lambda v, a: v[0],
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": lambda v, a: np.transpose(v[0], a.get("perm")),
    "Sqrt": lambda v, a: np.sqrt(v[0]),
    "Reciprocal": lambda v, a: 1 / v[0],
    "Neg": lambda v, a: -v[0],
    "Mul": lambda v, a: np.multiply(v[0], v[1]),
    "Add": lambda v, a: np.add(v[0], v[1]),
    "Sub": lambda v, a: np.subtract(v[0], v[1]),
    "Div": lambda v, a: np.divide(v[0], v[1]),
    "Cast": lambda v, a: v[0].astype(CAST_TO[a.get("to")][1]),
}


#: Ops whose output a stored tensor's values can be recovered from (``Origin``).
INVERTIBLE = ("Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose")


def folded_origin(node, inputs, out):
    """The ``Origin`` of ``node``'s folded output ``out``: its first input's with one
    more step when ``node`` is ``INVERTIBLE``, else one naming the op."""
    first = inputs[0] if inputs else None
    source = first.origin if first is not None else None
    if node.op not in INVERTIBLE or source is None or source.tensor is None:
        why = source.why if source is not None and source.why else \
            f"{node.op} node {node.name or node.outputs[0]!r}"
        return Origin(why=why)
    perm = node.attrs.get("perm") if node.op == "Transpose" else None
    if node.op == "Transpose" and perm is None:
        perm = tuple(reversed(range(np.ndim(first.value))))
    step = Step(node.op, tuple(np.shape(first.value)), str(np.asarray(first.value).dtype),
                None if perm is None else tuple(int(i) for i in perm))
    return Origin(source.tensor, source.steps + (step,), tuple(np.shape(out)),
                  str(np.asarray(out).dtype))


def fold(node, inputs, where):
    """The ``Constant`` ``node`` computes from constant ``inputs``, or None (not
    foldable: an unknown op, a cast to a non-float type)."""
    if node.op not in FOLDS or (node.op == "Cast" and node.attrs.get("to") not in CAST_TO):
        return None
    precision = narrowest(*(c.precision for c in inputs if c is not None))
    if node.op == "Cast":
        precision = narrowest(precision, CAST_TO[node.attrs["to"]][0])
    vals = [c.value if c is not None else None for c in inputs]
    try:
        out = FOLDS[node.op](vals, node.attrs)
    except Exception as e:
        raise CheckError(f"{where}: {node.op} node {node.name!r} on constants fails "
                         f"({type(e).__name__}: {str(e)[:160]})") from None
    out = np.asarray(out)
    return Constant(out, precision, origin=folded_origin(node, inputs, out))


# --------------------------------------------------------------------------
# units
# --------------------------------------------------------------------------
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


@dataclass(frozen=True)
class Link:
    """One op of an affine chain, as the model stores it: ``op``, its constant's
    ``origin`` and ``shape``, whether the constant is the first operand, its values
    (per channel, or one)."""
    op: str
    origin: Origin
    const_first: bool
    shape: tuple
    value: np.ndarray = None


class Chain:
    """Consecutive per-channel affine nodes: ``y = alpha*x + beta`` of its input."""

    def __init__(self, owner, sources, axis):
        self.owner, self.sources, self.axis = owner, sources, axis
        self.alpha, self.beta, self.names, self.ops, self.precision = 1.0, 0.0, [], [], "float32"
        self.additive_only, self.position = True, None
        self.links = []
        #: quantized constants: half their steps carried to alpha and beta (to first
        #: order), and what they were ("int8, per tensor")
        self.alpha_half, self.beta_half, self.quantized = 0.0, 0.0, set()

    def extend(self, node, const, const_first, half=None, described=""):
        value = const.value.astype(np.float64)
        op = node.op
        dv = 0.0 if half is None else half
        if half is not None:
            self.quantized.add(described)
        if op == "Mul":
            self.alpha_half = np.abs(self.alpha) * dv + np.abs(value) * self.alpha_half
            self.beta_half = np.abs(self.beta) * dv + np.abs(value) * self.beta_half
            self.alpha, self.beta = self.alpha * value, self.beta * value
        elif op == "Add":
            self.beta, self.beta_half = self.beta + value, self.beta_half + dv
        elif op == "Sub":
            self.beta_half = self.beta_half + dv
            if const_first:                          # value - x
                self.alpha, self.beta = -self.alpha, value - self.beta
            else:
                self.beta = self.beta - value
        else:                                        # Div(x, value)
            with np.errstate(all="ignore"):
                self.alpha_half = (self.alpha_half / np.abs(value)
                                   + np.abs(self.alpha) * dv / value ** 2)
                self.beta_half = self.beta_half / np.abs(value) + np.abs(self.beta) * dv / value ** 2
            self.alpha, self.beta = self.alpha / value, self.beta / value
        if op in ("Mul", "Div") or (op == "Sub" and const_first):
            self.additive_only = False
        self.names.append(node.name or node.outputs[0])
        self.ops.append(op)
        self.precision = narrowest(self.precision, const.precision)


def stored_origin(name, const):
    """``const`` with its ``Origin``: itself, stored as ``name`` (kept if already set)."""
    if const.origin is not None:
        return const
    value = np.asarray(const.value)
    return Constant(const.value, const.precision, const.quant,
                    Origin(name, (), tuple(value.shape), str(value.dtype)))


def origin_of(const):
    """A constant's ``Origin`` (None for an absent optional input)."""
    return None if const is None else const.origin


class GraphReader:
    """The state ``read_graph``'s handlers share: constants, each tensor's sources, the
    units found so far, the chains being built."""

    def __init__(self, graph, where):
        self.where = where
        self.consts = {name: stored_origin(name, c) for name, c in graph.constants.items()}
        available = set(self.consts) | set(graph.inputs)
        self.nodes = topological_order(list(graph.nodes), available)
        self.consumers = {}
        for node in self.nodes:
            for t in node.inputs:
                if t:
                    self.consumers.setdefault(t, []).append(node)
        data_inputs = [t for t in graph.inputs if t not in self.consts]
        self.sources = {t: frozenset([MODEL_INPUT if i == 0 else GraphInput(t)])
                        for i, t in enumerate(data_inputs)}
        self.units, self.chains, self.unit_of = [], {}, {}

    def const_input(self, node, i, what):
        """The ``Constant`` at input ``i`` (None if absent); ``CheckError`` if it is data."""
        if i >= len(node.inputs) or not node.inputs[i]:
            return None
        found = self.consts.get(node.inputs[i])
        if found is None:
            raise CheckError(f"{self.where}: {node.op} node {node.name!r}: {what} "
                             f"({node.inputs[i]!r}) is not an initializer or a constant; "
                             "check needs the parameters stored in the graph")
        return found

    def data_sources(self, node):
        found = set()
        for t in node.inputs:
            if t and t not in self.consts:
                found |= self.sources.get(t, frozenset())
        return frozenset(found)

    def pass_through(self, node):
        for out in node.outputs:
            if out:
                self.sources[out] = self.data_sources(node)

    def add_unit(self, node, unit, data_input):
        unit.sources = self.sources.get(data_input, frozenset()) if data_input else frozenset()
        unit.order = len(self.units)
        unit.cfg_index = cfg_index_in_name(unit.name)
        self.units.append(unit)
        for out in node.outputs[:1]:
            self.sources[out] = frozenset([unit])
            self.unit_of[out] = unit


def _name(node):
    return node.name or (node.outputs[0] if node.outputs else "?")


def read_conv(r, node):
    name = _name(node)
    if len(node.inputs) < 2 or not node.inputs[1]:
        raise CheckError(f"{r.where}: Conv node {name!r} has no weight input")
    w = r.const_input(node, 1, "the weight")
    b = r.const_input(node, 2, "the bias")
    if w.value.ndim != 4:
        raise CheckError(f"{r.where}: Conv node {name!r}: weight of shape {w.value.shape}; "
                         "Darknet's convolutions are 2-D (out, in/groups, kh, kw)")
    out_c = w.value.shape[0]
    if b is not None and b.value.size != out_c:
        raise CheckError(f"{r.where}: Conv node {name!r}: bias of {b.value.size} values for "
                         f"{out_c} filters")
    r.add_unit(node, ConvUnit(name=name, weight=as_float64(w.value, name).reshape(out_c, -1),
                              bias=None if b is None else b.value,
                              kernel_shape=tuple(w.value.shape),
                              precision=narrowest(w.precision, b and b.precision),
                              form="Conv", quantized=quantized_params(
                                  w, (out_c, -1), None, b, (out_c,)),
                              origins={"weight": w.origin, "bias": origin_of(b),
                                       "node": node.outputs[0]}), node.inputs[0])


def read_dense(r, node):
    name = _name(node)
    if node.op == "MatMul" and (len(node.inputs) != 2 or node.inputs[1] not in r.consts
                                or node.inputs[0] in r.consts):
        r.pass_through(node)                        # data @ data: not a layer
        return
    a = node.attrs if node.op == "Gemm" else {}
    if a.get("transA", 0) or len(node.inputs) < 2 or node.inputs[1] not in r.consts:
        raise CheckError(f"{r.where}: Gemm node {name!r}: only x @ W with a constant W "
                         "(transA=0) is read")
    w = r.const_input(node, 1, "the weight")
    if w.value.ndim != 2:
        raise CheckError(f"{r.where}: {node.op} node {name!r}: weight of shape "
                         f"{w.value.shape}; a dense layer's weight is 2-D")
    weight = as_float64(w.value, name)
    weight = weight if a.get("transB", 0) else weight.T
    weight = weight * float(a.get("alpha", 1.0))
    b = r.const_input(node, 2, "the bias") if node.op == "Gemm" else None
    bias = None
    if b is not None:
        bias = as_float64(b.value, name).reshape(-1) * float(a.get("beta", 1.0))
        if bias.size == 1:
            bias = np.full(weight.shape[0], bias[0])
        if bias.size != weight.shape[0]:
            raise CheckError(f"{r.where}: Gemm node {name!r}: bias of {bias.size} values "
                             f"for {weight.shape[0]} outputs")
    layout = None if a.get("transB", 0) else np.transpose
    r.add_unit(node, DenseUnit(name=name, weight=weight, bias=bias,
                               precision=narrowest(w.precision, b and b.precision),
                               form=node.op, quantized=quantized_params(
                                   w, weight.shape, layout, b, (weight.shape[0],)),
                               origins={"weight": w.origin, "bias": origin_of(b),
                                        "node": node.outputs[0],
                                        "weight_transposed": not a.get("transB", 0),
                                        "alpha": float(a.get("alpha", 1.0)),
                                        "beta": float(a.get("beta", 1.0))}),
               node.inputs[0])


def read_batchnorm(r, node):
    name = _name(node)
    params = [r.const_input(node, i, what) for i, what in
              ((1, "the scale"), (2, "the bias"), (3, "the mean"), (4, "the variance"))]
    if any(p is None for p in params):
        raise CheckError(f"{r.where}: BatchNormalization node {name!r} lacks an input")
    if len({p.value.size for p in params}) != 1:
        raise CheckError(f"{r.where}: BatchNormalization node {name!r}: scale, bias, mean "
                         f"and variance have {[p.value.size for p in params]} values; they "
                         "must be one per channel")
    scale, bias, mean, var = (as_float64(p.value, name).reshape(-1) for p in params)
    r.add_unit(node, BatchNormUnit(name=name, weight=scale, bias=bias, mean=mean, var=var,
                                   eps=float(node.attrs.get("epsilon", 1e-5)),
                                   precision=narrowest(*(p.precision for p in params)),
                                   form="BatchNormalization",
                                   origins={**{k: p.origin for k, p in zip(
                                       ("weight", "bias", "mean", "var"), params)},
                                            "node": node.outputs[0]}), node.inputs[0])


def read_affine(r, node):
    """A ``Mul``/``Add``/``Sub``/``Div`` of data and a per-channel constant: a chain link."""
    ins = node.inputs
    if len(ins) != 2 or sum(t in r.consts for t in ins) != 1 or \
            (node.op == "Div" and ins[0] in r.consts):
        r.pass_through(node)
        return
    const_first = ins[0] in r.consts
    data = ins[1] if const_first else ins[0]
    const = r.consts[ins[0] if const_first else ins[1]]
    chain = r.chains.get(data)
    owner = r.unit_of.get(data)
    single = len(r.consumers.get(data, ())) == 1
    if chain is None and isinstance(owner, LinearUnit) and single:
        chain = Chain(owner, frozenset([owner]), -3 if isinstance(owner, ConvUnit) else -1)
    elif chain is not None and not single:
        chain = None
    axis = chain.axis if chain is not None else (-3 if const.value.ndim >= 3 else -1)
    vector = _per_channel(const.value, axis)
    if vector is None or (chain is None and vector.size < 2):
        r.pass_through(node)                        # not a batchnorm: data flow
        return
    if chain is None:
        chain = Chain(None, r.sources.get(data, frozenset()), axis)
    if chain.position is None:
        chain.position = (chain.owner.order if chain.owner is not None else len(r.units)) + 0.5
    half, described = None, ""
    if const.quant is not None:
        half = _per_channel(const.quant.steps(np.shape(const.value)), axis) / 2
        described = const.quant.describe()
    chain.extend(node, Constant(vector, const.precision), const_first, half, described)
    chain.links.append(Link(node.op, const.origin, const_first, np.shape(const.value),
                            vector.astype(np.float64)))
    r.chains[node.outputs[0]] = chain
    r.sources[node.outputs[0]] = frozenset([chain])


#: Op type -> handler ``f(reader, node)`` finding units; other ops are data flow only.
OP_HANDLERS = {
    "Conv": read_conv,
    "Gemm": read_dense,
    "MatMul": read_dense,
    "BatchNormalization": read_batchnorm,
    "Mul": read_affine,
    "Add": read_affine,
    "Sub": read_affine,
    "Div": read_affine,
}


def read_graph(graph, where):
    """``ModelUnits`` of an ``OpGraph`` (module docstring)."""
    r = GraphReader(graph, where)
    for node in r.nodes:
        inputs = [r.consts.get(t) if t else None for t in node.inputs]
        if node.op in FOLDS and node.inputs and all(t == "" or t in r.consts
                                                    for t in node.inputs):
            folded = fold(node, inputs, where)
            if folded is not None:
                r.consts[node.outputs[0]] = folded
                continue
        handler = OP_HANDLERS.get(node.op)
        if handler is None:
            r.pass_through(node)
        else:
            handler(r, node)
    return finish_chains(r.units, r.chains, where)


def quantized_params(w, w_shape, layout, b, b_shape):
    """``{"weight": QuantizedParam, "bias": ...}`` of a layer's quantized constants, in
    the unit's layout (``w_shape`` after ``layout``, a transform of the stored array)."""
    out = {}
    for key, c, shape, transform in (("weight", w, w_shape, layout), ("bias", b, b_shape, None)):
        if c is None or c.quant is None:
            continue
        param = quantized_param(c.quant, np.shape(c.value))
        steps, saturated = param.steps, param.saturated
        if transform is not None:
            steps, saturated = transform(steps), transform(saturated)
        out[key] = QuantizedParam(np.reshape(steps, shape), np.reshape(saturated, shape),
                                  param.description)
    return out


def chain_quantized(chain, channels):
    """The quantized steps of an affine chain's alpha and beta (twice the half steps
    carried), or {} when no constant of the chain is quantized."""
    if not chain.quantized:
        return {}
    out = {}
    for key, half in (("alpha", chain.alpha_half), ("beta", chain.beta_half)):
        steps = np.broadcast_to(2 * np.asarray(half, np.float64), (channels,)).copy()
        out[key] = QuantizedParam(steps, np.zeros(channels, bool),
                                  " and ".join(sorted(chain.quantized)))
    return out


def finish_chains(units, chains, where):
    """Chains become biases or affine batchnorms; sources resolve to units."""
    final = list(dict.fromkeys(chains.values()))
    resolved = {}
    for chain in final:
        owner = chain.owner
        channels = owner.channels if owner is not None else max(np.size(chain.alpha),
                                                                 np.size(chain.beta))
        alpha = np.broadcast_to(np.asarray(chain.alpha, np.float64), (channels,)).copy()
        beta = np.broadcast_to(np.asarray(chain.beta, np.float64), (channels,)).copy()
        quantized = chain_quantized(chain, channels)
        if owner is not None and chain.additive_only and np.all(alpha == 1.0):
            owner.add_bias(beta, chain.precision)
            owner.form += " + Add"
            owner.origins["bias_links"] = list(chain.links)
            if "beta" in quantized:
                owner.quantized["bias"] = quantized["beta"]
            resolved[chain] = owner
            continue
        unit = AffineUnit(name=" + ".join(chain.names), alpha=alpha, beta=beta,
                          precision=chain.precision, form="/".join(dict.fromkeys(chain.ops)),
                          order=chain.position, quantized=quantized,
                          origins={"links": list(chain.links)})
        resolved[chain] = unit
        units.append(unit)

    def resolve(source_set):
        return frozenset(resolved[s] if isinstance(s, Chain) else s for s in source_set)

    for chain in final:
        unit = resolved[chain]
        if isinstance(unit, NormUnit) and unit is not chain.owner:
            unit.sources = resolve(chain.sources)
    for unit in units:
        unit.sources = resolve(unit.sources)
    units.sort(key=lambda u: u.order)
    for i, unit in enumerate(units):
        unit.order = i
    for unit in units:              # a conv whose bias chain became its bias is not its own
        unit.sources = frozenset(s for s in unit.sources if s is not unit)
    return ModelUnits(units, True, where, True, consumers_of(units))
