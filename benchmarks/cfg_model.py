"""A PyTorch model with the layer structure of a Darknet ``.cfg``, for ``targets.py``.

``build(cfg, dialect)`` parses the cfg with ``darknet_bn.parse_cfg`` and builds its
``[convolutional]`` (``nn.Conv2d``, then ``nn.BatchNorm2d`` and ``LeakyReLU(0.1)``
when ``batch_normalize=1``; linear otherwise), ``[route]`` (concatenation of the
listed layers' outputs; with ``groups`` > 1 the last channel group, as
yolov4-tiny's ``group_id=1``), ``[maxpool]``, ``[upsample]`` (nearest) and
``[yolo]`` (the head's input is a model output; no loss) sections, with the
shapes Darknet infers (checked on a dry run).  Activations other than leaky and
linear are not modelled: every batch-normalized convolution uses leaky, as in
the yolov4-tiny cfg.  Weights are PyTorch's default initialisation (seeded), not
a ``.weights`` file: the model exists to be timed.
"""
import torch
from torch import nn

import darknet_bn

SECTIONS = ("convolutional", "route", "maxpool", "upsample", "yolo")


class CfgModel(nn.Module):
    def __init__(self, net, momentum):
        super().__init__()
        self.specs = net.layers
        mods = []
        for spec in net.layers:
            if spec.section not in SECTIONS:
                raise ValueError(f"cfg_model: [{spec.section}] (layer {spec.index}) is not "
                                 f"modelled; sections: {SECTIONS}")
            if spec.section == "convolutional":
                bn = bool(spec.batch_normalize)
                parts = [nn.Conv2d(spec.c, spec.filters, spec.size, spec.stride,
                                   padding=spec.size // 2, groups=spec.groups, bias=not bn)]
                if bn:
                    parts += [nn.BatchNorm2d(spec.filters, eps=1e-5, momentum=momentum),
                              nn.LeakyReLU(0.1)]
                mods.append(nn.Sequential(*parts))
            elif spec.section == "maxpool":
                mods.append(nn.MaxPool2d(spec.size, spec.stride))
            elif spec.section == "upsample":
                mods.append(nn.Upsample(scale_factor=spec.stride, mode="nearest"))
            else:
                mods.append(nn.Identity())
        self.layers = nn.ModuleList(mods)

    def forward(self, x, check=False):
        """The ``[yolo]`` heads' inputs; ``check``: compare every layer's output shape
        with Darknet's (ValueError on a mismatch)."""
        outs, heads = [], []
        for spec, mod in zip(self.specs, self.layers):
            if spec.section == "route":
                x = torch.cat([outs[i] for i in spec.input_layers], 1)
                if spec.groups > 1:
                    x = x.chunk(spec.groups, 1)[-1]
            elif spec.section == "yolo":
                heads.append(x)
            else:
                x = mod(x)
            if check and tuple(x.shape[1:]) != (spec.out_c, spec.out_h, spec.out_w):
                raise ValueError(f"cfg_model: layer {spec.index} [{spec.section}] gives "
                                 f"{tuple(x.shape[1:])}, Darknet "
                                 f"{(spec.out_c, spec.out_h, spec.out_w)}")
            outs.append(x)
        return heads


def build(cfg, dialect, seed=0):
    """The cfg's model with ``nn.BatchNorm2d`` (momentum as the fork's rolling factor);
    shapes checked against Darknet's on a one-image dry run."""
    net = darknet_bn.parse_cfg(cfg, dialect=dialect)
    torch.manual_seed(seed)
    model = CfgModel(net, 0.01 if dialect == "pjreddie" else 0.1)
    with torch.no_grad():
        model.eval()(torch.zeros(1, net.c, net.h, net.w), check=True)
    return model, (net.c, net.h, net.w)
