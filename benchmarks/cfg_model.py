"""A PyTorch model with the layer structure of a Darknet ``.cfg``: ``targets.py`` times
it, and the check and ``.weights`` tests pair and convert it.

``CfgNet(net, style)`` builds a parsed cfg's network the way PyTorch YOLO
implementations write it (``style`` ``"module_list"``: ``module_list.N.conv_N`` /
``batch_norm_N``; ``"models"``: ``models.N.conv1`` / ``bn1``), with ``nn.Conv2d``,
``nn.Linear``, ``nn.BatchNorm2d``/``1d`` and leaky activations: ``[convolutional]``,
``[connected]``, ``[batchnorm]``, ``[route]`` (with ``groups`` > 1 the last channel
group, as yolov4-tiny's ``group_id=1``), ``[shortcut]``, ``[maxpool]`` (Darknet's
padding), ``[upsample]`` (nearest), ``[avgpool]`` and the ``[yolo]`` heads (their
inputs are the model's outputs; no loss).  Activations other than leaky and linear
are not modelled: every batch-normalized layer uses leaky, as in the cfgs used.

``build(cfg, dialect)`` is the timed model: PyTorch's default initialisation
(seeded), not a ``.weights`` file, with the shapes checked against Darknet's on a
dry run.
"""
import torch
from torch import nn
from torch.nn import functional

import darknet_bn
from darknet_bn.dialects import get_dialect

#: The batch-normalization modules a ``CfgNet`` holds (``DarknetBatchNorm2d``/``1d`` after
#: ``convert_batchnorm`` are subclasses).
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class _Act(nn.Module):
    def forward(self, x):
        return functional.leaky_relu(x, 0.1)


class CfgNet(nn.Module):
    """A cfg's network as PyTorch YOLO implementations write it (``style``
    ``"module_list"`` or ``"models"``), with ``nn.BatchNorm2d``/``1d``."""

    def __init__(self, net, style="module_list", eps=1e-5):
        super().__init__()
        self.specs = net.layers
        self.style = style
        blocks = nn.ModuleList()
        for spec in net.layers:
            block = nn.Sequential()
            i = spec.index
            conv_name, bn_name, act_name = ((f"conv_{i}", f"batch_norm_{i}", f"leaky_{i}")
                                            if style == "module_list" else
                                            ("conv1", "bn1", "leaky1"))
            if spec.section == "convolutional":
                same = spec.size // 2
                pad = same if (spec.h + 2 * same - spec.size) // spec.stride + 1 == spec.out_h \
                    else 0
                block.add_module(conv_name, nn.Conv2d(spec.c, spec.filters, spec.size,
                                                      spec.stride, pad, groups=spec.groups,
                                                      bias=not spec.bn_channels))
                if spec.bn_channels:
                    block.add_module(bn_name, nn.BatchNorm2d(spec.filters, eps=eps))
                    block.add_module(act_name, _Act())
            elif spec.section == "connected":
                block.add_module("flatten", nn.Flatten())
                block.add_module(conv_name, nn.Linear(spec.inputs, spec.outputs,
                                                      bias=not spec.bn_channels))
                if spec.bn_channels:
                    block.add_module(bn_name, nn.BatchNorm1d(spec.outputs, eps=eps))
            elif spec.section == "batchnorm":
                block.add_module(bn_name, nn.BatchNorm2d(spec.c, eps=eps))
            blocks.append(block)
        setattr(self, style, blocks)

    def forward(self, x, check=False):
        """The output (the ``[yolo]`` heads' inputs where the cfg has heads); ``check``:
        compare every layer's output shape with Darknet's (ValueError on a mismatch)."""
        outputs, heads = [], []
        blocks = getattr(self, self.style)
        for spec, block in zip(self.specs, blocks):
            section = spec.section
            if section in ("convolutional", "connected", "batchnorm"):
                x = block(x)
            elif section == "maxpool":
                total = spec.size - 1
                before, after = total // 2, total - total // 2
                x = functional.pad(x, (before, after, before, after), value=-6e4)
                x = functional.max_pool2d(x, spec.size, spec.stride)
            elif section == "upsample":
                x = functional.interpolate(x, scale_factor=spec.stride, mode="nearest")
            elif section == "route":
                parts = [outputs[j] for j in spec.input_layers]
                x = torch.cat(parts, 1) if len(parts) > 1 else parts[0]
                if spec.groups > 1:
                    x = torch.chunk(x, spec.groups, 1)[-1]
            elif section == "shortcut":
                x = x + outputs[spec.input_layers[0]]
            elif section in ("yolo", "region", "detection"):
                heads.append(x)
            elif section == "avgpool":
                x = x.mean((2, 3), keepdim=True)
            if check and tuple(x.shape[1:]) != (spec.out_c, spec.out_h, spec.out_w)[
                    :x.dim() - 1]:
                raise ValueError(f"cfg_model: layer {spec.index} [{spec.section}] gives "
                                 f"{tuple(x.shape[1:])}, Darknet "
                                 f"{(spec.out_c, spec.out_h, spec.out_w)}")
            outputs.append(x)
        return tuple(heads) if heads else x

    def modules_of(self, index):
        """``(conv or linear, batchnorm)`` of cfg layer ``index`` (None where absent)."""
        conv = bn = None
        for module in getattr(self, self.style)[index]:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                conv = module
            elif isinstance(module, BATCHNORMS):
                bn = module
        return conv, bn


def build(cfg, dialect, seed=0):
    """The cfg's model with ``nn.BatchNorm2d`` (momentum: the fork's rolling factor);
    shapes checked against Darknet's on a one-image dry run."""
    net = darknet_bn.parse_cfg(cfg, dialect=dialect)
    torch.manual_seed(seed)
    model = CfgNet(net)
    momentum = float(get_dialect(dialect).rolling_new)
    for module in model.modules():
        if isinstance(module, BATCHNORMS):
            module.momentum = momentum
    with torch.no_grad():
        model.eval()(torch.zeros(1, net.c, net.h, net.w), check=True)
    return model, (net.c, net.h, net.w)
