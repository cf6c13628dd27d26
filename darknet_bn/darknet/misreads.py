"""Misreads: where a converted model's wrong floats came from in the ``.weights`` file.

A loader that reads the ``.weights`` float stream from another offset or in another
order still fills every tensor; nothing fails until the outputs disagree.  This
module finds, for the tensors a model holds, the place in the file they were read
from, and names the reading that explains them.

**Search.** Every tensor the model holds for a cfg layer (``Held``: the conv or
dense weights in Darknet's order, the batchnorm vectors, a conv bias) is looked up
in the file's float stream (the whole file as little-endian 4-byte words, the
header included, so a reading that starts in the header is found too):

- *exact runs* where the model holds the file's floats (float32 raw blocks): a few
  anchor pairs of consecutive values of each tensor are hashed into a table, the
  stream's consecutive pairs are hashed the same way in one vectorized pass, and
  every hit is verified over the whole tensor; float16 and bfloat16 tensors are
  compared with the stream rounded to nearest in that precision (what ``.half()``
  and ``.to(torch.bfloat16)`` do);
- *scaled runs* for folded float32 weights (each filter is Darknet's filter times
  an unknown per-channel factor): the same with the ratios of consecutive values,
  then each filter's factor is fitted and every weight verified;
- each conv kernel also transposed and flipped (the loader's layout mistakes).

**Decisive.** A tensor is *located* at an offset only when at least ``MIN_RUN``
values of it (per precision) equal the stream there, at most ``MAX_MISSING`` of
its values do not (a read past the end of the file), at least half of the matched
values are distinct, and no other offset fits as well.  Folded float16/bfloat16
weights are not searched (their rounding hides the ratios): ``searchable`` says so.

**Readings.** Each layer's located tensors are fitted with one entry of
``VARIANTS`` (Darknet's block order, or the batchnorm vectors in another order, or
a conv bias read for a conv that has batchnorm): one start offset where the
loader began the layer.  Then the layers are sorted by start (the loader's layer
order) and the reading is simulated as one sequential pass with each layer's
length: where the start drifts from the simulation there is a *step* (floats read
more or fewer).  ``MISREADS`` is the table of named explanations (header size,
constant shift, an extra or missing block, another layer order, another block
order, another kernel layout), each with its test on the fit, diagnosis and fix;
``explain`` returns the ``Finding`` objects and each layer's ``Reading``, and
``read_record`` gives the ``BatchNormRecord`` a layer's reading yields, so a
caller can confirm that the model holds exactly what that loader reads.
"""
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .weights import BatchNormRecord

#: Bytes per float in the stream.
WORD = 4
#: A located tensor matches the stream at this many values at least, per precision.
MIN_RUN = {"float32": 8, "float16": 16, "bfloat16": 24}
#: At most this fraction of a located tensor's values may differ from the stream.
MAX_MISSING = 0.1
#: A folded filter fits a stream run when every weight is within this error, relative
#: to the filter's largest weight, of the run times the fitted factor: check's float32
#: tolerance (8 unit roundoffs; the fold rounds each weight once, 2**-24 relative).
SCALED_TOLERANCE = 8 * 2.0 ** -24
#: The scaled search keys on ratios of consecutive floats, dropping this many low
#: mantissa bits of the float32 ratio; a query ratio within ``RATIO_MARGIN`` ulps of a
#: bin's edge also tries the neighbouring bin (the fold moves a ratio by a few ulps).
RATIO_DROP = 11
RATIO_MARGIN = 16
#: Anchors per tensor (exact) and filters per tensor (scaled).
ANCHORS = 4
#: Matched values whose distinctness is checked (a sample of a long run is enough).
DISTINCT_SAMPLE = 256
_TABLE_BITS = 18
_MIX = (np.uint32(0x9E3779B1), np.uint32(0x85EBCA77))

#: Kernel layouts a loader may leave: name, (rows, in, kh, kw) -> Darknet's order (each
#: is its own inverse).
LAYOUTS = (
    ("transposed", lambda k: np.swapaxes(k, 2, 3)),
    ("flipped", lambda k: k[:, :, ::-1, ::-1]),
)


# --------------------------------------------------------------------------
# what the model holds, and where it was found
# --------------------------------------------------------------------------
@dataclass
class Held:
    """One tensor a model holds for cfg layer ``layer``: ``role`` is the Darknet block
    it should hold (``biases``, ``scales``, ``rolling_mean``, ``rolling_variance``,
    ``weights``; ``conv_biases`` for a conv bias next to a batchnorm, which Darknet
    does not store).  ``values``: float64, in Darknet's order (conv weights
    (out, in, kh, kw) flattened).  ``scaled``: folded weights, each of ``rows``
    rows Darknet's times an unknown factor.  ``kernel``: (kh, kw) of conv weights."""
    layer: int
    role: str
    values: np.ndarray
    precision: str = "float32"
    scaled: bool = False
    rows: int = 1
    kernel: tuple = ()
    name: str = ""


@dataclass
class Location:
    """Where a ``Held`` tensor's floats are: word ``offset`` in the file, the kernel
    ``layout`` the loader left ("" for Darknet's), values ``matched`` of ``size``."""
    offset: int
    layout: str = ""
    matched: int = 0
    size: int = 0
    scaled: bool = False


class Stream:
    """A ``.weights`` file as 4-byte words, with the encodings the search uses."""

    def __init__(self, path):
        raw = np.fromfile(path, dtype=np.uint8)
        self.size_bytes = raw.size
        n = raw.size // WORD
        self.words = raw[:n * WORD].view("<u4")
        self.floats = self.words.view("<f4")
        self._codes, self._buckets = {}, {}

    def codes(self, precision):
        """Per word: its bits in ``precision`` (float32 as is, float16 and bfloat16
        rounded to nearest), as uint32."""
        if precision not in self._codes:
            self._codes[precision] = encode(self.floats, precision)
        return self._codes[precision]

    def ratio_codes(self):
        """Per position i: the bin of the ratio f[i+1]/f[i] (scaled search)."""
        if "ratio" not in self._codes:
            with np.errstate(all="ignore"):
                ratios = np.divide(self.floats[1:], self.floats[:-1])
            self._codes["ratio"] = _ratio_bins(ratios)
        return self._codes["ratio"]

    def pair_buckets(self, precision):
        """Per position: the hash bucket of (code, next code) of ``precision`` (or of
        the ratio bins for ``"ratio"``)."""
        if precision not in self._buckets:
            codes = self.ratio_codes() if precision == "ratio" else self.codes(precision)
            self._buckets[precision] = _hash_pairs(codes[:-1], codes[1:])
        return self._buckets[precision]


def encode(values, precision):
    """``values`` (float32-representable) as uint32 codes of ``precision``'s bits (for
    float32 a view of the float32 array's bits)."""
    f = np.asarray(values, np.float32)
    if precision == "float16":
        with np.errstate(over="ignore"):
            return f.astype(np.float16).view(np.uint16).astype(np.uint32)
    bits = f.view(np.uint32)
    if precision == "bfloat16":                        # round to nearest even
        rounded = (bits.astype(np.uint64) + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return rounded.astype(np.uint32)
    return bits


def _hash_pairs(first, second):
    """The table bucket of each pair of uint32 codes."""
    with np.errstate(over="ignore"):
        mixed = np.multiply(first, _MIX[0])
        np.bitwise_xor(mixed, np.multiply(second, _MIX[1]), out=mixed)
    return np.right_shift(mixed, np.uint32(32 - _TABLE_BITS), out=mixed)


def _candidates(buckets, table, codes):
    """``[(query, stream position)]`` where the stream's pair of ``codes`` equals a query
    key of ``table`` (``{(code << 32) | next code: [query]}``)."""
    keys = np.fromiter(table.keys(), np.uint64, len(table))
    mark = np.zeros(1 << _TABLE_BITS, bool)
    mark[_hash_pairs((keys >> np.uint64(32)).astype(np.uint32),
                     (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32))] = True
    hits = np.flatnonzero(mark[buckets])
    out = []
    if hits.size:
        found = (codes[hits].astype(np.uint64) << np.uint64(32)) | codes[hits + 1]
        for pos, key in zip(hits.tolist(), found.tolist()):
            for query in table.get(key, ()):
                out.append((query, pos))
    return out


def _has_layouts(held):
    return (held.role == "weights" and len(held.kernel) == 2 and
            held.kernel[0] == held.kernel[1] and held.kernel[0] > 1)


def _in_layout(held, layout):
    """``held``'s values read back into Darknet's order from kernel ``layout`` ("" for
    Darknet's own)."""
    if not layout:
        return held.values
    k = held.values.reshape(held.rows, -1, *held.kernel)
    return np.ascontiguousarray(dict(LAYOUTS)[layout](k)).reshape(-1)


def _anchor_positions(codes, count=ANCHORS, window=64):
    """Up to ``count`` positions ``j`` spread over ``codes`` (searched in a window of
    ``window`` values at each spot) with codes[j] != codes[j+1], both nonzero."""
    n = codes.size
    picks = []
    for spot in np.unique(np.linspace(0, max(n - 2, 0), count).astype(int)).tolist():
        lo = min(spot, max(n - window - 1, 0))
        w = codes[lo:lo + window + 1]
        good = np.flatnonzero((w[:-1] != w[1:]) & (w[:-1] != 0) & (w[1:] != 0))
        if good.size:
            picks.append(lo + int(good[0]))
    return sorted(set(picks))


def _distinct_enough(codes, matched):
    """At least half of the matched values (the first ``DISTINCT_SAMPLE`` of them) are
    distinct: a run of one repeated value locates nothing."""
    sample = codes[matched][:DISTINCT_SAMPLE]
    return np.unique(sample).size * 2 >= max(1, sample.size)


def _decisive(matched, size, precision):
    return (matched >= MIN_RUN[precision] and matched >= (1 - MAX_MISSING) * size)


def locate_exact(stream, helds, layouts=("",)):
    """``{id(held): [Location]}``: offsets where each unscaled ``Held``, read back from
    each of ``layouts``, is an exact run."""
    found = {}
    by_precision = {}
    for h in helds:
        if not h.scaled:
            by_precision.setdefault(h.precision, []).append(h)
    for precision, group in by_precision.items():
        codes = stream.codes(precision)
        table, queries = {}, []
        for h in group:
            for layout in layouts:
                if layout and not _has_layouts(h):
                    continue
                q = encode(_in_layout(h, layout), precision)
                qid = len(queries)
                queries.append((h, layout, q))
                for j in _anchor_positions(q):
                    key = (int(q[j]) << 32) | int(q[j + 1])
                    table.setdefault(key, []).append((qid, j))
        if not table:
            continue
        seen = set()
        for (qid, j), pos in _candidates(stream.pair_buckets(precision), table, codes):
            start = pos - j
            if (qid, start) in seen:
                continue
            seen.add((qid, start))
            h, layout, q = queries[qid]
            lo, hi = max(start, 0), min(start + q.size, codes.size)
            if hi <= lo:
                continue
            same = np.zeros(q.size, bool)
            same[lo - start:hi - start] = codes[lo:hi] == q[lo - start:hi - start]
            matched = int(np.count_nonzero(same))
            if _decisive(matched, q.size, precision) and _distinct_enough(q, same):
                found.setdefault(id(h), []).append(Location(start, layout, matched, q.size))
    return found


def _ratio_bins(ratios):
    """float32 ratios as uint32 bins: sign, exponent and the top mantissa bits (a bin
    is 2**-12 to 2**-13 relative wide).  Zero, infinite and NaN ratios get bins no
    query has (a query's ratios are finite and nonzero)."""
    return np.right_shift(np.asarray(ratios, np.float32).view(np.uint32),
                          np.uint32(RATIO_DROP))


def _query_ratio_keys(row, j):
    """The keys of positions j, j+1, j+2 of ``row`` (also the neighbouring bin where a
    ratio is within ``RATIO_MARGIN`` float32 ulps of a bin's edge: the fold's rounding
    moves a ratio by a few ulps)."""
    a, b, c = (float(v) for v in row[j:j + 3])
    if not (a and b and c):
        return []
    options = []
    for x, y in ((a, b), (b, c)):
        with np.errstate(all="ignore"):
            r = np.float32(y / x)
        if not (np.isfinite(r) and r != 0):
            return []
        bits = int(np.array([r], np.float32).view(np.uint32)[0])
        low, base = bits & ((1 << RATIO_DROP) - 1), bits >> RATIO_DROP
        near = {base}
        if low < RATIO_MARGIN:
            near.add(base - 1)
        if low >= (1 << RATIO_DROP) - RATIO_MARGIN:
            near.add(base + 1)
        options.append(near)
    return [(k0 << 32) | k1 for k0 in options[0] for k1 in options[1]]


def locate_scaled(stream, helds, layouts=("",)):
    """``{id(held): [Location]}`` for folded float32 weights: offsets where each row is
    a stream run times one factor (``SCALED_TOLERANCE``).  Rows the model holds as
    NaN or infinity (a fold of a negative variance) say nothing and are not counted."""
    group = [h for h in helds if h.scaled and h.precision == "float32"]
    table, queries = {}, []
    for h in group:
        for layout in layouts:
            if layout and not _has_layouts(h):
                continue
            rows = _in_layout(h, layout).reshape(h.rows, -1)
            if rows.shape[1] < 3:
                continue
            finite = np.flatnonzero(np.all(np.isfinite(rows), axis=1))
            if finite.size == 0:
                continue
            qid = len(queries)
            queries.append((h, layout, rows, finite))
            picks = finite[np.linspace(0, finite.size - 1, ANCHORS).astype(int)]
            for r in np.unique(picks).tolist():
                row = rows[r]
                for j in np.flatnonzero(row[:-2] != 0)[:2].tolist():
                    for key in _query_ratio_keys(row, j):
                        table.setdefault(key, []).append((qid, r * rows.shape[1] + j))
    if not table:
        return {}
    found, seen = {}, set()
    for (qid, j), pos in _candidates(stream.pair_buckets("ratio"), table,
                                     stream.ratio_codes()):
        start = pos - j
        if (qid, start) in seen:
            continue
        seen.add((qid, start))
        h, layout, rows, finite = queries[qid]
        if start < 0 or start + rows.size > stream.floats.size:
            continue
        x = rows[finite]
        w = stream.floats[start:start + rows.size].astype(np.float64).reshape(rows.shape)
        w = w[finite]
        with np.errstate(all="ignore"):
            factor = np.sum(x * w, axis=1) / np.sum(w * w, axis=1)
            err = np.max(np.abs(x - factor[:, None] * w), axis=1) / np.max(np.abs(x), axis=1)
        fits = np.isfinite(err) & (err <= SCALED_TOLERANCE)
        matched = int(np.count_nonzero(fits)) * rows.shape[1]
        if _decisive(matched, x.size, "float32"):
            found.setdefault(id(h), []).append(Location(start, layout, matched, x.size, True))
    return found


def searchable(held):
    """Whether ``held`` can be looked up: float values (``MIN_RUN``'s precisions, not
    quantized integers), and folded weights in float32 only."""
    return held.precision in MIN_RUN and (not held.scaled or held.precision == "float32")


def locate(stream, helds, expected):
    """``{id(held): Location}``: the one decisive location of each ``Held`` (its
    ``expected`` word offset when that fits, else the best match when no other fits
    as well).  ``expected``: ``{id(held): word offset or None}``."""
    found = locate_exact(stream, helds)
    found.update(locate_scaled(stream, helds))
    lost = [h for h in helds if id(h) not in found and _has_layouts(h)]
    if lost:                                   # kernels in another layout
        names = tuple(name for name, _ in LAYOUTS)
        found.update(locate_exact(stream, lost, names))
        found.update(locate_scaled(stream, lost, names))
    out = {}
    for h in helds:
        options = found.get(id(h), [])
        if not options:
            continue
        home = [o for o in options if o.offset == expected.get(id(h)) and not o.layout]
        if home:
            out[id(h)] = home[0]
            continue
        best = max(o.matched for o in options)
        top = [o for o in options if o.matched == best]
        if len(top) == 1:
            out[id(h)] = top[0]
    return out


# --------------------------------------------------------------------------
# readings: how the loader read each layer
# --------------------------------------------------------------------------
def _swap(a, b):
    def f(blocks, spec):
        names = [n for n, _ in blocks]
        if a not in names or b not in names:
            return None
        swapped = {a: b, b: a}
        return tuple((swapped.get(n, n), c) for n, c in blocks)
    return f


def _extra_conv_bias(blocks, spec):
    if not spec.bn_channels or spec.section != "convolutional":
        return None
    return (("conv_biases", spec.filters),) + tuple(blocks)


@dataclass(frozen=True)
class Variant:
    """A block order a loader may use for one layer: ``blocks(darknet_blocks, spec)``
    gives ``(role, count)`` in the order read (role: the model tensor filled), or None
    where it does not apply."""
    name: str
    blocks: Callable


#: Block orders, Darknet's first (a layer is fitted with the first that fits).
VARIANTS = (
    Variant("darknet", lambda blocks, spec: tuple(blocks)),
    Variant("swapped_scale_bias", _swap("biases", "scales")),
    Variant("swapped_mean_variance", _swap("rolling_mean", "rolling_variance")),
    Variant("extra_conv_bias", _extra_conv_bias),
)
VARIANT_BY_NAME = {v.name: v for v in VARIANTS}


@dataclass
class Reading:
    """How the loader read cfg layer ``layer``: from word ``start`` of the file, blocks
    in the order of variant ``variant``, kernel ``layout``; ``located``: fitted from
    runs found in the file (else inferred from its neighbours); ``causes``: names of
    the findings that make it differ from Darknet's reading."""
    layer: int
    start: int
    variant: str = "darknet"
    layout: str = ""
    located: bool = False
    causes: list = field(default_factory=list)

    def blocks(self, spec):
        return VARIANT_BY_NAME[self.variant].blocks(spec.blocks, spec)

    def length(self, spec):
        return sum(c for _, c in self.blocks(spec))

    def offsets(self, spec):
        """``{role: word offset}`` of the blocks this reading fills."""
        out, pos = {}, self.start
        for role, count in self.blocks(spec):
            out[role] = pos
            pos += count
        return out


def darknet_start(spec, header_words):
    """The word offset of the first float of ``spec``'s blocks in Darknet's reading."""
    return header_words + spec.offsets[spec.blocks[0][0]]


def fit_layer(spec, located):
    """The first ``Reading`` (variant, start) under which every located tensor of the
    layer (``{role: Location}``) sits where the variant reads that role; None if none."""
    layouts = {loc.layout for loc in located.values() if loc.layout}
    for variant in VARIANTS:
        blocks = variant.blocks(spec.blocks, spec)
        if blocks is None:
            continue
        rel, pos = {}, 0
        for role, count in blocks:
            rel[role] = pos
            pos += count
        if not set(located) <= set(rel):
            continue
        starts = {loc.offset - rel[role] for role, loc in located.items()}
        if len(starts) == 1:
            return Reading(spec.index, starts.pop(), variant.name,
                           layouts.pop() if len(layouts) == 1 else "", True)
    return None


# --------------------------------------------------------------------------
# the fit over layers: order, steps
# --------------------------------------------------------------------------
@dataclass
class Step:
    """The loader's position moved by ``delta`` words before layer ``layer`` (the first
    located layer read after the move; ``previous``: the layer read before it, or None;
    ``at_start``: no located layer before it, the move may be at the start)."""
    layer: int
    previous: object
    delta: int
    at_start: bool = False


@dataclass
class Fit:
    net: object
    header: object
    readings: dict                 #: cfg index -> Reading (fitted and inferred)
    order: list                    #: cfg indices of the weighted layers, as the loader read them
    steps: list                    #: Step objects, in reading order
    scattered: dict                #: cfg index -> {role: Location} that fit no variant
    located: dict = field(default_factory=dict)   #: cfg index -> {role: Location}
    sizes: dict = field(default_factory=dict)     #: (cfg index, role) -> values held

    @property
    def header_words(self):
        return self.header.nbytes // WORD

    def spec(self, index):
        return self.net.layers[index]


def weighted_layers(net):
    return [s for s in net.layers if s.blocks]


def fit_readings(net, header, helds, locations):
    """A ``Fit``: per layer the reading that explains its located tensors, the layer
    order those readings imply and the steps of a sequential reading."""
    header_words = header.nbytes // WORD
    by_layer = {}
    for h in helds:
        loc = locations.get(id(h))
        if loc is not None:
            by_layer.setdefault(h.layer, {})[h.role] = loc
    specs = weighted_layers(net)
    readings, scattered = {}, {}
    for spec in specs:
        located = by_layer.get(spec.index)
        if not located:
            continue
        reading = fit_layer(spec, located)
        if reading is None:
            scattered[spec.index] = located
        else:
            readings[spec.index] = reading
    fitted = [s.index for s in specs if s.index in readings]
    by_start = sorted(fitted, key=lambda i: (readings[i].start, i))
    slots = iter(by_start)
    order = [next(slots) if s.index in readings else s.index for s in specs]
    # the sequential simulation: cumulative length along the order; a layer with
    # nothing located takes the drift of the located layer before it (of the first
    # located layer, before that one)
    drift, steps, position, previous, current = {}, [], 0, None, None
    for index in order:
        spec = net.layers[index]
        reading = readings.get(index)
        if reading is not None:
            d = reading.start - position
            if d != (header_words if current is None else current):
                steps.append(Step(index, previous, d - (header_words if current is None
                                                        else current), current is None))
            current = d
            length = reading.length(spec)
        else:
            length = spec.float_count
        drift[index] = current
        position += length
        previous = index
    first = next((drift[i] for i in order if drift[i] is not None), header_words)
    drift = {i: first if d is None else d for i, d in drift.items()}
    for index in order:                  # layers with nothing located: inferred
        if index not in readings and index not in scattered:
            readings[index] = Reading(index, 0)
    position = 0
    for index in order:
        spec = net.layers[index]
        reading = readings.get(index)
        if reading is not None and not reading.located:
            reading.start = position + drift[index]
        position += reading.length(spec) if reading is not None else spec.float_count
    sizes = {(h.layer, h.role): h.values.size for h in helds}
    return Fit(net, header, readings, order, steps, scattered, by_layer, sizes)


def reads_exactly(fit, spec, role):
    """Whether the model's ``role`` tensor of ``spec`` equals, value for value, the
    floats its reading takes (found there as an exact run, no value missing; folded:
    every filter that run times its factor within ``SCALED_TOLERANCE``, none NaN)."""
    loc = fit.located.get(spec.index, {}).get(role)
    reading = fit.readings.get(spec.index)
    return (loc is not None and reading is not None and loc.matched == loc.size and
            loc.size == fit.sizes.get((spec.index, role)) and
            loc.layout == reading.layout and reading.offsets(spec).get(role) == loc.offset)


# --------------------------------------------------------------------------
# the table of misreads
# --------------------------------------------------------------------------
@dataclass
class Finding:
    """One explanation of misread floats: ``name`` (a ``MISREADS`` entry), the
    ``diagnosis`` and ``fix``, and the cfg ``layers`` it covers."""
    name: str
    label: str                 #: a few words for the rows it explains
    diagnosis: str
    fix: str
    layers: list = field(default_factory=list)
    id: str = ""               #: the report's label (M1, M2...)


@dataclass(frozen=True)
class Misread:
    """A named misread: ``test(fit)`` returns ``[(layers affected, {detail: value})]``;
    ``label`` (a few words for the rows), ``diagnosis`` and ``fix`` are formatted with
    the details."""
    name: str
    label: str
    test: Callable
    diagnosis: str
    fix: str


HEADER_RULE = ("major*10 + minor >= 2 and major < 1000 means a 64-bit seen and a 20-byte "
               "header, otherwise a 32-bit seen and 16 bytes")
HEADER_FIX = ("read major, minor, revision as int32, then seen as uint64 if major*10 + "
              "minor >= 2 and major < 1000, else as uint32, and read the floats from there")


def _layers_from(fit, step):
    """The layers whose reading moves with ``step`` (read at or after it; every layer
    for a move at the start)."""
    at = 0 if step.at_start else fit.order.index(step.layer)
    return fit.order[at:]


def _header_delta(fit):
    """The start shift of a loader skipping the other header size: -1 word on a 20-byte
    header (it skipped 16), +1 on a 16-byte one (it skipped 20)."""
    return -1 if fit.header.nbytes == 20 else 1


def _extra_bias(fit, step, delta):
    spec = fit.spec(step.layer)
    if spec.section == "convolutional" and spec.bn_channels and delta == spec.filters:
        return {"n": spec.filters}
    return None


def _missing_block(fit, step, delta):
    candidates = [fit.spec(step.layer)]
    if step.previous is not None:
        candidates.append(fit.spec(step.previous))
    for spec in candidates:
        for name, count in spec.blocks:
            if delta == -count:
                return {"block": name, "of": spec.index, "n": count}
    return None


def _block_detail(fit, step, delta):
    return _extra_bias(fit, step, delta) or _missing_block(fit, step, delta)


def split_step(fit, step):
    """``(start shift, block shift)``: a step at the start of the stream is the header
    mistake, a block read more or fewer at the first layer, both, or (when neither
    explains it) a shift of the start; a later step is a block shift."""
    if not step.at_start or _block_detail(fit, step, step.delta):
        return 0, step.delta
    header = _header_delta(fit)
    if step.delta == header:
        return header, 0
    if _block_detail(fit, step, step.delta - header):
        return header, step.delta - header
    return step.delta, 0


def _start_shift(fit):
    """The start shift of the reading (0 when it starts where Darknet's does) and the
    layers it moves."""
    if fit.steps and fit.steps[0].at_start:
        shift = split_step(fit, fit.steps[0])[0]
        if shift:
            return shift, _layers_from(fit, fit.steps[0])
    return 0, []


def _test_header_16_on_v2(fit):
    shift, layers = _start_shift(fit)
    return [(layers, {})] if fit.header.nbytes == 20 and shift == -1 else []


def _test_header_20_on_v1(fit):
    shift, layers = _start_shift(fit)
    return [(layers, {})] if fit.header.nbytes == 16 and shift == 1 else []


def _test_constant_shift(fit):
    shift, layers = _start_shift(fit)
    if not shift or shift == _header_delta(fit):
        return []
    start = (fit.header_words + shift) * WORD
    return [(layers, {"n": shift, "bytes": WORD * shift, "start": start})]


def _block_steps(fit, detail):
    """``[(step, details, layers moved)]`` for the steps whose block shift ``detail(fit,
    step, shift)`` explains."""
    out = []
    for step in fit.steps:
        delta = split_step(fit, step)[1]
        found = detail(fit, step, delta) if delta else None
        if found is not None:
            out.append((step, found, _layers_from(fit, step)))
    return out


def _test_extra_conv_bias(fit):
    """Steps of a conv's filter count at a conv with batchnorm, and layers whose conv
    bias holds the floats before their batchnorm blocks."""
    items = _block_steps(fit, _extra_bias)
    held = sorted(i for i, r in fit.readings.items() if r.variant == "extra_conv_bias")
    if not items and not held:
        return []
    layers = sorted({i for _, _, ls in items for i in ls} | set(held))
    at = sorted({s.layer for s, _, _ in items} | set(held))
    counts = [fit.spec(i).filters for i in at]
    return [(layers, {"where": _list(at, "layer"),
                      "n": counts[0] if len(set(counts)) == 1 else _list(counts)})]


def _test_missing_block(fit):
    groups = {}
    for step, d, layers in _block_steps(fit, _missing_block):
        if _extra_bias(fit, step, split_step(fit, step)[1]) is not None:
            continue
        g = groups.setdefault((d["block"], d["of"], d["n"]), (set(), [], d))
        g[0].update(layers)
        g[1].append(step.layer)
    return [(sorted(layers), dict(d, where=_list(at, "layer")))
            for layers, at, d in groups.values()]


def _test_other_step(fit):
    out = []
    for step in fit.steps:
        delta = split_step(fit, step)[1]
        if not delta or _block_detail(fit, step, delta):
            continue
        out.append((_layers_from(fit, step), {
            "n": abs(delta), "more": "more" if delta > 0 else "fewer",
            "bytes": WORD * abs(delta), "layer": step.layer,
            "after": ("the header" if step.at_start else
                      f"layer {step.previous}'s blocks")}))
    return out


def _test_order(fit):
    cfg_order = [s.index for s in weighted_layers(fit.net)]
    if fit.order == cfg_order:
        return []
    moved = [i for i, j in zip(fit.order, cfg_order) if i != j]
    pairs = []
    for pos, index in enumerate(fit.order):
        later = [j for j in fit.order[pos + 1:] if j < index]
        if later:
            pairs.append(f"layer {index} before {_list(later, 'layer')}")
    return [(sorted(moved), {"pairs": "; ".join(pairs),
                             "order": ", ".join(str(i) for i in fit.order
                                                if min(moved) <= i <= max(moved))})]


def _variant_test(name):
    def test(fit):
        layers = sorted(i for i, r in fit.readings.items() if r.variant == name)
        return [(layers, {"where": _list(layers)})] if layers else []
    return test


def _layout_test(name):
    def test(fit):
        layers = sorted(i for i, r in fit.readings.items() if r.layout == name)
        return [(layers, {"where": _list(layers)})] if layers else []
    return test


def _list(items, word=""):
    items = list(items)
    text = ", ".join(str(i) for i in items)
    if word:
        return f"{word}{'s' if len(items) > 1 else ''} {text}"
    return text


DARKNET_ORDER = ("[convolutional] biases, then with batch_normalize=1 scales, rolling_mean, "
                 "rolling_variance, then weights; [connected] biases, weights, then scales, "
                 "rolling_mean, rolling_variance")

#: The misreads, most specific first; each names what it explains and the fix.
MISREADS = (
    Misread("header_16_on_v2", "every block shifted by one float: a 16-byte header "
            "skipped in a 20-byte one",
            _test_header_16_on_v2,
            "every block shifted by one float (4 bytes): the loader skipped a 16-byte "
            "header, but this file's header is 20 bytes (version {major}.{minor}; "
            + HEADER_RULE + "), so every float it took is the one before Darknet's",
            HEADER_FIX),
    Misread("header_20_on_v1", "every block shifted by one float: a 20-byte header "
            "skipped in a 16-byte one",
            _test_header_20_on_v1,
            "every block shifted by one float (4 bytes): the loader skipped a 20-byte "
            "header, but this file's header is 16 bytes (version {major}.{minor}; "
            + HEADER_RULE + "), so every float it took is the one after Darknet's and the "
            "last one is past the end of the file", HEADER_FIX),
    Misread("constant_shift", "every block shifted by {n} floats",
            _test_constant_shift,
            "every block shifted by {n} floats ({bytes} bytes): the loader's floats start "
            "at byte {start}, Darknet's at byte {header} (the header of version "
            "{major}.{minor})",
            "start reading the floats right after the header ({header} bytes here; "
            + HEADER_RULE + ")"),
    Misread("extra_conv_bias", "a bias read for a conv that has batchnorm",
            _test_extra_conv_bias,
            "a bias read for a conv that has batchnorm: the loader read {n} floats (the "
            "filter count of each) as a conv bias before the batchnorm blocks of {where}, "
            "so that layer and every later one is shifted by that many floats",
            "a [convolutional] with batch_normalize=1 stores no conv bias: its blocks are "
            "biases (the batchnorm's beta), scales, rolling_mean, rolling_variance, weights"),
    Misread("missing_block", "a block not read",
            _test_missing_block,
            "a block not read: the loader skipped layer {of}'s {block} ({n} floats), so "
            "every block read after it is shifted back by {n} floats (at {where})",
            "read every block Darknet stores, in its order: " + DARKNET_ORDER),
    Misread("other_step", "{n} floats read {more} than Darknet's blocks",
            _test_other_step,
            "the loader read {n} floats ({bytes} bytes) {more} than Darknet's blocks "
            "between {after} and layer {layer}; every later block is shifted by that much",
            "read exactly Darknet's blocks per layer, in cfg order: " + DARKNET_ORDER),
    Misread("module_order", "blocks read in another layer order",
            _test_order,
            "blocks read in another order: the loader read {pairs} (its order {order} is "
            "not the cfg's: the order a model registers its modules, read by a loader that "
            "walks model.modules()), so these layers hold floats of other layers' blocks, "
            "cut at their own lengths",
            "read the blocks in cfg order: iterate over the cfg's layers (or register the "
            "modules in cfg order), not over model.modules() or named_children()"),
    Misread("swapped_scale_bias", "swap: scales and biases read into each other's place "
            "(gamma and beta)",
            _variant_test("swapped_scale_bias"),
            "the batchnorm vectors read in another order: the biases block (beta) went into "
            "the scale (gamma) and the scales block into the bias (gamma and beta swapped)",
            "Darknet's order for a layer with batchnorm: biases (beta), scales (gamma), "
            "rolling_mean, rolling_variance"),
    Misread("swapped_mean_variance", "swap: rolling_mean and rolling_variance read into "
            "each other's place",
            _variant_test("swapped_mean_variance"),
            "the batchnorm vectors read in another order: rolling_mean went into the "
            "running variance and rolling_variance into the running mean",
            "Darknet's order for a layer with batchnorm: biases, scales, rolling_mean, "
            "rolling_variance"),
    Misread("kernel_transposed", "the kernel is transposed (rows and columns swapped)",
            _layout_test("transposed"),
            "weights in another layout: the loader transposed each kernel (rows and "
            "columns swapped)",
            "Darknet's conv weights are (out, in, kh, kw) row-major, PyTorch's layout: "
            "reshape them, do not transpose"),
    Misread("kernel_flipped", "the kernel is flipped (rotated 180 degrees)",
            _layout_test("flipped"),
            "weights in another layout: the loader flipped each kernel (rotated 180 "
            "degrees)",
            "Darknet's conv weights are (out, in, kh, kw) row-major and a correlation, as "
            "PyTorch's: reshape them, do not flip"),
)


def where_in_file(fit, word):
    """``layer 18's biases`` (+ k floats), ``the header`` or ``past the end``: what
    Darknet keeps at word offset ``word``."""
    if word < fit.header_words:
        return "the header"
    pos = word - fit.header_words
    for spec in fit.net.layers:
        for name, count in spec.blocks:
            start = spec.offsets[name]
            if start <= pos < start + count:
                return f"layer {spec.index}'s {name}" + (f" + {pos - start} floats"
                                                        if pos > start else "")
    return "past the end of the file"


def _scattered_findings(fit):
    out = []
    for index, located in sorted(fit.scattered.items()):
        parts = [f"its {role} hold the floats at {where_in_file(fit, loc.offset)}"
                 for role, loc in located.items()]
        out.append(Finding("other_place", "floats from another place in the file",
                           f"these floats come from another place in the file: layer "
                           f"{index}: " + "; ".join(parts),
                           "read the blocks in cfg order and Darknet's block order: "
                           + DARKNET_ORDER, [index]))
    return out


def explain(fit):
    """The ``Finding`` objects the fit supports (``MISREADS`` in order), each layer's
    ``Reading.causes`` filled with the names of the findings that move it."""
    details = {"major": fit.header.major, "minor": fit.header.minor,
               "header": fit.header.nbytes}
    findings = []
    for misread in MISREADS:
        for layers, extra in misread.test(fit):
            findings.append(Finding(misread.name, misread.label.format(**details, **extra),
                                    misread.diagnosis.format(**details, **extra),
                                    misread.fix.format(**details, **extra), list(layers)))
            for index in layers:
                reading = fit.readings.get(index)
                if reading is not None and misread.name not in reading.causes:
                    reading.causes.append(misread.name)
    findings += _scattered_findings(fit)
    return findings


# --------------------------------------------------------------------------
# what a reading yields
# --------------------------------------------------------------------------
def read_blocks(stream, spec, reading):
    """``{role: float32 array}`` the loader filled for ``spec`` under ``reading`` (floats
    past the end of the file read as 0; conv weights in the layout it left)."""
    out = {}
    for role, pos in reading.offsets(spec).items():
        count = dict(reading.blocks(spec))[role]
        values = np.zeros(count, np.float32)
        lo, hi = max(pos, 0), min(pos + count, stream.floats.size)
        if hi > lo:
            values[lo - pos:hi - pos] = stream.floats[lo:hi]
        out[role] = values
    if reading.layout and "weights" in out and spec.size > 1:
        transform = dict(LAYOUTS)[reading.layout]
        k = out["weights"].reshape(spec.filters, -1, spec.size, spec.size)
        out["weights"] = np.ascontiguousarray(transform(k)).reshape(-1)
    return out


def read_record(stream, spec, reading, dialect):
    """The ``BatchNormRecord`` (with weights) a loader reading ``spec`` as ``reading``
    filled the model with, in Darknet's terms."""
    blocks = read_blocks(stream, spec, reading)
    return BatchNormRecord(spec.index, spec.section, spec.bn_channels,
                           blocks.get("biases") if "biases" in spec.bn_blocks else None,
                           blocks["scales"], blocks["rolling_mean"],
                           blocks["rolling_variance"], dialect, spec, blocks.get("weights"))


def expected_offset(spec, role, header_words):
    """Darknet's word offset of ``spec``'s block ``role`` (None: Darknet has none)."""
    if role not in spec.offsets:
        return None
    return header_words + spec.offsets[role]


def search(stream, net, header, helds):
    """Locate ``helds`` in ``stream`` and fit the readings: a ``Fit``."""
    header_words = header.nbytes // WORD
    expected = {id(h): expected_offset(net.layers[h.layer], h.role, header_words)
                for h in helds}
    locations = locate(stream, helds, expected)
    return fit_readings(net, header, helds, locations)


__all__ = ["Held", "Location", "Stream", "Reading", "Fit", "Finding", "Misread",
           "MISREADS", "VARIANTS", "LAYOUTS", "MIN_RUN", "MAX_MISSING", "search",
           "explain", "read_record", "read_blocks", "searchable", "reads_exactly"]
