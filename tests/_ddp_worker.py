"""One rank of tests/test_torch_ddp.py: ``python _ddp_worker.py RANK WORLD PORT OUT``.

For each fork in ``DIALECTS``:

trains the shared model under DistributedDataParallel (gloo, 127.0.0.1,
``broadcast_buffers=False``) on its shard of the batch for ``STEPS`` forward and
backward passes, and saves the BN outputs, rolling statistics and gradients.
The test starts it with NUMBA_NUM_THREADS=1 and OMP_NUM_THREADS=1 (two ranks
share the machine's cores); the test process imports it for the model and data.
"""
import sys
from datetime import timedelta

import torch
from torch import nn

from darknet_bn.torch import convert_batchnorm

STEPS = 2
WORLD = 2
SHARD = 3            # images per rank
DIALECTS = ("pjreddie", "alexeyab", "hankai")


def make_model(dialect):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                          nn.LeakyReLU(0.1), nn.Conv2d(8, 4, 3, bias=False), nn.BatchNorm2d(4))
    return convert_batchnorm(model, dialect=dialect)


def shard(step, rank):
    """The step's input and output gradient for ``rank`` (the full batch split in two)."""
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(WORLD * SHARD, 3, 10, 10, generator=g) * 2 + 0.5
    grad = torch.randn(WORLD * SHARD, 4, 8, 8, generator=g)
    return x[rank * SHARD:(rank + 1) * SHARD], grad[rank * SHARD:(rank + 1) * SHARD]


def grads(model):
    """``(name, parameter)`` of every parameter whose gradient DDP averages."""
    return [(f"conv{i} weight.grad", model[i].weight) for i in (0, 3)] + \
        [(f"bn{i} {p}.grad", getattr(model[i], p)) for i in (1, 4) for p in ("weight", "bias")]


def run(model, forward, rank):
    """STEPS passes; returns {name: tensor} of what the test compares (the conv and
    batchnorm gradients of each pass, zeroed after it)."""
    outputs = {}
    hooks = [model[i].register_forward_hook(
        lambda mod, args, out, i=i: outputs.setdefault(i, []).append(out.detach().clone()))
        for i in (1, 4)]
    result = {}
    for step in range(STEPS):
        x, grad = shard(step, rank)
        forward(x).backward(grad)
        for name, p in grads(model):
            result[f"{name}{step}"] = p.grad.clone()
        model.zero_grad()
    for h in hooks:
        h.remove()
    result.update({f"bn{i} output{t}": o for i, outs in outputs.items()
                   for t, o in enumerate(outs)})
    for i in (1, 4):
        result[f"bn{i} running_mean"] = model[i].running_mean.clone()
        result[f"bn{i} running_var"] = model[i].running_var.clone()
    return result


def main(rank, world, port, out):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                                         rank=rank, world_size=world,
                                         timeout=timedelta(seconds=60))
    try:
        results = {}
        for dialect in DIALECTS:
            # The single-process references, run here so that they use this process's
            # thread settings: Numba's OpenMP layer and torch share libgomp, and the
            # conv gradients' bits depend on the thread count.
            single = []
            for r in range(world):
                model = make_model(dialect)
                single.append(run(model, model, r))
            model = make_model(dialect)
            ddp = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
            results[dialect] = {"ddp": run(model, ddp, rank), "single": single}
        torch.save(results, out)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
