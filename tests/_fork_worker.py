"""What the processes of tests/test_fork.py run: every public entry point that runs
kernels, with its results as bits.

``workload(tmpdir)`` runs the layer (both execution paths, conv and fully connected
shapes), ``DarknetBatchNorm2d`` (train forward and backward, eval forward and
backward), ``check_model``, ``fold_batchnorm`` and the ``fold``/``check`` commands,
and returns ``{name: int32 or uint8 array}``: float32 results viewed as int32 and
text as bytes, so that equality is bitwise.  Every input is made from fixed seeds,
and every tensor is small enough that torch itself runs serially (torch's own
OpenMP pool hangs in a forked child as GNU OpenMP does; ``DataLoader`` workers call
``torch.set_num_threads(1)`` for that reason).

``run_child(out, extras)`` is the target of a child process: it runs the workload
(with ``"threads"``, first the layer workloads run in threads at once, so their first
calls meet), then, with ``"grandchild"``, a child of the child, and saves
everything to ``out`` (``.npz``).
"""
import contextlib
import io
import multiprocessing as mp
import os
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:              # spawn and forkserver children
    sys.path.insert(0, str(TESTS))

from _state import WORKLOADS, training_run  # noqa: E402

CFG_DIR = TESTS.parent / "data" / "golden" / "cfg"
FORKS = ("pjreddie", "alexeyab")
#: A grandchild that is not done by then has hung (GNU OpenMP's pool after fork).
GRANDCHILD_TIMEOUT = 120


def bits(a):
    """float32 as int32 (bitwise equality), anything else as raw bytes."""
    a = np.ascontiguousarray(np.asarray(a))
    if a.dtype == np.float32:
        return a.view(np.int32).ravel().copy()
    return np.frombuffer(a.tobytes(), np.uint8).copy()


def text(s, tmpdir):
    """A command's output as bytes, with the per-process directory taken out."""
    return np.frombuffer(s.replace(str(tmpdir), "<tmp>").encode(), np.uint8).copy()


def layer_results():
    """BatchNormLayer: train/infer forward, backward and update on both paths, on
    conv-shaped layers and on a fully connected one (spatial 1: the row kernels)."""
    out = {}
    for kernel in ("blas", "fused"):
        for i in range(len(WORKLOADS)):
            out[f"layer/{kernel}/{i}"] = bits(training_run(i, kernel, steps=8))
    from darknet_bn import BatchNormLayer
    for kernel in ("blas", "fused"):
        rng = np.random.default_rng(7)
        layer = BatchNormLayer(6, 1, 1, 24, dialect="alexeyab", layer_type="convolutional",
                               kernel=kernel)
        x = rng.standard_normal(6 * 24).astype(np.float32)
        y = layer.forward(x, train=True).copy()
        g = layer.backward(rng.standard_normal(6 * 24).astype(np.float32), train=True).copy()
        y2 = layer.forward(x, train=False).copy()
        out[f"layer/{kernel}/connected"] = bits(np.concatenate([y, g, y2]))
    return out


def module_results():
    """DarknetBatchNorm2d of each fork: train forward + backward (input, weight and bias
    gradients, running statistics), then eval forward + backward."""
    import torch

    from darknet_bn.torch import DarknetBatchNorm2d
    out = {}
    for n, (dialect, shape) in enumerate([("pjreddie", (2, 16, 5, 7)),
                                          ("alexeyab", (3, 24, 4, 4)),
                                          ("alexeyab", (8, 16, 1, 1))]):
        gen = torch.Generator().manual_seed(100 + n)
        m = DarknetBatchNorm2d(shape[1], dialect=dialect)
        with torch.no_grad():
            m.weight.copy_(torch.rand(shape[1], generator=gen) + 0.5)
            m.bias.copy_(torch.randn(shape[1], generator=gen))
        x = torch.randn(shape, generator=gen, requires_grad=True)
        g = torch.randn(shape, generator=gen)
        m.train()
        y = m(x)
        y.backward(g)
        got = [y.detach(), x.grad, m.weight.grad, m.bias.grad, m.running_mean, m.running_var]
        m.eval()
        x.grad = None
        y = m(x)
        y.backward(g)
        got += [y.detach(), x.grad]
        out[f"module/{dialect}/{n}"] = bits(np.concatenate([t.numpy().ravel() for t in got]))
    return out


def darknet_results(tmpdir):
    """check_model, fold_batchnorm and the ``check``/``fold`` commands on bn-zoo."""
    import torch

    from darknet_bn import check_model, fold_batchnorm, get_dialect
    from darknet_bn.cli import main
    from darknet_bn.darknet import parse_cfg, read_weights, to_torch_batchnorm
    out = {}
    for fork in FORKS:
        cfg, weights = CFG_DIR / fork / "bn-zoo.cfg", CFG_DIR / fork / "bn-zoo.weights"
        net = parse_cfg(cfg, dialect=fork)
        records = read_weights(net, weights, layer_weights=True).layers
        model = torch.nn.Sequential(*[to_torch_batchnorm(r, dialect=fork) for r in records])
        report = check_model(model, cfg, weights, dialect=fork)
        assert report.ok, report.format_table()
        out[f"check_model/{fork}"] = text(report.to_json(), tmpdir)
        folded = []
        for r in records:
            if r.section == "convolutional":
                w, b = fold_batchnorm(r.weights, r.biases, r.scales, r.rolling_mean,
                                      r.rolling_variance, dialect=fork)
                folded += [w, b]
        out[f"fold_batchnorm/{fork}"] = bits(np.concatenate(folded))
        pt = Path(tmpdir) / f"{fork}.pt"
        torch.save(model.state_dict(), pt)
        folded_path = Path(tmpdir) / f"{fork}-folded.weights"
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            status = [main(["check", str(cfg), str(weights), str(pt), "--dialect", fork,
                            "--eps", str(get_dialect(fork).torch_eps), "--json"]),
                      main(["fold", str(cfg), str(weights), str(folded_path),
                            "--dialect", fork])]
        assert status == [0, 0], (status, stdout.getvalue())
        out[f"cli/{fork}"] = text(stdout.getvalue(), tmpdir)
        out[f"cli/{fork}/folded"] = bits(np.fromfile(folded_path, np.uint8))
    return out


def workload(tmpdir):
    return {**layer_results(), **module_results(), **darknet_results(tmpdir)}


def threaded_layer_runs():
    """The layer workloads in threads at once, one each, fused path (as layer_results)."""
    results, errors = [None] * len(WORKLOADS), []
    barrier = threading.Barrier(len(WORKLOADS))

    def work(i):
        try:
            barrier.wait()
            results[i] = bits(training_run(i, "fused", steps=8))
        except BaseException as exc:          # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(WORKLOADS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {f"threads/fused/{i}": r for i, r in enumerate(results)}


def run_child(out, extras=()):
    """Child process target: the workload (plus ``extras``) saved to ``out``."""
    from darknet_bn import _jit
    info = _jit.threading_info()
    results = {}
    if "threads" in extras:                 # first: four threads load the same kernels
        results.update(threaded_layer_runs())
    with tempfile.TemporaryDirectory() as tmpdir:
        results.update(workload(tmpdir))
    meta = {"pid": os.getpid(), "serial_after_fork": info.get("serial_after_fork", False),
            "parallel": info["parallel"], "layer": info["threading_layer"],
            # what each kernel ran in this process: the qualnames of its builds
            "overloads": {d.py_func.__name__: [c.fndesc.qualname for c in d.overloads.values()]
                          for d, _ in _jit.KERNELS}}
    if "grandchild" in extras:
        ctx = mp.get_context("fork")
        grand = str(out) + ".grandchild.npz"
        p = ctx.Process(target=run_child, args=(grand, ()))
        p.start()
        p.join(GRANDCHILD_TIMEOUT)
        if p.is_alive():
            p.kill()
            p.join()
        meta["grandchild_exitcode"] = p.exitcode
    results["meta"] = np.frombuffer(repr(meta).encode(), np.uint8)
    np.savez(out, **results)
