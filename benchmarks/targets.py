"""The performance targets of ``make bench``: every row timed side by side, with its
target and whether it is met.

Rows (each pair runs in one process, interleaved, same thread count for Numba
and torch):

- module eval: ``DarknetBatchNorm2d(c, dialect=...)`` in ``eval()`` under
  ``torch.no_grad()``: on 1x256x13x13 against ``nn.BatchNorm2d`` run the same way; on
  8x128x52x52 against its floor, what the module must do at least: a fresh output
  allocation (placed as the module places it) plus the exact reference kernel into
  it.  (The earlier target there, <= 1.5x of ``nn.BatchNorm2d``'s call, is below that
  floor: the kernel alone measured 1.58 - 1.89x of nn's call.)
- model: the layer structure of ``data/golden/cfg/alexeyab/yolov4-tiny.cfg``
  (``cfg_model.CfgNet``: ``nn.Conv2d`` + ``nn.BatchNorm2d`` + leaky, routes, maxpools,
  upsample) against the same model after ``darknet_bn.torch.convert_batchnorm``;
  eval (batch 1, no_grad) and a train step (batch 4, forward + backward).
- layer infer: ``BatchNormLayer.forward(x, train=False)`` against the exact
  reference kernel (``exact_reference.exact_infer``: one pass, no checks), the two
  outputs compared bitwise on every run.
- FC train: ``BatchNormLayer`` forward(train=True) + backward(train=True) against
  ``F.batch_norm(training=True)`` + autograd backward, h = w = 1.  An open target: the
  row also gives the division's share, two passes of one exact double division
  (normalize_cpu, normalize_delta_cpu's first term) timed beside it, as a share of
  the step and of PyTorch's step.  "alone": a fresh
  process that runs only these rows; "inside the run": this process, after whatever ran
  before (the full ``make bench`` sweep).
- torch (the forks whose normalize_cpu divides in float, ``Dialect.float_overloads``:
  hank-ai's C++ build, whose elementwise pass runs at PyTorch's vector width): the
  layer's train step and its inference against PyTorch's (``F.batch_norm`` training
  + autograd backward; eval under ``no_grad``) on every benchmark shape, FC included.

Statistics.  Every pair runs ``rounds`` rounds, the order alternating; in each
round each side runs ``inner`` calls and keeps its fastest (``_common.round_robin``,
the sweep's timer too).  ``min`` rows compare the minima over all rounds; ``median``
rows (model and FC: they sit near the noise) the median over rounds of the per-round
ratio.  Both are printed.  The load average (``os.getloadavg``) is printed with the
table: on a shared host, rerun when it is high.  Nothing is asserted: this is a
benchmark.
"""
import argparse
import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from darknet_bn import get_dialect

from ._common import (DIALECT_NAMES, SHAPES, implementations, load_average, make_data,
                      make_layer, paired_ratio, round_robin, shape_str, threads,
                      torch_module_impl)

ROOT = Path(__file__).resolve().parents[1]
#: The model rows' cfg and the fork it is written for (its model runs that fork's layer).
CFG_FORK = "alexeyab"
CFG = ROOT / "data" / "golden" / "cfg" / CFG_FORK / "yolov4-tiny.cfg"
GROUPS = ("module", "model", "layer", "fc", "torch")

#: (shape, target ratio, what the module is compared with: "nn" = nn.BatchNorm2d's eval
#: call, "floor" = a fresh output allocation + the exact reference kernel into it)
MODULE_ROWS = (((1, 256, 13, 13), 2.0, "nn"), ((8, 128, 52, 52), 1.10, "floor"))
LAYER_ROWS = (((16, 64, 28, 28), 1.05), ((4, 128, 104, 104), 1.05))
FC_ROWS = (((256, 1024, 1, 1), 1.0), ((64, 4096, 1, 1), 1.0))
MODEL_TARGET = 1.03
#: The layer against PyTorch, train step and inference, for the float-division forks.
TORCH_TARGET = 1.0


def row(group, what, shape, dialect, ta, tb, target, stat, note=""):
    ratio_min = min(ta) / min(tb)
    ratio_med = paired_ratio(ta, tb)
    ratio = ratio_min if stat == "min" else ratio_med
    return {"group": group, "what": what, "shape": list(shape), "dialect": dialect,
            "a_ms": min(ta) * 1e3, "b_ms": min(tb) * 1e3, "ratio_min": ratio_min,
            "ratio_median": ratio_med, "stat": stat, "ratio": ratio, "target": target,
            "met": ratio <= target, "rounds": len(ta), "note": note}


# --------------------------------------------------------------------------
def module_rows(nthreads, rounds=15, inner=20):
    out = []
    for shape, target, against in MODULE_ROWS:
        for dialect in DIALECT_NAMES:
            module = torch_module_impl(shape, dialect, nthreads, True)
            nn = torch_module_impl(shape, dialect, nthreads, False)
            if not module or not nn:
                return out
            if against == "nn":
                ta, tb = round_robin({"module": module["infer"], "nn": nn["infer"]}, rounds,
                                     inner).values()
                floors = module_floors(shape, dialect, rounds, inner)
                out.append(row("module", "DarknetBatchNorm2d eval / nn.BatchNorm2d eval",
                               shape, dialect, ta, tb, target, "min",
                               note=f"floors: exact reference kernel {floors[0]:.3f} ms = "
                               f"{floors[0] / (min(tb) * 1e3):.2f}x nn's call; copy of the "
                               f"tensor {floors[1]:.3f} ms"))
                continue
            floor = module_floor_call(shape, dialect)
            ta, tb, tn = round_robin({"module": module["infer"], "floor": floor,
                                      "nn": nn["infer"]}, rounds, inner).values()
            out.append(row("module", "DarknetBatchNorm2d eval / (fresh output + exact "
                           "reference kernel)", shape, dialect, ta, tb, target, "min",
                           note=f"nn.BatchNorm2d eval {min(tn) * 1e3:.3f} ms: module "
                           f"{min(ta) / min(tn):.2f}x, floor {min(tb) / min(tn):.2f}x of it"))
    return out


def module_floor_call(shape, dialect):
    """What the module's eval call must do at least: allocate its output (as the module
    does: ``fused.placed_empty`` half a page from the input) and run the exact reference
    kernel into it (no ``x`` copy, no checks, no torch)."""
    from darknet_bn import fused
    from .exact_reference import exact_infer
    x, _, scales, biases, rmean, rvar = make_data(shape)
    n, c, h, w = shape
    src = x.reshape(-1)
    away = fused.far_offset((fused.page_offset(fused.data_address(src)),))
    code = get_dialect(dialect).code

    def run():
        out = fused.placed_empty(src.size, away)
        exact_infer(src, out, out, rmean, rvar, scales, biases, n, c, h * w, code, 0)
    return run


def module_floors(shape, dialect, rounds, inner):
    """What the module's eval call cannot go below, in ms (minima): the exact reference
    kernel alone (``exact_infer`` into a preallocated output, no ``x`` copy: the
    module's kernel call without the module) and a copy of the same bytes with torch's
    threads (``Tensor.clone``: one read, one write, the bandwidth floor)."""
    import torch
    from .exact_reference import exact_infer
    x, _, scales, biases, rmean, rvar = make_data(shape)
    n, c, h, w = shape
    src = x.reshape(-1)
    out = np.empty_like(src)
    args = (src, out, out, rmean, rvar, scales, biases, n, c, h * w,
            get_dialect(dialect).code, 0)
    xt = torch.from_numpy(x)
    ta, tb = round_robin({"kernel": lambda: exact_infer(*args), "clone": xt.clone},
                         rounds, inner).values()
    return min(ta) * 1e3, min(tb) * 1e3


def model_rows(nthreads, rounds=5):
    try:
        import torch
        from darknet_bn.torch import convert_batchnorm
    except ImportError:
        return []
    from . import cfg_model
    torch.set_num_threads(nthreads)
    dialect = get_dialect(CFG_FORK).name
    nn_model, (c, h, w) = cfg_model.build(CFG, dialect)
    dk_model = convert_batchnorm(copy.deepcopy(nn_model), dialect=dialect)
    gen = torch.Generator().manual_seed(0)
    out = []
    x1 = torch.rand(1, c, h, w, generator=gen)

    def evaluate(model):
        def run():
            model.eval()
            with torch.no_grad():
                model(x1)
        return run
    ta, tb = round_robin({"darknet_bn": evaluate(dk_model), "nn": evaluate(nn_model)},
                         rounds).values()
    out.append(row("model", "yolov4-tiny-shaped model with the module / with "
                   "nn.BatchNorm2d, eval", (1, c, h, w), dialect, ta, tb, MODEL_TARGET,
                   "median"))
    x4 = torch.rand(4, c, h, w, generator=gen)
    with torch.no_grad():
        grads = [torch.randn(head.shape, generator=gen) for head in nn_model.eval()(x4)]

    def step(model):
        params = list(model.parameters())

        def run():
            model.train()
            for param in params:
                param.grad = None
            torch.autograd.backward(model(x4), grads)
        return run
    ta, tb = round_robin({"darknet_bn": step(dk_model), "nn": step(nn_model)},
                         rounds).values()
    out.append(row("model", "same models, train step (forward + backward)", (4, c, h, w),
                   dialect, ta, tb, MODEL_TARGET, "median"))
    return out


def layer_rows(nthreads, rounds=15, inner=20):
    from .exact_reference import bits_match, reference_for
    out = []
    for shape, target in LAYER_ROWS:
        for dialect in DIALECT_NAMES:
            layer, x, _ = make_layer(shape, dialect, "fused")
            same = bits_match(layer, x)
            run_ref = reference_for(layer, x)[0]

            def run_layer():
                layer.forward(x, train=False)
            ta, tb = round_robin({"layer": run_layer, "reference": run_ref}, rounds,
                                 inner).values()
            out.append(row("layer", "BatchNormLayer inference / exact reference kernel",
                           shape, dialect, ta, tb, target, "min",
                           note="bits identical" if same else "BITS DIFFER"))
    return out


def fc_rows(nthreads, where, rounds=9, inner=10):
    out = []
    for shape, target in FC_ROWS:
        for dialect in DIALECT_NAMES:
            fns = implementations(shape, dialect, nthreads, ("fused", "torch"))
            if "train" not in fns["torch"]:
                return out
            ta, tb, td = round_robin({"fused": fns["fused"]["train"],
                                      "torch": fns["torch"]["train"],
                                      "division": division_pass(shape, dialect)},
                                     rounds, inner).values()
            two = 2 * min(td)
            out.append(row("fc", f"BatchNormLayer train step / torch ({where})", shape,
                           dialect, ta, tb, target, "median",
                           note=f"open; division's share: two exact division passes "
                           f"{two * 1e3:.3f} ms = {two / min(ta):.0%} of the step, "
                           f"{two / min(tb):.0%} of torch's"))
    return out


def division_pass(shape, dialect):
    """One exact division pass over the tensor (``fused.forward_infer`` without the
    ``x`` copy: read, C's division by the channel's denominator, scale, bias, write):
    the cost of each of the train step's two divisions per element."""
    from darknet_bn import fused
    layer, x, _ = make_layer(shape, dialect, "fused")
    out = np.empty_like(x)
    workspace = fused.Workspace()
    s = layer.buffers()
    args = (x, out, out, s["rolling_mean"], s["rolling_variance"], s["scales"], s["biases"],
            layer.batch, layer.c, layer.h * layer.w, layer.dialect, workspace, 0)

    def run():
        fused.forward_infer(*args)
    return run


def torch_rows(nthreads, rounds=9, inner=5):
    """The layer's train step and inference against PyTorch's on every benchmark shape,
    for each fork whose normalize_cpu divides in float (``Dialect.float_overloads``)."""
    out = []
    for dialect in (name for name in DIALECT_NAMES if get_dialect(name).float_overloads):
        for shape in SHAPES:
            fns = implementations(shape, dialect, nthreads, ("fused", "torch"))
            if "train" not in fns["torch"]:
                return out
            for mode, what in (("train", "train step / torch (F.batch_norm + backward)"),
                               ("infer", "inference / torch (F.batch_norm eval)")):
                ta, tb = round_robin({name: fns[name][mode] for name in ("fused", "torch")},
                                     rounds, inner).values()
                out.append(row("torch", f"BatchNormLayer {what}", shape, dialect, ta, tb,
                               TORCH_TARGET, "min"))
    return out


def fc_alone(nthreads):
    """The FC rows measured in a fresh process that runs nothing else."""
    cmd = [sys.executable, "-m", "benchmarks.targets", "--group", "fc", "--threads",
           str(nthreads), "--where", "alone", "--dump"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if res.returncode:
        print(res.stderr, file=sys.stderr)
        return []
    return json.loads(res.stdout.strip().splitlines()[-1])


def measure(groups, nthreads, fc_where="inside the run"):
    rows = []
    for group in groups:
        if group == "module":
            rows += module_rows(nthreads)
        elif group == "model":
            rows += model_rows(nthreads)
        elif group == "layer":
            rows += layer_rows(nthreads)
        elif group == "fc":
            if fc_where == "inside the run":
                rows += fc_alone(nthreads)
            rows += fc_rows(nthreads, fc_where)
        elif group == "torch":
            rows += torch_rows(nthreads)
    return rows


def report(rows, nthreads, load_before, load_after):
    lines = ["### Targets", "",
             f"threads: {nthreads} (numba and torch); {load_before} before, {load_after} "
             "after; min = ratio of minima, median = median over alternating rounds of "
             "the per-round ratio", "",
             "| row | shape | fork | ms | ms (reference side) | ratio | statistic | "
             "target | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for entry in rows:
        note = f" ({entry['note']})" if entry["note"] else ""
        lines.append(
            f"| {entry['what']}{note} | {shape_str(entry['shape'])} | {entry['dialect']} | "
            f"{entry['a_ms']:.3f} | {entry['b_ms']:.3f} | {entry['ratio']:.2f}x "
            f"(min {entry['ratio_min']:.2f}x, median {entry['ratio_median']:.2f}x) | "
            f"{entry['stat']} of {entry['rounds']} | "
            f"<= {entry['target']:.2f}x | {'met' if entry['met'] else 'NOT MET'} |")
    met = sum(entry["met"] for entry in rows)
    lines += ["", f"{met} of {len(rows)} target rows met"]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--group", action="append", choices=GROUPS,
                        help="repeatable; default all")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--where", default="inside the run", help=argparse.SUPPRESS)
    parser.add_argument("--dump", action="store_true", help="print the rows as JSON (one line)")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    import darknet_bn
    darknet_bn.warmup()
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    nthreads = threads()
    before = load_average()
    rows = measure(args.group or GROUPS, nthreads, args.where)
    if args.dump:
        print(json.dumps(rows))
        return rows
    print(report(rows, nthreads, before, load_average()))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
