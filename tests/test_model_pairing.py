"""Pairing by structure: a yolov3-tiny port whose modules are registered in an order
unlike the cfg's (``_ports``), as a live module (traced), a state_dict (shapes first)
and ONNX exports of both exporters; ONNX graphs with several inputs and subgraphs cut
from the middle; ``.weights`` load/save of the port; the trace leaves the model as
it was."""
import io
import random
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import _check_models as models                                     # noqa: E402
import _ports                                                      # noqa: E402
from darknet_bn.cli import main                                    # noqa: E402
from darknet_bn.darknet import check_model                         # noqa: E402
from darknet_bn.darknet.model import pair_model, read_model        # noqa: E402
from darknet_bn.torch import (convert_batchnorm, load_darknet_weights,  # noqa: E402
                              save_darknet_weights)

FORKS = ("pjreddie", "alexeyab")
SEEDS = {"pjreddie": 31, "alexeyab": 37}
#: The per-channel factor between a folded export's weights and the module's is one
#: float32 product per weight (relative 2**-24 each way); 1e-5 leaves a wide margin and
#: still tells apart random weights of different layers (relative differences ~1).
PROPORTIONAL = 1e-5
#: The eps a state_dict of the port is checked with: the fork's exact torch form.
STATE_DICT_EPS = {"pjreddie": "0", "alexeyab": "1e-5"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = {}
    for fork in FORKS:
        path = tmp_path_factory.mktemp(fork) / "yolov3-tiny.weights"
        models.synthesize_weights(_ports.CFG, fork, path, SEEDS[fork])
        out[fork] = path
    return out


def _ports_of(fork, path):
    net = _ports.port_net(fork)
    good = _ports.fill_darknet(_ports.Yolov3TinyPort(), net, path, fork)
    with np.errstate(invalid="ignore"):               # misread variances may be negative
        bad = _ports.fill_in_module_order(_ports.Yolov3TinyPort(), path, fork)
    return net, good, bad


def _export(model, dynamo):
    import onnx
    x = torch.zeros(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(model, (x,), dynamo=True, verbose=False).model_proto
        f = io.BytesIO()
        torch.onnx.export(model, (x,), f, dynamo=False)
    return onnx.load_from_string(f.getvalue())


def _proportional(a, b):
    """Largest spread of the per-row ratio a/b (0: each row of ``a`` is its row of ``b``
    times one factor)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(all="ignore"):
        ratio = a / np.where(b == 0, np.nan, b)
    rows = np.isfinite(ratio).any(axis=1)        # a misread negative variance folds to NaN
    assert rows.sum() >= 8, "too few comparable rows"
    ratio = ratio[rows]
    centre = np.nanmedian(ratio, axis=1, keepdims=True)
    return float(np.nanmax(np.abs(ratio / centre - 1)))


def _assert_pairs_modules(net, converted, port, eps=None):
    """Every cfg layer of the port pairs with the unit holding its module's conv weights
    (up to the per-channel factor of a folded batchnorm)."""
    pairing = pair_model(net, read_model(converted, eps, net=net), strict=True)
    assert not pairing.missing and not pairing.extra, (pairing.missing, pairing.extra)
    pairs = {p.spec.index: p for p in pairing.pairs}
    assert sorted(pairs) == sorted(_ports.CFG_LAYERS)
    for index in _ports.CFG_LAYERS:
        conv = port.block_of(index).conv
        module_weight = conv.weight.detach().double().numpy().reshape(conv.out_channels, -1)
        spread = _proportional(pairs[index].conv.weight, module_weight)
        assert spread <= PROPORTIONAL, (index, pairs[index].names, spread)
    return pairs


def _assert_report(report, bad):
    assert all(r.form != "missing" for r in report.layers)
    assert report.extra == []
    failing = sorted(r.index for r in report.layers if not r.ok)
    assert failing == ([14, 18] if bad else [])
    assert report.ok == (not bad)


# --------------------------------------------------------------------------
# live module, state_dict, ONNX
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fork", FORKS)
def test_live_module_pairs_by_its_data_flow(fork, files):
    net, good, bad = _ports_of(fork, files[fork])
    for port, is_bad in ((good, False), (bad, True)):
        _assert_pairs_modules(net, port, port)
        report = check_model(port, _ports.CFG, files[fork], dialect=fork)
        _assert_report(report, is_bad)
        assert report.notes == []                      # traced, no fallback
        names = {r.index: r.model_name for r in report.layers}
        assert names[14].startswith("head.big.conv") and names[18].startswith("neck.lateral")


@pytest.mark.parametrize("fork", FORKS)
def test_state_dict_pairs_by_shapes_first(fork, files, tmp_path, capsys):
    net, good, bad = _ports_of(fork, files[fork])
    for port, is_bad in ((good, False), (bad, True)):
        _assert_pairs_modules(net, port.state_dict(), port, eps=1e-5)
        pt = tmp_path / f"{'bad' if is_bad else 'good'}.pt"
        torch.save(port.state_dict(), pt)
        code = main(["check", str(_ports.CFG), str(files[fork]), str(pt), "--dialect", fork,
                     "--eps", STATE_DICT_EPS[fork], "--json"])
        out = capsys.readouterr().out
        assert code == (1 if is_bad else 0), out[-2000:]
        report = check_model(port.state_dict(), _ports.CFG, files[fork], dialect=fork,
                             eps=float(STATE_DICT_EPS[fork]))
        _assert_report(report, is_bad)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("fork", FORKS)
def test_onnx_export_pairs_by_the_graph(fork, dynamo, files, tmp_path, capsys):
    net, good, bad = _ports_of(fork, files[fork])
    for port, is_bad in ((good, False), (bad, True)):
        try:
            proto = _export(port, dynamo)
        except Exception as e:                         # an exporter this torch lacks
            pytest.skip(f"torch.onnx.export(dynamo={dynamo}) fails here: {e}")
        _assert_pairs_modules(net, proto, port)
        path = tmp_path / f"{'bad' if is_bad else 'good'}.onnx"
        path.write_bytes(proto.SerializeToString())
        code = main(["check", str(_ports.CFG), str(files[fork]), str(path), "--dialect", fork])
        out = capsys.readouterr().out
        assert code == (1 if is_bad else 0), out[-2000:]
        _assert_report(check_model(proto, _ports.CFG, files[fork], dialect=fork), is_bad)


# --------------------------------------------------------------------------
# .weights load and save
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fork", FORKS)
def test_weights_load_and_save_of_an_out_of_order_port(fork, files, tmp_path):
    path = files[fork]
    net = _ports.port_net(fork)
    port = load_darknet_weights(_ports.Yolov3TinyPort(), _ports.CFG, path, dialect=fork)
    blocks = models.blocks_of(net, path)
    for index in _ports.CFG_LAYERS:                    # each layer from its own blocks
        conv = port.block_of(index).conv
        got = conv.weight.detach().numpy().reshape(-1)
        assert np.array_equal(got.view(np.int32), blocks[index]["weights"].view(np.int32))
    out = tmp_path / "port.weights"
    save_darknet_weights(port, _ports.CFG, out, dialect=fork, header_from=path)
    assert out.read_bytes() == path.read_bytes()
    out2 = tmp_path / "state_dict.weights"
    save_darknet_weights(port.state_dict(), _ports.CFG, out2, dialect=fork, header_from=path)
    assert out2.read_bytes() == path.read_bytes()
    report = check_model(convert_batchnorm(port, dialect=fork), _ports.CFG, path, dialect=fork)
    assert report.ok, str(report)


# --------------------------------------------------------------------------
# ONNX graphs with several inputs
# --------------------------------------------------------------------------
def _per_layer_graph(net, port, seed, skip=()):
    """One ONNX graph holding every conv layer of the port as its own piece: its own
    graph input, Conv, BatchNormalization (where the layer has one), LeakyRelu, its own
    output; the pieces and the inputs in an order shuffled with ``seed``; the layers
    in ``skip`` left out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = random.Random(seed)
    print(f"_per_layer_graph: seed {seed}")
    nodes, inits, inputs, outputs = [], [], [], []
    indices = [i for i in _ports.CFG_LAYERS if i not in skip]
    rng.shuffle(indices)
    for i in indices:
        spec, block = net.layers[i], port.block_of(i)
        x, y = f"in_{i}", f"out_{i}"
        inputs.append(helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, spec.c, 4, 4]))
        outputs.append(helper.make_tensor_value_info(y, TensorProto.FLOAT,
                                                     [1, spec.out_c, 4, 4]))
        inits.append(numpy_helper.from_array(block.conv.weight.detach().numpy(), f"w_{i}"))
        conv_inputs = [x, f"w_{i}"]
        if block.bn is None:
            inits.append(numpy_helper.from_array(block.conv.bias.detach().numpy(), f"b_{i}"))
            conv_inputs.append(f"b_{i}")
        last = y if block.bn is None else f"conv_{i}"
        nodes.append(helper.make_node("Conv", conv_inputs, [last], name=f"conv_{i}",
                                      pads=[spec.size // 2] * 4))
        if block.bn is not None:
            for key in ("weight", "bias", "running_mean", "running_var"):
                inits.append(numpy_helper.from_array(
                    getattr(block.bn, key).detach().numpy(), f"{key}_{i}"))
            nodes.append(helper.make_node(
                "BatchNormalization", [last] + [f"{k}_{i}" for k in
                                                ("weight", "bias", "running_mean",
                                                 "running_var")],
                [f"bn_{i}"], name=f"bn_{i}", epsilon=float(block.bn.eps)))
            nodes.append(helper.make_node("LeakyRelu", [f"bn_{i}"], [y], alpha=0.1))
    rng.shuffle(inputs)
    graph = helper.make_graph(nodes, "per_layer", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("fork", FORKS)
def test_graph_with_an_input_per_layer_pairs_every_layer(fork, files):
    net, good, bad = _ports_of(fork, files[fork])
    for port, is_bad in ((good, False), (bad, True)):
        proto = _per_layer_graph(net, port, seed=SEEDS[fork])
        _assert_pairs_modules(net, proto, port)
        _assert_report(check_model(proto, _ports.CFG, files[fork], dialect=fork), is_bad)


#: Cuts of the torch.onnx (dynamo=False) export: graph inputs -> the cfg layers inside.
CUTS = {
    "after layer 4": (["/backbone/MaxPool_2_output_0"], (6, 8, 10, 12, 13, 14, 15, 18, 21, 22)),
    "the two heads": (["/neck/reduce/LeakyRelu_output_0", "/backbone/stages.4/LeakyRelu_output_0"],
                      (14, 15, 18, 21, 22)),
}


@pytest.mark.parametrize("cut", sorted(CUTS))
@pytest.mark.parametrize("fork", FORKS)
def test_subgraph_cut_from_the_middle_pairs_every_layer_in_it(fork, cut, files, tmp_path):
    import onnx
    import onnx.utils
    net, good, _ = _ports_of(fork, files[fork])
    full = tmp_path / "full.onnx"
    proto = _export(good, dynamo=False)
    full.write_bytes(proto.SerializeToString())
    inputs, inside = CUTS[cut]
    names = {t for n in proto.graph.node for t in n.output}
    if not set(inputs) <= names:
        pytest.skip(f"this torch names the export's tensors otherwise ({inputs} not in it)")
    part = tmp_path / "part.onnx"
    onnx.utils.extract_model(str(full), str(part), inputs,
                             [o.name for o in proto.graph.output])
    pairing = pair_model(net, read_model(str(part), net=net), strict=True)
    assert sorted(p.spec.index for p in pairing.pairs) == sorted(inside)
    assert pairing.extra == []
    for p in pairing.pairs:
        conv = good.block_of(p.spec.index).conv
        weight = conv.weight.detach().double().numpy().reshape(conv.out_channels, -1)
        assert _proportional(p.conv.weight, weight) <= PROPORTIONAL, p.spec.index
    report = check_model(str(part), _ports.CFG, files[fork], dialect=fork)
    assert report.ok, str(report)
    assert sorted(r.index for r in report.layers) == \
        sorted(i for i in inside if net.layers[i].bn_channels)
    outside = {s.index for s in pairing.outside}
    assert pairing.missing == [] and outside == \
        {s.index for s in net.layers if s.section == "convolutional"} - set(inside)
    assert any("piece of the network" in n for n in report.notes), report.notes


def test_a_layer_missing_between_paired_ones_still_fails(files):
    """In a graph that is a piece of the network, a layer the graph lacks between paired
    layers is missing (a failing row), not outside: the per-layer graph without layer
    14, whose cfg neighbours 13 and 15 are there."""
    fork = "alexeyab"
    net, good, _ = _ports_of(fork, files[fork])
    proto = _per_layer_graph(net, good, seed=SEEDS[fork], skip=(14,))
    report = check_model(proto, _ports.CFG, files[fork], dialect=fork)
    assert not report.ok
    assert [r.index for r in report.layers if not r.ok] == [14], str(report)
    assert [r.form for r in report.layers if r.index == 14] == ["missing"]


# --------------------------------------------------------------------------
# the trace
# --------------------------------------------------------------------------
def _bits(state):
    return {k: v.detach().cpu().view(torch.uint8).clone() if v.is_floating_point()
            else v.detach().cpu().clone() for k, v in state.items()}


def test_trace_leaves_the_model_as_it_was(files):
    fork = "alexeyab"
    net, good, _ = _ports_of(fork, files[fork])
    good.train()
    good.head.eval()                                  # a mixed state is restored as it was
    for m in good.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.num_batches_tracked.fill_(7)
    flags = {name: m.training for name, m in good.named_modules()}
    before = _bits(good.state_dict())
    threads = torch.get_num_threads()
    report = check_model(good, _ports.CFG, files[fork], dialect=fork)
    assert torch.get_num_threads() == threads
    assert report.ok and report.notes == []
    after = _bits(good.state_dict())
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {name: m.training for name, m in good.named_modules()} == flags
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_trace_runs_in_the_models_dtype(dtype, files):
    fork = "alexeyab"
    net, good, _ = _ports_of(fork, files[fork])
    model = good.to(getattr(torch, dtype))
    units = read_model(model, net=net)
    assert units.graph and units.notes == [], units.notes
    pairing = pair_model(net, units, strict=True)
    assert not pairing.missing and not pairing.extra


class _NeedsTargets(torch.nn.Module):
    """A port whose forward cannot run on an input alone."""

    def __init__(self, port):
        super().__init__()
        self.port = port

    def forward(self, x, targets):
        return self.port(x), targets


def test_an_untraceable_forward_falls_back_to_the_order_and_says_so(files):
    fork = "alexeyab"
    net, good, _ = _ports_of(fork, files[fork])
    report = check_model(_NeedsTargets(good), _ports.CFG, files[fork], dialect=fork)
    assert len(report.notes) == 1 and "registration order" in report.notes[0]
    assert "note: paired by registration order" in str(report)
    # shapes first: 18 is unique and pairs where it sits; 14 by the order among equals
    assert report.ok and all(r.form != "missing" for r in report.layers)


def test_state_dict_name_disagreeing_with_shapes_is_a_finding(files):
    """A module named for layer 13 holding layer 18's shapes (and the other way round):
    paired by the shapes, the disagreement noted on the row."""
    fork = "alexeyab"
    path = files[fork]
    model, _ = models.build(_ports.CFG, path, fork)
    state = model.state_dict()
    swap = {"module_list.13.conv_13": "module_list.18.conv_18",
            "module_list.13.batch_norm_13": "module_list.18.batch_norm_18"}
    swap.update({b: a for a, b in swap.items()})
    renamed = {}
    for key, value in state.items():
        prefix, _, leaf = key.rpartition(".")
        renamed[f"{swap.get(prefix, prefix)}.{leaf}"] = value
    report = check_model(renamed, _ports.CFG, path, dialect=fork, eps=1e-5)
    assert report.ok, str(report)
    rows = {r.index: r for r in report.layers}
    assert rows[13].model_name.startswith("module_list.18")
    assert "carries layer 18" in rows[13].pairing
    assert "carries layer 13" in rows[18].pairing
    assert all(r.pairing == "" for r in report.layers if r.index not in (13, 18))


def test_trace_follows_route_groups(tmp_path):
    """yolov4-tiny's ``[route] groups=2 group_id=1`` (``torch.chunk`` in the port): the
    traced graph pairs every layer, each conv with its own module."""
    fork = "alexeyab"
    cfg = _ports.CFG.parent / "yolov4-tiny.cfg"
    path = tmp_path / "yolov4-tiny.weights"
    models.synthesize_weights(cfg, fork, path, SEEDS[fork])
    model, net = models.build(cfg, path, fork)
    units = read_model(model, net=net)
    assert units.graph and units.notes == []
    assert any(spec.section == "route" and spec.groups > 1 for spec in net.layers)
    pairing = pair_model(net, units, strict=True)
    assert not pairing.missing and not pairing.extra
    for pair in pairing.pairs:
        conv, _ = model.modules_of(pair.spec.index)
        assert pair.conv.module is conv, pair.spec.index
    assert check_model(model, cfg, path, dialect=fork).ok
