"""Check a converted model (ONNX, PyTorch) against Darknet's inference, layer by layer.

``check_model(converted, cfg, weights, *, dialect, eps=None, strict=False)``
reads the model and pairs its units with the cfg's layers
(``darknet_bn.darknet.model``: by the data-flow graph for ONNX and traced live
modules, by shapes, names and order for state_dicts), judges each
batchnorm-carrying layer against the fork's inference in the precision the model
stores (``judging``) and returns a ``CheckReport`` (``report``): one row per cfg
layer with batchnorm, a failing row for a layer missing from the model, and the
model's units that are not in the cfg.  docs/converters.md describes the forms read and the rules.
"""
import math

import numpy as np

from ..._validate import argument_name, error_text, routine_prefix, setting_text
from ...dialects import get_dialect
from ..parser import check_path
from ..weights import check_cfg_arg, network_from, read_weights, type_name
from ..model import (CheckError, ModelUnits, NormUnit, Pair, Pairing, PairingError, Unit,
                     cfg_sources, narrowest, pair_model, read_model)
from ..model.quantization import QUANTIZED
from .judging import (TOLERANCE, blind_spot_text, describe_reference, diagnose, error_scale,
                      folded_reference, make_probe, model_output, model_response, quantized_check,
                      reference_output, relative_error, storage_note, tolerance,
                      ulp_distance, weight_error)
from .misreading import find_misreads
from .report import CheckReport, ExtraUnit, LayerCheck


def check_quantized_layer(pair, record, dialect):
    """``LayerCheck`` of a pair with quantized parameters: each within half its step of
    the fork's folded conv (``judging.quantized_check``); the error is in units of that
    allowance (tolerance 1), the ulp column in quantization steps."""
    probe = make_probe(record)
    error, steps, worst, w_err, diagnosis, described, res = quantized_check(
        pair, record, probe, dialect)
    return LayerCheck(index=record.index, section=record.section, channels=record.channels,
                      form="batchnorm" if pair.bn is not None else "folded",
                      model_name=pair.names,
                      reference=describe_reference(record.section, dialect), ok=error <= 1.0,
                      max_rel_error=error, max_ulp=steps, worst_channel=worst,
                      diagnosis=diagnosis, precision=QUANTIZED, tolerance=1.0,
                      max_weight_error=w_err, choice=pair.choice, pairing=pair.note,
                      quantization=described,
                      resolution=float(np.median(res)) if res.size else 0.0,
                      resolution_max=float(np.max(res)) if res.size else 0.0)


def check_layer(pair, record, dialect, *, compare_weights=True):
    """``LayerCheck`` of one pair: the probes, every weight (unless ``compare_weights`` is
    False: known equal), and a diagnosis if it fails."""
    row, explain = judge_layer(pair, record, dialect, compare_weights=compare_weights)
    if not row.ok:
        explain()
    return row


def judge_layer(pair, record, dialect, *, compare_weights=True):
    """``(LayerCheck without its diagnosis, explain)``: ``explain()`` fills a failing
    row's diagnosis (the known mistakes, a kernel layout), which is the costly part
    (``check_model`` first asks whether a misread explains the layer).  Quantized
    parameters: ``check_quantized_layer``, diagnosed at once."""
    if any(u.quantized for u in pair.units):
        return check_quantized_layer(pair, record, dialect), lambda: None
    precision = narrowest(*(u.precision for u in pair.units))
    limit = tolerance(precision)
    probe = make_probe(record)
    reference = reference_output(record, probe, dialect)
    y = model_output(pair, probe)
    scale = error_scale(record, probe, dialect)
    err = relative_error(y, reference, scale)
    ulp = ulp_distance(y, reference, precision)
    max_err = float(np.max(err)) if err.size else 0.0
    worst = int(np.unravel_index(int(np.argmax(err)), err.shape)[0]) if err.size else 0
    w_err, w_worst, _ = (weight_error(pair, record, probe, find_layout=False)
                         if compare_weights else (0.0, 0, ""))
    ok = max_err <= limit and w_err <= limit
    form = "batchnorm" if pair.bn is not None else "folded"
    row = LayerCheck(index=record.index, section=record.section, channels=record.channels,
                     form=form, model_name=pair.names,
                     reference=describe_reference(record.section, dialect), ok=ok,
                     max_rel_error=max(max_err, 0.0),
                     max_ulp=int(np.max(ulp)) if ulp.size else 0, worst_channel=worst,
                     diagnosis="", precision=precision, tolerance=limit,
                     max_weight_error=w_err, choice=pair.choice, pairing=pair.note)

    def explain():
        notes = []
        note, stored = storage_note(pair, precision, folded_reference(record, dialect))
        if note:
            notes.append(note)
        failing = set(np.flatnonzero(np.max(err, axis=1) > limit).tolist()) if err.size \
            else set()
        if stored and failing <= stored and w_err <= limit:
            pass                        # float16 could not hold the values: that is all
        elif max_err > limit:
            slope, offset = model_response(pair, probe)
            notes.append(diagnose(pair, record, probe, dialect, scale, slope, offset, limit))
        if w_err > limit:
            layout = weight_error(pair, record, probe)[2]
            notes.append(f"weights differ from Darknet's filter (largest error {w_err:.3g} "
                         f"of the filter's largest term, channel {w_worst})" +
                         (f": the kernel is {layout}" if layout else
                          ": check the weight layout (out, in, kh, kw)"))
        row.diagnosis = "; ".join(notes)
    return row, explain


def value_chooser(records, dialect):
    """For ambiguous pairs: the option whose values fit Darknet's best."""
    def choose(spec, options):
        record = records.get(spec.index)
        if record is None:
            return 0
        scores = []
        for option in options:
            row = check_layer(option, record, dialect)
            scores.append(max(row.max_rel_error, row.max_weight_error))
        return int(np.argmin(scores))
    return choose


def check_eps(routine, eps):
    if eps is None:
        return None
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"{routine}: eps must be a real number (the eps the state_dict's "
                        f"model was built with) or None, got {type_name(eps)}")
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{routine}: eps must be finite and >= 0, got {eps}")
    return eps


def read_converted(converted, eps=None, routine="check_model", net=None):
    """``read_model`` with every unexpected failure of a malformed model as a
    ``CheckError`` naming the model."""
    try:
        return read_model(converted, eps, routine, net)
    except (CheckError, TypeError, OSError):
        raise
    except Exception as e:                 # a malformed graph or tensor deep in a reader
        where = converted if isinstance(converted, (str, bytes)) else type(converted).__name__
        raise CheckError(f"{where}: cannot read the model ({type(e).__name__}: "
                         f"{error_text(e)})") from None


def check_model(converted, cfg, weights, *, dialect, eps=None, strict=False):
    """Compare a converted model with Darknet's inference, layer by layer: a ``CheckReport``.

    ``converted``: an ONNX file or ``onnx.ModelProto`` (``BatchNormalization``
    nodes, batchnorm folded into ``Conv``/``Gemm``/``MatMul``, or written as
    ``Mul``/``Add``/``Sub``/``Div`` of constants; float32, float16 or bfloat16;
    needs the ``onnx`` package), a torch state_dict file (``.pt``/``.pth``,
    loaded with ``weights_only=True``; it stores no eps: pass ``eps``) or dict,
    or a live ``torch.nn.Module`` (on any device, in any precision: read on the
    CPU).  ``cfg``, ``weights``: the Darknet files (``cfg`` may be a
    ``Network``).  ``dialect``: the fork whose inference is the reference.
    ``eps``: only for a state_dict.  ``strict``: no value-based choice between
    same-shaped candidates; an ambiguity is a ``PairingError`` naming them.

    Raises ``CheckError`` (a ``ValueError``; ``PairingError`` for the pairing) for
    an unreadable model or one none of whose layers pair with the cfg's; what
    ``read_weights`` raises for the Darknet files; ``TypeError``/``ValueError``
    naming a wrong-typed argument, before any file is read.
    """
    routine = "check_model"
    fork = get_dialect(dialect, routine)
    cfg = check_cfg_arg(routine, cfg, "cfg")
    wpath = check_path(routine, "weights", weights, "yolov4.weights")
    eps = check_eps(routine, eps)
    if not isinstance(strict, bool):
        raise TypeError(f"{routine}: strict must be True or False, got {type_name(strict)}")
    if converted is None or isinstance(converted, (int, float, list, tuple)):
        raise TypeError(f"{routine}: converted must be an .onnx or .pt/.pth path, a "
                        f"torch.nn.Module, a state_dict or an onnx.ModelProto, got "
                        f"{type_name(converted)}")
    net = network_from(cfg, fork, routine)
    darknet = read_weights(net, wpath, dialect=fork, layer_weights=True)
    model = read_converted(converted, eps, routine, net)
    if model.stores_eps and eps is not None:
        raise ValueError(f"{routine_prefix(routine)}{setting_text('eps', eps)} given, but "
                         f"{model.source} stores its own eps per batchnorm; pass "
                         f"{argument_name('eps')} only for a state_dict")
    if not model.stores_eps and eps is None and \
            any(isinstance(u, NormUnit) for u in model.units):
        raise CheckError(f"{model.source}: a state_dict stores no eps; pass the eps its model "
                         f"is built with ({setting_text('eps', 1e-5)} for PyTorch's default)")
    records = {rec.index: rec for rec in darknet.layers}
    pairing = pair_model(net, model, strict=strict,
                         choose=None if strict else value_chooser(records, fork))
    judged = [judge_layer(p, records[p.spec.index], fork) for p in pairing.pairs
              if p.spec.index in records]
    rows = [row for row, _ in judged]
    for spec in pairing.missing:
        if spec.index in records:
            rows.append(LayerCheck(
                index=spec.index, section=spec.section, channels=spec.bn_channels,
                form="missing", model_name="", reference=describe_reference(spec.section, fork),
                ok=False, max_rel_error=math.inf, max_ulp=0, worst_channel=0,
                diagnosis="not found in the model: no unit of its kind and shape where the "
                "graph or the order puts it", precision="float32", tolerance=TOLERANCE))
    rows.sort(key=lambda row: row.index)
    findings = find_misreads(pairing.pairs, rows, net, wpath, darknet.header, fork,
                             check_layer, {row.index: explain for row, explain in judged})
    extra = [ExtraUnit(name=u.name, kind=u.kind, channels=u.channels, in_data_path=reaches)
             for u, reaches in pairing.extra]
    ok = all(row.ok for row in rows) and not any(x.in_data_path for x in extra)
    return CheckReport(ok=ok, dialect=fork.name, source=model.source, tolerance=TOLERANCE,
                       layers=rows, extra=extra, notes=list(model.notes) + outside_note(pairing),
                       findings=findings, limits=precision_limits(rows, fork))


def outside_note(pairing):
    """A note naming the cfg layers outside a graph that is a piece of the network
    (``Pairing.outside``): not judged, not failing."""
    if not pairing.outside:
        return []
    layers = ", ".join(str(s.index) for s in pairing.outside)
    return [f"the graph is a piece of the network (its inputs stand for inner tensors): "
            f"cfg layers {layers} lie outside it and are not judged"]


def precision_limits(rows, dialect):
    """What each quantized precision of the report cannot see (``blind_spot_text``)."""
    limits = []
    for described in sorted({r.quantization for r in rows if r.quantization}):
        judged = [r for r in rows if r.quantization == described]
        text = blind_spot_text(dialect, described, [r.resolution for r in judged],
                               [r.resolution_max for r in judged])
        if text:
            limits.append(text)
    return limits


__all__ = ["check_model", "check_layer", "value_chooser", "read_converted", "check_eps", "CheckReport", "LayerCheck", "ExtraUnit",
           "CheckError", "PairingError", "TOLERANCE", "pair_model", "cfg_sources", "Pair",
           "Pairing", "ModelUnits", "Unit", "read_model"]
