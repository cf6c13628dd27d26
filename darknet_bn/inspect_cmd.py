"""List the batchnorm layers of a Darknet .cfg, with statistics from a .weights file.

For every layer that carries batchnorm parameters: its cfg index, section and
line, channels and output shape (c x h x w), as Darknet's parser computes them.
With a .weights file, also min/mean/max of scales, rolling_mean and
rolling_variance, and the number of suspicious values per layer: rolling
variances that are negative (NaN after sqrt) or zero (pjreddie then divides by
1e-6, AlexeyAB by sqrt(1e-5)), and non-finite values in any block.

Exit status: 0 if everything was read (suspicious values are reported, not
errors), 2 if the cfg or the weights file is invalid (the message names the file
and the line or offset).
"""
import numpy as np

from ._cmd import CFG_FILE, WEIGHTS_FILE, add_dialect_argument, check_files, fail
from .darknet.parser import parse_cfg
from .darknet.weights import read_weights

HELP = "table of a Darknet cfg's batchnorm layers (with a .weights file: value statistics)"
FILES = (CFG_FILE, WEIGHTS_FILE)


def add_arguments(p):
    p.add_argument(CFG_FILE.dest, metavar=CFG_FILE.metavar, help=CFG_FILE.help)
    p.add_argument(WEIGHTS_FILE.dest, metavar=WEIGHTS_FILE.metavar, nargs="?",
                   help=f"{WEIGHTS_FILE.help} (optional)")
    add_dialect_argument(p, "the Darknet fork the files are for; it decides [batchnorm]'s "
                            "layout and AlexeyAB-only options such as route groups")


def suspicious_counts(record):
    """``(negative variances, zero variances, non-finite values)`` of a record."""
    v = record.rolling_variance
    nonfinite = sum(int(np.count_nonzero(~np.isfinite(a))) for a in record.arrays().values())
    with np.errstate(invalid="ignore"):
        return int(np.count_nonzero(v < 0)), int(np.count_nonzero(v == 0)), nonfinite


def _stats(a):
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return "all non-finite"
    return f"{finite.min():.4g}/{finite.astype(np.float64).mean():.4g}/{finite.max():.4g}"


def format_table(net, weights=None):
    """The table as a list of lines."""
    head = f"{'layer':>5} {'section':<13} {'line':>5} {'chan':>5} {'output c x h x w':>18}"
    if weights is not None:
        head += (f"  {'scales min/mean/max':>28} {'rolling_mean min/mean/max':>28} "
                 f"{'rolling_var min/mean/max':>28} {'var<0':>5} {'var=0':>5} {'!fin':>5}")
    lines = [head]
    records = {r.index: r for r in weights.layers} if weights is not None else {}
    totals = np.zeros(3, dtype=np.int64)
    for spec in net.bn_layers:
        shape = f"{spec.out_c} x {spec.out_h} x {spec.out_w}"
        row = (f"{spec.index:>5} {spec.section:<13} {spec.line:>5} {spec.bn_channels:>5} "
               f"{shape:>18}")
        if weights is not None:
            rec = records[spec.index]
            counts = suspicious_counts(rec)
            totals += counts
            row += (f"  {_stats(rec.scales):>28} {_stats(rec.rolling_mean):>28} "
                    f"{_stats(rec.rolling_variance):>28} "
                    + " ".join(f"{n:>5}" for n in counts))
        lines.append(row)
    lines.append(f"{len(net.bn_layers)} of {len(net.layers)} layers carry batchnorm "
                 f"({sum(s.bn_channels for s in net.bn_layers)} channels); "
                 f"{net.float_count} floats, {net.file_bytes()} bytes as a v0.2 .weights file")
    if weights is not None:
        h = weights.header
        lines.append(f"header: version {h.major}.{h.minor}.{h.revision}, seen {h.seen}; "
                     f"suspicious: {totals[0]} negative and {totals[1]} zero rolling "
                     f"variances, {totals[2]} non-finite values")
    return lines


def run(args):
    try:
        check_files(args, FILES)
        net = parse_cfg(args.cfg, dialect=args.dialect)
        weights = (read_weights(net, args.weights, dialect=args.dialect)
                   if args.weights else None)
    except (ValueError, OSError) as e:
        return fail("inspect", e)
    print(f"{args.cfg} ({args.dialect}): input {net.c} x {net.h} x {net.w}, batch {net.batch}")
    print("\n".join(format_table(net, weights)))
    return 0
