"""Where the caller's arrays start in a 4 KiB page changes no bit.

The kernels' speed depends on the page offsets of the arrays they load and store
(4K aliasing, docs/benchmarks.md "Input placement"), so the layer keeps its own
buffers at fixed page offsets and the torch ops place their fresh outputs and
scratch relative to the input.  None of this may change a result: here the input
(and delta) start at page offsets 0, 64, 2048 and 4032 bytes, and every buffer and
every returned gradient is compared bitwise with offset 0.  Nothing is timed.
"""
import numpy as np
import pytest

from darknet_bn import BatchNormLayer, fused
from darknet_bn.batchnorm_layer import PAGE_OFFSETS

SEED = 20261207
OFFSETS = (0, 64, 2048, 4032)
SHAPES = ((16, 64, 28, 28), (256, 1024, 1, 1))
FORKS = ("pjreddie", "alexeyab", "hankai")


def at_offset(values, offset):
    """A copy of ``values`` whose data starts ``offset`` bytes into a 4 KiB page."""
    raw = np.empty(values.size + 1024, np.float32)
    skip = (offset - raw.__array_interface__["data"][0]) % 4096 // 4
    out = raw[skip:skip + values.size].reshape(values.shape)
    out[...] = values
    assert out.__array_interface__["data"][0] % 4096 == offset
    return out


def data(shape):
    print(f"seed {SEED}")
    rng = np.random.default_rng(SEED)
    c = shape[1]
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3, (1, c) + (1,) * (len(shape) - 2))
         + rng.normal(0, 2, (1, c) + (1,) * (len(shape) - 2))).astype(np.float32)
    delta = rng.standard_normal(shape).astype(np.float32)
    params = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 1, c),
              rng.uniform(0.5, 2, c)]
    assert not np.isnan(x).any() and not np.isnan(delta).any()
    return x, delta, [p.astype(np.float32) for p in params]


def same_bits(a, b):
    return np.array_equal(np.asarray(a).view(np.int32), np.asarray(b).view(np.int32))


def layer_run(shape, dialect, train, x, delta, params):
    n, c, h, w = shape
    layer_type = "convolutional" if dialect == "hankai" else "batchnorm"
    layer = BatchNormLayer(n, w, h, c, dialect=dialect, layer_type=layer_type)
    layer.scales, layer.biases, layer.rolling_mean, layer.rolling_variance = params
    out = {"returned output": layer.forward(x, train=train).copy()}
    if train:
        out["returned gradient"] = layer.backward(delta, train=train).copy()
    out.update({name: buf.copy() for name, buf in layer.buffers().items()})
    if layer.net_delta is not None:
        out["net_delta"] = layer.net_delta.copy()
    return out


@pytest.mark.parametrize("train", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("dialect", FORKS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_layer_bits_do_not_depend_on_input_placement(shape, dialect, train):
    x, delta, params = data(shape)
    runs = {off: layer_run(shape, dialect, train, at_offset(x, off), at_offset(delta, off),
                           params) for off in OFFSETS}
    for off in OFFSETS[1:]:
        for name, value in runs[0].items():
            assert same_bits(runs[off][name], value), (off, name, f"seed {SEED}")


def module_run(torch, shape, dialect, train, x, delta, params):
    from darknet_bn.torch import DarknetBatchNorm1d, DarknetBatchNorm2d
    c = shape[1]
    module = (DarknetBatchNorm1d if len(shape) == 2 else DarknetBatchNorm2d)(c, dialect=dialect)
    with torch.no_grad():
        for tensor, values in zip((module.weight, module.bias, module.running_mean,
                                   module.running_var), params):
            tensor.copy_(torch.from_numpy(values))
    xt = torch.from_numpy(x).requires_grad_(train)
    module.train(train)
    if train:
        y = module(xt)
        y.backward(torch.from_numpy(delta))
        out = {"output": y.detach().numpy().copy(), "x grad": xt.grad.numpy().copy(),
               "weight grad": module.weight.grad.numpy().copy(),
               "bias grad": module.bias.grad.numpy().copy()}
    else:
        with torch.no_grad():
            out = {"output": module(xt).numpy().copy()}
    out["running_mean"] = module.running_mean.numpy().copy()
    out["running_var"] = module.running_var.numpy().copy()
    return out


@pytest.mark.parametrize("train", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("dialect", FORKS)
@pytest.mark.parametrize("shape", [(16, 64, 28, 28), (256, 1024)],
                         ids=lambda s: "x".join(map(str, s)))
def test_module_bits_do_not_depend_on_input_placement(shape, dialect, train):
    torch = pytest.importorskip("torch")
    x, delta, params = data(shape)
    runs = {off: module_run(torch, shape, dialect, train, at_offset(x, off),
                            at_offset(delta, off), params) for off in OFFSETS}
    for off in OFFSETS[1:]:
        for name, value in runs[0].items():
            assert same_bits(runs[off][name], value), (off, name, f"seed {SEED}")


@pytest.mark.parametrize("offset", OFFSETS)
def test_module_output_starts_half_a_page_from_its_input(offset):
    """The eval output (a fresh tensor) starts 2 KiB from the input in its page,
    whatever the input's page offset: no 4K aliasing between them."""
    torch = pytest.importorskip("torch")
    from darknet_bn.torch import DarknetBatchNorm2d
    x, _, _ = data((2, 8, 16, 16))
    module = DarknetBatchNorm2d(8, dialect="alexeyab").eval()
    with torch.no_grad():
        y = module(torch.from_numpy(at_offset(x, offset)))
    assert (y.data_ptr() - offset) % 4096 == 2048


@pytest.mark.parametrize("loads", [(0,), (64,), (4032,), (0, 2048), (0, 0, 1024),
                                   (100, 3000, 3500), (0, 64, 128, 192)])
def test_far_offset_is_a_line_as_far_as_possible_from_every_load(loads):
    """``far_offset``: cache-line aligned, and no offset of the page is farther (around
    the page) from the nearest load, up to the 64-byte rounding."""
    def nearest(o):
        return min(min((o - p) % 4096, (p - o) % 4096) for p in loads)
    got = fused.far_offset(loads)
    assert got % 64 == 0 and 0 <= got < 4096
    assert nearest(got) >= max(nearest(o) for o in range(0, 4096, 4)) - 64


def test_layer_stores_sit_at_or_below_the_loads_of_the_same_pass():
    """The layer's own tensor buffers: in every pass, each stored stream starts at or
    below (mod 4 KiB, within 1 KiB) the streams loaded at the same index, so no pass
    stores a little ahead of what it loads (``PAGE_OFFSETS``)."""
    passes = (({"output"}, {"x", "x_norm", "output"}),          # forward, in place
              ({"x", "delta"}, {"delta", "net_delta"}))         # backward normalize
    for loads, stores in passes:
        for load in loads:
            for store in stores:
                ahead = (PAGE_OFFSETS[store] - PAGE_OFFSETS[load]) * 4 % 4096
                assert ahead == 0 or ahead >= 4096 - 1024, (load, store)
