"""PyTorch models built from a Darknet cfg the way PyTorch YOLO implementations build
them (not darknet_bn's own layout), synthesized ``.weights`` files, and ONNX forms of
the models as deployment tools leave them.  Shared by the check and .weights tests.

Two layouts: ``module_list.N.conv_N`` / ``batch_norm_N`` / ``leaky_N`` and
``models.N.conv1`` / ``bn1`` / ``leaky1``.  The forward follows the cfg's graph
(route, shortcut, upsample, maxpool, yolo heads as outputs).  A ``[route]`` with
``groups`` takes the last group (the cfgs used here ask for group_id=groups-1).
"""
import io
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from _synthesize import NETWORKS, network_with_weights, synthesize_weights  # noqa: F401
from darknet_bn.darknet import parse_cfg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is a package there
from benchmarks.cfg_model import CfgNet  # noqa: E402  (one cfg-to-PyTorch builder, shared)

F32 = np.float32




def cfg_text(side, *sections):
    """A cfg: ``[net]`` of ``side`` x ``side`` x 3, then ``sections`` as ``(name, {key:
    value})`` pairs."""
    parts = [f"[net]\nwidth={side}\nheight={side}\nchannels=3\n"]
    for name, options in sections:
        parts.append(f"[{name}]\n" + "".join(f"{k}={v}\n" for k, v in options.items()))
    return "\n".join(parts)


def conv(filters, size, batch_normalize=1):
    """A ``[convolutional]`` section for ``cfg_text`` (stride 1, pad=1, leaky)."""
    return ("convolutional", dict(batch_normalize=batch_normalize, filters=filters, size=size,
                                  stride=1, pad=1, activation="leaky"))


def blocks_of(net, path):
    """``{layer index: {block: float32 array}}`` read from the file by the cfg's offsets."""
    header = 20
    raw = np.fromfile(path, dtype="<f4", offset=header)
    out = {}
    for spec in net.layers:
        if spec.blocks:
            out[spec.index] = {name: raw[spec.offsets[name]:][:count].copy()
                               for name, count in spec.blocks}
    return out


def fill(model, net, blocks, *, remap_eps=None):
    """Darknet's blocks into ``model`` as they are; ``remap_eps``: the exact pjreddie
    export (running_var = (sqrt(var) + remap_eps)^2, the module's eps set to 0)."""
    with torch.no_grad():
        for spec in net.layers:
            if spec.section not in ("convolutional", "connected", "batchnorm"):
                continue
            b = blocks[spec.index]
            conv, bn = model.modules_of(spec.index)
            if conv is not None:
                conv.weight.copy_(torch.from_numpy(b["weights"].reshape(conv.weight.shape)))
                if conv.bias is not None:
                    conv.bias.copy_(torch.from_numpy(b["biases"]))
            if bn is not None:
                var = b["rolling_variance"]
                if remap_eps is not None:
                    var = ((np.sqrt(var.astype(np.float64)) + float(F32(remap_eps))) ** 2
                           ).astype(F32)
                    bn.eps = 0.0
                bn.weight.copy_(torch.from_numpy(b["scales"]))
                bn.bias.copy_(torch.from_numpy(b.get("biases", np.zeros_like(b["scales"]))))
                bn.running_mean.copy_(torch.from_numpy(b["rolling_mean"]))
                bn.running_var.copy_(torch.from_numpy(var))
    return model.eval()


def build(cfg, path, fork, *, style="module_list", eps=1e-5, remap_eps=None):
    net = parse_cfg(cfg, dialect=fork)
    model = CfgNet(net, style, eps)
    return fill(model, net, blocks_of(net, path), remap_eps=remap_eps), net


# --------------------------------------------------------------------------
# ONNX forms
# --------------------------------------------------------------------------
def export(model, size, *, dynamo=False, fold=True, half=False):
    """``torch.onnx.export`` of ``model`` on a ``size`` x ``size`` input as an
    ``onnx.ModelProto``: ``dynamo=False`` with ``fold`` (constant folding, which
    folds batchnorm into the convs) or not; ``dynamo=True``: the default exporter."""
    import warnings

    import onnx
    model = model.eval()
    x = torch.zeros(1, model.specs[0].c, size, size)
    if half:
        import copy
        model, x = copy.deepcopy(model).half(), x.half()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # the exporters' notes on Slice folding
        if dynamo:
            program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
            return program.model_proto
        f = io.BytesIO()
        torch.onnx.export(model, (x,), f, dynamo=False, do_constant_folding=fold)
    return onnx.load_from_string(f.getvalue())


def reorder(proto, seed):
    """The same graph with its nodes in a random topological order."""
    import onnx
    rng = random.Random(seed)
    print(f"reorder: seed {seed}")
    nodes = list(proto.graph.node)
    produced = {o: i for i, n in enumerate(nodes) for o in n.output}
    deps = [{produced[t] for t in n.input if t in produced} for n in nodes]
    done, order = set(), []
    while len(order) < len(nodes):
        ready = [i for i in range(len(nodes)) if i not in done and deps[i] <= done]
        pick = rng.choice(ready)
        done.add(pick)
        order.append(pick)
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    del new.graph.node[:]
    new.graph.node.extend(nodes[i] for i in order)
    return new


def to_float16_initializers(proto, precision="float16"):
    """Every float initializer stored as float16 (or bfloat16) and cast back to float32
    by a Cast node (the graph computes in float32 on reduced-precision parameters)."""
    import onnx
    from onnx import helper, numpy_helper
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    inits, casts = [], []
    for t in new.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32 and precision == "bfloat16":
            import ml_dtypes                          # onnx's own bfloat16 dependency
            inits.append(numpy_helper.from_array(a.astype(ml_dtypes.bfloat16),
                                                 t.name + "_f16"))
        elif a.dtype == np.float32:
            inits.append(numpy_helper.from_array(a.astype(np.float16), t.name + "_f16"))
        else:
            inits.append(t)
            continue
        casts.append(helper.make_node("Cast", [t.name + "_f16"], [t.name],
                                      to=onnx.TensorProto.FLOAT, name="cast_" + t.name))
    del new.graph.initializer[:]
    new.graph.initializer.extend(inits)
    nodes = list(new.graph.node)
    del new.graph.node[:]
    new.graph.node.extend(casts + nodes)
    return new


def batchnorm_as_mul_add(proto, *, sub_div=False):
    """Every BatchNormalization node rewritten with constants: ``Mul`` by
    scale/sqrt(var + eps) then ``Add`` of bias - mean*that (float32), or with
    ``sub_div``: ``Sub`` mean, ``Div`` by ``Sqrt`` of a (var + eps) constant, ``Mul``
    scale, ``Add`` bias (the Sqrt left as a node)."""
    import onnx
    from onnx import helper, numpy_helper
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    consts = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    for n in new.graph.node:                       # Identity of an initializer
        if n.op_type == "Identity" and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
    nodes, inits = [], list(new.graph.initializer)

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, F32).reshape(1, -1, 1, 1), name))
        return name

    for n in new.graph.node:
        if n.op_type != "BatchNormalization":
            nodes.append(n)
            continue
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        s, b, m, v = (consts[t].astype(F32) for t in n.input[1:5])
        x, y, p = n.input[0], n.output[0], n.name or n.output[0]
        if sub_div:
            nodes += [helper.make_node("Sub", [x, const(p + "_mean", m)], [p + "_c"],
                                       name=p + "_sub"),
                      helper.make_node("Sqrt", [const(p + "_vareps", v + F32(eps))],
                                       [p + "_sd"], name=p + "_sqrt"),
                      helper.make_node("Div", [p + "_c", p + "_sd"], [p + "_n"], name=p + "_div"),
                      helper.make_node("Mul", [p + "_n", const(p + "_scale", s)], [p + "_s"],
                                       name=p + "_mul"),
                      helper.make_node("Add", [const(p + "_bias", b), p + "_s"], [y],
                                       name=p + "_add")]
        else:
            alpha = s / np.sqrt(v + F32(eps))
            beta = b - m * alpha
            nodes += [helper.make_node("Mul", [x, const(p + "_alpha", alpha)], [p + "_m"],
                                       name=p + "_mul"),
                      helper.make_node("Add", [p + "_m", const(p + "_beta", beta)], [y],
                                       name=p + "_add")]
    del new.graph.node[:]
    new.graph.node.extend(nodes)
    del new.graph.initializer[:]
    new.graph.initializer.extend(inits)
    return new


def conv_parameters_behind_ops(proto):
    """Every Conv's weight stored as (in, out, kh, kw) behind a ``Transpose`` and an
    ``Identity``, and its bias (if any) as a separate ``Add`` of a (1, C, 1, 1)
    constant, the constant first on every other conv."""
    import onnx
    from onnx import helper, numpy_helper
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    consts = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    inits, nodes = list(new.graph.initializer), []
    for k, n in enumerate(new.graph.node):
        if n.op_type != "Conv" or n.input[1] not in consts:
            nodes.append(n)
            continue
        name = n.name or n.output[0]
        w = consts[n.input[1]]
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.transpose(1, 0, 2, 3)),
                                             name + "_wt"))
        nodes += [helper.make_node("Transpose", [name + "_wt"], [name + "_wt2"],
                                   perm=[1, 0, 2, 3], name=name + "_transpose"),
                  helper.make_node("Identity", [name + "_wt2"], [name + "_w"],
                                   name=name + "_identity")]
        conv = helper.make_node("Conv", [n.input[0], name + "_w"], [n.output[0]], name=name)
        conv.attribute.extend(n.attribute)
        if len(n.input) > 2 and n.input[2]:
            conv.output[0] = name + "_nobias"
            inits.append(numpy_helper.from_array(consts[n.input[2]].reshape(1, -1, 1, 1),
                                                 name + "_b"))
            operands = [name + "_nobias", name + "_b"]
            nodes += [conv, helper.make_node("Add", operands[::-1] if k % 2 else operands,
                                             [n.output[0]], name=name + "_add")]
        else:
            nodes.append(conv)
    del new.graph.node[:]
    new.graph.node.extend(nodes)
    del new.graph.initializer[:]
    new.graph.initializer.extend(inits)
    return new


def with_extra_conv(proto, channels):
    """One more 1x1 Conv on the first graph output (post-processing), as a new output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    out = new.graph.output[0].name
    w = np.full((channels, channels, 1, 1), 0.5, F32)
    new.graph.initializer.append(numpy_helper.from_array(w, "post_w"))
    new.graph.node.append(helper.make_node("Conv", [out, "post_w"], ["post_y"], name="post_conv"))
    new.graph.output.append(helper.make_tensor_value_info("post_y", TensorProto.FLOAT, None))
    return new


def slim(proto):
    """The graph as onnxslim optimizes it."""
    import onnxslim
    return onnxslim.slim(proto)


def simplify(proto):
    """The graph as onnxsim (onnx-simplifier) simplifies it."""
    import onnxsim
    simplified, valid = onnxsim.simplify(proto)
    assert valid, "onnxsim could not validate its simplified graph"
    return simplified


# --------------------------------------------------------------------------
# ONNX as Darknet's own exporter writes it (hank-ai's darknet_onnx_export)
# --------------------------------------------------------------------------
def fused_like_darknet(proto, dialect):
    """Every ``Conv`` -> ``BatchNormalization`` pair as one ``Conv`` whose weights and
    bias are the fork's fold (``fold_batchnorm``: hank-ai's exporter calls
    ``fuse_conv_batchnorm`` unless ``-dontfuse``)."""
    import onnx
    from onnx import numpy_helper

    from darknet_bn.darknet import fold_batchnorm
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    consts = {t.name: numpy_helper.to_array(t) for t in new.graph.initializer}
    producer = {o: n for n in new.graph.node for o in n.output}
    nodes, inits = [], list(new.graph.initializer)
    for n in new.graph.node:
        conv = producer.get(n.input[0]) if n.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv":
            nodes.append(n)
            continue
        s, b, m, v = (consts[t].astype(F32) for t in n.input[1:5])
        w = consts[conv.input[1]].astype(F32)
        fw, fb = fold_batchnorm(np.ascontiguousarray(w.reshape(-1)), b, s, m, v,
                                dialect=dialect)
        name = conv.name or conv.output[0]
        inits += [numpy_helper.from_array(fw.reshape(w.shape), name + "_weights"),
                  numpy_helper.from_array(fb, name + "_bias")]
        del conv.input[1:]
        conv.input.extend([name + "_weights", name + "_bias"])
        conv.output[0] = n.output[0]
    used = {t for n in nodes for t in n.input}
    del new.graph.node[:]
    new.graph.node.extend(nodes)
    del new.graph.initializer[:]
    new.graph.initializer.extend(t for t in inits if t.name in used)
    del new.graph.value_info[:]
    return new


def darknet_float16(values):
    """hank-ai's ``Darknet::convert_to_fp16`` (darknet_utils.cpp): the float's top 10
    mantissa bits (truncation, not rounding), exponents above 15 to infinity, below
    -14 to a signed zero; as float16 values."""
    bits = np.ascontiguousarray(values, F32).view(np.uint32).astype(np.int64)
    sign = (bits >> 31) & 1
    exponent = ((bits >> 23) & 0xFF) - 127
    mantissa = (bits & 0x7FFFFF) >> 13
    out = np.where(exponent > 15, (sign << 15) | (0x1F << 10),
                   np.where(exponent > -15, (sign << 15) | ((exponent + 15) << 10) | mantissa,
                            sign << 15))
    return out.astype(np.uint16).view(np.float16).reshape(np.shape(values))


def float16_like_darknet(proto):
    """The graph as hank-ai's exporter writes it with ``-fp16``: the parameters of every
    ``Conv`` and ``BatchNormalization`` stored as FLOAT16 (``darknet_float16``), the
    graph's inputs and outputs FLOAT16, other constants (Resize scales) as they are."""
    import onnx
    from onnx import numpy_helper
    new = onnx.ModelProto()
    new.CopyFrom(proto)
    params = {t for n in new.graph.node if n.op_type in ("Conv", "BatchNormalization")
              for t in n.input[1:]}
    inits = []
    for t in new.graph.initializer:
        a = numpy_helper.to_array(t)
        inits.append(numpy_helper.from_array(darknet_float16(a), t.name)
                     if t.name in params and a.dtype == F32 else t)
    del new.graph.initializer[:]
    new.graph.initializer.extend(inits)
    for v in list(new.graph.input) + list(new.graph.output):
        v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    del new.graph.value_info[:]
    return new


def quantize(onnx_path, out, form, per_channel=True, seed=5):
    """The ONNX file ``onnx_path`` quantized by onnxruntime.quantization into ``out``:
    ``form`` "qdq" or "qoperator" (static int8 weights and activations, calibrated on
    4 random inputs of the graph's input shape) or "dynamic" (int8 weights)."""
    import onnx
    import pytest
    q = pytest.importorskip("onnxruntime.quantization")
    if form == "dynamic":
        q.quantize_dynamic(str(onnx_path), str(out), weight_type=q.QuantType.QInt8)
        return out
    proto = onnx.load(onnx_path)
    name = proto.graph.input[0].name
    shape = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    print(f"calibration inputs: seed {seed}")
    batches = iter([{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(4)])

    class Reader(q.CalibrationDataReader):
        def get_next(self):
            return next(batches, None)
    fmt = q.QuantFormat.QDQ if form == "qdq" else q.QuantFormat.QOperator
    q.quantize_static(str(onnx_path), str(out), Reader(), quant_format=fmt,
                      per_channel=per_channel, weight_type=q.QuantType.QInt8,
                      activation_type=q.QuantType.QInt8)
    return out
