"""Run Darknet golden layer cases through BatchNormLayer on every dialect.

For one case per dialect it prints, step by step (train, train, train,
inference), what the layer computed, then compares every buffer after every
forward and backward with the values recorded from Darknet's own build (C, or C++
for hank-ai's fork), bit for bit.
Finally it replays all recorded cases and prints one line per case.  The exit
status is 1 if any buffer differs from Darknet in any bit.
"""
import time

import numpy as np

from ._cmd import fail
from ._progress import Progress
from .batchnorm_layer import DEFAULT_KERNEL, PATHS
from .golden import FixturesNotFound, layer_cases, layer_dir, replay_layer_case, ulp_diff

HELP = "replay Darknet's recorded layer cases on every dialect and compare bits"

#: The cases shown step by step (one per fork).
SHOWCASE = ("case12_pjreddie_batchnorm_8x16x6x6_offset", "case29_alexeyab_conv_8x16x6x6_huge",
            "case29_hankai_conv_8x16x6x6_huge")


def add_arguments(p):
    p.add_argument("--kernel", default=None, choices=sorted(PATHS),
                   help=f"execution path of BatchNormLayer (default: {DEFAULT_KERNEL})")
    p.add_argument("--quiet", action="store_true",
                   help="only the summary table (and no progress line on stderr)")


def _summarize(checks):
    """(number of checks, number differing, max ulp) over a list of golden.Check."""
    diffs = [ulp_diff(c.actual, c.expected) for c in checks]
    return len(checks), sum(1 for n, _ in diffs if n), max((u for _, u in diffs), default=0)


def _show_case(case, checks):
    print(f"\n== {case.name}: {case.fork} [{case.layer}] batch={case.batch} c={case.c} "
          f"h={case.h} w={case.w}, input '{case.input_kind}'")
    print(f"{'step':>4} {'mode':<9} {'output mean':>12} {'output std':>11} "
          f"{'rolling_var[0]':>15} {'|grad|_max':>11} {'buffers':>8} {'max ulp':>8}")
    for t, mode in enumerate(case.steps):
        step = [c for c in checks if c.step == t]
        get = {(c.phase, c.buffer): c.actual for c in step}
        out = get[("fwd", "output")]
        grad = get.get(("bwd", "net_delta"), get[("bwd", "delta")])
        n, bad, ulp = _summarize(step)
        print(f"{t:>4} {mode:<9} {out.mean():>12.5g} {out.std():>11.5g} "
              f"{get[('fwd', 'rolling_variance')][0]:>15.6g} {np.abs(grad).max():>11.5g} "
              f"{n - bad:>3}/{n:<4} {ulp:>8}")


def run(args):
    try:
        root = layer_dir()
    except FixturesNotFound as e:
        return fail("demo", e)
    print(f"Darknet's recorded layer cases: {root}")
    cases = layer_cases()
    t0 = time.perf_counter()
    results = []
    with Progress("darknet-bn demo", len(cases), quiet=args.quiet) as progress:
        for case in cases:
            results.append((case, replay_layer_case(case, kernel=args.kernel)))
            progress.step(case.name)
    elapsed = time.perf_counter() - t0
    if not args.quiet:
        for case, checks in results:
            if case.name in SHOWCASE:
                _show_case(case, checks)
    print(f"\n{'case':<52} {'identical':>10} {'max ulp':>8}")
    total = total_bad = worst = 0
    for case, checks in results:
        n, bad, ulp = _summarize(checks)
        total, total_bad, worst = total + n, total_bad + bad, max(worst, ulp)
        print(f"{case.name:<52} {n - bad:>4}/{n:<5} {ulp:>8}")
    ok = total_bad == 0
    print(f"\n{len(cases)} cases, {total - total_bad}/{total} buffers bit-identical to "
          f"Darknet's recorded outputs, max difference {worst} ulp "
          f"({'OK' if ok else 'MISMATCH'}; {elapsed:.2f} s incl. compilation)")
    return 0 if ok else 1
