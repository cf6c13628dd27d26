"""A yolov3-tiny PyTorch port laid out the way hand-written ports lay it out, and the two
ways such ports get Darknet's ``.weights``.  Shared by the pairing and ``.weights`` tests.

``Yolov3TinyPort`` (cfg ``data/golden/cfg/alexeyab/yolov3-tiny.cfg``; pjreddie's
fork reads the same cfg) has ``backbone``/``neck``/``head`` submodules whose
names carry no cfg index, registered in an order unlike the cfg's: the neck holds
cfg layer 13 and the route branch's 1x1 conv (cfg 18), so 18 is registered before
the head's 3x3 conv (cfg 14).  Its forward follows the cfg's graph with Python
control flow (loops, ``if`` on the stage index and on ``self.training``).

- ``fill_darknet(port, net, path, fork)``: correct, each cfg layer from its own
  blocks (``read_weights``), batchnorms in the fork's exact torch form
  (``batchnorm_state_dict``: pjreddie's variance remap with eps 0);
- ``fill_in_module_order(port, path, fork)``: what field loaders do, reading the
  blocks one after another in the order the modules are registered; on this port
  layers 14, 15 and 18 get floats from other places in the file.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from darknet_bn.darknet import parse_cfg
from darknet_bn.darknet.export import batchnorm_state_dict
from darknet_bn.darknet.weights import read_weights

CFG = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg" / "alexeyab" / \
    "yolov3-tiny.cfg"
HEADER_BYTES = 20
#: cfg index -> the port's module path of that layer's block.
CFG_LAYERS = {0: "backbone.stages.0", 2: "backbone.stages.1", 4: "backbone.stages.2",
              6: "backbone.stages.3", 8: "backbone.stages.4", 10: "backbone.stages.5",
              12: "backbone.stages.6", 13: "neck.reduce", 18: "neck.lateral",
              14: "head.big", 15: "head.big_out", 21: "head.small", 22: "head.small_out"}
#: The layers a module-order loader fills from the wrong place.
MISREAD_LAYERS = (14, 15, 18)


class ConvBlock(nn.Module):
    """Conv, batchnorm, leaky (``bn=True``) or a conv with bias, linear."""

    def __init__(self, c_in, c_out, size, bn=True):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, size, 1, size // 2, bias=not bn)
        self.bn = nn.BatchNorm2d(c_out) if bn else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = F.leaky_relu(self.bn(x), 0.1)
        return x


class Backbone(nn.Module):
    def __init__(self):
        super().__init__()
        widths = [3, 16, 32, 64, 128, 256, 512, 1024]
        self.stages = nn.ModuleList(ConvBlock(a, b, 3) for a, b in zip(widths, widths[1:]))

    def forward(self, x):
        route = None
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == 4:
                route = x                         # cfg layer 8, read by the route at 20
            if i < 5:
                x = F.max_pool2d(x, 2, 2)
            elif i == 5:
                x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)
        return x, route


class Neck(nn.Module):
    def __init__(self):
        super().__init__()
        self.reduce = ConvBlock(1024, 256, 1)     # cfg 13
        self.lateral = ConvBlock(256, 128, 1)     # cfg 18, registered before the head's 14

    def forward(self, x, route):
        p5 = self.reduce(x)
        up = F.interpolate(self.lateral(p5), scale_factor=2, mode="nearest")
        return p5, torch.cat([up, route], 1)


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.big = ConvBlock(256, 512, 3)         # cfg 14
        self.big_out = ConvBlock(512, 255, 1, bn=False)    # cfg 15
        self.small = ConvBlock(384, 256, 3)       # cfg 21
        self.small_out = ConvBlock(256, 255, 1, bn=False)  # cfg 22

    def forward(self, p5, p4):
        outs = []
        for block, out, x in ((self.big, self.big_out, p5), (self.small, self.small_out, p4)):
            y = out(block(x))
            if not self.training:
                b, _, h, w = y.shape
                y = y.view(b, 3, 85, h, w).permute(0, 1, 3, 4, 2).contiguous()
            outs.append(y)
        return outs


class Yolov3TinyPort(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = Backbone()
        self.neck = Neck()
        self.head = Head()

    def forward(self, x):
        x, route = self.backbone(x)
        p5, p4 = self.neck(x, route)
        return self.head(p5, p4)

    def block_of(self, index):
        return self.get_submodule(CFG_LAYERS[index])


def fill_darknet(port, net, path, fork):
    """Every cfg layer of ``port`` from its own blocks; batchnorms in the fork's exact
    torch form.  Returns the port in eval mode."""
    darknet = read_weights(net, path, dialect=fork, layer_weights=True)
    records = {rec.index: rec for rec in darknet.layers}
    raw = np.fromfile(path, dtype="<f4", offset=HEADER_BYTES)
    with torch.no_grad():
        for index in CFG_LAYERS:
            spec, block = net.layers[index], port.block_of(index)
            weights = raw[spec.offsets["weights"]:][:dict(spec.blocks)["weights"]]
            block.conv.weight.copy_(torch.from_numpy(weights.reshape(block.conv.weight.shape)))
            if block.bn is None:
                block.conv.bias.copy_(torch.from_numpy(
                    raw[spec.offsets["biases"]:][:spec.out_c].copy()))
                continue
            state, eps = batchnorm_state_dict(records[index], dialect=fork)
            block.bn.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in
                                      state.items()})
            block.bn.eps = eps
    return port.eval()


def fill_in_module_order(port, path, fork):
    """A field loader: the file's floats read one block after another in the order the
    port registers its modules (each conv block: biases, scales, rolling mean and
    variance, then weights), batchnorms in the fork's torch form.  Returns the port in
    eval mode."""
    from darknet_bn.dialects import get_dialect
    dialect = get_dialect(fork)
    raw = np.fromfile(path, dtype="<f4", offset=HEADER_BYTES)
    at = 0

    def take(n):
        nonlocal at
        at += n
        return torch.from_numpy(raw[at - n:at].copy())

    with torch.no_grad():
        for module in port.modules():
            if not isinstance(module, ConvBlock):
                continue
            conv, bn = module.conv, module.bn
            if bn is None:
                conv.bias.copy_(take(conv.out_channels))
            else:
                bias, scale, mean, var = (take(bn.num_features) for _ in range(4))
                var, eps = dialect.torch_form(var.double().numpy(), np.sqrt)
                bn.bias.copy_(bias)
                bn.weight.copy_(scale)
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(torch.from_numpy(np.asarray(var, np.float32)))
                bn.eps = eps
            conv.weight.copy_(take(conv.weight.numel()).reshape(conv.weight.shape))
    if at != raw.size:
        raise ValueError(f"fill_in_module_order: read {at} floats, the file has {raw.size}")
    return port.eval()


def port_net(fork):
    return parse_cfg(CFG, dialect=fork)
