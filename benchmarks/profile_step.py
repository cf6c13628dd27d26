"""``make profile``: where a train step's time goes, routine by routine.

Three tables for one shape and dialect (a standalone [batchnorm] layer, forward
train=1 then backward, like ``make bench``):

1. blas path: every Darknet routine the one-to-one composition calls, timed by
   wrapping the public routines ``batchnorm_layer``'s blas path calls (the real
   code path, nothing re-implemented; each routine's own argument checks
   included); calls per step, ms per step, share of the step.
2. fused path: its kernel API calls (``fused.forward_train``, ``fused.backward``)
   and the Python-side remainder (validation, dispatch) of
   ``BatchNormLayer.forward``/``backward``.
3. fused passes: each pass of the plane kernels run alone over all channels,
   built here from ``darknet_bn.fused``'s pass helpers, in ns per element, next
   to a memcpy of the tensor.  The pass with the largest share is the next
   thing to optimize.  For h = w = 1 (the row kernels) instead: the step against
   one exact division pass (``fused.forward_infer`` without the x copy: read,
   C's double division, scale, bias, write), PyTorch's train step and a memcpy.
4. per-call fixed cost of the layer (microseconds): the layer's argument checks
   and path function, the kernel API call (workspace, group choice, Numba
   dispatch + thread launch) on a 1-image, 8-channel layer, and the kernel's work.

Times are medians over ``--repeat`` steps (the machine is shared; rerun when it
is quiet).  This is a profile, not a test.
"""
import argparse
import math
import statistics
import time
from collections import defaultdict

import numpy as np

from ._common import (DIALECT_NAMES, make_layer, parse_shape, shape_str, threads,
                      torch_functional_impl)


# --------------------------------------------------------------------------
# 1 and 2: wrap module-level kernels with timers
# --------------------------------------------------------------------------
class _Timers:
    def __init__(self):
        self.times = defaultdict(float)
        self.calls = defaultdict(int)

    def wrap(self, name, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            self.times[name] += time.perf_counter() - t0
            self.calls[name] += 1
        return timed


def _profile_module(module, names, layer, x, delta, repeat):
    """Per-name medians (s per step), calls per step, median step time (s)."""
    saved = {name: getattr(module, name) for name in names}
    per_step = defaultdict(list)
    steps = []
    calls = {}
    try:
        timers = None
        for r in range(repeat + 2):                 # two warm-up steps
            timers = _Timers()
            for name in names:
                setattr(module, name, timers.wrap(name, saved[name]))
            t0 = time.perf_counter()
            layer.forward(x, train=True)
            layer.backward(delta, train=True)
            dt = time.perf_counter() - t0
            if r >= 2:
                steps.append(dt)
                for name in names:
                    per_step[name].append(timers.times[name])
                per_step[_REST].append(dt - sum(timers.times.values()))
        calls = dict(timers.calls)
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)
    med = {name: statistics.median(seconds) for name, seconds in per_step.items()
           if calls.get(name) or name == _REST}
    return med, calls, statistics.median(steps)


_REST = "(Python: validation, dispatch)"
BLAS_ROUTINES = ("copy_cpu", "mean_cpu", "variance_cpu", "scal_cpu", "axpy_cpu",
                 "normalize_cpu", "scale_bias", "add_bias", "backward_bias",
                 "backward_scale_cpu", "mean_delta_cpu", "variance_delta_cpu",
                 "normalize_delta_cpu")
FUSED_API = ("forward_train", "forward_infer", "backward")


def _table(title, med, calls, step, n):
    lines = [f"### {title}", "",
             "| routine | calls/step | ms/step | % of step | ns/element |",
             "|---|---|---|---|---|"]
    rest = med.pop(_REST)
    for name, seconds in sorted(med.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {calls[name]} | {seconds * 1e3:.3f} | "
                     f"{100 * seconds / step:.1f} | {seconds * 1e9 / n:.2f} |")
    lines.append(f"| {_REST} | | {rest * 1e3:.3f} | {100 * rest / step:.1f} | |")
    lines.append(f"| **step** | | **{step * 1e3:.3f}** | 100 | {step * 1e9 / n:.2f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# 3: each fused pass alone, built from darknet_bn.fused's helpers
# --------------------------------------------------------------------------
def _pass_kernels():
    from numba import njit, prange
    from darknet_bn import fused

    opts = dict(parallel=True, fastmath=False, error_model="numpy", nogil=True)

    @njit(**opts)
    def stats_pass(src, mean, var, batch, filters, spatial, group):
        mean_scale = np.float32(1.0 / (batch * spatial))
        var_scale = np.float32(1.0 / (batch * spatial - 1))
        for g in prange(filters // group):
            buf = np.empty(fused.LANES, np.float32)
            if group == fused.WIDE:
                fused.stats16(src, mean, var, batch, filters, spatial, g * group,
                               mean_scale, var_scale, buf)
            else:
                fused.stats8(src, mean, var, batch, filters, spatial, g * group,
                              mean_scale, var_scale, buf)

    @njit(**opts)
    def normalize_pass(src, output, x, x_norm, mean, variance, scales, biases,
                       batch, filters, spatial, dialect):
        for f in prange(filters):
            fused.normalize_scale_bias(src, output, x, x_norm, mean, variance, scales,
                                        biases, batch, filters, spatial, f, dialect, 1)

    @njit(**opts)
    def backward_sums_pass(dsrc, x_norm, x, mean, scales, bias_updates, out,
                           batch, filters, spatial):
        for g in prange(filters // fused.LANES):
            f = g * fused.LANES
            buf = np.empty(4 * fused.LANES, np.float32)
            fused.backward_sums8(dsrc, x_norm, x, mean, scales, bias_updates, batch,
                                  filters, spatial, f, buf)
            out[f] = buf[0] + buf[8] + buf[16] + buf[24]

    @njit(**opts)
    def normalize_delta_pass(dsrc, delta, net_delta, x, mean, variance, scales,
                             bias_updates, scale_updates, mean_delta, variance_delta,
                             batch, filters, spatial, dialect):
        for f in prange(filters):
            fused.backward_channel(dsrc, delta, net_delta, x, mean, variance, scales,
                                    bias_updates, scale_updates, mean_delta, variance_delta,
                                    batch, filters, spatial, dialect, 1, 1, f,
                                    bias_updates[f], np.float32(0.0), mean_delta[f],
                                    variance_delta[f])

    return stats_pass, normalize_pass, backward_sums_pass, normalize_delta_pass


def _median_time(fn, repeat):
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _fused_passes(layer, x, delta, repeat):
    stats_p, norm_p, sums_p, nd_p = _pass_kernels()
    from darknet_bn import fused
    fwd_group = fused.groups(layer.c)[0]
    sp, code = layer.out_h * layer.out_w, layer.dialect.code
    batch, c = layer.batch, layer.c
    layer.forward(x, train=True)               # realistic statistics in the buffers
    layer.backward(delta, train=True)
    scratch = np.zeros(c, np.float32)
    scratch2 = np.zeros(c, np.float32)
    bu, su = layer.bias_updates.copy(), layer.scale_updates.copy()
    rows = [
        (f"forward: mean_cpu, variance_cpu sums (vec8 lanes, {fwd_group} channels a group)",
         lambda: stats_p(x, scratch, scratch2, batch, c, sp, fwd_group)),
        ("forward: copy x, normalize, copy x_norm, scale_bias, add_bias",
         lambda: norm_p(x, layer.output, layer.x, layer.x_norm, layer.mean, layer.variance,
                        layer.scales, layer.biases, batch, c, sp, code)),
        ("backward: bias/scale/mean_delta/variance_delta sums (vec8 lanes, 8 channels)",
         lambda: sums_p(delta, layer.x_norm, layer.x, layer.mean, layer.scales,
                        layer.bias_updates, scratch, batch, c, sp)),
        ("backward: normalize_delta, copy net.delta",
         lambda: nd_p(delta, layer.delta, layer.net_delta, layer.x, layer.mean, layer.variance,
                      layer.scales, bu, su, layer.mean_delta, layer.variance_delta, batch, c,
                      sp, code)),
    ]
    dst = np.empty_like(x)
    out = [(name, _median_time(fn, repeat)) for name, fn in rows]
    return out, _median_time(lambda: np.copyto(dst, x), repeat)


def _us(fn, rounds=7, budget=0.01):
    """Best over ``rounds`` of the mean time of back-to-back calls (as many as fit in
    about ``budget`` seconds), in us."""
    fn()
    t0 = time.perf_counter()
    fn()
    calls = max(5, min(20000, int(budget / max(time.perf_counter() - t0, 1e-7))))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def _api_call(layer, x, delta, train, backward):
    """The kernel API call the fused path makes for ``layer`` (its buffers as views,
    built once), as a no-argument callable."""
    from darknet_bn import fused
    buf = layer.buffers()
    dialect, spatial, workspace = layer.dialect, layer.h * layer.w, fused.Workspace()
    dims = (layer.batch, layer.c, spatial)
    if backward:
        net_delta = layer.net_delta
        return lambda: fused.backward(
            delta.reshape(-1), buf["delta"], net_delta, buf["x"], buf["x_norm"], buf["mean"],
            buf["variance"], buf["scales"], buf["bias_updates"], buf["scale_updates"],
            buf["mean_delta"], buf["variance_delta"], *dims, dialect, workspace,
            int(dialect.backward_bias_in_bn), 1)
    if train:
        return lambda: fused.forward_train(
            x.reshape(-1), buf["output"], buf["x"], buf["x_norm"], buf["mean"], buf["variance"],
            buf["rolling_mean"], buf["rolling_variance"], buf["scales"], buf["biases"], *dims,
            dialect.rolling_keep, dialect.rolling_new, dialect, workspace, 1)
    return lambda: fused.forward_infer(
        x.reshape(-1), buf["output"], buf["x"], buf["rolling_mean"], buf["rolling_variance"],
        buf["scales"], buf["biases"], *dims, dialect, workspace,
        int(dialect.copy_x_in_inference))


def _call_costs(layer, x, delta, train, backward):
    """(whole call, kernel API call) in us for one layer."""
    layer.forward(x, train=True)
    if backward:
        full = _us(lambda: layer.backward(delta, train=train))
    else:
        full = _us(lambda: layer.forward(x, train=train))
    return full, _us(_api_call(layer, x, delta, train, backward))


def fixed_cost(shape, dialect, repeat):
    """Per-call cost of ``forward``/``backward`` in us.  The fixed part is measured on a
    (1, 8, 2, 1) layer, where the kernel has almost nothing to do: the layer's checks
    and path function (whole call - kernel API call: validation, buffer lookups), the
    kernel API call (workspace, group choice, Numba's argument unboxing, the parallel
    region's start and join); then the whole call and the kernel's work at ``shape``."""
    tiny = make_layer((1, 8, 2, 1), dialect, "fused")
    big = make_layer(shape, dialect, "fused")
    lines = [f"### per-call cost of the layer, {dialect} (us; best of 7 rounds)", "",
             "| call | checks + path function | kernel API call | fixed total (1x8x2x1) | "
             f"whole call {shape_str(shape)} | kernel work {shape_str(shape)} |",
             "|---|---|---|---|---|---|"]
    for name, train, backward in (("forward train=1", True, False),
                                  ("forward train=0", False, False),
                                  ("backward train=1", True, True)):
        full, kernel = _call_costs(*tiny, train, backward)
        bfull, bkernel = _call_costs(*big, train, backward)
        lines.append(f"| {name} | {full - kernel:.1f} | {kernel:.1f} | "
                     f"{full:.1f} | {bfull:.1f} | {bkernel - kernel:.1f} |")
    lines.append("")
    lines.append("Allocation: none per call (the buffers are the layer's own, the h = w = 1 "
                 "workspace is made once per layer; the plane kernels' 8-float lane "
                 "buffer per channel group is part of the kernel API call).")
    return "\n".join(lines) + "\n"


def _rows_floors(shape, layer, x, repeat, step):
    """h = w = 1: the step against one exact division pass, torch's step and memcpy."""
    from darknet_bn import fused
    dialect, workspace = layer.dialect, fused.Workspace()
    out = np.empty(x.size, np.float32)
    division = _median_time(lambda: fused.forward_infer(
        x.reshape(-1), out, out, layer.rolling_mean, layer.rolling_variance, layer.scales,
        layer.biases, layer.batch, layer.c, 1, dialect, workspace, 0), repeat)
    dst = np.empty_like(x)
    memcpy = _median_time(lambda: np.copyto(dst, x), repeat)
    rows = [("fused train step (forward + backward)", step),
            ("one exact division pass (read, (double)(x-m)/denom, scale, bias, write)",
             division), ("memcpy of the tensor", memcpy)]
    torch_step = torch_functional_impl(shape, dialect.name, threads()).get("train")
    if torch_step is not None:
        rows.append(("PyTorch train step (F.batch_norm + autograd backward)",
                     _median_time(torch_step, repeat)))
    n = x.size
    lines = ["### spatial == 1: the step against its floors", "",
             "| what | ms | ns/element | x division pass |", "|---|---|---|---|"]
    for name, seconds in rows:
        lines.append(f"| {name} | {seconds * 1e3:.3f} | {seconds * 1e9 / n:.2f} | "
                     f"{seconds / division:.2f} |")
    lines.append("")
    lines.append("A Darknet train step makes two exact double divisions per element "
                 "(normalize_cpu and normalize_delta_cpu's first term); each pass of one "
                 "costs about the 'one exact division pass' row.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=parse_shape, default=(4, 128, 104, 104),
                        help="N,C,H,W")
    parser.add_argument("--dialect", choices=DIALECT_NAMES, default=DIALECT_NAMES[0],
                        help="default: %(default)s")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for numba (and torch); default: numba's default")
    args = parser.parse_args(argv)
    import darknet_bn
    from darknet_bn import batchnorm_layer, fused
    darknet_bn.warmup()
    if args.threads:
        import numba
        numba.set_num_threads(args.threads)
    n = math.prod(args.shape)
    print(f"shape {shape_str(args.shape)} ({n} elements), {args.dialect} [batchnorm], "
          f"threads {threads()}, median of {args.repeat} steps\n")

    layer, x, delta = make_layer(args.shape, args.dialect, "blas")
    med, calls, step_blas = _profile_module(batchnorm_layer, BLAS_ROUTINES, layer, x, delta,
                                            args.repeat)
    print(_table("blas path: Darknet's routines", med, calls, step_blas, n))

    layer, x, delta = make_layer(args.shape, args.dialect, "fused")
    med, calls, step_fused = _profile_module(fused, FUSED_API, layer, x, delta, args.repeat)
    print(_table("fused path: kernels", med, calls, step_fused, n))

    if args.shape[2] * args.shape[3] == 1:
        print("spatial == 1: the fused path runs its row kernels;\nthe per-pass table "
              "covers the plane kernels, so it is replaced by the floors below.\n")
        print(_rows_floors(args.shape, layer, x, args.repeat, step_fused))
        print(fixed_cost(args.shape, args.dialect, args.repeat))
        print(f"fused step {step_fused * 1e3:.2f} ms vs blas step {step_blas * 1e3:.2f} ms "
              f"({step_blas / step_fused:.1f}x)")
        return
    passes, memcpy = _fused_passes(layer, x, delta, args.repeat)
    total = sum(seconds for _, seconds in passes)
    print("### fused path: each pass alone\n")
    print("| pass | ms | % of passes | ns/element | x memcpy |")
    print("|---|---|---|---|---|")
    for name, seconds in sorted(passes, key=lambda item: -item[1]):
        print(f"| {name} | {seconds * 1e3:.3f} | {100 * seconds / total:.1f} | "
              f"{seconds * 1e9 / n:.2f} | {seconds / memcpy:.1f} |")
    print(f"| memcpy of the tensor (roofline: 1 read + 1 write) | {memcpy * 1e3:.3f} | | "
          f"{memcpy * 1e9 / n:.2f} | 1.0 |")
    print()
    print(fixed_cost(args.shape, args.dialect, args.repeat))
    print(f"fused step {step_fused * 1e3:.2f} ms vs blas step {step_blas * 1e3:.2f} ms "
          f"({step_blas / step_fused:.1f}x)")


if __name__ == "__main__":
    main()
