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

After the default sweep (no ``--shape``): the offset sweep (``offsets.py``: the
layer and the module with the input and delta at each page offset; min, median and
max over offsets, target: worst offset <= 1.05x the best; ``--offsets fast`` for 8
offsets and 15 calls everywhere, ``--offsets none`` to skip it, ``--offsets full``
to run it with ``--shape`` too), then the target table (``targets.py``): each
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

from . import offsets, targets
from ._common import (DARKNET_C_MS, DIALECT_NAMES, IMPLS, SHAPES, implementations,
                      load_average, paired_ratio, parse_shape, round_robin, shape_str, threads)


def measure(shape, dialect, mode, impls, repeat, nthreads):
    """{impl: [seconds, ...]} for one shape/dialect/mode, interleaved round-robin."""
    fns = {name: fs[mode] for name, fs in implementations(shape, dialect, nthreads,
                                                          impls).items() if mode in fs}
    return round_robin(fns, repeat)


def _fmt(seconds):
    return "n/a" if seconds is None else f"{seconds * 1e3:8.2f}"


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
        for (dialect, row_mode, shape), times in results.items():
            if row_mode != mode:
                continue
            best = {impl: (min(seconds) if seconds else None)
                    for impl, seconds in times.items()}
            fused, blas, torch, numpy, memcpy = (
                best.get(impl) for impl in ("fused", "blas", "torch", "numpy", "memcpy"))
            lines.append(
                f"| {dialect} | {shape_str(shape)} | {_fmt(fused)} | {_fmt(blas)} | "
                f"{_fmt(torch)} | {_fmt(numpy)} | {_fmt(memcpy)} | "
                f"{_ratio(fused, torch)} | "
                f"{_ratio(paired_ratio(times.get('fused'), times.get('torch')), 1.0)} | "
                f"{_ratio(fused, blas)} | "
                f"{_ratio(fused, memcpy)} |")
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
    rows = [(key, times) for key, times in results.items()
            if times.get("module") and times.get("nn")]
    if not rows:
        return []
    lines = ["### darknet_bn.torch.DarknetBatchNorm2d vs torch.nn.BatchNorm2d", "",
             "| dialect | mode | shape (N,C,H,W) | module | nn | module/nn | paired |",
             "|---|---|---|---|---|---|---|"]
    for (dialect, mode, shape), times in rows:
        module, nn = min(times["module"]), min(times["nn"])
        lines.append(f"| {dialect} | {mode} | {shape_str(shape)} | {_fmt(module)} | "
                     f"{_fmt(nn)} | {_ratio(module, nn)} | "
                     f"{_ratio(paired_ratio(times['module'], times['nn']), 1.0)} |")
    return lines + [""]


def chart(results, path):
    import matplotlib                # lazily: only for --png
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = list(results)
    modes = [mode for mode in ("train", "infer") if any(key[1] == mode for key in keys)]
    fig, axes = plt.subplots(1, len(modes), figsize=(7 * len(modes), 4.8), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        mode_keys = [key for key in keys if key[1] == mode]
        labels = [f"{dialect[:2]} {shape_str(shape)}" for dialect, _, shape in mode_keys]
        impls = [impl for impl in IMPLS if any(results[key].get(impl) for key in mode_keys)]
        width = 0.8 / len(impls)
        for j, impl in enumerate(impls):
            ys = []
            for key in mode_keys:
                times = results[key]
                base = min(times["torch"]) if times.get("torch") else None
                best = min(times[impl]) if times.get(impl) else None
                ys.append(best / base if best and base else 0)
            ax.bar(np.arange(len(mode_keys)) + j * width, ys, width, label=impl)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(np.arange(len(mode_keys)) + 0.4 - width / 2, labels, rotation=30,
                      ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("time / PyTorch time (log)")
        ax.set_title(f"{mode}: lower is better")
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", action="append", type=parse_shape,
                        help="N,C,H,W (repeatable; default: the four benchmark shapes)")
    parser.add_argument("--dialect", action="append", choices=DIALECT_NAMES,
                        help="repeatable; default all")
    parser.add_argument("--mode", action="append", choices=("train", "infer"),
                        help="repeatable; default both")
    parser.add_argument("--impl", action="append", choices=IMPLS, help="repeatable; default all")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per implementation")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for numba (and torch); default: numba's default")
    parser.add_argument("--json", help="write all timings (seconds) to this file")
    parser.add_argument("--png", help="write a chart (matplotlib) to this file")
    parser.add_argument("--targets-only", action="store_true",
                        help="only the target table (targets.py), no sweep")
    parser.add_argument("--no-targets", action="store_true",
                        help="the sweep without the target table")
    parser.add_argument("--offsets", choices=("full", "fast", "none"), default=None,
                        help="the offset sweep (offsets.py); default: full in the default "
                        "run (no --shape, not --targets-only), else none")
    args = parser.parse_args(argv)
    import darknet_bn
    darknet_bn.warmup()
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    nthreads = threads()
    load_before = load_average()
    print(f"threads {nthreads}; {load_before}", flush=True)
    impls = args.impl or list(IMPLS)
    results = {}
    for shape in ([] if args.targets_only else args.shape or SHAPES):
        for dialect in args.dialect or DIALECT_NAMES:
            for mode in args.mode or ("train", "infer"):
                results[(dialect, mode, shape)] = measure(shape, dialect, mode, impls,
                                                          args.repeat, nthreads)
                times = results[(dialect, mode, shape)]
                print(f"  {dialect:8} {mode:5} {shape_str(shape):>14}: " + "  ".join(
                    f"{impl} {min(seconds) * 1e3:.2f}" for impl, seconds in times.items()),
                    flush=True)
    if results:
        print()
        print(report(results, nthreads))
    sweep_mode = args.offsets or ("full" if not (args.shape or args.targets_only) else "none")
    if sweep_mode != "none":
        print("\n### Offset sweep (rows as they finish)", flush=True)
        before = load_average()
        rows = offsets.measure(args.shape or SHAPES, args.dialect or DIALECT_NAMES, nthreads,
                               tuple(args.mode or ("train", "infer")),
                               fast=sweep_mode == "fast",
                               progress=lambda line: print(line, flush=True))
        print()
        print(offsets.report(rows, nthreads, before, load_average()), flush=True)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).with_name(Path(args.json).stem + "-offsets.json").write_text(
                json.dumps(rows, indent=1))
    if args.targets_only or not (args.no_targets or args.shape):
        rows = targets.measure(targets.GROUPS, nthreads)
        print(targets.report(rows, nthreads, load_before, load_average()))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).with_name(Path(args.json).stem + "-targets.json").write_text(
                json.dumps(rows, indent=1))
    if args.json and results:
        dump = [{"dialect": dialect, "mode": mode, "shape": list(shape), "threads": nthreads,
                 "min_s": {impl: min(seconds) for impl, seconds in times.items()},
                 "median_s": {impl: statistics.median(seconds)
                              for impl, seconds in times.items()},
                 "times_s": times} for (dialect, mode, shape), times in results.items()]
        Path(args.json).write_text(json.dumps(dump, indent=1))
    if args.png and results:
        chart(results, args.png)


if __name__ == "__main__":
    main()
