"""DistributedDataParallel, gloo on CPU, 2 processes on 127.0.0.1.

Darknet's multi-GPU training keeps every replica's batchnorm statistics to itself:
with ``broadcast_buffers=False`` each rank's BN outputs and rolling statistics
must equal, bitwise, a single-process run on that rank's shard, while DDP
averages the gradients of the conv weights and of the batchnorm weights and biases
(each rank's gradient halved, then summed: ``g0/2 + g1/2``, bitwise; AlexeyAB's
bias gradients are zeros).  The ranks run as child processes with a time limit;
they are killed on failure or timeout, and the port (found by binding port 0)
is released before they start.  Each rank also runs the single-process
references itself, so that they share its thread settings (the conv gradients'
bits depend on the thread count, and Numba's OpenMP layer and torch share libgomp).
"""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.distributed.is_available():
    pytest.skip("torch.distributed is not available in this build", allow_module_level=True)

import _ddp_worker as worker  # noqa: E402
from _compare import assert_bits  # noqa: E402

TIMEOUT = 180          # seconds for both ranks together


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _np(t):
    return t.detach().numpy().reshape(-1)


def test_ddp_two_ranks(tmp_path):
    """Both forks, one launch of the two ranks."""
    t0 = time.perf_counter()
    port = _free_port()
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(worker.__file__).parent),
                                          os.environ.get("PYTHONPATH", "")])}
    outs = [tmp_path / f"rank{r}.pt" for r in range(worker.WORLD)]
    procs = [subprocess.Popen([sys.executable, worker.__file__, str(r), str(worker.WORLD),
                               str(port), str(outs[r])],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
             for r in range(worker.WORLD)]
    try:
        deadline = time.monotonic() + TIMEOUT
        logs = []
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            logs.append(out)
        for r, p in enumerate(procs):
            assert p.returncode == 0, f"rank {r} exited with {p.returncode}:\n{logs[r]}"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = [torch.load(o) for o in outs]
    print(f"DDP: 2 ranks, every fork, in {time.perf_counter() - t0:.1f} s")
    for dialect in worker.DIALECTS:
        checks = []
        for r, res in enumerate(results):
            ddp, single = res[dialect]["ddp"], res[dialect]["single"]
            for name, value in single[r].items():
                if name.startswith("bn") and ".grad" not in name:      # rank-local
                    checks.append((f"rank{r} {name}", _np(ddp[name]), _np(value)))
            for name in (f"{g}{t}" for g, _ in worker.grads(worker.make_model(dialect))
                         for t in range(worker.STEPS)):
                a, b = single[0][name], single[1][name]
                if dialect != "pjreddie" and name.startswith("bn") and "bias" in name:
                    # AlexeyAB's (and hank-ai's) backward leaves bias_updates alone: zeros
                    assert not a.any() and not b.any() and not ddp[name].any()
                    continue
                assert not torch.equal(a, b)
                checks.append((f"rank{r} {name} (averaged)", _np(ddp[name]),
                               _np(a / worker.WORLD + b / worker.WORLD)))
        assert_bits(checks, context=dialect)
