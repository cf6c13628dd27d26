"""Torch models as units: state_dicts (``read_state_dict``) and live modules (``read_module``).

A state_dict's parameter groups (by module prefix) and a module's conv/linear
and batchnorm submodules become ``ConvUnit``/``DenseUnit``/``BatchNormUnit``s
in the model's order, each with the cfg index its name carries, if any
(``cfg_index_in_name``).  A live module's data flow is traced on one forward
(``trace_module``) when the caller gives the probe's shape (``probe_shape(net)``).
"""
import numpy as np

from ..._extras import missing_package
from ..._validate import error_text
from ...dialects import Dialect
from ..kinds import STATE_DICT, TORCH, file_kind, pickled_classes, pickled_module_class
from .units import (MODEL_INPUT, BatchNormUnit, CheckError, ConvUnit, DenseUnit, ModelUnits,
                    as_float64, cfg_index_in_name, consumers_of, narrowest, precision_of)

def _numpy(tensor):
    """A torch tensor as a CPU numpy array (float32 for floats narrower than that) and
    its precision."""
    import torch
    t = tensor.detach()
    precision = precision_of(t.dtype)
    if t.is_floating_point() and t.dtype != torch.float64:
        t = t.to("cpu", torch.float32)
    return t.cpu().numpy(), precision


def linear_unit(name, w, b, precision, form):
    """A ``ConvUnit`` (4-D weight) or ``DenseUnit`` (2-D) of a torch weight and bias."""
    cls = ConvUnit if w.ndim == 4 else DenseUnit
    extra = {"kernel_shape": tuple(w.shape)} if w.ndim == 4 else {}
    return cls(name=name, weight=as_float64(w, name).reshape(w.shape[0], -1), bias=b,
               precision=precision, stored={"weight": w, "bias": b},
               form=form if form != "state_dict" else f"state_dict {cls.kind}", **extra)


def read_state_dict(state, eps, where):
    """``ModelUnits`` of a state_dict: parameter groups by module prefix, in key order."""
    import torch
    if not isinstance(state, dict):
        raise CheckError(f"{where}: not a state_dict (a dict of tensors) but "
                         f"{type(state).__name__}")
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    groups = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix, {})[leaf] = _numpy(value)
    units = []
    for prefix, g in groups.items():
        precision = narrowest(*(p for _, p in g.values()))
        if "running_mean" in g and "running_var" in g:
            channels = g["running_mean"][0].shape[0]
            arrays = {k: g[k][0] if k in g else default for k, default in
                      (("weight", np.ones(channels, np.float32)),
                       ("bias", np.zeros(channels, np.float32)),
                       ("running_mean", None), ("running_var", None))}
            if any(np.size(a) != channels for a in arrays.values()):
                raise CheckError(f"{where}: {prefix!r}: batchnorm tensors of sizes "
                                 f"{[np.size(a) for a in arrays.values()]}, not one per channel")
            scale, bias, mean, var = (as_float64(a, prefix).reshape(-1) for a in arrays.values())
            units.append(BatchNormUnit(name=prefix, weight=scale, bias=bias, mean=mean,
                                       var=var, eps=eps, precision=precision,
                                       form="state_dict batchnorm", stored=arrays))
        elif "weight" in g and g["weight"][0].ndim in (2, 4):
            w = g["weight"][0]
            b = g.get("bias", (None,))[0]
            if b is not None and b.size != w.shape[0]:
                raise CheckError(f"{where}: {prefix!r}: bias of {b.size} values for "
                                 f"{w.shape[0]} outputs")
            units.append(linear_unit(prefix, w, b, precision, "state_dict"))
    for i, u in enumerate(units):
        u.order, u.cfg_index = i, cfg_index_in_name(u.name)
    return ModelUnits(units, False, where, False)


def darknet_dialect(module):
    """The fork of a darknet_bn batchnorm module (``DarknetBatchNorm2d/1d``, or any
    ``_BatchNorm`` carrying a ``Dialect`` as its ``dialect``), else None.  ``check``
    sits below ``darknet_bn.torch`` in the package's layers, so it recognizes the
    modules by that public attribute rather than by importing their class."""
    dialect = getattr(module, "dialect", None)
    return dialect if isinstance(dialect, Dialect) else None


def read_module(module, where, net=None):
    """``ModelUnits`` of a live ``torch.nn.Module`` (read on the CPU, any device/dtype).

    darknet_bn's own batchnorm modules come first (their fork's normalize_cpu,
    described by its exact eps form); any other ``_BatchNorm`` (SyncBatchNorm
    included) by its parameters and eps, or, if its class overrides ``forward``,
    by running a float32 CPU copy on the probes.

    ``net`` (the cfg's ``Network``): the data flow between the units is traced on
    one forward (``trace_module``) on the smallest input the cfg allows
    (``probe_shape``), else on the cfg's own size, and the units carry it as
    ``sources``; when both fail, they carry only their registration order and
    ``notes`` says why.  None: order only.
    """
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.modules.conv import _ConvNd

    standard_forwards = {_BatchNorm.forward, torch.nn.SyncBatchNorm.forward}
    units = []
    for name, m in module.named_modules():
        dialect = darknet_dialect(m) if isinstance(m, _BatchNorm) else None
        if dialect is not None:
            arrays = {k: _numpy(getattr(m, k))[0] for k in
                      ("weight", "bias", "running_mean", "running_var")}
            scale, bias, mean, var = (as_float64(a, name) for a in arrays.values())
            with np.errstate(all="ignore"):
                var, eps = dialect.torch_form(var, np.sqrt)
            units.append(BatchNormUnit(name=name, weight=scale, bias=bias, mean=mean, var=var,
                                       eps=eps, module=m, stored=arrays,
                                       form=f"{type(m).__name__}({dialect.name})"))
        elif isinstance(m, _BatchNorm):
            if m.running_mean is None or m.running_var is None:
                raise CheckError(f"module {name!r}: a BatchNorm without running statistics "
                                 "(track_running_stats=False) normalizes with batch "
                                 "statistics; Darknet's inference uses rolling ones")
            channels = m.num_features
            read = {k: _numpy(getattr(m, k)) if getattr(m, k) is not None else
                    (np.full(channels, 1.0 if k == "weight" else 0.0, np.float32), "float32")
                    for k in ("weight", "bias", "running_mean", "running_var")}
            arrays = {k: a for k, (a, _) in read.items()}
            scale, bias, mean, var = (as_float64(a, name) for a in arrays.values())
            custom = type(m).forward not in standard_forwards
            units.append(BatchNormUnit(name=name, weight=scale, bias=bias, mean=mean, var=var,
                                       eps=float(m.eps), module=m, run_module=custom,
                                       form=type(m).__name__, stored=arrays,
                                       precision=narrowest(*(p for _, p in read.values()))))
        elif isinstance(m, (_ConvNd, torch.nn.Linear)):
            w, wp = _numpy(m.weight)
            b, bp = _numpy(m.bias) if m.bias is not None else (None, None)
            unit = linear_unit(name, w, b, narrowest(wp, bp), type(m).__name__)
            unit.module = m
            units.append(unit)
    for i, u in enumerate(units):
        u.order, u.cfg_index = i, cfg_index_in_name(u.name)
    result = ModelUnits(units, False, where, True)
    if net is not None and units:
        attach_flow(result, module, [probe_shape(net), (net.c, net.h, net.w)])
    return result


# --------------------------------------------------------------------------
# the data flow of a live module
# --------------------------------------------------------------------------
class TraceError(CheckError):
    """A live module's forward could not be traced on the probe input."""


def probe_shape(net):
    """``(channels, h, w)`` of the smallest input the cfg's strides allow: the input
    divided by its largest downsampling, times that downsampling (32x32 for a 416x416
    yolov3-tiny); the cfg's own size when a layer needs it (``[connected]``, ``[local]``)
    or the sizes do not divide."""
    full = (net.c, net.h, net.w)
    if any(spec.section in FIXED_SIZE_SECTIONS for spec in net.layers):
        return full
    side = []
    for size, outs in ((net.h, [s.out_h for s in net.layers]),
                       (net.w, [s.out_w for s in net.layers])):
        smallest = min((o for o in outs if o > 0), default=size)
        factor = size // smallest if smallest and size % smallest == 0 else 1
        side.append(factor if factor > 1 else size)
    return (net.c, *side)


#: cfg sections whose weights fix the input size (the probe is the cfg's own size).
FIXED_SIZE_SECTIONS = frozenset({"connected", "local", "crnn", "rnn", "lstm", "gru"})


def _tensors(obj, out):
    import torch
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _tensors(item, out)
    elif isinstance(obj, dict):
        for item in obj.values():
            _tensors(item, out)
    return out


def _flow_mode():
    """A ``TorchFunctionMode`` recording, for every tensor made during a forward, the
    hooked modules (or ``MODEL_INPUT``) whose outputs it is computed from."""
    from torch.overrides import TorchFunctionMode

    class Flow(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.sources, self.keep = {}, []      # id(tensor) -> frozenset; kept alive

        def of(self, obj):
            found = set()
            for t in _tensors(obj, []):
                found |= self.sources.get(id(t), frozenset())
            return frozenset(found)

        def mark(self, obj, sources):
            for t in _tensors(obj, []):
                self.sources[id(t)] = sources
                self.keep.append(t)

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            found = self.of((args, kwargs))
            if found:
                self.mark(out, found)
            return out

    return Flow()


def trace_module(module, shape, names):
    """``{name: frozenset of names or MODEL_INPUT}``: for each module of ``names``
    (``{module: name}``) called in one forward of ``module`` on a ``(1, *shape)`` probe,
    the named modules whose outputs reach its input through any torch operation
    (``cat``, ``add``, slicing, pooling, upsampling...).  The forward runs in eval
    mode under ``no_grad`` on the model's device and dtype, on one intra-op thread;
    every submodule's ``training`` flag, every buffer and torch's thread count are
    restored.  ``TraceError`` when the forward raises."""
    import torch
    param = next((p for p in module.parameters() if p.is_floating_point()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    generator = torch.Generator().manual_seed(0)
    probe = torch.rand((1, *shape), generator=generator).to(device, dtype)
    flow = _flow_mode()
    flow.mark(probe, frozenset([MODEL_INPUT]))
    inputs, handles = {}, []

    def before(m, args):
        inputs.setdefault(names[m], flow.of(args))

    def after(m, args, output):
        flow.mark(output, frozenset([names[m]]))

    flags = [(m, m.training) for m in module.modules()]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                      # a tiny probe: threads only contend
    try:
        for m in names:
            handles += [m.register_forward_pre_hook(before), m.register_forward_hook(after)]
        module.eval()
        with torch.no_grad(), flow:
            module(probe)
    except Exception as e:
        raise TraceError(f"{type(e).__name__}: {error_text(e, 160)}") from None
    finally:
        torch.set_num_threads(threads)
        for handle in handles:
            handle.remove()
        for m, training in flags:
            m.training = training
        with torch.no_grad():
            for buffer, saved in buffers:
                if not torch.equal(buffer, saved):
                    buffer.copy_(saved)
    return inputs


def attach_flow(result, module, shapes):
    """Trace ``module`` (``trace_module``) on the first of ``shapes`` it runs on and
    give ``result``'s units their ``sources`` (``result.graph`` then True); when it runs
    on none, a note that the order pairs them."""
    names = {u.module: u.name for u in result.units}
    flow, failures = None, {}                    # error text -> the probe shapes it met
    for shape in dict.fromkeys(tuple(s) for s in shapes):
        try:
            flow = trace_module(module, shape, names)
            break
        except TraceError as e:
            failures.setdefault(str(e), []).append("x".join(map(str, (1, *shape))))
    if flow is None:
        result.notes.append("paired by registration order and shapes: the forward could "
                            "not be traced (" + "; ".join(
                                f"on {' and '.join(where)} input{'s' * (len(where) > 1)}: "
                                f"{text}" for text, where in failures.items()) + ")")
        return
    by_name = {u.name: u for u in result.units}
    for unit in result.units:
        unit.sources = frozenset(by_name.get(s, s) for s in flow.get(unit.name, ()))
    result.graph = True
    result.consumers = consumers_of(result.units)


def load_torch_file(path, what="a torch state_dict"):
    """``torch.load(path, weights_only=True)`` on the CPU; ``CheckError`` naming what
    the file is when it is not a state_dict (an ONNX model, a pickled ``nn.Module``,
    a Darknet file...)."""
    kind = file_kind(path)
    if kind is not None and kind != TORCH:
        raise CheckError(f"{path}: expected {STATE_DICT}; this file is {kind}")
    try:
        import torch
    except ImportError:
        raise CheckError(f"{path}: {missing_package('torch', f'reading {what}')}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        module = pickled_module_class(path)
        if module is not None:
            raise CheckError(f"{path}: expected {STATE_DICT}; this file is a pickled "
                             f"nn.Module ({module}, torch.save(model)): save "
                             "model.state_dict() instead") from None
        classes = [c for c in pickled_classes(path)
                   if not c.startswith(("torch.", "collections.", "builtins."))]
        if kind == TORCH and classes:
            raise CheckError(f"{path}: expected {STATE_DICT}; this file pickles other "
                             f"objects ({', '.join(classes[:3])})") from None
        if kind is None and not isinstance(e, OSError):
            raise CheckError(f"{path}: expected {STATE_DICT}; this file is not a PyTorch "
                             "file") from None
        raise CheckError(f"{path}: not a readable torch state_dict ({type(e).__name__}: "
                         f"{error_text(e)})") from None


