"""``make profile``: where a train step's time goes, routine by routine.

Three tables for one shape and dialect (a standalone [batchnorm] layer, forward
train=1 then backward, like ``make bench``):

1. blas path: every Darknet routine the one-to-one composition calls, timed by
   wrapping the kernels ``batchnorm_layer._forward_blas``/``_backward_blas`` call
   (the real code path, nothing re-implemented); calls per step, ms per step,
   share of the step.
2. fused path: its two kernels and the Python-side remainder (validation,
   dispatch) of ``BatchNormLayer.forward``/``backward``.
3. fused passes: each pass of the plane kernels run alone over all channels,
   built here from ``darknet_bn.fused``'s own helpers, in ns per element, next
   to a memcpy of the tensor.  The pass with the largest share is the next
   thing to optimize.  For h = w = 1 (the row kernels) instead: the step against
   one exact division pass (``_forward_infer_rows`` without the x copy: read,
   C's double division, scale, bias, write), PyTorch's train step and a memcpy.
4. per-call fixed cost of the layer (microseconds): argument checks, the path
   function (buffer lookups, workspace), Numba dispatch + thread launch (the
   kernel call on a 1-image, 8-channel layer), and the kernel's work.

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
        def timed(*args):
            t0 = time.perf_counter()
            fn(*args)
            self.times[name] += time.perf_counter() - t0
            self.calls[name] += 1
        return timed


def _profile_module(module, names, layer, x, delta, repeat):
    """Per-name medians (s per step), calls per step, median step time (s)."""
    saved = {n: getattr(module, n) for n in names}
    per_step = defaultdict(list)
    steps = []
    calls = {}
    try:
        timers = None
        for r in range(repeat + 2):                 # two warm-up steps
            timers = _Timers()
            for n in names:
                setattr(module, n, timers.wrap(n.lstrip("_"), saved[n]))
            t0 = time.perf_counter()
            layer.forward(x, train=True)
            layer.backward(delta, train=True)
            dt = time.perf_counter() - t0
            if r >= 2:
                steps.append(dt)
                for n in names:
                    per_step[n.lstrip("_")].append(timers.times[n.lstrip("_")])
                per_step[_REST].append(dt - sum(timers.times.values()))
        calls = dict(timers.calls)
    finally:
        for n, fn in saved.items():
            setattr(module, n, fn)
    med = {k: statistics.median(v) for k, v in per_step.items() if calls.get(k) or k == _REST}
    return med, calls, statistics.median(steps)


_REST = "(Python: validation, dispatch)"
BLAS_KERNELS = ("_copy_cpu", "_mean_cpu", "_variance_cpu", "_scal_cpu", "_axpy_cpu",
                "_normalize_cpu", "_scale_bias", "_add_bias", "_backward_bias",
                "_backward_scale_cpu", "_mean_delta_cpu", "_variance_delta_cpu",
                "_normalize_delta_cpu")
FUSED_KERNELS = ("_forward_train", "_backward", "_forward_train_rows", "_backward_rows")


def _table(title, med, calls, step, n):
    lines = [f"### {title}", "",
             "| routine | calls/step | ms/step | % of step | ns/element |",
             "|---|---|---|---|---|"]
    rest = med.pop(_REST)
    for k, v in sorted(med.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {k} | {calls[k]} | {v * 1e3:.3f} | {100 * v / step:.1f} | "
                     f"{v * 1e9 / n:.2f} |")
    lines.append(f"| {_REST} | | {rest * 1e3:.3f} | {100 * rest / step:.1f} | |")
    lines.append(f"| **step** | | **{step * 1e3:.3f}** | 100 | {step * 1e9 / n:.2f} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# 3: each fused pass alone, built from darknet_bn.fused's helpers
# --------------------------------------------------------------------------
def _pass_kernels():
    from numba import njit, prange
    from darknet_bn import fused as F

    opts = dict(parallel=True, fastmath=False, error_model="numpy", nogil=True)

    @njit(**opts)
    def stats_pass(src, mean, var, batch, filters, spatial, group):
        mean_scale = np.float32(1.0 / (batch * spatial))
        var_scale = np.float32(1.0 / (batch * spatial - 1))
        for g in prange(filters // group):
            buf = np.empty(F.LANES, np.float32)
            if group == F.WIDE:
                F._stats16(src, mean, var, batch, filters, spatial, g * group, mean_scale,
                           var_scale, buf)
            else:
                F._stats8(src, mean, var, batch, filters, spatial, g * group, mean_scale,
                          var_scale, buf)

    @njit(**opts)
    def normalize_pass(src, output, x, x_norm, mean, variance, scales, biases,
                       batch, filters, spatial, dialect):
        for f in prange(filters):
            F._normalize_scale_bias(src, output, x, x_norm, mean, variance, scales, biases,
                                    batch, filters, spatial, f, dialect, 1)

    @njit(**opts)
    def backward_sums_pass(dsrc, x_norm, x, mean, scales, bias_updates, out,
                           batch, filters, spatial):
        for g in prange(filters // F.LANES):
            f = g * F.LANES
            buf = np.empty(4 * F.LANES, np.float32)
            F._backward_sums8(dsrc, x_norm, x, mean, scales, bias_updates, batch, filters,
                              spatial, f, buf)
            out[f] = buf[0] + buf[8] + buf[16] + buf[24]

    @njit(**opts)
    def normalize_delta_pass(dsrc, delta, net_delta, x, mean, variance, scales,
                             bias_updates, scale_updates, mean_delta, variance_delta,
                             batch, filters, spatial, dialect):
        for f in prange(filters):
            F._backward_channel(dsrc, delta, net_delta, x, mean, variance, scales,
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
    l, sp, code = layer, layer.out_h * layer.out_w, layer.dialect.code
    l.forward(x, train=True)                   # realistic statistics in the buffers
    l.backward(delta, train=True)
    scratch = np.zeros(l.c, np.float32)
    scratch2 = np.zeros(l.c, np.float32)
    bu, su = l.bias_updates.copy(), l.scale_updates.copy()
    rows = [
        (f"forward: mean_cpu, variance_cpu sums (vec8 lanes, {fwd_group} channels a group)",
         lambda: stats_p(x, scratch, scratch2, l.batch, l.c, sp, fwd_group)),
        ("forward: copy x, normalize, copy x_norm, scale_bias, add_bias",
         lambda: norm_p(x, l.output, l.x, l.x_norm, l.mean, l.variance, l.scales, l.biases,
                        l.batch, l.c, sp, code)),
        ("backward: bias/scale/mean_delta/variance_delta sums (vec8 lanes, 8 channels)",
         lambda: sums_p(delta, l.x_norm, l.x, l.mean, l.scales, l.bias_updates, scratch,
                        l.batch, l.c, sp)),
        ("backward: normalize_delta, copy net.delta",
         lambda: nd_p(delta, l.delta, l.net_delta, l.x, l.mean, l.variance, l.scales, bu, su,
                      l.mean_delta, l.variance_delta, l.batch, l.c, sp, code)),
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


def _kernel_call(layer, x, delta, train, backward):
    """The fused path's kernel call with its arguments built once (what the path
    function passes), as a no-argument callable."""
    from darknet_bn import fused
    s, calls = layer._s, []
    names = FUSED_KERNELS + ("_forward_infer", "_forward_infer_rows")
    originals = {n: getattr(fused, n) for n in names}

    def capture(name):
        def grab(*args):
            calls.append((originals[name], args))
        return grab
    try:
        for n in names:
            setattr(fused, n, capture(n))
        if backward:
            fused.backward_fused(s, delta, train, s.mean, s.variance, s.net_delta)
        else:
            fused.forward_fused(s, x, train)
    finally:
        for n, fn in originals.items():
            setattr(fused, n, fn)
    kernel, args = calls[0]
    return lambda: kernel(*args)


def _call_costs(layer, x, delta, train, backward):
    """(whole call, path function, kernel call alone) in us for one layer."""
    from darknet_bn import fused
    layer.forward(x, train=True)
    s = layer._s
    if backward:
        full = _us(lambda: layer.backward(delta, train=train))
        path = _us(lambda: fused.backward_fused(s, delta, train, s.mean, s.variance,
                                                s.net_delta))
    else:
        full = _us(lambda: layer.forward(x, train=train))
        path = _us(lambda: fused.forward_fused(s, x, train))
    return full, path, _us(_kernel_call(layer, x, delta, train, backward))


def fixed_cost(shape, dialect, repeat):
    """Per-call cost of ``forward``/``backward`` in us.  The fixed part is measured on a
    (1, 8, 2, 1) layer, where the kernel has almost nothing to do: argument checks
    (whole call - path function), path function (path - kernel call: buffer lookups,
    workspace, group choice), dispatch + launch (the kernel call: Numba's argument
    unboxing, the parallel region's start and join); then the whole call and the
    kernel's work at ``shape``."""
    tiny = make_layer((1, 8, 2, 1), dialect, "fused")
    big = make_layer(shape, dialect, "fused")
    lines = [f"### per-call cost of the layer, {dialect} (us; best of 7 rounds)", "",
             "| call | checks | path function | dispatch + launch | fixed total (1x8x2x1) | "
             f"whole call {shape_str(shape)} | kernel work {shape_str(shape)} |",
             "|---|---|---|---|---|---|---|"]
    for name, train, backward in (("forward train=1", True, False),
                                  ("forward train=0", False, False),
                                  ("backward train=1", True, True)):
        full, path, kernel = _call_costs(*tiny, train, backward)
        bfull, _, bkernel = _call_costs(*big, train, backward)
        lines.append(f"| {name} | {full - path:.1f} | {path - kernel:.1f} | {kernel:.1f} | "
                     f"{full:.1f} | {bfull:.1f} | {bkernel - kernel:.1f} |")
    lines.append("")
    lines.append("Allocation: none per call (the buffers are the layer's own, the h = w = 1 "
                 "workspace is made once per layer; the plane kernels' 8-float lane "
                 "buffer per channel group is part of 'dispatch + launch').")
    return "\n".join(lines) + "\n"


def _rows_floors(shape, layer, x, repeat, step):
    """h = w = 1: the step against one exact division pass, torch's step and memcpy."""
    from darknet_bn import fused
    s, d = layer._s, layer.dialect
    acc64 = fused._workspace(s)[1]
    out = np.empty_like(x)
    division = _median_time(lambda: fused._forward_infer_rows(
        x, out, out, s.rolling_mean, s.rolling_variance, s.scales, s.biases, acc64, s.batch,
        s.out_c, d.code, 0), repeat)
    dst = np.empty_like(x)
    memcpy = _median_time(lambda: np.copyto(dst, x), repeat)
    rows = [("fused train step (forward + backward)", step),
            ("one exact division pass (read, (double)(x-m)/denom, scale, bias, write)",
             division), ("memcpy of the tensor", memcpy)]
    torch_step = torch_functional_impl(shape, layer.dialect.name, threads()).get("train")
    if torch_step is not None:
        rows.append(("PyTorch train step (F.batch_norm + autograd backward)",
                     _median_time(torch_step, repeat)))
    n = x.size
    lines = ["### spatial == 1: the step against its floors", "",
             "| what | ms | ns/element | x division pass |", "|---|---|---|---|"]
    for name, t in rows:
        lines.append(f"| {name} | {t * 1e3:.3f} | {t * 1e9 / n:.2f} | {t / division:.2f} |")
    lines.append("")
    lines.append("A Darknet train step makes two exact double divisions per element "
                 "(normalize_cpu and normalize_delta_cpu's first term); each pass of one "
                 "costs about the 'one exact division pass' row.")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", type=parse_shape, default=(4, 128, 104, 104), help="N,C,H,W")
    p.add_argument("--dialect", choices=DIALECT_NAMES, default=DIALECT_NAMES[0],
                   help="default: %(default)s")
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument("--threads", type=int, default=None,
                   help="threads for numba (and torch); default: numba's default")
    a = p.parse_args(argv)
    import darknet_bn
    from darknet_bn import batchnorm_layer, fused
    darknet_bn.warmup()
    if a.threads:
        import numba
        numba.set_num_threads(a.threads)
    n = math.prod(a.shape)
    print(f"shape {shape_str(a.shape)} ({n} elements), {a.dialect} [batchnorm], "
          f"threads {threads()}, median of {a.repeat} steps\n")

    layer, x, delta = make_layer(a.shape, a.dialect, "blas")
    med, calls, step_blas = _profile_module(batchnorm_layer, BLAS_KERNELS, layer, x, delta,
                                            a.repeat)
    print(_table("blas path: Darknet's routines", med, calls, step_blas, n))

    layer, x, delta = make_layer(a.shape, a.dialect, "fused")
    med, calls, step_fused = _profile_module(fused, FUSED_KERNELS, layer, x, delta, a.repeat)
    print(_table("fused path: kernels", med, calls, step_fused, n))

    if a.shape[2] * a.shape[3] == 1:
        print("spatial == 1: the fused path runs its row kernels (_forward_train_rows, "
              "_backward_rows);\nthe per-pass table covers the plane kernels, so it is "
              "replaced by the floors below.\n")
        print(_rows_floors(a.shape, layer, x, a.repeat, step_fused))
        print(fixed_cost(a.shape, a.dialect, a.repeat))
        print(f"fused step {step_fused * 1e3:.2f} ms vs blas step {step_blas * 1e3:.2f} ms "
              f"({step_blas / step_fused:.1f}x)")
        return
    passes, memcpy = _fused_passes(layer, x, delta, a.repeat)
    total = sum(t for _, t in passes)
    print("### fused path: each pass alone\n")
    print("| pass | ms | % of passes | ns/element | x memcpy |")
    print("|---|---|---|---|---|")
    for name, t in sorted(passes, key=lambda r: -r[1]):
        print(f"| {name} | {t * 1e3:.3f} | {100 * t / total:.1f} | {t * 1e9 / n:.2f} | "
              f"{t / memcpy:.1f} |")
    print(f"| memcpy of the tensor (roofline: 1 read + 1 write) | {memcpy * 1e3:.3f} | | "
          f"{memcpy * 1e9 / n:.2f} | 1.0 |")
    print()
    print(fixed_cost(a.shape, a.dialect, a.repeat))
    print(f"fused step {step_fused * 1e3:.2f} ms vs blas step {step_blas * 1e3:.2f} ms "
          f"({step_blas / step_fused:.1f}x)")


if __name__ == "__main__":
    main()
