"""Train a small CNN with Darknet's batchnorm in PyTorch, next to nn.BatchNorm2d.

    python examples/train_darknet_bn.py [--dialect alexeyab] [--steps 5]

Two copies of one model (same initial weights) train on the same synthetic
batches with ``torch.optim.SGD`` set up the way Darknet updates its weights:

- one keeps ``nn.BatchNorm2d`` (eps 1e-5, momentum 0.1: PyTorch's defaults);
- the other goes through ``convert_batchnorm(model, dialect=...)``: Darknet's
  training batchnorm (unbiased variance in the normalization, the fork's eps
  placement, rolling factor .01 for pjreddie / .1 for AlexeyAB, Darknet's backward).

Darknet's update as SGD.  A Darknet step sees ``batch`` images (the cfg's
``batch``) in ``subdivisions`` forward/backward passes of ``batch/subdivisions``
images, accumulating the gradients of the *summed* cost, then updates once with
``w += learning_rate/batch * (updates - decay*batch*w); updates *= momentum``.
That is ``SGD(lr=learning_rate/batch, momentum=momentum, dampening=0,
weight_decay=decay*batch)`` on the gradient of the summed loss (``reduction="sum"``)
accumulated over the subdivisions, with no decay on biases and batchnorm scales
(Darknet decays only conv/connected weights).  The rolling statistics are updated by
every forward, i.e. once per subdivision, as in Darknet.  (Same arithmetic in exact
numbers, not the same float32 rounding order as Darknet's axpy/scal.)
"""
import argparse
import copy

import torch
from torch import nn

from darknet_bn.torch import convert_batchnorm


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.LeakyReLU(0.1),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.LeakyReLU(0.1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def darknet_sgd(model, *, learning_rate=0.01, momentum=0.9, decay=0.0005, batch=16):
    """``torch.optim.SGD`` doing Darknet's update (see the module doc)."""
    decayed, plain = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_weight = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
            (decayed if is_weight else plain).append(p)
    return torch.optim.SGD([{"params": decayed, "weight_decay": decay * batch},
                            {"params": plain, "weight_decay": 0.0}],
                           lr=learning_rate / batch, momentum=momentum, dampening=0)


def batches(steps, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    offset = torch.tensor([0.5, -0.2, 0.1]).view(1, 3, 1, 1)
    for _ in range(steps):
        yield (torch.randn(batch, 3, 16, 16, generator=g) * 2 + offset,
               torch.randint(0, 10, (batch,), generator=g))


def train(model, steps, *, batch=16, subdivisions=2, seed=1):
    """``steps`` Darknet steps of ``batch`` images in ``subdivisions`` passes; returns
    the summed loss of each step."""
    opt = darknet_sgd(model, batch=batch)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    model.train()
    losses = []
    for images, labels in batches(steps, batch, seed):
        opt.zero_grad()
        total = 0.0
        for x, y in zip(images.chunk(subdivisions), labels.chunk(subdivisions)):
            loss = loss_fn(model(x), y)
            loss.backward()                      # gradients accumulate over subdivisions
            total += loss.item()
        opt.step()
        losses.append(total)
    return losses


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dialect", choices=("pjreddie", "alexeyab"), default="pjreddie")
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args(argv)
    reference = make_model()
    darknet = convert_batchnorm(copy.deepcopy(reference), dialect=a.dialect)
    print(darknet[1])
    losses_t = train(reference, a.steps)
    losses_d = train(darknet, a.steps)
    print("summed loss per step   nn.BatchNorm2d:", " ".join(f"{v:.6f}" for v in losses_t))
    print(f"                       Darknet {a.dialect}:", " ".join(f"{v:.6f}" for v in losses_d))
    for i in (1, 5):
        t, d = reference[i], darknet[i]
        print(f"\nlayer {i}: rolling statistics after {a.steps} steps "
              f"({int(d.num_batches_tracked)} forwards), first 4 channels")
        print("  running_mean  nn.BatchNorm2d:", t.running_mean[:4].tolist())
        print(f"                Darknet {a.dialect}:", d.running_mean[:4].tolist())
        print("  running_var   nn.BatchNorm2d:", t.running_var[:4].tolist())
        print(f"                Darknet {a.dialect}:", d.running_var[:4].tolist())
        print("  max |difference|: mean %.3g, var %.3g" % (
            (t.running_mean - d.running_mean).abs().max(),
            (t.running_var - d.running_var).abs().max()))
    keep = {"pjreddie": ".99", "alexeyab": ".9"}[a.dialect]
    print(f"\nWhy they differ: per forward Darknet {a.dialect} keeps {keep} of the rolling"
          "\nstatistics (nn.BatchNorm2d with momentum 0.1 keeps .9), and it normalizes with"
          "\nthe unbiased batch variance and its own eps placement, with Darknet's backward:"
          "\nthe weights feeding later layers drift apart, and so do their statistics.")
    return reference, darknet


if __name__ == "__main__":
    main()
