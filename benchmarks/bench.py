"""``make bench``: the fused path against the blas path, PyTorch, NumPy and memcpy.

For every shape (N, C, H, W) and mode, the implementations run side by side in
one process, interleaved round-robin, ``--repeat`` times each; the table gives
the minimum (and the median in the JSON dump) in milliseconds and the ratios.

Modes:
  train  forward (train=1) + backward of a standalone [batchnorm] layer: input
         copy, statistics, rolling update, normalize, x, x_norm, scale, bias;
         backward_bias/scale, mean/variance delta, normalize_delta, net.delta.
         PyTorch: F.batch_norm(training=True) + autograd backward to x, weight,
         bias.  NumPy: CS231N forward + backward.
  infer  forward with train=0 (pjreddie also copies the input to x).
         PyTorch: F.batch_norm(training=False) under no_grad (eval).
memcpy: one np.copyto of the input tensor (one read, one write): the roofline.
module: darknet_bn.torch.DarknetBatchNorm2d (train: module(x).backward(delta) through
        autograd; infer: eval() under no_grad), next to nn: torch.nn.BatchNorm2d run
        the same way (eps 1e-5, momentum the fork's rolling factor), same torch thread
        count.

After the default sweep (no ``--shape``), the target table (``targets.py``): each
target row with its ratio, its target and whether it is met, and the load
average; ``--targets-only`` runs just that table, ``--no-targets`` skips it.

The machine is shared: rerun when it is quiet, and read ratios rather than
absolute times (they are measured in the same run).  This is a benchmark, not
a test: nothing is asserted.
"""
import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from . import targets
from ._common import (DARKNET_C_MS, DIALECT_NAMES, IMPLS, SHAPES, implementations,
                      load_average, paired_ratio, parse_shape, round_robin, shape_str, threads)


def measure(shape, dialect, mode, impls, repeat, nthreads):
    """{impl: [seconds, ...]} for one shape/dialect/mode, interleaved round-robin."""
    fns = {name: fs[mode] for name, fs in implementations(shape, dialect, nthreads,
                                                          impls).items() if mode in fs}
    return round_robin(fns, repeat)


def _fmt(v):
    return "n/a" if v is None else f"{v * 1e3:8.2f}"


def _ratio(a, b):
    return "n/a" if a is None or b is None else f"{a / b:5.2f}x"


def report(results, nthreads):
    """Markdown tables (min ms and ratios) from {(dialect, mode, shape): {impl: [s]}}."""
    lines = [f"threads: {nthreads} (numba and torch); min of the repeats, ms; "
             "paired = median over rounds of fused/torch measured side by side", ""]
    for mode in ("train", "infer"):
        lines += [f"### {mode}", "",
                  "| dialect | shape (N,C,H,W) | fused | blas | torch | numpy | memcpy "
                  "| fused/torch | paired | fused/blas | fused/memcpy |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for (dialect, m, shape), times in results.items():
            if m != mode:
                continue
            t = {k: (min(v) if v else None) for k, v in times.items()}
            g = t.get
            lines.append(
                f"| {dialect} | {shape_str(shape)} | {_fmt(g('fused'))} | {_fmt(g('blas'))} | "
                f"{_fmt(g('torch'))} | {_fmt(g('numpy'))} | {_fmt(g('memcpy'))} | "
                f"{_ratio(g('fused'), g('torch'))} | "
                f"{_ratio(paired_ratio(times.get('fused'), times.get('torch')), 1.0)} | "
                f"{_ratio(g('fused'), g('blas'))} | "
                f"{_ratio(g('fused'), g('memcpy'))} |")
        lines.append("")
    lines += module_report(results)
    for (dialect, mode, shape), times in results.items():
        if mode == "train" and shape in DARKNET_C_MS and times.get("fused"):
            c_ms = DARKNET_C_MS[shape]
            lines.append(f"Darknet C -Ofast (quoted, {shape_str(shape)} train): {c_ms:.1f} ms; "
                         f"fused {dialect} is {c_ms / (min(times['fused']) * 1e3):.1f}x faster")
    return "\n".join(lines)


def module_report(results):
    """The PyTorch module against nn.BatchNorm2d: min ms, ratio of minima, paired ratio."""
    rows = [(k, t) for k, t in results.items() if t.get("module") and t.get("nn")]
    if not rows:
        return []
    lines = ["### darknet_bn.torch.DarknetBatchNorm2d vs torch.nn.BatchNorm2d", "",
             "| dialect | mode | shape (N,C,H,W) | module | nn | module/nn | paired |",
             "|---|---|---|---|---|---|---|"]
    for (dialect, mode, shape), t in rows:
        a, b = min(t["module"]), min(t["nn"])
        lines.append(f"| {dialect} | {mode} | {shape_str(shape)} | {_fmt(a)} | {_fmt(b)} | "
                     f"{_ratio(a, b)} | {_ratio(paired_ratio(t['module'], t['nn']), 1.0)} |")
    return lines + [""]


def chart(results, path):
    import matplotlib                # lazily: only for --png
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = list(results)
    modes = [m for m in ("train", "infer") if any(k[1] == m for k in keys)]
    fig, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), 4.8), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        ks = [k for k in keys if k[1] == mode]
        labels = [f"{k[0][:2]} {shape_str(k[2])}" for k in ks]
        impls = [i for i in IMPLS if any(results[k].get(i) for k in ks)]
        width = 0.8 / len(impls)
        for j, impl in enumerate(impls):
            ys = []
            for k in ks:
                base = min(results[k]["torch"]) if results[k].get("torch") else None
                v = min(results[k][impl]) if results[k].get(impl) else None
                ys.append(v / base if v and base else 0)
            ax.bar(np.arange(len(ks)) + j * width, ys, width, label=impl)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(ks)) + 0.4 - width / 2, labels, rotation=30, ha="right",
                      fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("time / PyTorch time (log)")
        ax.set_title(f"{mode}: lower is better")
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", action="append", type=parse_shape,
                   help="N,C,H,W (repeatable; default: the four issue shapes)")
    p.add_argument("--dialect", action="append", choices=DIALECT_NAMES,
                   help="repeatable; default all")
    p.add_argument("--mode", action="append", choices=("train", "infer"),
                   help="repeatable; default both")
    p.add_argument("--impl", action="append", choices=IMPLS, help="repeatable; default all")
    p.add_argument("--repeat", type=int, default=7, help="timed runs per implementation")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for numba (and torch); default: numba's default")
    p.add_argument("--json", help="write all timings (seconds) to this file")
    p.add_argument("--png", help="write a chart (matplotlib) to this file")
    p.add_argument("--targets-only", action="store_true",
                   help="only the target table (targets.py), no sweep")
    p.add_argument("--no-targets", action="store_true", help="the sweep without the target "
                   "table")
    a = p.parse_args(argv)
    import darknet_bn
    darknet_bn.warmup()
    if a.threads:
        import numba
        numba.set_num_threads(a.threads)
    nthreads = threads()
    load_before = load_average()
    print(f"threads {nthreads}; {load_before}", flush=True)
    impls = a.impl or list(IMPLS)
    results = {}
    for shape in ([] if a.targets_only else a.shape or SHAPES):
        for dialect in a.dialect or DIALECT_NAMES:
            for mode in a.mode or ("train", "infer"):
                results[(dialect, mode, shape)] = measure(shape, dialect, mode, impls,
                                                          a.repeat, nthreads)
                t = results[(dialect, mode, shape)]
                print(f"  {dialect:8} {mode:5} {shape_str(shape):>14}: " + "  ".join(
                    f"{k} {min(v) * 1e3:.2f}" for k, v in t.items()), flush=True)
    if results:
        print()
        print(report(results, nthreads))
    if a.targets_only or not (a.no_targets or a.shape):
        rows = targets.measure(targets.GROUPS, nthreads)
        print(targets.report(rows, nthreads, load_before, load_average()))
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).with_name(Path(a.json).stem + "-targets.json").write_text(
                json.dumps(rows, indent=1))
    if a.json and results:
        dump = [{"dialect": d, "mode": m, "shape": list(s), "threads": nthreads,
                 "min_s": {k: min(v) for k, v in t.items()},
                 "median_s": {k: statistics.median(v) for k, v in t.items()},
                 "times_s": t} for (d, m, s), t in results.items()]
        Path(a.json).write_text(json.dumps(dump, indent=1))
    if a.png and results:
        chart(results, a.png)


if __name__ == "__main__":
    main()
