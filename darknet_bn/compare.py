"""How far is Darknet's batchnorm backward from the exact gradient?

For every dialect, input regime and m = batch*h*w (values per channel) this runs
the port (Darknet's float32 arithmetic, bit for bit) forward and backward in
training mode and compares the input gradient it returns with float64
references (darknet_bn.reference):

  err_own     vs the exact derivative of Darknet's OWN forward (unbiased
              variance, the fork's eps placement): the error of the backward
  err_std     vs the standard BN gradient (biased variance, eps inside the
              root: PyTorch's): what a user comparing with a framework sees

err_own is split into its causes (each relative to the exact gradient's norm):

  divisor     normalize_delta_cpu divides the variance term by m while
              variance_cpu divides by m-1                (formula, float64)
  eps         the backward puts eps where the forward does not (pjreddie:
              inside the root vs 1e-6 outside; alexeyab and hankai: the mirror image)
  stats32     float32 rounding in the forward's statistics (mean_cpu, and
              variance_cpu's float accumulator): the formula on Darknet's float32
              mean/variance vs on the exact ones
  backward32  float32 rounding in the backward itself (port vs the formula in
              float64 on the same float32 mean/variance)
  omitted     the size of the dL/dmean term Darknet drops, dvar*(-2/m)*sum(x-mean):
              zero with the exact mean, not with the float32 one (part of stats32)
  trap        the "mean and variance are constants" gradient vs exact (for contrast)

plus the parameter gradients: dgamma (scale_updates, exact for Darknet's x_norm
up to float32) and dbeta (bias_updates: pjreddie sums delta; the CPU BN backward
of alexeyab and hankai never touches it, error 1). A second table runs the
backward in inference mode (train=0), where mean and variance ARE constants of
the forward: pjreddie swaps in the rolling statistics but applies the training
formula and the stale x_norm of the last training step; alexeyab and hankai reuse
the last training batch's x, statistics and x_norm.

Each fork runs its own layer: the standalone [batchnorm] layer where it has one on
the CPU, else the batchnorm stage of a [convolutional] layer (hankai); both give
the same input gradient.  hankai (hank-ai's C++ build) has alexeyab's formulas,
so its float64 references are alexeyab's; its float32 arithmetic (sqrtf, powf,
a float division) is its own, which shows in stats32 and backward32.

Writes compare.csv, compare_inference.csv, compare.md and compare.png
(matplotlib, extra "plot"; without it the plot is skipped with a note) to --out
and prints a summary.  Inputs are seeded: runs are reproducible.
"""
import argparse
import csv
import numbers
import os
import sys
import time

import numpy as np

from . import reference as ref
from ._cmd import dialect_name
from ._extras import install_command, missing_package
from ._progress import Progress
from ._validate import (MIN_VALUES_PER_CHANNEL, check_dim, check_two_values_per_channel,
                        short_repr)
from .batchnorm_layer import BatchNormLayer
from .dialects import get_dialect, names

HELP = "compare Darknet's backward with exact float64 gradients (table, CSV, plot)"

DEFAULT_OUT = os.path.join("out", "compare")
#: Channels per case: at least CHANNELS, and enough for ELEMENTS values in all, so
#: a small m is averaged over many independent channels (the relative norms then
#: measure the typical error, not one draw); one channel above ONE_CHANNEL_ABOVE.
CHANNELS = 4
ELEMENTS = 4096
ONE_CHANNEL_ABOVE = 10**4

#: (batch, h, w) per size; m = batch*h*w values per channel.
SIZES = ((2, 1, 1), (4, 1, 1), (2, 2, 2), (4, 2, 2), (4, 4, 4), (4, 8, 8), (4, 16, 16),
         (4, 32, 32), (4, 50, 50), (10, 100, 100), (16, 250, 250))

#: name -> (location, scale, align, description): x = location + scale*N(0, 1) and
#: dy = N(0, 1) + align*(x - location)/scale, both float32.
REGIMES = {
    "normal": (0.0, 1.0, 0.0, "x ~ N(0, 1), dy ~ N(0, 1) independent of x"),
    "aligned": (0.0, 1.0, 1.0, "x ~ N(0, 1), dy = N(0, 1) + x: dy correlates with xhat, "
                               "as when a loss pulls y toward a target"),
    "offset": (100.0, 1.0, 0.0, "x ~ 100 + N(0, 1): float32 loses digits in x - mean"),
    "tiny": (0.0, 1e-3, 0.0, "x ~ 1e-3 N(0, 1): variance 1e-6 below eps = 1e-5"),
}
#: The plot starts here.  At m = 2 the normalized values are +-1 (standard) or
#: +-1/sqrt(2) (Darknet's unbiased variance) whatever x is, so the exact dL/dx is
#: ~0 (eps only) and relative errors are 1e3..1e5: they are in the table.
PLOT_MIN_M = 4

#: Sizes for the inference-mode table (normal regime).
INFERENCE_SIZES = ((4, 1, 1), (4, 4, 4), (4, 16, 16), (4, 50, 50))

class PlotUnavailable(RuntimeError):
    """The plot needs matplotlib, which is not installed."""


COLUMNS = ("dialect", "regime", "m", "batch", "h", "w", "c", "err_own", "err_std", "divisor",
           "eps", "stats32", "backward32", "omitted", "trap", "dgamma", "dbeta")
INFERENCE_COLUMNS = ("dialect", "m", "batch", "h", "w", "c", "dx_err", "dgamma_err")
#: Files ``darknet-bn compare`` writes into --out.
OUTPUTS = ("compare.csv", "compare_inference.csv", "compare.md", "compare.png")

#: Seeds: non-negative and within a signed 64-bit int (numpy's SeedSequence takes
#: any non-negative int; the bound keeps a seed something any tool can record).
SEED_MAX = 2**63 - 1
#: The smallest --max-m: training needs m = batch*h*w values per channel.
MIN_M = MIN_VALUES_PER_CHANNEL


def _int_arg(text, expected):
    """``int(text)`` (decimal) for an argparse type; ``expected`` says what is wanted."""
    try:
        return int(text, 10)
    except ValueError:         # also a string of more digits than int() converts
        raise argparse.ArgumentTypeError(
            f"must be {expected}, got {short_repr(repr(text))}") from None


def _seed(text):
    """argparse type of --seed: an integer 0..SEED_MAX."""
    value = _int_arg(text, f"an integer 0..{SEED_MAX} (2**63-1)")
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be 0..{SEED_MAX} (2**63-1), got "
                                         f"{short_repr(text)}; pass e.g. --seed 0")
    return value


def _max_m(text):
    """argparse type of --max-m: an integer >= MIN_M (above the largest size: all sizes)."""
    value = _int_arg(text, f"an integer >= {MIN_M} (the largest m = batch*h*w to run)")
    if value < MIN_M:
        largest = max(b * h * w for b, h, w in SIZES)
        raise argparse.ArgumentTypeError(
            f"must be >= {MIN_M} (training needs m = batch*h*w >= {MIN_M}), got {value}; "
            f"pass e.g. --max-m 1000 (the largest size is {largest})")
    return value


#: The --dialect value that measures every fork.
ALL = "all"


def _dialect_arg(text):
    """argparse type of --dialect: a fork's name (``_cmd.dialect_name``: any case) or
    ALL; ``both`` (the two C forks, before hank-ai's) is refused with the fix, as it no
    longer names every fork."""
    if text.lower() == "both":
        raise argparse.ArgumentTypeError(
            f"'both' is not a choice since there are {len(names())} forks; pass --dialect "
            f"{ALL} for every fork ({', '.join(names())}) or name one")
    return ALL if text.lower() == ALL else dialect_name(text)


def add_arguments(p):
    p.add_argument("--dialect", type=_dialect_arg, choices=[*names(), ALL], default=ALL,
                   help=f"Darknet fork to measure, any case (default: {ALL}, every fork)")
    p.add_argument("--out", default=DEFAULT_OUT,
                   help=f"directory for compare.csv, compare.md, compare.png "
                        f"(default: {DEFAULT_OUT})")
    p.add_argument("--max-m", type=_max_m, default=10**6, metavar="M",
                   help=f"largest m = batch*h*w to run, >= {MIN_M} (default: 1000000)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="random seed, 0..2**63-1 (default: 0)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--quiet", action="store_true",
                   help="no progress line on stderr (shown only on a terminal)")


# --------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------
def _rel(a, b, scale=None):
    """``||a - b|| / ||scale||`` (``scale`` defaults to ``b``), Frobenius norms."""
    den = np.linalg.norm(b if scale is None else scale)
    return float(np.linalg.norm(a - b) / den) if den > 0 else float("nan")


def _check_regime(routine, regime):
    if regime not in REGIMES:
        raise ValueError(f"{routine}: unknown regime {regime!r}; use one of {list(REGIMES)}")
    return regime


def _check_sweep(routine, dialects, regimes, sizes, c, seed):
    """Validate a sweep's arguments; returns (dialect names, regimes, sizes)."""
    if isinstance(dialects, str) or isinstance(regimes, str):
        raise TypeError(f"{routine}: dialects and regimes are sequences of names; "
                        "pass e.g. ('pjreddie',)")
    dialects = tuple(get_dialect(d, routine).name for d in dialects)
    regimes = tuple(_check_regime(routine, g) for g in regimes)
    checked = []
    for size in sizes:
        if len(size) != 3:
            raise ValueError(f"{routine}: each size is (batch, h, w), got {size!r}")
        b, h, w = (check_dim(routine, n, v) for n, v in zip(("batch", "h", "w"), size))
        check_two_values_per_channel(routine, b, h * w, spatial_name="h*w",
                                     fix=f" (size {size!r})")
        checked.append((b, h, w))
    check_dim(routine, "c", c)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{routine}: seed must be an integer, got {type(seed).__name__} "
                        f"{seed!r:.40}; pass int(seed)")
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{routine}: seed must be 0..{SEED_MAX} (2**63-1), got {seed}")
    return dialects, regimes, tuple(checked)


def channels(m, c=CHANNELS):
    """Channels measured for m values per channel: max(c, ELEMENTS // m), 1 above 1e4."""
    return 1 if m > ONE_CHANNEL_ABOVE else max(c, ELEMENTS // m)


def _rng(seed, *keys):
    """A generator determined by the seed and the case (not by its place in the sweep)."""
    return np.random.default_rng([seed, *keys])


def make_inputs(regime, batch, c, spatial, rng):
    """float32 ``(x, dy, gamma, beta)`` for a regime; ``dy`` is dL/dy (not Darknet's delta)."""
    loc, scale, align, _ = REGIMES[_check_regime("make_inputs", regime)]
    n = batch * c * spatial
    z = rng.standard_normal(n)
    x = (loc + scale * z).astype(np.float32)
    dy = (rng.standard_normal(n) + align * z).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    return x, dy, gamma, beta


def _layer(dialect, batch, h, w, c, gamma, beta):
    """The fork's layer (``Dialect.layer_types``: standalone where it has one)."""
    l = BatchNormLayer(batch, w, h, c, dialect=dialect,
                       layer_type=get_dialect(dialect).layer_types[0])
    l.scales[:] = gamma
    l.biases[:] = beta
    return l


def omitted_mean_term(x, dy, gamma, batch, c, spatial, mean, variance):
    """The term Darknet's ``mean_delta_cpu`` drops, per element (float64).

    ``dL/dmean`` is ``-sum(g)/sqrt(var+eps) + variance_delta * (-2/m) * sum(x - mean)``;
    Darknet keeps only the first part.  Its contribution to ``dx`` is
    ``variance_delta * (-2/m) * sum(x - mean) / m``, evaluated here for the float32
    ``mean``/``variance`` Darknet had.  Returns a (c,) array, one value per channel.
    """
    m = batch * spatial
    xs = np.asarray(x, np.float64).reshape(batch, c, spatial)
    g = np.asarray(gamma, np.float64).reshape(1, c, 1) * np.asarray(dy, np.float64).reshape(
        batch, c, spatial)
    mu = np.asarray(mean, np.float64).reshape(1, c, 1)
    var = np.asarray(variance, np.float64).reshape(1, c, 1)
    d = xs - mu
    vdelta = -0.5 * (g * d).sum(axis=(0, 2)) * (var.reshape(c) + ref.EPS_DARKNET) ** -1.5
    return vdelta * (-2.0 / m) * d.sum(axis=(0, 2)) / m


def measure(dialect, regime, batch, h, w, c, rng):
    """One row of the training-mode table (see the module docstring for the columns)."""
    sp, m = h * w, batch * h * w
    x, dy, gamma, beta = make_inputs(regime, batch, c, sp, rng)
    l = _layer(dialect, batch, h, w, c, gamma, beta)
    l.forward(x, train=True)
    dn = -l.backward(-dy, train=True).astype(np.float64)  # Darknet's delta is -dL/dy
    args = (x, dy, gamma, batch, c, sp)
    own = ref.darknet_backward_exact(*args, dialect=dialect)
    std = ref.batchnorm_backward_exact(*args)[0]
    f_m = ref.darknet_backward_formula(*args, dialect=dialect)
    f_m1 = ref.darknet_backward_formula(*args, dialect=dialect, divisor="m-1")
    f_32 = ref.darknet_backward_formula(*args, dialect=dialect, mean=l.mean,
                                        variance=l.variance)
    trap = ref.stats_as_constants_backward(*args, dialect=dialect)
    omitted = omitted_mean_term(*args, l.mean, l.variance)
    x_norm = ref.darknet_forward(x, 1.0, 0.0, batch, c, sp, dialect=dialect)
    dys = dy.astype(np.float64).reshape(batch, c, sp)
    dgamma = (dys * x_norm.reshape(batch, c, sp)).sum(axis=(0, 2))
    dbeta = dys.sum(axis=(0, 2))
    # per-channel constant term broadcast over its m elements
    omitted_norm = float(np.sqrt(m * np.sum(omitted ** 2)))
    return {
        "dialect": dialect, "regime": regime, "m": m, "batch": batch, "h": h, "w": w, "c": c,
        "err_own": _rel(dn, own), "err_std": _rel(dn, std),
        "divisor": _rel(f_m, f_m1, own), "eps": _rel(f_m1, own, own),
        "stats32": _rel(f_32, f_m, own), "backward32": _rel(dn, f_32, own),
        "omitted": omitted_norm / float(np.linalg.norm(own)),
        "trap": _rel(trap, own),
        "dgamma": _rel(-l.scale_updates.astype(np.float64), dgamma),
        "dbeta": _rel(-l.bias_updates.astype(np.float64), dbeta),
    }


def measure_inference(dialect, batch, h, w, c, rng):
    """One row of the inference-mode table (regime "normal").

    A training step on batch A (forward and backward), rolling statistics set
    to the population's (mean 0, variance 1), then forward and backward with
    train=0 on batch B.  The exact gradient of that inference forward treats
    the rolling statistics as constants: ``dx = gamma*dy*r(rolling_variance)``,
    ``dgamma = sum(dy * xhat_B)``.
    """
    sp = h * w
    xa, dya, gamma, beta = make_inputs("normal", batch, c, sp, rng)
    xb, dyb, _, _ = make_inputs("normal", batch, c, sp, rng)
    l = _layer(dialect, batch, h, w, c, gamma, beta)
    l.forward(xa, train=True)
    l.backward(-dya, train=True)
    l.rolling_mean[:] = 0.0
    l.rolling_variance[:] = 1.0
    l.scale_updates[:] = 0.0
    l.bias_updates[:] = 0.0
    l.forward(xb, train=False)
    dn = -l.backward(-dyb, train=False).astype(np.float64)
    stats = (l.rolling_mean, l.rolling_variance)
    exact = ref.stats_as_constants_backward(xb, dyb, gamma, batch, c, sp, dialect=dialect,
                                            stats=stats)
    xhat = ref.darknet_forward(xb, 1.0, 0.0, batch, c, sp, dialect=dialect, stats=stats)
    dgamma = (dyb.astype(np.float64) * xhat).reshape(batch, c, sp).sum(axis=(0, 2))
    return {"dialect": dialect, "m": batch * sp, "batch": batch, "h": h, "w": w, "c": c,
            "dx_err": _rel(dn, exact),
            "dgamma_err": _rel(-l.scale_updates.astype(np.float64), dgamma)}


def _no_progress(row):
    pass


def sweep(dialects=names(), regimes=tuple(REGIMES), sizes=SIZES, c=CHANNELS, seed=0,
          progress=_no_progress):
    """Training-mode rows for every dialect, regime and size (same inputs per dialect).

    ``channels(m, c)`` channels per size; ``progress(row)`` is called after each row.
    """
    dialects, regimes, sizes = _check_sweep("sweep", dialects, regimes, sizes, c, seed)
    rows = []
    for regime in regimes:
        ri = list(REGIMES).index(regime)
        for batch, h, w in sizes:
            cs = channels(batch * h * w, c)
            for dialect in dialects:                      # same data for every fork
                rows.append(measure(dialect, regime, batch, h, w, cs,
                                    _rng(seed, ri, batch, h, w)))
                progress(rows[-1])
    return rows


def sweep_inference(dialects=names(), sizes=INFERENCE_SIZES, c=CHANNELS, seed=0,
                    progress=_no_progress):
    """Inference-mode rows (``measure_inference``) for every dialect and size;
    ``progress(row)`` is called after each row."""
    dialects, _, sizes = _check_sweep("sweep_inference", dialects, (), sizes, c, seed)
    rows = []
    for batch, h, w in sizes:
        for dialect in dialects:
            rows.append(measure_inference(dialect, batch, h, w, channels(batch * h * w, c),
                                          _rng(seed, 99, batch, h, w)))
            progress(rows[-1])
    return rows


# --------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------
def _fmt(v):
    return v if isinstance(v, str) else (f"{v:d}" if isinstance(v, (int, np.integer))
                                         else f"{v:.3g}")


def write_csv(rows, columns, path):
    with open(path, "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(columns)
        for row in rows:
            wr.writerow([row[k] if isinstance(row[k], str) else repr(row[k]) for k in columns])


def _md_table(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_markdown(rows, inf_rows, path, seed):
    regimes = "\n".join(f"- `{k}`: {v[3]}" for k, v in REGIMES.items())
    text = f"""# Darknet's batchnorm backward vs exact gradients

Generated by `darknet-bn compare` (seed {seed}; c channels per size; every error is a
relative Frobenius norm over the whole input gradient). Columns: see
`darknet-bn compare --help` and docs/gradients.md.

Input regimes:
{regimes}

## Training mode

{_md_table(rows, COLUMNS)}

## Inference mode (train=0), regime "normal"

{_md_table(inf_rows, INFERENCE_COLUMNS)}
"""
    with open(path, "w") as f:
        f.write(text)


def plot(rows, path):
    """Relative error vs m: per dialect, Darknet vs exact per regime and the error's parts.

    Needs matplotlib (the ``plot`` extra).  Sizes below
    ``PLOT_MIN_M`` are left to the table.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        raise PlotUnavailable(f"{missing_package('matplotlib', 'the plot')} (or run with "
                              "--no-plot)") from None
    rows = [r for r in rows if r["m"] >= PLOT_MIN_M]
    if not rows:
        raise ValueError(f"plot: no sizes with m >= {PLOT_MIN_M} to plot")
    dialects = list(dict.fromkeys(r["dialect"] for r in rows))
    regimes = list(dict.fromkeys(r["regime"] for r in rows))
    colors = dict(zip(REGIMES, ("tab:blue", "tab:red", "tab:orange", "tab:green")))
    # the parts (bottom row) get colours that none of the regimes (top row) use
    parts = (("err_own", "o-", "black", "total (vs exact of own forward)"),
             ("divisor", "s-", "tab:purple", "1/m vs 1/(m-1)"),
             ("eps", "^-", "tab:brown", "eps placement"),
             ("stats32", "v-", "tab:pink", "float32 statistics (forward)"),
             ("backward32", "<-", "tab:olive", "float32 backward sums"),
             ("omitted", "d:", "tab:cyan", "omitted dL/dmean term"),
             ("trap", "*--", "tab:gray", "'stats are constants' (contrast)"))
    fig, axes = plt.subplots(2, len(dialects), figsize=(5.4 * len(dialects), 9.0),
                             squeeze=False, sharex=True)
    for j, dialect in enumerate(dialects):
        ax = axes[0, j]
        for regime in regimes:
            sel = [r for r in rows if r["dialect"] == dialect and r["regime"] == regime]
            ms = [r["m"] for r in sel]
            ax.loglog(ms, [r["err_own"] for r in sel], "o-", color=colors.get(regime),
                      markersize=4)
            ax.loglog(ms, [r["err_std"] for r in sel], "x--", color=colors.get(regime),
                      alpha=0.5, markersize=4)
        ms = np.array(sorted({r["m"] for r in rows if r["dialect"] == dialect}), float)
        ax.loglog(ms, 1.0 / ms, ":", color="grey")
        handles = [Line2D([], [], color=colors.get(g), lw=3, label=g) for g in regimes]
        handles += [Line2D([], [], color="k", marker="o", label="vs exact of own forward"),
                    Line2D([], [], color="k", ls="--", marker="x", alpha=0.5,
                           label="vs standard BN (PyTorch)"),
                    Line2D([], [], color="grey", ls=":", label="1/m")]
        ax.set_title(f"{dialect}: Darknet's backward (float32) vs exact", fontsize=10)
        ax.set_ylabel("relative error of dL/dx")
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelbottom=True)
        ax = axes[1, j]
        sel = [r for r in rows if r["dialect"] == dialect and r["regime"] == "normal"]
        sel = sel or [r for r in rows if r["dialect"] == dialect and r["regime"] == regimes[0]]
        ms = [r["m"] for r in sel]
        for key, style, color, label in parts:
            vals = np.array([r[key] for r in sel])
            vals = np.where(vals > 0, vals, np.nan)        # log axis: drop exact zeros
            ax.loglog(ms, vals, style, color=color, label=label if j == 0 else None,
                      markersize=4)
        ax.set_title(f"{dialect}: parts of the error, regime '{sel[0]['regime']}'",
                     fontsize=10)
        ax.set_xlabel("m = batch*h*w (values per channel)")
        ax.set_ylabel("relative to ||exact dL/dx||")
        ax.grid(True, which="major", alpha=0.3)
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8,
               frameon=False)
    fig.legend(loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 0.965))
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)


#: Printed under the tables: why each gap exists.
WHY = """
why (the parts of err_own, regime normal, each relative to ||exact dL/dx||):
  divisor     normalize_delta_cpu divides the variance term by m; variance_cpu divided by m-1
  eps         the backward's first term puts eps where the forward does not (pjreddie:
              1e-5 inside the root, forward 1e-6 outside; alexeyab and hankai: 1e-5
              outside, forward inside)
  stats32     float32 mean/variance from the forward (variance_cpu sums m terms in a float)
  backward32  float32 rounding in the backward's own sums
  omitted     the dL/dmean term Darknet drops: zero for the exact mean, not the float32 one
  trap        not a part: the "mean and variance are constants" gradient, for contrast"""


def _summary(rows, inf_rows):
    lines = []
    for dialect in dict.fromkeys(r["dialect"] for r in rows):
        sel = [r for r in rows if r["dialect"] == dialect]
        ms = sorted({r["m"] for r in sel})
        regimes = list(dict.fromkeys(r["regime"] for r in sel))
        lines.append(f"\n{dialect}: relative error of Darknet's dL/dx vs the exact derivative "
                     "of its own forward (err_own)")
        lines.append(f"{'m':>8} " + " ".join(f"{g:>10}" for g in regimes)
                     + "   | normal: divisor    eps    stats32 backward32    omitted"
                       "       trap")
        for m in ms:
            by = {r["regime"]: r for r in sel if r["m"] == m}
            n = by.get("normal")
            parts = (" ".join(f"{n[k]:>10.3g}" for k in ("divisor", "eps", "stats32",
                                                          "backward32", "omitted", "trap"))
                     if n else "")
            lines.append(f"{m:>8} " + " ".join(f"{by[g]['err_own']:>10.3g}" for g in regimes)
                         + f"   | {parts}")
        dg = max(r["dgamma"] for r in sel)
        db = max(r["dbeta"] for r in sel)
        lines.append(f"worst dgamma (scale_updates) error {dg:.3g}; worst dbeta "
                     f"(bias_updates) error {db:.3g}"
                     + (": its CPU backward never computes bias_updates" if db == 1.0
                        else ""))
    if rows:
        lines.append(WHY)
    if inf_rows:
        lines.append("\ninference mode (train=0): Darknet's backward vs the exact gradient "
                     "(statistics are constants)")
        lines.append("pjreddie applies the training formula to the rolling statistics, "
                     "alexeyab and hankai to\nthe last training batch; all take dgamma "
                     "from the stale x_norm of the last training step")
        lines.append(f"{'dialect':>9} {'m':>8} {'dx_err':>10} {'dgamma_err':>11}")
        for r in inf_rows:
            lines.append(f"{r['dialect']:>9} {r['m']:>8} {r['dx_err']:>10.3g} "
                         f"{r['dgamma_err']:>11.3g}")
    return "\n".join(lines)


def _reason(error):
    """An OS error in a few words: its strerror and the file it concerns."""
    name = getattr(error, "filename", None)
    text = getattr(error, "strerror", None) or str(error)
    return f"{text}: {name}" if name else text


def _error(message):
    print(f"darknet-bn compare: error: {message}", file=sys.stderr)
    return 2


def run(args):
    try:                      # before the sweep: a bad --out costs nothing
        os.makedirs(args.out, exist_ok=True)
    except (OSError, ValueError) as e:       # ValueError: a NUL byte in the path
        return _error(f"--out {args.out!r}: cannot create the directory ({_reason(e)}); "
                      "pass a directory that exists or can be created")
    dialects = names() if args.dialect == ALL else (args.dialect,)
    sizes = tuple(s for s in SIZES if s[0] * s[1] * s[2] <= args.max_m)
    inf_sizes = tuple(s for s in INFERENCE_SIZES if s[0] * s[1] * s[2] <= args.max_m)
    total = len(dialects) * (len(REGIMES) * len(sizes) + len(inf_sizes))
    t0 = time.perf_counter()
    with Progress("darknet-bn compare", total, quiet=args.quiet) as progress:
        def step(row):
            progress.step(f"{row['dialect']} {row.get('regime', 'inference')} m = {row['m']}")
        rows = sweep(dialects, sizes=sizes, seed=args.seed, progress=step)
        inf_rows = sweep_inference(dialects, sizes=inf_sizes, seed=args.seed, progress=step)
    elapsed = time.perf_counter() - t0
    written = ["compare.csv", "compare_inference.csv", "compare.md"]
    skipped = None
    try:
        write_csv(rows, COLUMNS, os.path.join(args.out, "compare.csv"))
        write_csv(inf_rows, INFERENCE_COLUMNS, os.path.join(args.out, "compare_inference.csv"))
        write_markdown(rows, inf_rows, os.path.join(args.out, "compare.md"), args.seed)
        if not args.no_plot and not any(r["m"] >= PLOT_MIN_M for r in rows):
            skipped = (f"darknet-bn compare: note: plot skipped, it starts at m = "
                       f"{PLOT_MIN_M} (--max-m {args.max_m})")
        elif not args.no_plot:
            try:
                plot(rows, os.path.join(args.out, "compare.png"))
                written.append("compare.png")
            except PlotUnavailable:
                skipped = ("darknet-bn compare: note: plot skipped, matplotlib is not "
                           f"installed ({install_command('plot')} for compare.png, or "
                           "pass --no-plot)")
    except OSError as e:
        return _error(f"--out {args.out!r}: cannot write the results ({_reason(e)})")
    print(_summary(rows, inf_rows))
    print(f"\n{len(rows) + len(inf_rows)} measurements in {elapsed:.1f} s; wrote "
          f"{', '.join(written)} to {args.out}")
    if skipped:
        print(skipped, file=sys.stderr)
    return 0
