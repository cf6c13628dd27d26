"""Per-call times in a process and in a child forked from it, side by side.

The parent uses the kernels (so the threading layer is started), then forks a
child (``multiprocessing``'s ``fork``) that runs the same calls on its own
objects.  Under GNU OpenMP (the default install) the child runs the serial
builds (docs/reliability.md); with tbb it stays parallel.  Parent and child take
turns, ``--rounds`` times, so both see the same host; each figure is the minimum
over all rounds of the per-call time (``timeit``, ~50 ms per repeat).  Also
printed: the layer, how the child's kernels run, and the time from the fork to
the end of the child's first train step (switch + loading the serial builds).

    python -m benchmarks.fork_child [--shape N,C,H,W ...] [--rounds 5] [--repeat 20]
    python -m benchmarks.fork_child --parent-only ...   # no fork: any version's per-call times

Nothing here is a test: timings are printed, never asserted.
"""
import argparse
import json
import multiprocessing as mp
import sys
import time
import timeit

import numpy as np

from ._common import parse_shape, shape_str

SHAPES = ((1, 256, 13, 13), (16, 64, 28, 28), (4, 128, 104, 104))


def make_cases(shapes, dialect="alexeyab"):
    """``{name: callable}``: module eval forward, layer inference, layer train step."""
    import torch

    from darknet_bn import BatchNormLayer
    from darknet_bn.torch import DarknetBatchNorm2d
    rng = np.random.default_rng(0)
    cases = {}
    for shape in shapes:
        n, c, h, w = shape
        x = rng.standard_normal(n * c * h * w).astype(np.float32)
        d = rng.standard_normal(n * c * h * w).astype(np.float32)
        layer = BatchNormLayer(n, w, h, c, dialect=dialect)
        layer.rolling_variance[:] = 1.5
        module = DarknetBatchNorm2d(c, dialect=dialect).eval()
        xt = torch.from_numpy(x.reshape(shape))

        def module_eval(module=module, xt=xt):
            with torch.no_grad():
                module(xt)

        def train_step(layer=layer, x=x, d=d):
            layer.forward(x, train=True)
            layer.backward(d, train=True)

        s = shape_str(shape)
        cases[f"module eval {s}"] = module_eval
        cases[f"layer infer {s}"] = lambda layer=layer, x=x: layer.forward(x, train=False)
        cases[f"layer train step {s}"] = train_step
    return cases


def measure(cases, repeat):
    """``{name: microseconds per call}``, the minimum over ``repeat`` timings."""
    out = {}
    for name, f in cases.items():
        f()
        t = timeit.Timer(f)
        number, elapsed = t.autorange()
        number = max(1, int(number * 0.05 / elapsed)) if elapsed > 0 else number
        out[name] = min(t.repeat(repeat=repeat, number=number)) / number * 1e6
    return out


def child(conn, shapes, repeat, forked_at):
    from darknet_bn import BatchNormLayer, _jit
    layer = BatchNormLayer(4, 8, 8, 32)
    x = np.ones(4 * 32 * 64, np.float32)
    layer.forward(x, train=True)
    layer.backward(x, train=True)
    ready_ms = (time.perf_counter() - forked_at) * 1e3
    cases = make_cases(shapes)
    conn.send({"info": _jit.threading_info(), "first_step_ms": ready_ms})
    while conn.recv():
        conn.send(measure(cases, repeat))
    conn.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", action="append", type=parse_shape,
                   help="N,C,H,W (repeatable; default: " +
                        ", ".join(shape_str(s) for s in SHAPES) + ")")
    p.add_argument("--rounds", type=int, default=5, help="turns of parent and child")
    p.add_argument("--repeat", type=int, default=20, help="timings per case and turn")
    p.add_argument("--json", help="write the minima (microseconds) to this file")
    p.add_argument("--parent-only", action="store_true",
                   help="no child: --rounds timings of this process only")
    a = p.parse_args(argv)
    shapes = tuple(a.shape or SHAPES)

    import numba
    cases = make_cases(shapes)
    parent_runs = [measure(cases, a.repeat)]        # uses the kernels: layer started
    if a.parent_only:
        parent_runs += [measure(cases, a.repeat) for _ in range(a.rounds - 1)]
        parent = {k: min(run[k] for run in parent_runs) for k in cases}
        print(f"threading layer {numba.threading_layer()}, {numba.get_num_threads()} threads")
        print(f"{'case':34s} {'us':>11s}")
        for k in cases:
            print(f"{k:34s} {parent[k]:11.2f}")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"layer": numba.threading_layer(), "parent_us": parent}, f, indent=1)
        return 0

    from darknet_bn import _jit
    ctx = mp.get_context("fork")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=child, args=(theirs, shapes, a.repeat, time.perf_counter()))
    proc.start()
    theirs.close()                                  # a child that dies ends recv()
    try:
        hello = mine.recv()
    except EOFError:
        proc.join()
        print(f"the forked child died (exit code {proc.exitcode})", file=sys.stderr)
        return 1
    child_runs = []
    for r in range(a.rounds):
        mine.send(True)
        child_runs.append(mine.recv())
        if r:
            parent_runs.append(measure(cases, a.repeat))
    mine.send(False)
    proc.join()

    parent = {k: min(run[k] for run in parent_runs) for k in cases}
    kid = {k: min(run[k] for run in child_runs) for k in cases}
    info = hello["info"]
    print(f"threading layer {numba.threading_layer()}, {numba.get_num_threads()} threads; "
          f"forked child: {'serial builds' if info['serial_after_fork'] else 'parallel'}"
          f" (parent parallel: {_jit.threading_info()['parallel']}); fork to the end of "
          f"the child's first train step: {hello['first_step_ms']:.1f} ms")
    print(f"{'case':34s} {'parent us':>11s} {'child us':>11s} {'child/parent':>13s}")
    for k in cases:
        print(f"{k:34s} {parent[k]:11.2f} {kid[k]:11.2f} {kid[k] / parent[k]:12.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"layer": numba.threading_layer(), "child": info,
                       "first_step_ms": hello["first_step_ms"], "parent_us": parent,
                       "child_us": kid}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
