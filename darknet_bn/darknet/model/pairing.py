"""Pairing a converted model's units with the cfg's layers (shared by ``check`` and the
PyTorch export to ``.weights``).

The cfg's ``[convolutional]``, ``[connected]`` and ``[batchnorm]`` layers are
paired with the model's conv/dense and batchnorm units (``graph``, ``torch_reader``):

**Graph (ONNX, traced live modules).** Every cfg layer's inputs are followed
back through routes, shortcuts, pools, upsamples and heads to the nearest
weighted layers (or the model input): ``cfg_sources``.  Every model unit knows
the same of the graph (``Unit.sources``).  Layers are paired in cfg order,
starting from the model input: a cfg layer takes the unpaired unit of its kind
and shape whose sources are the units paired with the layer's own sources.  A
layer with batchnorm also takes the batchnorm unit fed by that conv alone,
unless the conv carries a bias and the next cfg layer is a ``[batchnorm]``
reading it (then the conv is the folded form and the batchnorm is that
layer's).  A cfg layer with no counterpart is *missing* and passes its sources
on; a unit no layer takes is *extra*, *in the data path* when its output
reaches a paired unit.  A graph input other than the first (``GraphInput``)
stands for what the paired units feeding a layer do not give, and is bound to
that once used; where the wanted sources pass through missing layers (a cut
subgraph) or a graph input, a candidate's consumers must fit the cfg layer's
readers.  Among candidates equal by the structure, the one whose name carries
the layer's cfg index wins.

**Sequence (state_dicts, modules whose forward cannot be traced).** No graph: a
conv/connected layer whose shapes no other layer has, held by exactly one unit,
pairs with it (and the batchnorm right after it) wherever it sits; a name
carrying another layer's index is a ``Pair.note``.  For the rest, names
carrying cfg indices (``module_list.N``, ``models.N``, ``conv_N``...) must match
the layer's index when every unit has one; then the order and the shapes
decide, by an alignment of the cfg layers with the units that pairs the most
(dynamic programming over (layer, unit) positions, iterative).  An extra unit
between paired ones counts as in the data path.

**Choices.** Where more than one unit fits a layer (same-shaped layers in
parallel branches), ``strict=True`` raises ``PairingError`` naming the layer and
the candidates; otherwise ``choose(spec, options)`` (``check`` judges each option
by its values) picks one, and the pair records the choice.  With
``complete=True`` (the ``.weights`` export) a missing layer or an extra unit is an
error too.
"""
from dataclasses import dataclass, field

from .units import MODEL_INPUT, CheckError, ConvUnit, DenseUnit, LinearUnit, NormUnit, Unit

#: cfg sections whose parameters a model unit holds.
WEIGHTED_SECTIONS = ("convolutional", "connected", "batchnorm")


class PairingError(CheckError):
    """The model's units cannot be paired with the cfg's layers (``strict``: not
    without a choice; ``complete``: not every layer and unit)."""


@dataclass(eq=False)
class Pair:
    """One cfg layer and its counterpart: ``conv`` (None for a ``[batchnorm]`` or a
    model without convs) and ``bn`` (None where the batchnorm is folded or absent)."""
    spec: object
    conv: object = None
    bn: object = None
    choice: str = ""           #: how an ambiguity was settled (empty: no choice)
    note: str = ""             #: a finding of the pairing (a name disagreeing with the shapes)

    @property
    def units(self):
        return [u for u in (self.conv, self.bn) if u is not None]

    @property
    def names(self):
        return " + ".join(u.name for u in self.units)


@dataclass
class Pairing:
    """``pair_model``'s result: ``pairs`` in cfg order, the cfg layers with no
    counterpart (``missing``), the units no layer took (``extra``: ``(unit,
    in_data_path)``) and, for a graph that is a piece of the network, the cfg layers
    outside the piece (``outside``)."""
    pairs: list
    missing: list = field(default_factory=list)
    extra: list = field(default_factory=list)
    outside: list = field(default_factory=list)


def cfg_sources(net):
    """``{layer index: frozenset}``: the nearest weighted layers (or ``MODEL_INPUT``)
    whose outputs reach each cfg layer's input."""
    sources = {}
    for spec in net.layers:
        if spec.section == "route":
            inputs = tuple(spec.input_layers)
        elif spec.section == "shortcut":
            inputs = (spec.index - 1, *spec.input_layers)
        else:
            inputs = (spec.index - 1,)
        found = set()
        for j in inputs:
            if j < 0:
                found.add(MODEL_INPUT)
            elif net.layers[j].section in WEIGHTED_SECTIONS:
                found.add(j)
            else:
                found |= sources[j]
        sources[spec.index] = frozenset(found)
    return sources


def fits(spec, unit):
    """Whether ``unit`` has the kind and shape of ``spec``'s conv/dense or batchnorm."""
    if isinstance(unit, NormUnit):
        return bool(spec.bn_channels) and unit.channels == spec.bn_channels
    if spec.section == "convolutional":
        return (isinstance(unit, ConvUnit) and unit.channels == spec.out_c
                and unit.weight.size == spec.nweights
                and (unit.kernel_shape is None
                     or tuple(unit.kernel_shape[2:]) == (spec.size, spec.size)))
    if spec.section == "connected":
        return (isinstance(unit, DenseUnit) and unit.channels == spec.outputs
                and unit.weight.size == spec.outputs * spec.inputs)
    return False


def _describe(spec):
    return f"layer {spec.index} [{spec.section}] (cfg line {spec.line}, {spec.out_c} channels)"


def _weighted(net):
    return [s for s in net.layers if s.section in WEIGHTED_SECTIONS]


def pair_model(net, model_units, *, strict=False, complete=False, choose=None):
    """Pair ``net``'s weighted layers with ``model_units`` (a ``readers.ModelUnits``):
    a ``Pairing``.  ``PairingError`` when nothing can be paired, (``strict``) when a
    layer has several candidates, or (``complete``) when a layer is missing or a unit
    is extra."""
    units = model_units.units
    if model_units.graph:
        result = _pair_graph(net, units, model_units.consumers, strict, choose)
    else:
        result = _pair_sequence(net, units)
    if not result.pairs:
        raise PairingError(_nothing_paired(net, units))
    if complete and (result.missing or result.extra or result.outside):
        what = []
        if result.missing or result.outside:
            what.append("no counterpart for " +
                        ", ".join(_describe(s) for s in (result.missing + result.outside)[:3]))
        if result.extra:
            what.append("model units not in the cfg: " + ", ".join(
                f"{u.kind} {u.name!r}" for u, _ in result.extra[:3]))
        raise PairingError("cannot pair the model with the cfg completely: " +
                           "; ".join(what) + ". Is it the same network and cfg?")
    return result


def _nothing_paired(net, units):
    specs = _weighted(net)
    first = specs[0] if specs else None
    head = units[0] if units else None
    got = (f"{head.kind} {head.name!r} with {head.channels} channels" if head is not None
           else "nothing (the model has no conv/dense/batchnorm units)")
    n_bn = sum(isinstance(u, NormUnit) for u in units)
    where = f"{_describe(first)} against the model's {got}" if first else "the cfg has none"
    return (f"cannot pair the model's {len(units) - n_bn} conv/dense and {n_bn} batchnorm "
            f"units with the cfg's {len(specs)} conv/connected/batchnorm layers "
            f"({len(net.bn_layers)} with batchnorm); first mismatch: {where}. Is it the "
            "same network and cfg?")


# --------------------------------------------------------------------------
# graph
# --------------------------------------------------------------------------
def _pair_graph(net, units, consumers, strict, choose):
    specs = _weighted(net)
    sources = cfg_sources(net)
    output_of = {}                   # cfg index -> the unit whose output is the layer's
    used, pairs, missing = set(), [], []
    next_spec = {a.index: b for a, b in zip(specs, specs[1:])}

    def wanted(spec):
        found, stack = set(), list(sources[spec.index])
        while stack:
            s = stack.pop()
            if s == MODEL_INPUT:
                found.add(s)
            elif s in output_of:
                found.add(output_of[s])
            else:                                       # a missing layer: look through it
                stack.extend(sources[s])
        return frozenset(found)

    def relaxed_sources(unit):
        found, stack, seen = set(), list(unit.sources), set()
        while stack:
            s = stack.pop()
            if s in seen:
                continue
            seen.add(s)
            if not isinstance(s, Unit) or s in used:      # an input, or a paired unit
                found.add(s)
            else:                                       # an unpaired unit: look through it
                stack.extend(s.sources)
        return frozenset(found)

    def with_bn(spec, conv):
        if not spec.bn_channels:
            return Pair(spec, conv, None)
        bns = [u for u in consumers.get(conv, ()) if isinstance(u, NormUnit) and u not in used
               and fits(spec, u) and u.sources == frozenset([conv])]
        if not bns:
            return Pair(spec, conv, None)
        bn = bns[0]
        follower = next_spec.get(spec.index)
        if (conv.bias is not None and follower is not None
                and follower.section == "batchnorm"
                and sources[follower.index] == frozenset([spec.index])
                and not any(isinstance(u, NormUnit) and fits(follower, u)
                            for u in consumers.get(bn, ()))):
            return Pair(spec, conv, None)               # folded conv, then the [batchnorm]
        return Pair(spec, conv, bn)

    bound = {}                       # a graph input -> the wanted sources it stands for

    def through_inputs(found, want):
        """Whether ``found`` (a unit's sources) is ``want`` once its graph inputs stand
        for what the paired units in it do not give: a bound input for what it was
        bound to, an unbound one for the rest."""
        given, free = set(), []
        for s in found:
            if isinstance(s, Unit):
                given.add(s)
            elif s in bound:
                given |= bound[s]
            else:
                free.append(s)
        rest = want - given
        return given <= want and (bool(rest) == bool(free))

    def bind(pair, want):
        inputs = [s for u in pair.units for s in u.sources if not isinstance(s, Unit)]
        given = {s for u in pair.units for s in u.sources if isinstance(s, Unit)}
        for s in inputs:
            bound.setdefault(s, frozenset(want - given))

    readers_of = {s.index: [t for t in specs if s.index in sources[t.index]] for s in specs}

    def successors_fit(spec, unit):
        """How many of ``unit``'s consumers fit a cfg layer that reads ``spec``."""
        return sum(any(fits(t, c) for t in readers_of[spec.index])
                   for c in consumers.get(unit, ()))

    def successors_agree(spec, unit):
        """Unless the graph or the cfg ends there, one of the consumers of ``unit`` (or
        of the batchnorm it feeds) fits a cfg layer reading ``spec``."""
        last = [unit] + [c for c in consumers.get(unit, ()) if isinstance(c, NormUnit)
                         and not isinstance(unit, NormUnit) and spec.bn_channels]
        after = [c for u in last for c in consumers.get(u, ()) if c not in last]
        readers = readers_of[spec.index]
        return not after or not readers or any(fits(t, c) for t in readers for c in after)

    def looks_through(spec):
        """Whether the wanted sources of ``spec`` pass through a layer not paired."""
        return any(s != MODEL_INPUT and s not in output_of for s in sources[spec.index])

    for spec in specs:
        want = wanted(spec)
        kind_ok = [u for u in units if u not in used and fits(spec, u) and
                   isinstance(u, NormUnit) == (spec.section == "batchnorm")]
        cands = [u for u in kind_ok if u.sources == want]
        if not cands:
            cands = [u for u in kind_ok if relaxed_sources(u) == want]
        if not cands:                   # a graph input standing for an inner tensor
            cands = [u for u in kind_ok if through_inputs(u.sources, want) or
                     through_inputs(relaxed_sources(u), want)]
            if len(cands) > 1:
                best = max(successors_fit(spec, u) for u in cands)
                cands = [u for u in cands if successors_fit(spec, u) == best]
        if looks_through(spec) or any(not isinstance(x, Unit) and x != MODEL_INPUT
                                      for u in cands for x in u.sources):
            cands = [u for u in cands if successors_agree(spec, u)]
        if not cands:
            missing.append(spec)
            continue
        options = [Pair(spec, None, u) if isinstance(u, NormUnit) else with_bn(spec, u)
                   for u in cands]
        named = [o for o in options if any(u.cfg_index == spec.index for u in o.units)]
        if len(options) > 1 and len(named) == 1:           # the names settle it
            options = named
        pick = 0
        if len(options) > 1:
            names = ", ".join(repr(p.names) for p in options)
            if strict or choose is None:
                raise PairingError(f"{_describe(spec)} is ambiguous: the model's {names} fit "
                                   "it equally by the graph and the shapes; pair it by hand "
                                   "or rename the modules with the cfg indices")
            pick = choose(spec, options)
            options[pick].choice = f"chosen by values among {names}"
        pair = options[pick]
        bind(pair, want)
        used.update(pair.units)
        output_of[spec.index] = pair.units[-1]
        pairs.append(pair)

    extra = []
    for unit in units:
        if unit in used:
            continue
        reaches, stack, seen = False, list(consumers.get(unit, ())), set()
        while stack and not reaches:
            u = stack.pop()
            if u in seen:
                continue
            seen.add(u)
            reaches = u in used
            stack.extend(consumers.get(u, ()))
        extra.append((unit, reaches))
    outside = []
    if bound:                        # graph inputs stood for inner tensors: a piece
        missing, outside = _outside_the_piece(specs, sources, missing,
                                              {p.spec.index for p in pairs})
    return Pairing(pairs, missing, extra, outside)


def _outside_the_piece(specs, sources, missing, paired):
    """``(missing, outside)``: in a piece of the network (graph inputs standing for
    inner tensors, as ``onnx.utils.extract_model`` cuts it), a layer with no
    counterpart that no paired layer leads to, or that leads to no paired layer, lies
    outside the piece; one between paired layers is missing from it."""
    ancestors = {}
    for spec in specs:                                  # cfg order: sources first
        found = set()
        for s in sources[spec.index]:
            if s != MODEL_INPUT:
                found.add(s)
                found |= ancestors.get(s, set())
        ancestors[spec.index] = found
    inside, outside = [], []
    for spec in missing:
        before = bool(ancestors[spec.index] & paired)
        after = any(spec.index in ancestors[i] for i in paired)
        (inside if before and after else outside).append(spec)
    return inside, outside


# --------------------------------------------------------------------------
# sequence
# --------------------------------------------------------------------------
def shape_key(spec):
    """What ``fits`` compares of a conv/connected layer: equal keys, equal shapes."""
    if spec.section == "convolutional":
        return (spec.section, spec.out_c, spec.nweights, spec.size)
    return (spec.section, spec.outputs, spec.outputs * spec.inputs, 0)


def _by_unique_shapes(specs, units):
    """``[Pair]`` of the conv/connected layers whose shapes no other layer has and
    exactly one model unit has (with the batchnorm right after it, where the layer has
    one): paired wherever they sit.  A unit whose name carries another layer's index
    gets a ``note``."""
    keys = {}
    next_spec = {a.index: b for a, b in zip(specs, specs[1:])}
    for spec in specs:
        if spec.section != "batchnorm":
            keys.setdefault(shape_key(spec), []).append(spec)
    pairs = []
    for same in keys.values():
        if len(same) != 1:
            continue
        spec = same[0]
        fitting = [j for j, u in enumerate(units) if isinstance(u, LinearUnit) and fits(spec, u)]
        if len(fitting) != 1:
            continue
        j = fitting[0]
        nxt = units[j + 1] if j + 1 < len(units) else None
        follower = next_spec.get(spec.index)
        folded = (units[j].bias is not None and follower is not None
                  and follower.section == "batchnorm" and follower.c == spec.out_c)
        bn = nxt if (spec.bn_channels and isinstance(nxt, NormUnit) and fits(spec, nxt)
                     and not folded) else None
        pair = Pair(spec, units[j], bn)
        named = {u.cfg_index for u in pair.units if u.cfg_index is not None}
        if named and named != {spec.index}:
            pair.note = (f"paired by its shapes: the name {units[j].name!r} carries layer "
                         f"{', '.join(map(str, sorted(named)))}, the shapes are layer "
                         f"{spec.index}'s")
        pairs.append(pair)
    return pairs


def _pair_sequence(net, units):
    has_convs = any(not isinstance(u, NormUnit) for u in units)
    specs = _weighted(net)
    if not has_convs:
        specs = [s for s in specs if s.bn_channels]
    direct = _by_unique_shapes(specs, units) if has_convs else []
    taken = {u for p in direct for u in p.units}
    done = {p.spec.index for p in direct}
    rest = _align(net, [s for s in specs if s.index not in done],
                  [u for u in units if u not in taken], has_convs)
    pairs = sorted(direct + rest.pairs, key=lambda p: p.spec.index)
    paired_orders = [u.order for p in pairs for u in p.units]
    first, last = (min(paired_orders), max(paired_orders)) if paired_orders else (0, -1)
    extra = [(u, first < u.order < last) for u, _ in rest.extra]
    return Pairing(pairs, rest.missing, extra)


def _align(net, specs, units, has_convs):
    """The order alignment of ``specs`` with ``units`` (module docstring)."""
    by_name = bool(units) and all(u.cfg_index is not None for u in units)
    n_specs, n_units = len(specs), len(units)
    infinity = n_specs + n_units + 1
    cost = [[infinity] * (n_units + 1) for _ in range(n_specs + 1)]
    step = [[None] * (n_units + 1) for _ in range(n_specs + 1)]
    cost[0][0] = 0

    def named(spec, unit):
        return not by_name or unit.cfg_index == spec.index

    def matches(i, j):
        """``[(units taken, Pair)]`` for spec ``i`` starting at unit ``j``."""
        spec, out = specs[i], []
        if j >= n_units or not named(spec, units[j]):
            return out
        unit = units[j]
        if spec.section == "batchnorm" or not has_convs:
            if isinstance(unit, NormUnit) and fits(spec, unit):
                out.append((1, Pair(spec, None, unit)))
            return out
        if isinstance(unit, NormUnit) or not fits(spec, unit):
            return out
        if spec.bn_channels:
            nxt = units[j + 1] if j + 1 < n_units else None
            if isinstance(nxt, NormUnit) and fits(spec, nxt) and named(spec, nxt):
                out.append((2, Pair(spec, unit, nxt)))
        out.append((1, Pair(spec, unit, None)))
        return out

    for i in range(n_specs + 1):
        for j in range(n_units + 1):
            here = cost[i][j]
            if here >= infinity:
                continue
            moves = []
            if i < n_specs:
                moves += [(i + 1, j + taken, 0, pair) for taken, pair in matches(i, j)]
                moves.append((i + 1, j, 1, ("missing", specs[i])))
            if j < n_units:
                moves.append((i, j + 1, 1, ("extra", units[j])))
            for ni, nj, extra_cost, what in moves:
                if here + extra_cost < cost[ni][nj]:
                    cost[ni][nj] = here + extra_cost
                    step[ni][nj] = (i, j, what)
    pairs, missing, extra_units = [], [], []
    i, j = n_specs, n_units
    while (i, j) != (0, 0):
        pi, pj, what = step[i][j]
        if isinstance(what, Pair):
            pairs.append(what)
        elif what[0] == "missing":
            missing.append(what[1])
        else:
            extra_units.append(what[1])
        i, j = pi, pj
    pairs.reverse()
    missing.reverse()
    extra_units.reverse()
    return Pairing(pairs, missing, [(u, False) for u in extra_units])
