"""Misread diagnoses in ``check``: where the failing layers' floats came from.

For a report with failing layers, the paired model's tensors are looked up in the
``.weights`` stream (``darknet.misreads``: exact runs, scaled runs for folded
weights) and fitted with the table of misreads.  A finding is claimed for a layer
only when the model holds what that misread loader reads: the layer is judged
again against the blocks the reading yields (``read_record``) and passes, or fails
with a known converter mistake on top (e.g. the eps), which the row then names.
Each finding is reported once (``CheckReport.findings``), the rows refer to it.
"""
from dataclasses import replace

import numpy as np

from ..misreads import (MIN_RUN, VARIANTS, WORD, Held, Stream, darknet_start, explain,
                        read_record, reads_exactly, search, searchable)
from ..model import AffineUnit, BatchNormUnit, ConvUnit

#: A layer's diagnosis that names no known mistake starts with this.
UNEXPLAINED = "not a known converter mistake"
#: A layer whose filters differ from the reading's in no known layout says this.
WEIGHTS_DIFFER = "check the weight layout"
#: Block orders tried by judging (not by runs) for a layer whose vectors were not found.
JUDGED_VARIANTS = tuple(v.name for v in VARIANTS if v.name.startswith("swapped_"))


def _puzzling(diagnosis):
    """Whether a failing layer's diagnosis leaves room for a misread: no known mistake,
    swapped blocks, or filters that differ."""
    return (UNEXPLAINED in diagnosis or diagnosis.startswith("swap:") or
            WEIGHTS_DIFFER in diagnosis or "the kernel is" in diagnosis)


def held_tensors(pair):
    """The ``Held`` tensors of one pair: what the model holds for the cfg layer."""
    spec, conv, bn = pair.spec, pair.conv, pair.bn
    blocks = dict(spec.blocks)
    folded = conv is not None and bn is None and spec.bn_channels > 0
    out = []
    if conv is not None and "weights" in blocks:
        shape = conv.kernel_shape if isinstance(conv, ConvUnit) else None
        kernel = tuple(shape[2:]) if shape is not None else ()
        out.append(Held(spec.index, "weights", np.asarray(conv.weight).reshape(-1),
                        conv.precision, folded, conv.channels, kernel, conv.name))
        if conv.bias is not None and not folded:
            role = "conv_biases" if spec.bn_channels else "biases"
            out.append(Held(spec.index, role, np.asarray(conv.bias), conv.precision,
                            name=conv.name))
    if isinstance(bn, BatchNormUnit):
        stored = bn.stored or {}
        for role, key, value in (("scales", "weight", bn.weight), ("biases", "bias", bn.bias),
                                 ("rolling_mean", "running_mean", bn.mean),
                                 ("rolling_variance", "running_var", bn.var)):
            if role not in spec.bn_blocks:
                continue
            value = stored.get(key, value)
            if value is None:
                continue
            out.append(Held(spec.index, role, np.asarray(value, np.float64).reshape(-1),
                            bn.precision, name=bn.name))
    return out


def not_searched(pair):
    """What of ``pair`` the misread search cannot look up ("" when it can look up
    everything): folded float16/bfloat16 weights, a batchnorm written as Mul/Add."""
    parts = []
    helds = held_tensors(pair)
    quantized = sorted({h.precision for h in helds if h.precision not in MIN_RUN})
    if quantized:
        parts.append(f"its {'/'.join(quantized)} parameters: quantized values hold no "
                     "runs of the file's floats")
    elif not all(searchable(h) for h in helds):
        parts.append(f"its folded weights: they are {pair.conv.precision} (searched only "
                     "in float32)")
    if isinstance(pair.bn, AffineUnit):
        parts.append("its batchnorm: written as Mul/Add of constants, not Darknet's blocks")
    return " and ".join(parts)


def _rejudge(check_layer, pair, stream, reading, dialect, weights_known=False):
    """``(confirmed, residual diagnosis)`` of ``pair`` against what ``reading`` reads
    (``weights_known``: the weights were found there value for value, not compared
    again)."""
    record = read_record(stream, pair.spec, reading, dialect)
    row = check_layer(pair, record, dialect, compare_weights=not weights_known)
    if row.ok:
        return True, ""
    if UNEXPLAINED in row.diagnosis or WEIGHTS_DIFFER in row.diagnosis:
        return False, ""
    return True, row.diagnosis


def _judged_variant(check_layer, pair, stream, reading, dialect):
    """The swapped block order the layer confirms when judged (its vectors were not
    found as runs, e.g. folded): the variant's name, or None.  Only a reading that
    passes outright counts (a swap judged against a swap reads as a swap again), and
    only where the reading as it is does not explain the layer."""
    if check_layer(pair, read_record(stream, pair.spec, reading, dialect), dialect).ok:
        return None
    for name in JUDGED_VARIANTS:
        alt = replace(reading, variant=name, causes=[])
        if alt.blocks(pair.spec) is None:
            continue
        record = read_record(stream, pair.spec, alt, dialect)
        if check_layer(pair, record, dialect).ok:
            return name
    return None


def find_misreads(pairs, rows, net, weights_path, header, dialect, check_layer,
                  explainers):
    """Fill the diagnosis of every failing row: a misread where one explains it
    (``diagnosis``, ``misreads``), else the known mistakes (``explainers[index]()``,
    from ``judge_layer``).  Returns the confirmed findings, numbered ``M1``..., each
    with the failing layers it explains.  ``check_layer(pair, record, dialect,
    compare_weights=...)`` judges a pair against a record."""
    failing = {r.index: r for r in rows if not r.ok and r.form != "missing"}
    if not failing:
        return []
    done = set()

    def known_mistakes(index):
        if index not in done:
            done.add(index)
            explainers[index]()
        return failing[index].diagnosis

    # a misread leaves at least one layer no known mistake explains (values from
    # elsewhere fit no formula), swapped or with filters that differ: until one such
    # layer is met, the known mistakes are the answer and nothing is searched
    if not any(_puzzling(known_mistakes(index)) for index in sorted(failing)):
        return []
    pair_of = {p.spec.index: p for p in pairs}
    stream = Stream(weights_path)
    helds = [h for p in pairs for h in held_tensors(p)]
    fit = search(stream, net, header, [h for h in helds if searchable(h)])
    header_words = header.nbytes // WORD
    for index in sorted(failing):                 # block orders only judging can see
        reading, pair = fit.readings.get(index), pair_of.get(index)
        if (pair is None or reading is None or reading.variant != "darknet" or
                reading.start != darknet_start(pair.spec, header_words) or
                set(fit.located.get(index, {})) & set(pair.spec.bn_blocks) or
                not _puzzling(known_mistakes(index))):
            continue
        name = _judged_variant(check_layer, pair, stream, reading, dialect)
        if name is not None:
            reading.variant = name
    findings = explain(fit)
    explained = {}                                 # layer -> (finding names, residual)
    for index in sorted(failing):
        reading, pair = fit.readings.get(index), pair_of.get(index)
        if pair is None or reading is None or not reading.causes:
            continue
        ok, residual = _rejudge(check_layer, pair, stream, reading, dialect,
                                reads_exactly(fit, pair.spec, "weights"))
        if ok:
            explained[index] = (list(reading.causes), residual)
    confirmed = []
    for finding in findings:
        if finding.name == "other_place":
            layers = [i for i in finding.layers if i in failing and i not in explained and
                      UNEXPLAINED in known_mistakes(i)]
        else:
            layers = [i for i in finding.layers if finding.name in explained.get(i, ((),))[0]]
        if layers:
            finding.layers = layers
            finding.id = f"M{len(confirmed) + 1}"
            confirmed.append(finding)
    for finding in confirmed:
        for index in finding.layers:
            failing[index].misreads.append(finding.id)
    by_id = {f.id: f for f in confirmed}
    for index, row in failing.items():
        if not row.misreads:
            continue
        found = [by_id[i] for i in row.misreads]
        residual = explained.get(index, ((), ""))[1]
        ids = ", ".join(row.misreads)
        row.diagnosis = ("misread (" + "; ".join(f"{f.id}: {f.label}" for f in found) + ")" +
                         (f"; against the floats it took: {residual}" if residual else
                          "" if index not in explained else
                          "; the model holds exactly what that loader reads") +
                         f"; fix: see {ids}")
    for index, row in failing.items():
        pair = pair_of.get(index)
        if row.misreads or pair is None:
            continue
        if UNEXPLAINED in known_mistakes(index):
            unsearched = not_searched(pair)
            if unsearched:
                row.diagnosis += f"; misread search not possible for {unsearched}"
    return confirmed
