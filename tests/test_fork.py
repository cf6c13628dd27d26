"""Child processes after the parent used the kernels: fork, forkserver and spawn.

The parent (this process) runs the layer, ``DarknetBatchNorm2d``, ``check_model``,
``fold_batchnorm`` and the commands (``tests/_fork_worker.py``); each child runs
them again and must get the same bits.  With the default install the threading
layer is GNU OpenMP, whose pool does not survive ``fork()`` (Numba terminates a
direct child that enters it; a grandchild hangs): a forked child switches its
kernels to their serial builds (``darknet_bn._jit``, docs/reliability.md), and so
does its own child, also with four threads at once.  With tbb the kernels stay
parallel in a child.  Spawned children start afresh and run parallel kernels.
"""
import ast
import multiprocessing as mp
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest
from _state import WORKLOADS

pytest.importorskip("torch")

import _fork_worker  # noqa: E402
from _fork_worker import run_child, workload  # noqa: E402
from darknet_bn import _jit  # noqa: E402

#: A child that is not done by then has hung.
CHILD_TIMEOUT = 300
#: GNU OpenMP's pool does not survive fork(): kernels must be serial in a forked child.
FORK_UNSAFE = _jit.THREADING_LAYER == "omp"
SERIAL_SUFFIX = "__serial"


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """The parent's results: it used every entry point (and so the threading layer)."""
    want = workload(tmp_path_factory.mktemp("parent"))
    if _jit.PARALLEL:
        assert numba.threading_layer() == _jit.THREADING_LAYER   # the pool was used
    return want


def start(method, out, extras=()):
    ctx = mp.get_context(method)
    if method == "forkserver":
        # The server imports darknet_bn (as it does when the main module imports it),
        # so its children are forked from a process that has it: the at-fork hook runs.
        # (Python 3.11's server does not get the parent's sys.path: a package name.)
        ctx.set_forkserver_preload(["darknet_bn"])
    p = ctx.Process(target=run_child, args=(str(out), extras))
    p.start()
    return p


def finish(p, out, method):
    """The child's results after it exits; a clear failure if it died or hung."""
    p.join(CHILD_TIMEOUT)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"{method} child hung (killed after {CHILD_TIMEOUT} s)")
    assert p.exitcode == 0, (
        f"{method} child died with exit code {p.exitcode}"
        + (" (SIGTERM: Numba terminates a forked child that enters GNU OpenMP's pool)"
           if p.exitcode == -15 else ""))
    with np.load(out) as z:
        got = {k: z[k] for k in z.files}
    meta = ast.literal_eval(got.pop("meta").tobytes().decode())
    return got, meta


def assert_same_bits(got, want, who):
    missing = sorted(set(want) - set(got))
    assert not missing, f"{who}: results missing: {missing}"
    differ = [k for k in want if not np.array_equal(got[k], want[k])
              or got[k].dtype != want[k].dtype]
    assert not differ, f"{who}: bits differ from the parent's in {differ}"


def assert_every_kernel_ran(meta, serial):
    """The child ran every registered kernel, serial builds only when switched."""
    ran = meta["overloads"]
    assert sorted(ran) == sorted(d.py_func.__name__ for d, _ in _jit.KERNELS)
    not_run = [name for name, qualnames in ran.items() if not qualnames]
    assert not not_run, f"the workload never ran {not_run}"
    wrong = [name for name, qualnames in ran.items()
             if any(q.endswith(SERIAL_SUFFIX) != (serial or not _jit.PARALLEL)
                    for q in qualnames)]
    assert not wrong, f"builds of the wrong kind (serial={serial}): {wrong}"


def test_fork_child_grandchild_and_threads(parent, tmp_path):
    """fork (Linux's default start method before Python 3.14): the child runs every entry
    point with the parent's bits, also in four threads at once, and so does a child of
    the child."""
    out = tmp_path / "fork.npz"
    got, meta = finish(start("fork", out, ("threads", "grandchild")), out, "fork")
    assert meta["pid"] != os.getpid()
    assert_same_bits(got, parent, "forked child")
    threaded = {k: v for k, v in got.items() if k.startswith("threads/")}
    assert len(threaded) == len(WORKLOADS)            # one thread per layer workload
    for k, v in threaded.items():
        assert np.array_equal(v, parent[k.replace("threads/", "layer/")]), k
    assert meta["serial_after_fork"] == (FORK_UNSAFE and _jit.PARALLEL)
    assert meta["parallel"] == (_jit.PARALLEL and not FORK_UNSAFE)
    assert_every_kernel_ran(meta, serial=meta["serial_after_fork"])
    assert meta["grandchild_exitcode"] == 0, (
        f"grandchild exit code {meta['grandchild_exitcode']} (None: it hung)")
    with np.load(str(out) + ".grandchild.npz") as z:
        grand = {k: z[k] for k in z.files}
    grand_meta = ast.literal_eval(grand.pop("meta").tobytes().decode())
    assert grand_meta["serial_after_fork"] == meta["serial_after_fork"]
    assert_same_bits(grand, parent, "grandchild (forked from the forked child)")


@pytest.fixture(scope="module")
def fresh_children(parent, tmp_path_factory):
    """A forkserver child and a spawned child, started together (their imports overlap)."""
    tmp = tmp_path_factory.mktemp("children")
    return {m: (start(m, tmp / f"{m}.npz"), tmp / f"{m}.npz") for m in ("forkserver", "spawn")}


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_forkserver_and_spawn_children(parent, fresh_children, method):
    p, out = fresh_children[method]
    got, meta = finish(p, out, method)
    assert_same_bits(got, parent, f"{method} child")
    if method == "spawn":                       # a fresh interpreter: parallel kernels
        assert not meta["serial_after_fork"] and meta["parallel"] == _jit.PARALLEL
    else:                                       # forked from the server, which has darknet_bn
        assert meta["serial_after_fork"] == (FORK_UNSAFE and _jit.PARALLEL)
    assert_every_kernel_ran(meta, serial=meta["serial_after_fork"])


def test_the_switch_keeps_the_objects_callers_hold():
    """In a child the kernels are the same dispatcher objects (callers import them by
    name), with no parallel code left and serial ``<name>__serial`` builds once called."""
    if not (_jit.PARALLEL and FORK_UNSAFE):
        pytest.skip(f"the kernels are not switched on {_jit.THREADING_LAYER}")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                # the child: report, then leave at once
        status = 1
        try:
            from darknet_bn import BatchNormLayer, fused
            ids = [id(d) for d, _ in _jit.KERNELS]
            parallel_left = [d.py_func.__name__ for d, _ in _jit.KERNELS
                             if d.targetoptions.get("parallel") or d.overloads]
            BatchNormLayer(2, 3, 3, 16, kernel="fused").forward(
                np.ones(2 * 16 * 9, np.float32), train=True)
            qualname = fused._forward_train._compiler.py_func.__qualname__

            @_jit.kernel(_jit.sig(_jit.BUF))          # a kernel defined in the child
            def late(a):
                for i in numba.prange(a.size):
                    a[i] += np.float32(1.0)
            a = np.zeros(1000, np.float32)
            late(a)
            late_kernel = (bool(late.targetoptions.get("parallel")), float(a.sum()))
            os.write(w, repr((ids, parallel_left, qualname, late_kernel,
                              _jit.threading_info()["serial_after_fork"])).encode())
            status = 0
        except BaseException as exc:            # the parent shows it
            os.write(w, f"child failed: {exc!r}".encode())
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r) as f:
        report = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    ids, parallel_left, qualname, late_kernel, switched = ast.literal_eval(report)
    assert ids == [id(d) for d, _ in _jit.KERNELS]
    assert parallel_left == [] and switched
    assert qualname.endswith(SERIAL_SUFFIX)
    assert late_kernel == (False, 1000.0)
    # The parent is untouched: parallel builds, Numba's own compile.
    assert all(d.targetoptions.get("parallel") and "compile" not in vars(d)
               for d, _ in _jit.KERNELS)
    assert not _jit.SERIAL_AFTER_FORK



LATE_IMPORT = textwrap.dedent("""
    import multiprocessing as mp, sys
    import numba, numpy as np
    sys.path[:0] = [{root!r}, {tests!r}]

    @numba.njit(parallel=True)
    def pool_user(a):                    # the parent's own OpenMP use, before any fork
        for i in numba.prange(a.size):
            a[i] += 1.0

    def child(q):
        from _state import training_run  # darknet_bn imported here, in the child
        from darknet_bn import _jit
        q.put((training_run(0, "fused", steps=8).tobytes(),
               _jit.threading_info()["serial_after_fork"]))

    if __name__ == "__main__":
        pool_user(np.zeros(100000))
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        try:
            got, serial = q.get(timeout=240)
        except Exception:
            got, serial = None, None
        p.join(60)
        if p.is_alive():
            p.kill()
        from _state import training_run
        from darknet_bn import _jit
        print(p.exitcode, got == training_run(0, "fused", steps=8).tobytes(), serial,
              numba.threading_layer(), _jit.PARALLEL)
""")


def test_first_import_in_a_forked_worker(tmp_path):
    """A multiprocessing worker started with fork from a process that used OpenMP but
    never imported darknet_bn (the hook was not there at the fork): importing it there
    switches to the serial builds under omp, and the bits are the parent's."""
    script = tmp_path / "late_import.py"
    tests = Path(__file__).resolve().parent
    script.write_text(LATE_IMPORT.format(root=str(tests.parent), tests=str(tests)))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=600, cwd=tests.parent)
    assert r.returncode == 0, r.stderr[-2000:]
    exitcode, same, serial, layer, parallel = r.stdout.split()
    assert exitcode == "0", f"the worker died ({exitcode}):\n{r.stderr[-2000:]}"
    assert same == "True"
    assert serial == str(layer == "omp" and parallel == "True")


@pytest.mark.slow          # compiles every kernel and its serial build on a cold cache (2 min)
def test_warmup_serial_puts_a_forked_childs_builds_in_the_cache():
    """``warmup(serial=True)`` compiles the serial builds as well, under the names a
    switched child loads them by: a new serial twin then loads from the cache."""
    parallel = [(d, sigs) for d, sigs in _jit.KERNELS if d.targetoptions.get("parallel")]
    if not parallel:
        pytest.skip("the kernels are serial builds already in this process")
    every = sum(len(sigs) for _, sigs in _jit.KERNELS)
    assert _jit.warmup() == every
    assert _jit.warmup(serial=True) == every + sum(len(sigs) for _, sigs in parallel)
    for dispatcher, sigs in parallel[:3]:
        twin = _jit._serial_twin(dispatcher)
        twin.compile(sigs[0])
        assert not twin.targetoptions.get("parallel")
        assert sum(twin.stats.cache_hits.values()) == 1, dispatcher.py_func.__qualname__
