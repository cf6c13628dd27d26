"""``.weights`` loaders as PyTorch YOLO ports write them, each with one real misread
bug, and the files they misread.

``load_weights(model, net, path, ...)`` fills a ``CfgNet`` (``benchmarks/cfg_model.py``)
the way eriklindernoren/PyTorch-YOLOv3's ``load_darknet_weights`` and its relatives
do: skip a header of ``header_ints`` int32 (the bug: 4 or 5 whatever the version,
YAD2K #104, pytorch-caffe-darknet-convert #7), ``np.fromfile`` the rest, then walk
the layers with a pointer.  The bugs, one keyword each:

- ``header_ints``: 4 (16 bytes) or 5 (20 bytes) whatever the file's version says;
- ``bn_order``: the order the batchnorm vectors are read in (gamma/beta swapped:
  ``("weight", "bias", "running_mean", "running_var")``, tensorflow-yolo-v3 #38);
- ``bias_with_bn``: a conv bias read (and dropped) for a conv that has batchnorm;
- ``registration_order``: the layers walked in the model's module registration
  order (``named_children``), not the cfg's;
- ``skip_conv_bias``: no bias read for a conv without batchnorm (a block missing);
- ``kernel``: ``"transposed"`` or ``"flipped"``: each kernel stored in that layout.

A read past the end of the file gives zeros (the loader reads into a zero-filled
buffer).  ``remap_eps``: store darknet_bn's exact pjreddie form (running_var =
(sqrt(v) + eps)^2, module eps 0), as a correct pjreddie conversion does.
"""
import numpy as np
import torch

from _check_models import synthesize_weights
from darknet_bn.darknet import parse_cfg

DARKNET_BN_ORDER = ("bias", "weight", "running_mean", "running_var")
GAMMA_BETA_SWAPPED = ("weight", "bias", "running_mean", "running_var")
MEAN_VAR_SWAPPED = ("bias", "weight", "running_var", "running_mean")
KERNEL_LAYOUTS = {"transposed": lambda k: k.transpose(2, 3),
                  "flipped": lambda k: k.flip(2, 3)}


def synthesize(cfg, fork, path, seed, minor=2):
    """A ``.weights`` file of version 0.``minor`` (a 20-byte header from 0.2 on, 16 bytes
    before: pjreddie's older files) with random blocks (``synthesize_weights``)."""
    net = synthesize_weights(cfg, fork, path, seed)
    if minor < 2:
        raw = open(path, "rb").read()
        header = np.array([0, minor, 0], "<i4").tobytes() + np.array([0], "<u4").tobytes()
        with open(path, "wb") as f:
            f.write(header + raw[20:])
    return net


class IndexedModuleList(torch.nn.ModuleList):
    """A ``ModuleList`` iterated by index, whatever order its modules were registered
    in (``named_children`` and the state_dict follow the registration)."""

    def __iter__(self):
        return (self._modules[str(i)] for i in range(len(self)))


def permute_registration(model, first, before):
    """``model``'s ``module_list`` with layer ``first`` registered right before layer
    ``before``; the forward still runs the layers in cfg order."""
    model.module_list.__class__ = IndexedModuleList
    blocks = model.module_list._modules
    items = list(blocks.items())
    moved = [kv for kv in items if kv[0] == str(first)]
    rest = [kv for kv in items if kv[0] != str(first)]
    at = [k for k, _ in rest].index(str(before))
    blocks.clear()
    for key, value in rest[:at] + moved + rest[at:]:
        blocks[key] = value
    return model


def _layers(model, net, registration_order):
    if registration_order:
        return [(net.layers[int(name)], block)
                for name, block in model.module_list.named_children()]
    return list(zip(net.layers, model.module_list))


def load_weights(model, net, path, *, header_ints=5, bn_order=DARKNET_BN_ORDER,
                 bias_with_bn=False, registration_order=False, skip_conv_bias=False,
                 kernel=None, remap_eps=None):
    """Fill ``model`` (a module_list ``CfgNet`` of ``net``) from ``path`` as a port's
    loader does, with the bug the keywords choose (the defaults: a correct load of a
    version 0.2 file)."""
    with open(path, "rb") as f:
        np.fromfile(f, dtype=np.int32, count=header_ints)
        stream = np.fromfile(f, dtype=np.float32)
    ptr = 0

    def take(count):
        nonlocal ptr
        out = np.zeros(count, np.float32)
        chunk = stream[ptr:ptr + count]
        out[:chunk.size] = chunk
        ptr += count
        return torch.from_numpy(out)

    def fill_bn(bn, blocks):
        for name in blocks:
            value = take(bn.num_features)
            getattr(bn, name).data.copy_(value)

    with torch.no_grad():
        for spec, block in _layers(model, net, registration_order):
            conv = next((m for m in block if isinstance(m, (torch.nn.Conv2d,
                                                            torch.nn.Linear))), None)
            bn = next((m for m in block if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)),
                      None)
            if spec.section == "convolutional":
                if bn is not None:
                    if bias_with_bn:
                        take(conv.out_channels)
                    fill_bn(bn, bn_order)
                elif not skip_conv_bias:
                    conv.bias.data.copy_(take(conv.out_channels))
                weights = take(conv.weight.numel()).view_as(conv.weight)
                if kernel is not None:
                    weights = KERNEL_LAYOUTS[kernel](weights)
                conv.weight.data.copy_(weights)
            elif spec.section == "connected":
                biases = take(conv.out_features)
                conv.weight.data.copy_(take(conv.weight.numel()).view_as(conv.weight))
                if bn is None:
                    conv.bias.data.copy_(biases)
                else:
                    bn.bias.data.copy_(biases)
                    fill_bn(bn, [b for b in DARKNET_BN_ORDER if b != "bias"])
            elif spec.section == "batchnorm":
                blocks = bn_order if "biases" in dict(spec.blocks) else \
                    [b for b in bn_order if b != "bias"]
                fill_bn(bn, blocks)
            if bn is not None and remap_eps is not None:
                var = bn.running_var.double()
                bn.running_var.copy_(((var.sqrt() + float(np.float32(remap_eps))) ** 2).float())
                bn.eps = 0.0
    return model.eval()


def build_model(cfg, fork, eps=1e-5):
    """An empty module_list ``CfgNet`` of ``cfg`` (seeded initialisation)."""
    from benchmarks.cfg_model import CfgNet
    net = parse_cfg(cfg, dialect=fork)
    torch.manual_seed(0)
    return CfgNet(net, "module_list", eps), net
