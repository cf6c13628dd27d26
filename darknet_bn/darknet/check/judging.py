"""Judging one paired layer against the fork's inference, and naming the mistake.

**Reference** (what the fork computes at inference, bit for bit): the folded
conv (``fuse_conv_batchnorm``) where the fork's inference folds
(``Dialect.folding``), else ``normalize_cpu`` then ``scale_bias``/``add_bias``.

**Probes.** For every output channel the probe input is one pixel of value
``t`` at the position of the filter's largest weight ``w``, zeros elsewhere: a
conv computes ``w*t`` plus its bias exactly (every other product is an exact
zero).  ``t`` makes ``z = w*t`` cover ``mean + k*sqrt(var)`` for ``k`` in
``PROBE_SIGMAS``, plus ``t = 0``.  A ``[batchnorm]`` layer gets ``z = t``.

**Every weight.** The probes exercise one weight per filter; the others are
compared directly: the model's filter must be Darknet's filter times the
per-channel factor the probes judged (1 unfolded, the batchnorm scale folded),
each weight within the tolerance relative to the filter's largest term.

**Error.** ``|y_model - y_ref| / (|a*z| + |a*mean| + |b|)`` with ``a = scale/D``
(``D`` the fork's denominator): the error relative to the terms the output is
computed from, which is what rounding bounds.

**Tolerance** ``8 u`` with ``u`` the unit roundoff of the precision the model
stores its parameters in (float32 ``2**-24``, float16 ``2**-11``, bfloat16
``2**-8``).  Rounding model: each stored parameter (weight, scale, bias, mean,
variance) is rounded once to that precision (relative ``u``, the variance
entering through a square root at ``u/2``), the folding and pjreddie's variance
remap once more before the store, and the model's own arithmetic a few times
(PyTorch's eval kernel about 4 on ``x*alpha`` and ``mean*alpha``): two correct
computations differ by at most about ``5u`` times the terms; ``8u`` leaves
margin.  Stored float16 values that overflow (above 65504) or fall into the
subnormal range (below ``2**-14``) lose that bound; they are named.

**Diagnosis** of a failing layer: the model's per-channel response ``A*t + B``
is compared with what each entry of ``HYPOTHESES`` (a known converter mistake)
gives, each with every eps value and placement converters use (``KNOWN_EPS``);
the simplest match within the tolerance is reported with its fix.
"""
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np

from ..._jit import calling_thread_only
from ..._validate import setting_text
from ...dialects import BY_CODE, EpsForm, others
from ..fold import fold_batchnorm
from ..weights import make_batchnorm_layer_from_record
from ..model import UNIT_ROUNDOFF, AffineUnit, BatchNormUnit, ConvUnit, narrowest

#: Probe conv outputs, in standard deviations around the rolling mean.
PROBE_SIGMAS = (-4.0, -2.0, -1.0, -0.5, 0.5, 1.0, 2.0, 4.0)

#: The tolerance, in unit roundoffs of the judged precision (module docstring).
ROUNDOFFS = 8
#: The float32 tolerance.
TOLERANCE = ROUNDOFFS * UNIT_ROUNDOFF["float32"]

#: eps values converters are known to use (docs/converters.md).
KNOWN_EPS = (1e-3, 1e-4, 1e-5, 1e-6, 0.0)

#: float16's largest finite value and smallest normal one.
FLOAT16_MAX, FLOAT16_TINY = 65504.0, 2.0 ** -14
#: float16's smallest subnormal: a value below half of it is stored as zero.
FLOAT16_SUBNORMAL = 2.0 ** -24


def tolerance(precision):
    """The tolerance for a model storing its parameters in ``precision``."""
    return ROUNDOFFS * UNIT_ROUNDOFF[precision]


#: The eps of the forks whose statistics PyTorch holds as a remapped variance
#: ``(sqrt(var) + eps)**2`` (``Dialect.torch_form``): what "eps counted twice" looks for.
REMAP_EPS = tuple(float(d.normalize_eps) for d in BY_CODE if not d.normalize_eps_in_sqrt)


class BatchNormParams(NamedTuple):
    """Darknet's blocks of one layer in double: ``y = scale*(x - mean)/D(var) + bias``."""
    scale: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray


def record_params(record):
    bias = (record.biases.astype(np.float64) if record.biases is not None
            else np.zeros(record.channels))
    return BatchNormParams(record.scales.astype(np.float64), bias,
                           record.rolling_mean.astype(np.float64),
                           record.rolling_variance.astype(np.float64))


# --------------------------------------------------------------------------
# probes, reference, model response
# --------------------------------------------------------------------------
@dataclass
class Probe:
    """Per channel: the probe pixel's position ``idx`` in the filter, Darknet's
    weight ``w`` there, the probe values ``t`` and Darknet's conv output ``z``."""
    idx: np.ndarray            #: (C,)
    w: np.ndarray              #: (C,) float32 (1 for a [batchnorm])
    t: np.ndarray              #: (C, P) float32
    z: np.ndarray              #: (C, P) float32


def make_probe(record):
    channels = record.channels
    if record.weights is not None:
        filters = record.weights.reshape(channels, -1)
        with np.errstate(invalid="ignore"):
            idx = np.argmax(np.where(np.isfinite(filters), np.abs(filters), -1.0), axis=1)
        w = filters[np.arange(channels), idx]
    else:
        idx, w = np.zeros(channels, np.int64), np.ones(channels, np.float32)
    mean = record.rolling_mean.astype(np.float64)
    var = record.rolling_variance.astype(np.float64)
    with np.errstate(invalid="ignore"):
        sd = np.where(np.isfinite(var) & (var > 0), np.sqrt(np.abs(var)), 1.0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    sigmas = np.array(PROBE_SIGMAS)
    target = mean[:, None] + sigmas[None, :] * sd[:, None]
    wd = w.astype(np.float64)[:, None]
    usable = np.isfinite(wd) & (wd != 0)
    with np.errstate(all="ignore"):
        t = np.where(usable, target / np.where(usable, wd, 1.0), sigmas[None, :])
        t = np.concatenate([np.zeros((channels, 1)), t], axis=1).astype(np.float32)
        z = (w[:, None] * t).astype(np.float32)          # the conv's float32 product
    return Probe(idx, w.astype(np.float32), t, z)


def describe_reference(section, dialect):
    if section == "convolutional" and dialect.folding.inference_folds_conv:
        return f"folded conv ({dialect.folding.formula})"
    return f"normalize_cpu (x-mean)/{dialect.normalize_form.text()}"


def reference_output(record, probe, dialect):
    """Darknet's float32 output for the probes, bit for bit (a few values per
    channel: the kernels run on the calling thread, ``calling_thread_only``)."""
    with calling_thread_only():
        return _reference_output(record, probe, dialect)


def _reference_output(record, probe, dialect):
    if record.section == "convolutional" and dialect.folding.inference_folds_conv:
        # the fold of the probe weights alone: each weight is folded on its own
        # (weights[f*size + i] *= precomputed[f]), so these are the folded file's bits
        folded_w, biases = fold_batchnorm(np.ascontiguousarray(probe.w), record.biases,
                                          record.scales, record.rolling_mean,
                                          record.rolling_variance, dialect=dialect)
        with np.errstate(all="ignore"):
            y = (folded_w[:, None] * probe.t).astype(np.float32) + biases[:, None]
        return y.astype(np.float32)
    c, p = probe.z.shape
    layer = make_batchnorm_layer_from_record(record, batch=1, h=1, w=p, dialect=dialect)
    y = np.array(layer.forward(np.ascontiguousarray(probe.z.reshape(1, c, 1, p)), train=False))
    return y.reshape(c, p).astype(np.float32)


def unit_affine(bn):
    """``(alpha, beta)`` in double of a model batchnorm unit: ``y = alpha*x + beta``."""
    return bn.affine()


def conv_response(pair, probe):
    """``(w, bias)`` in double: the model's conv computes ``w*t + bias`` for the probes
    (Darknet's own product ``z`` where the model has no conv)."""
    channels = probe.w.shape[0]
    if pair.conv is None:
        return probe.w.astype(np.float64), np.zeros(channels)
    w = pair.conv.weight[np.arange(channels), probe.idx]
    return w, (np.zeros(channels) if pair.conv.bias is None else pair.conv.bias)


def model_response(pair, probe):
    """``(A, B)`` in double: the model computes ``A*t + B`` for probe pixel ``t``."""
    w, conv_bias = conv_response(pair, probe)
    if pair.bn is None:
        return w, conv_bias
    alpha, beta = unit_affine(pair.bn)
    with np.errstate(all="ignore"):
        return alpha * w, alpha * conv_bias + beta


def model_output(pair, probe):
    """The model's output for the probes, in double (a custom torch batchnorm is run
    as a float32 CPU copy)."""
    slope, offset = model_response(pair, probe)
    bn = pair.bn
    t = probe.t.astype(np.float64)
    if not isinstance(bn, BatchNormUnit) or not bn.run_module:
        with np.errstate(all="ignore"):
            return slope[:, None] * t + offset[:, None]
    return _run_module(bn.module, conv_response(pair, probe), t)


def _run_module(module, conv_response, t):
    import copy

    import torch
    slope, offset = conv_response
    with np.errstate(all="ignore"):
        z = (slope[:, None] * t + offset[:, None]).astype(np.float32)
    channels, probes = z.shape
    twin = copy.deepcopy(module).to("cpu", torch.float32).eval()
    if isinstance(twin, torch.nn.BatchNorm1d):
        shape = (1, channels, probes)
    elif isinstance(twin, torch.nn.BatchNorm3d):
        shape = (1, channels, 1, 1, probes)
    else:
        shape = (1, channels, 1, probes)
    with torch.no_grad():
        y = twin(torch.from_numpy(np.ascontiguousarray(z.reshape(shape))))
    return y.detach().cpu().double().numpy().reshape(channels, probes)


def error_scale(record, probe, dialect):
    """``|a*z| + |a*mean| + |b|`` per probe (the error's denominator)."""
    p = record_params(record)
    with np.errstate(all="ignore"):
        a = p.scale / dialect.normalize_form.denominator(p.var)
        return np.abs(a[:, None] * probe.z) + np.abs(a * p.mean)[:, None] + np.abs(p.bias)[:, None]


def relative_error(y, ref, scale):
    """Elementwise ``|y - ref| / scale``; 0 where both are NaN or the same infinity."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    with np.errstate(all="ignore"):
        err = np.abs(y - ref) / scale
        same = (y == ref) | (np.isnan(y) & np.isnan(ref))
        err = np.where(same, 0.0, err)
        err = np.where(np.isnan(err), np.inf, err)
    return err


def _ordered_bits(x, precision):
    if precision == "float16":
        bits = np.asarray(x, np.float16).view(np.int16).astype(np.int64)
        sign = 0x7FFF
    else:
        bits = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
        sign = 0x7FFFFFFF
        if precision == "bfloat16":               # the top 16 bits (truncated)
            bits, sign = bits >> 16, 0x7FFF
    return np.where(bits < 0, -(bits & sign), bits)


def ulp_distance(a, b, precision="float32"):
    """Elementwise distance in ulps of ``precision`` (0 where both are NaN)."""
    with np.errstate(all="ignore"):
        d = np.abs(_ordered_bits(a, precision) - _ordered_bits(b, precision))
    both_nan = np.isnan(np.asarray(a, np.float64)) & np.isnan(np.asarray(b, np.float64))
    return np.where(both_nan, 0, d)


def weight_error(pair, record, probe, find_layout=True):
    """``(error, channel, layout)``: the largest error of any weight against
    Darknet's filter times the factor the probes judged, relative to the filter's
    largest term; ``layout`` names a transposed or flipped kernel that fits (with
    ``find_layout``)."""
    if pair.conv is None or record.weights is None:
        return 0.0, 0, ""
    channels = record.channels
    darknet = record.weights.reshape(channels, -1).astype(np.float64)
    model = pair.conv.weight
    errors = _proportional_error(model, darknet, probe.idx)
    worst = int(np.argmax(errors)) if errors.size else 0
    err = float(errors[worst]) if errors.size else 0.0
    layout = ""
    shape = pair.conv.kernel_shape if isinstance(pair.conv, ConvUnit) else None
    if find_layout and err > 0 and shape is not None and shape[2] == shape[3] and shape[2] > 1:
        kernel = darknet.reshape(shape)
        for name, other in (("transposed (rows and columns swapped)",
                             np.swapaxes(kernel, 2, 3)),
                            ("flipped (rotated 180 degrees)", kernel[:, :, ::-1, ::-1])):
            other = other.reshape(channels, -1)
            if np.max(_proportional_error(model, other, probe.idx)) < err / 1e3:
                layout = name
                break
    return err, worst, layout


def _proportional_error(model, darknet, idx):
    rows = np.arange(darknet.shape[0])
    with np.errstate(all="ignore"):
        factor = model[rows, idx] / darknet[rows, idx]
        largest = np.max(np.abs(darknet), axis=1)
        diff = np.abs(model - factor[:, None] * darknet)
        err = np.max(diff, axis=1) / (np.abs(factor) * largest)
    zero = largest == 0
    err = np.where(zero, np.where(np.max(np.abs(model), axis=1) == 0, 0.0, np.inf), err)
    err = np.where(np.isnan(err), np.inf, err)
    # a filter held as NaN throughout (a fold of a negative variance) has no shape to
    # compare; the probes judge it (NaN must be NaN in the reference too)
    return np.where(np.all(np.isnan(model), axis=1), 0.0, err)


# --------------------------------------------------------------------------
# diagnosis: the known converter mistakes, one table
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Hypothesis:
    """A converter mistake: ``transform`` turns Darknet's blocks into what the
    converter stored (None where it does not apply to a layer); ``weights_scaled``:
    the conv weights hold the batchnorm scale too; ``eps``: ``"any"`` (combined with
    every known eps form), ``"exact"`` (the fork's own), ``"inside"`` (inside
    forms with a nonzero eps, replacing their text)."""
    name: str
    diagnosis: str
    transform: Callable
    forms: tuple = ("batchnorm", "folded")
    weights_scaled: bool = False
    eps: str = "any"


def _biased(params, fit):
    ratio = fit.get("biased")
    return None if ratio is None else params._replace(var=ratio * params.var)


def _remapped(params, fit):
    return params._replace(var=(np.sqrt(np.abs(params.var)) + fit["remap_eps"]) ** 2)


HYPOTHESES = (
    Hypothesis("exact", "", lambda p, fit: p),
    Hypothesis("swapped_mean_variance", "swap: rolling_mean and rolling_variance are swapped",
               lambda p, fit: p._replace(mean=p.var, var=p.mean)),
    Hypothesis("swapped_scale_bias", "swap: scales and biases are swapped",
               lambda p, fit: p._replace(scale=p.bias, bias=p.scale)),
    Hypothesis("std_as_variance", "variance stored as a standard deviation (sqrt(var))",
               lambda p, fit: p._replace(var=np.sqrt(np.abs(p.var)))),
    Hypothesis("biased_variance", "variance biased: it is {biased:.6g} x Darknet's (divided "
               "by N instead of N-1, N ~ {n_biased:.0f}); Darknet stores the unbiased rolling "
               "variance: store it unchanged", _biased),
    Hypothesis("folded_twice", "folded weights where raw ones were expected: the conv "
               "weights already include the batchnorm scale, which the batchnorm applies "
               "again; export Darknet's raw conv weights (or drop the batchnorm)",
               lambda p, fit: p, forms=("batchnorm",), weights_scaled=True),
    Hypothesis("eps_counted_twice", "eps counted twice: running_var is already (sqrt(var) + "
               "{remap_eps:g})^2 and eps {eps:g} is added again: use eps 0 with that "
               "running_var", _remapped, eps="inside"),
    Hypothesis("raw_weights", "raw weights where folded ones were expected: the conv has "
               "Darknet's weights and biases unchanged, the batchnorm was dropped instead "
               "of folded", None, forms=("folded",), eps="exact"),
)


def _eps_values(model_eps):
    """KNOWN_EPS and the model's own eps, without near-duplicates (1e-5 and .00001f)."""
    out = []
    for e in sorted(set(KNOWN_EPS) | ({model_eps} if model_eps is not None else set())):
        if not any(math.isclose(e, x, rel_tol=1e-6, abs_tol=0.0) for x in out):
            out.append(e)
    return out


def _eps_forms(dialect, model_eps):
    """``[(EpsForm, text)]``: the fork's exact form (text "") and every eps value and
    placement converters use instead."""
    exact = dialect.normalize_form
    out = [(exact, "")]
    for inside in (True, False):
        for e in _eps_values(model_eps):
            form = EpsForm(inside, e)
            if form.same(exact) or (not inside and e == 0):
                continue
            text = (f"eps: computes (x-mean)/{form.text()}, {dialect.name} computes "
                    f"(x-mean)/{exact.text()}")
            same = [other.name for other in others(dialect)
                    if form.same(other.normalize_form)]
            if same:
                text += (f" (that is {' and '.join(same)}'s normalization: wrong fork? "
                         f"{setting_text('dialect', same[0])})")
            out.append((form, text))
    return out


def fix_text(dialect, form):
    """How to export layer ``form`` ("batchnorm" or "folded") right for ``dialect``: from
    PyTorch, the model's batchnorm converted before the export; else the exact values."""
    return (f"from PyTorch, darknet_bn.torch.convert_batchnorm(model, dialect="
            f"'{dialect.name}') before torch.onnx.export; otherwise "
            f"{_values_fix(dialect, form)}")


def _values_fix(dialect, form):
    """The exact values of layer ``form`` for ``dialect``, for a converter."""
    exact = dialect.normalize_form
    if form == "folded":
        if dialect.folding.inference_folds_conv:
            return (f"fold with darknet_bn.darknet.fold_batchnorm(..., dialect="
                    f"'{dialect.name}') (= darknet-bn fold --dialect {dialect.name})")
        return (f"{dialect.name} does not fold at inference: keep a BatchNormalization with "
                f"darknet_bn.darknet.batchnorm_state_dict (eps 0, running_var = "
                f"(sqrt(var) + {exact.eps:.3g})^2), or fold with scale/{exact.text()}")
    if exact.inside:
        return ("export with darknet_bn.darknet.to_torch_batchnorm / batchnorm_state_dict "
                f"(Darknet's blocks as stored, eps {exact.eps:.3g})")
    return ("export with darknet_bn.darknet.to_torch_batchnorm / batchnorm_state_dict "
            f"(eps 0, running_var = (sqrt(var) + {exact.eps:.3g})^2)")


def _biased_ratio(params, w, model_A, form):
    """The constant c with var' = c*var if the model's response fits one, else None."""
    with np.errstate(all="ignore"):
        d = params.scale * w / model_A
        var_model = d * d - form.eps if form.inside else (d - form.eps) ** 2
        c = var_model / params.var
    good = np.isfinite(c) & (np.abs(params.var) > 1e-3)
    if not good.any():
        return None
    median = float(np.median(c[good]))
    if not (0.5 <= median < 1.0 - 1e-4) or np.max(np.abs(c[good] - median)) > 1e-3 * median:
        return None
    return median


def hypothesis_responses(record, probe, dialect, form, model_eps, model_A):
    """``[(mistakes, rank, diagnosis, A, B)]``: the response each mistake (or a
    structural mistake with an eps mistake) would give; ``rank``: its row in
    ``HYPOTHESES`` (an eps mistake alone is row 0)."""
    params = record_params(record)
    w = probe.w.astype(np.float64)
    out = []
    for eps_form, eps_text in _eps_forms(dialect, model_eps):
        fit = {"remap_eps": REMAP_EPS[0], "eps": eps_form.eps}
        ratio = _biased_ratio(params, w, model_A, eps_form)
        if ratio is not None:
            fit.update(biased=ratio, n_biased=1 / (1 - ratio))
        for rank, h in enumerate(HYPOTHESES):
            if form not in h.forms:
                continue
            if h.eps == "exact" and eps_text:
                continue
            if h.eps == "inside" and not (eps_form.inside and eps_form.eps > 0):
                continue
            if h.transform is None:                    # raw weights: no batchnorm at all
                A, B = w, params.bias
            else:
                changed = h.transform(params, fit)
                if changed is None:
                    continue
                with np.errstate(all="ignore"):
                    a = changed.scale / eps_form.denominator(changed.var)
                    A = a * w * (a if h.weights_scaled else 1.0)
                    B = changed.bias - a * changed.mean
            parts = [h.diagnosis.format(**fit)] if h.diagnosis else []
            if eps_text and h.eps != "inside":
                parts.append(eps_text)
            if parts:
                out.append((len(parts), rank, "; ".join(parts), A, B))
    return out


def diagnose(pair, record, probe, dialect, scale, model_A, model_B, limit):
    """The simplest known mistake that explains the model's response within
    ``limit`` (fewest mistakes first, then the earliest row of ``HYPOTHESES``: at a
    coarse precision several may fit; then the smallest error), with its fix; or
    which stored blocks differ from darknet_bn's exact export."""
    form = "batchnorm" if pair.bn is not None else "folded"
    model_eps = pair.bn.eps if isinstance(pair.bn, BatchNormUnit) else None
    t = probe.t.astype(np.float64)
    with np.errstate(all="ignore"):
        y_model = model_A[:, None] * t + model_B[:, None]
    best = None
    for count, rank, text, A, B in hypothesis_responses(record, probe, dialect, form,
                                                        model_eps, model_A):
        with np.errstate(all="ignore"):
            y = A[:, None] * t + B[:, None]
        err = float(np.max(relative_error(y_model, y, scale)))
        if err <= limit and (best is None or (count, rank, err) < best[:3]):
            best = (count, rank, err, text)
    if best is None:
        return unexplained(pair, record, dialect, limit)
    return f"{best[3]}; fix: {fix_text(dialect, form)}"


def unexplained(pair, record, dialect, limit):
    """Which stored blocks differ from darknet_bn's exact export (``batchnorm_state_dict``)."""
    from ..export import batchnorm_state_dict
    parts = []
    bn = pair.bn
    if isinstance(bn, BatchNormUnit):
        exact, _ = batchnorm_state_dict(record, dialect=dialect)
        theirs = {"weight": bn.weight, "bias": bn.bias, "running_mean": bn.mean,
                  "running_var": bn.var}
        if bn.stored.get("running_var") is not None:
            theirs["running_var"] = np.asarray(bn.stored["running_var"], np.float64)
        for key, x in theirs.items():
            x, y = np.asarray(x, np.float64), np.asarray(exact[key], np.float64)
            with np.errstate(all="ignore"):
                d = np.abs(x - y) / np.maximum(np.abs(y), 1e-30)
            d = np.where(np.isnan(x) & np.isnan(y), 0.0, np.where(np.isnan(d), np.inf, d))
            if np.max(d) > limit:
                parts.append(key)
    what = (f" (differs from darknet_bn's exact export in {', '.join(parts)})"
            if parts else "")
    return ("not a known converter mistake: the parameters do not match Darknet's" + what +
            "; check the pairing and the values layer by layer")


def _rows(mask):
    """The channels (rows) where a (channels, ...) mask holds."""
    mask = np.asarray(mask)
    return np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)) if mask.ndim else \
        np.flatnonzero(mask.reshape(-1))


def storage_note(pair, precision, reference=None):
    """For float16 storage: ``(text, channels)``: stored values that overflowed to
    infinity (a finite value above 65504 was kept in a wider type, as OpenVINO's
    compression does), saturated at float16's largest value (65504) or flushed to zero where
    Darknet's value is below float16's smallest subnormal (``2**-24``; ``reference``:
    ``(W, b)`` of ``folded_reference``, for a folded conv), and variances (or affine
    multipliers) that became subnormal or zero, which the rounding model does not
    cover (a subnormal weight, bias or mean loses at most ``2**-25`` absolutely,
    inside the tolerance); ("", empty) when none."""
    if precision != "float16":
        return "", set()
    notes, arrays, relative, channels = [], [], set(), set()
    if pair.conv is not None:
        arrays.append(("conv weights", pair.conv.weight))
        if pair.conv.bias is not None:
            arrays.append(("conv bias", pair.conv.bias))
    bn = pair.bn
    if isinstance(bn, AffineUnit):
        arrays += [("multiplier", bn.alpha), ("offset", bn.beta)]
        relative.add("multiplier")
    elif bn is not None:
        var = np.asarray(bn.stored.get("running_var", bn.var), np.float64)
        arrays += [("scale", bn.weight), ("bias", bn.bias), ("running_mean", bn.mean),
                   ("running_var", var)]
        relative.add("running_var")
        zero = np.flatnonzero(var == 0)
        if bn.eps == 0 and zero.size:
            channels |= set(zero.tolist())
            notes.append(f"running_var is 0 in float16 at channels {zero[:8].tolist()} with "
                         "eps 0: pjreddie's eps-0 remap (sqrt(var) + 1e-6)^2 underflows "
                         "float16; store running_var in float32 or use a nonzero eps")
    folded, size = {}, None
    if reference is not None and bn is None and pair.conv is not None:
        folded = {"conv weights": reference[0], "conv bias": reference[1]}
        with np.errstate(all="ignore"):            # a channel's largest term
            size = np.maximum(np.max(np.abs(reference[0]), axis=1), np.abs(reference[1]))
    for name, a in arrays:
        a = np.asarray(a, np.float64)
        for rows, what in ((_rows(np.isinf(a)), "overflow float16 (infinite: beyond 65504)"),
                           (_rows(np.abs(a) == FLOAT16_MAX),
                            "saturate in float16 (held at its largest value, 65504)")):
            if rows.size:
                channels |= set(rows.tolist())
                notes.append(f"{name} {what} at channels {rows[:8].tolist()}")
        ref = folded.get(name)
        if ref is not None and ref.shape == a.shape:
            # only where it matters: beyond the tolerance of the channel's largest term
            big = size.reshape((-1,) + (1,) * (ref.ndim - 1)) * tolerance(precision)
            flushed = _rows((a == 0) & (np.abs(ref) > big) & (np.abs(ref) < FLOAT16_SUBNORMAL))
            if flushed.size:
                channels |= set(flushed.tolist())
                notes.append(f"{name} flushed to zero in float16 at channels "
                             f"{flushed[:8].tolist()} (Darknet's values are below 2**-24, "
                             "float16's smallest subnormal)")
        if name in relative:
            sub = np.flatnonzero((a != 0) & (np.abs(a) < FLOAT16_TINY))
            if sub.size:
                notes.append(f"{name} subnormal in float16 (below 2**-14, fewer significant "
                             f"bits) at channels {sub[:8].tolist()}")
    return "; ".join(notes), channels


# --------------------------------------------------------------------------
# quantized parameters (int8, uint8, int32): each within half its step
# --------------------------------------------------------------------------
#: Variances searched for where a mistake becomes visible at a quantized precision.
_VARIANCE_GRID = np.logspace(-12, 6, 1801)


def folded_reference(record, dialect):
    """``(W, b)`` in double: the conv the fork's inference amounts to per output
    channel, ``y = W x + b``, with ``W`` (C, K) (a ``[batchnorm]``: (C, 1)).  Where the
    fork folds at inference, the folded file's bits (``fold_batchnorm``); else
    ``a = scale/D(var)`` on Darknet's filter, ``b = bias - a*mean``, in double."""
    channels = record.channels
    filters = (record.weights.reshape(channels, -1) if record.weights is not None
               else np.ones((channels, 1), np.float32))
    if record.section == "convolutional" and dialect.folding.inference_folds_conv:
        folded, biases = fold_batchnorm(np.ascontiguousarray(filters.reshape(-1)),
                                        record.biases, record.scales, record.rolling_mean,
                                        record.rolling_variance, dialect=dialect)
        return folded.reshape(channels, -1).astype(np.float64), biases.astype(np.float64)
    p = record_params(record)
    with np.errstate(all="ignore"):
        a = p.scale / dialect.normalize_form.denominator(p.var)
        return a[:, None] * filters.astype(np.float64), p.bias - a * p.mean


def _half_step(unit, name, shape):
    q = unit.quantized.get(name) if unit is not None else None
    return np.zeros(shape) if q is None else np.broadcast_to(q.steps, shape) / 2


@dataclass
class QuantizedModel:
    """A pair as one folded conv ``y = W x + b`` (double), with each element's
    quantization allowance (half a step, carried through the batchnorm's multiplier)
    and the precision of its float parts."""
    W: np.ndarray
    b: np.ndarray
    allow_W: np.ndarray
    allow_b: np.ndarray
    float_precision: str
    description: str


def quantized_model(pair, channels):
    """The ``QuantizedModel`` of a pair with quantized parameters."""
    conv, bn = pair.conv, pair.bn
    if conv is not None:
        W = conv.weight
        b = conv.bias if conv.bias is not None else np.zeros(channels)
    else:
        W, b = np.ones((channels, 1)), np.zeros(channels)
    allow_W = _half_step(conv, "weight", W.shape)
    allow_b = _half_step(conv, "bias", b.shape)
    if bn is not None:
        alpha, beta = unit_affine(bn)
        a_half = _half_step(bn, "alpha", alpha.shape)
        allow_W = np.abs(alpha)[:, None] * allow_W + a_half[:, None] * np.abs(W)
        allow_b = (np.abs(alpha) * allow_b + a_half * np.abs(b)
                   + _half_step(bn, "beta", beta.shape))
        with np.errstate(all="ignore"):
            W, b = alpha[:, None] * W, alpha * b + beta
    floats = [u.precision for u in pair.units if u.precision != "int8"]
    return QuantizedModel(W, b, allow_W, allow_b, narrowest(*floats), describe(pair))


def describe(pair):
    """What a pair's quantized parameters are: the weights' (or the batchnorm
    multiplier's) quantization, and the biases' storage where it differs
    (``int8, per channel, int32 biases``)."""
    found = {name: q for u in pair.units for name, q in u.quantized.items()}
    main = next((found[k] for k in ("weight", "alpha") if k in found), None)
    bias = next((found[k] for k in ("bias", "beta") if k in found), None)
    if main is None:
        return f"{bias.description.split(',')[0]} biases"
    text = main.description
    if bias is not None and bias.description.split(",")[0] != text.split(",")[0]:
        text += f", {bias.description.split(',')[0]} biases"
    return text


def _quantized_error(model, W, b, slack_W, slack_b):
    """Per channel: the largest ``|model - reference|`` over the allowance (1 = at
    the tolerance), and the largest difference in steps of the stored integers."""
    def ratio(x, ref, allow):
        with np.errstate(all="ignore"):
            diff = np.abs(x - ref)
            r = np.where(diff == 0, 0.0, diff / allow)
        both_nan = np.isnan(x) & np.isnan(ref)
        return np.where(both_nan, 0.0, np.where(np.isnan(r), np.inf, r)), diff
    rw, dw = ratio(model.W, W, model.allow_W + slack_W)
    rb, db = ratio(model.b, b, model.allow_b + slack_b)
    per_channel = np.maximum(np.max(rw, axis=1), rb)
    with np.errstate(all="ignore"):
        steps_w = np.where(model.allow_W > 0, dw / (2 * model.allow_W), 0.0)
        steps_b = np.where(model.allow_b > 0, db / (2 * model.allow_b), 0.0)
    steps = np.nan_to_num(np.maximum(np.max(steps_w, axis=1), steps_b), nan=0.0,
                          posinf=2.0 ** 31)
    return per_channel, steps, np.max(rw, axis=1)


def _slack(W, b, record, dialect, precision):
    """The float rounding of the parts that are not quantized (and of the folding
    before the quantizer rounded): ``8 u`` of the terms, as float judging has it."""
    u = ROUNDOFFS * UNIT_ROUNDOFF[precision]
    p = record_params(record)
    with np.errstate(all="ignore"):
        a = p.scale / dialect.normalize_form.denominator(p.var)
        terms_b = np.abs(a * p.mean) + np.abs(p.bias)
    return u * np.abs(W), u * np.nan_to_num(terms_b, nan=np.inf)


def resolution(model, W):
    """Per channel: the allowance at the filter's largest weight, relative to it: a
    change of the channel's multiplier smaller than this is not seen."""
    rows = np.arange(W.shape[0])
    idx = np.argmax(np.where(np.isfinite(W), np.abs(W), -1.0), axis=1)
    with np.errstate(all="ignore"):
        r = model.allow_W[rows, idx] / np.abs(W[rows, idx])
    return r[np.isfinite(r)]


def visible_below(dialect, form, relative):
    """The largest variance at which computing with ``form`` instead of the fork's
    normalization changes a channel's multiplier by more than ``relative``, or None
    when it never does on 1e-12..1e6."""
    exact = dialect.normalize_form
    with np.errstate(all="ignore"):
        change = np.abs(exact.denominator(_VARIANCE_GRID) / form.denominator(_VARIANCE_GRID)
                        - 1)
    seen = _VARIANCE_GRID[change > relative]
    return float(seen.max()) if seen.size else None


def quantized_check(pair, record, probe, dialect):
    """``(error, max_steps, worst channel, weight error, diagnosis, description,
    resolution)`` of a pair with quantized parameters: each parameter of the pair as one
    folded conv against ``folded_reference``, within half its step plus the float
    rounding of its unquantized parts (error 1 = at that allowance)."""
    channels = record.channels
    model = quantized_model(pair, channels)
    W, b = folded_reference(record, dialect)
    if model.W.shape != W.shape:
        raise ValueError(f"layer {record.index}: the model's filters hold "
                         f"{model.W.shape[1]} weights, Darknet's {W.shape[1]}")
    slack_W, slack_b = _slack(W, b, record, dialect, model.float_precision)
    per_channel, steps, w_err = _quantized_error(model, W, b, slack_W, slack_b)
    worst = int(np.argmax(per_channel)) if per_channel.size else 0
    error = float(per_channel[worst]) if per_channel.size else 0.0
    diagnosis = ""
    if error > 1.0:
        notes = [n for n in (saturation_note(pair, model, W, b),) if n]
        notes.append(diagnose_quantized(pair, record, probe, dialect, model, slack_W,
                                        slack_b))
        diagnosis = "; ".join(notes)
    return (error, int(np.max(steps)) if steps.size else 0, worst,
            float(np.max(w_err)) if w_err.size else 0.0, diagnosis, model.description,
            resolution(model, W))


def saturation_note(pair, model, W, b):
    """Stored integers at the end of their range where Darknet's value lies beyond
    it while the channel's other values fit: the quantizer clipped them."""
    notes = []
    for unit, name, ref, value, allow in ((pair.conv, "weight", W, model.W, model.allow_W),
                                          (pair.conv, "bias", b, model.b, model.allow_b)):
        q = unit.quantized.get(name) if unit is not None else None
        if q is None:
            continue
        rows = ref.shape[0]
        with np.errstate(all="ignore"):
            off = (np.abs(ref - value) > allow).reshape(rows, -1)
            beyond = (np.abs(ref) > np.abs(value)).reshape(rows, -1)
        sat = np.broadcast_to(q.saturated, ref.shape).reshape(rows, -1)
        clipped = (off & sat & beyond).any(axis=1) & ~(off & ~sat).any(axis=1)
        channels = np.flatnonzero(clipped)
        if channels.size:
            notes.append(f"{name}s saturate in {q.description.split(',')[0]} at channels "
                         f"{channels[:8].tolist()}: Darknet's values lie beyond the largest "
                         "the scale can hold (the quantizer clipped them)")
    return "; ".join(notes)


def diagnose_quantized(pair, record, probe, dialect, model, slack_W, slack_b):
    """The simplest known mistake whose folded conv fits the model's parameters
    within their allowance (``HYPOTHESES`` with every eps form), with its fix."""
    form = "batchnorm" if pair.bn is not None else "folded"
    model_eps = pair.bn.eps if isinstance(pair.bn, BatchNormUnit) else None
    channels = record.channels
    filters = (record.weights.reshape(channels, -1).astype(np.float64)
               if record.weights is not None else np.ones((channels, 1)))
    w = probe.w.astype(np.float64)
    rows = np.arange(channels)
    model_A = model.W[rows, probe.idx]
    column = QuantizedModel(model_A[:, None], model.b, model.allow_W[rows, probe.idx][:, None],
                            model.allow_b, model.float_precision, model.description)
    slack_column = slack_W[rows, probe.idx][:, None]
    candidates = []
    for count, rank, text, A, B in hypothesis_responses(record, probe, dialect, form,
                                                        model_eps, model_A):
        # the probe weight and the bias first (cheap), every weight for the survivors
        err = float(np.max(_quantized_error(column, A[:, None], B, slack_column,
                                            slack_b)[0]))
        if err <= 1.0:
            candidates.append((count, rank, err, text, A, B))
    best = None
    for count, rank, err, text, A, B in sorted(candidates, key=lambda c: c[:3]):
        with np.errstate(all="ignore"):
            W_h = np.where(w != 0, A / w, 0.0)[:, None] * filters
        if float(np.max(_quantized_error(model, W_h, B, slack_W, slack_b)[0])) <= 1.0:
            best = (count, rank, err, text)
            break
    if best is None:
        return ("not a known converter mistake: the dequantized parameters differ from "
                "Darknet's folded conv by more than half a quantization step; check the "
                "pairing and the values layer by layer")
    return f"{best[3]}; fix: {fix_text(dialect, form)}"


def blind_spot_text(dialect, description, medians, maxima):
    """What a quantized precision cannot see: the relative change of a channel's
    multiplier below half a step (the layers' medians and largest over the channels
    judged), and the variances above which the other forks' normalization and Keras'
    eps 1e-3 stay inside it."""
    r = np.asarray(medians, np.float64)
    if not r.size:
        return ""
    median, largest = float(np.median(r)), float(np.max(maxima))
    parts = []
    wrong = {}
    for d in others(dialect):
        if not d.normalize_form.same(dialect.normalize_form):
            wrong.setdefault(d.normalize_form.text(), (d.normalize_form, []))[1].append(d.name)
    forms = [(f"{' and '.join(names)}'s normalization (x-mean)/{text}", form)
             for text, (form, names) in wrong.items()]
    forms.append(("eps 1e-3 (Keras' default) inside the root", EpsForm(True, 1e-3)))
    for text, form in forms:
        below = visible_below(dialect, form, median)
        if below is not None:
            parts.append(f"{text} shows only where var < {below:.2g}")
    seen = "; ".join(parts)
    return (f"{description}: each parameter is known to half its quantization step, so a "
            f"mistake that changes a channel's folded weights by less than "
            f"{100 * median:.2g}% (median over channels; up to {100 * largest:.2g}%) is not "
            f"seen" + (f": {seen}" if seen else "") +
            "; activation quantization is not judged (check judges parameters)")
