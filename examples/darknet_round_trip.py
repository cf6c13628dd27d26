"""Darknet to PyTorch and back: .cfg/.weights -> PyTorch -> one training step -> .weights -> check.

    python examples/darknet_round_trip.py [--dialect alexeyab] [--out DIR]

1. ``BnZoo`` is ``data/golden/cfg/<fork>/bn-zoo.cfg`` written as a PyTorch model, the
   way a converter writes one (conv layers with and without batchnorm, standalone
   ``[batchnorm]`` layers, shortcut, route, upsample, maxpool, ``[connected]`` layers).
   ``load_darknet_weights`` fills it from the fork's ``bn-zoo.weights``.
2. Saved back untouched, the file is byte-identical to the input.
3. ``convert_batchnorm`` (Darknet's batchnorm), one SGD step on a synthetic batch, then
   ``save_darknet_weights`` with the input's header.
4. The fine-tuned model, exported to ONNX, is checked against the new ``.weights`` by
   ``darknet-bn check``: every layer within the tolerance (exit status 0).
"""
import argparse
import filecmp
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from darknet_bn.torch import convert_batchnorm, load_darknet_weights, save_darknet_weights

DATA = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg"


def conv_bn(c_in, c_out, size):
    """``[convolutional] batch_normalize=1 pad=1``: conv without bias, batchnorm."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, size, 1, size // 2, bias=False),
                         nn.BatchNorm2d(c_out))


class BnZoo(nn.Module):
    """bn-zoo.cfg; the attributes are named after the cfg's layer indices."""

    def __init__(self):
        super().__init__()
        self.conv_0 = conv_bn(3, 8, 3)
        self.batchnorm_1 = nn.BatchNorm2d(8)
        self.conv_3 = conv_bn(8, 16, 3)
        self.conv_4 = nn.Conv2d(16, 16, 1)                  # linear, with its own bias
        self.conv_7 = conv_bn(24, 12, 1)
        self.batchnorm_9 = nn.BatchNorm2d(12)
        self.connected_11 = nn.Sequential(nn.Linear(12 * 8 * 8, 10, bias=False),
                                          nn.BatchNorm1d(10))
        self.connected_12 = nn.Linear(10, 4)

    def forward(self, x):
        leaky = lambda t: F.leaky_relu(t, 0.1)              # noqa: E731
        x1 = self.batchnorm_1(leaky(self.conv_0(x)))
        x2 = F.max_pool2d(x1, 2, 2)
        x3 = leaky(self.conv_3(x2))
        x5 = self.conv_4(x3) + x3                           # [shortcut] from=-2
        x6 = torch.cat((x5, x2), 1)                         # [route] layers=-1,-4
        x7 = leaky(self.conv_7(x6))
        x9 = self.batchnorm_9(F.interpolate(x7, scale_factor=2, mode="nearest"))
        # [maxpool] size=4 stride=4: Darknet pads size-1 cells, (size-1)/2 before
        x10 = F.max_pool2d(F.pad(x9, (1, 2, 1, 2), value=float("-inf")), 4, 4)
        x11 = leaky(self.connected_11(x10.flatten(1)))      # Darknet's c, h, w order
        return self.connected_12(x11)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dialect", choices=("pjreddie", "alexeyab"), default="alexeyab")
    p.add_argument("--out", type=Path, default=Path("out/round_trip"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = DATA / args.dialect / "bn-zoo.cfg"
    weights = DATA / args.dialect / "bn-zoo.weights"
    torch.manual_seed(0)

    model = BnZoo()
    load_darknet_weights(model, cfg, weights, dialect=args.dialect)
    untouched = args.out / "untouched.weights"
    save_darknet_weights(model, cfg, untouched, dialect=args.dialect, header_from=weights)
    same = filecmp.cmp(weights, untouched, shallow=False)
    print(f"1. {weights.name} -> PyTorch -> {untouched.name}: "
          f"{'byte-identical' if same else 'DIFFERENT'}")

    model = convert_batchnorm(model, dialect=args.dialect)
    if args.dialect == "pjreddie":
        # pjreddie's [batchnorm] layers have no bias in the file: keep it at zero
        for bn in (model.batchnorm_1, model.batchnorm_9):
            bn.bias.requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x, target = torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))
    loss = nn.functional.cross_entropy(model(x), target, reduction="sum")
    loss.backward()
    optimizer.step()
    tuned = args.out / "tuned.weights"
    save_darknet_weights(model, cfg, tuned, dialect=args.dialect, header_from=weights)
    print(f"2. one training step (loss {loss.item():.4f}) -> {tuned.name}")

    model.eval()
    onnx_path = args.out / "tuned.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(onnx_path))
    command = ["darknet-bn", "check", str(cfg), str(tuned), str(onnx_path),
               "--dialect", args.dialect]
    print("3. " + " ".join(command))
    status = subprocess.call([sys.executable, "-m", "darknet_bn"] + command[1:])
    return 0 if same and status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
