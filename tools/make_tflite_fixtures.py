"""Write the TFLite test fixtures with TensorFlow's own converter (run by ``make
tflite-fixtures`` in ``.venv-tf``, which holds TensorFlow; the tests read the files
with the light ``tflite`` parser and never need TensorFlow).

For ``tests/data/tflite/tflite-small.cfg`` and each fork (pjreddie, alexeyab), a
``.weights`` file with synthesized blocks (variances log-uniform in [1e-4, 4], so
eps mistakes show at float16 and int8), a Keras model of the cfg (``Conv2D`` without
bias + ``BatchNormalization``, ``LeakyReLU(0.1)``, ``MaxPool2D``,
``GlobalAveragePooling2D``, ``Dense``) holding Darknet's blocks in one of two ways:

- ``exact``: the fork's own normalization in Keras' ``(x - mean)/sqrt(var + eps)``
  (``Dialect.torch_form``: AlexeyAB the stored variance with eps 1e-5; pjreddie
  ``var = (sqrt(v) + 1e-6)^2`` with eps 0);
- ``keraseps``: the stored variance with Keras' default eps (1e-3), the usual
  converter mistake (pjreddie only);

then converted four ways: ``float32``, ``float16`` (float16 weights behind
``DEQUANTIZE``), ``int8`` (full integer, a representative dataset of 16 random
inputs) and ``dynamic`` (dynamic range: int8 weights, float biases).

    python tools/make_tflite_fixtures.py tests/data/tflite
"""
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _synthesize import synthesize_weights  # noqa: E402  (the tests' .weights, no torch)
from darknet_bn.darknet import parse_cfg  # noqa: E402
from darknet_bn.dialects import get_dialect  # noqa: E402

CFG = ROOT / "tests" / "data" / "tflite" / "tflite-small.cfg"
SEEDS = {"pjreddie": 7, "alexeyab": 8}
VARIANTS = (("alexeyab", "exact"), ("pjreddie", "exact"), ("pjreddie", "keraseps"))
PRECISIONS = ("float32", "float16", "int8", "dynamic")
KERAS_DEFAULT_EPS = 1e-3


def blocks_of(net, path):
    raw = np.fromfile(path, dtype="<f4", offset=20)
    return {spec.index: {name: raw[spec.offsets[name]:][:count].copy()
                         for name, count in spec.blocks} for spec in net.layers if spec.blocks}


def keras_batchnorm(keras, b, fork, variant):
    """A ``BatchNormalization`` holding Darknet's blocks ``b`` (exact or Keras' eps)."""
    var = b["rolling_variance"].astype(np.float64)
    if variant == "exact":
        var, eps = get_dialect(fork).torch_form(var, np.sqrt)
    else:
        eps = KERAS_DEFAULT_EPS
    layer = keras.layers.BatchNormalization(epsilon=float(eps))
    scales = b["scales"]
    weights = [scales, b.get("biases", np.zeros_like(scales)), b["rolling_mean"],
               var.astype(np.float32)]
    return layer, weights


def build_keras(net, blocks, fork, variant):
    import keras
    inputs = keras.Input((net.h, net.w, net.c))
    x, assign = inputs, []
    for spec in net.layers:
        b = blocks.get(spec.index, {})
        if spec.section in ("convolutional", "connected"):
            bn = bool(spec.batch_normalize)
            if spec.section == "convolutional":
                layer = keras.layers.Conv2D(spec.filters, spec.size, spec.stride, "same",
                                            use_bias=not bn)
                kernel = b["weights"].reshape(spec.filters, spec.c, spec.size, spec.size)
                kernel = kernel.transpose(2, 3, 1, 0)                 # HWIO
            else:
                layer = keras.layers.Dense(spec.outputs, use_bias=not bn)
                kernel = b["weights"].reshape(spec.outputs, spec.inputs).T
            x = layer(x)
            assign.append((layer, [kernel] + ([] if bn else [b["biases"]])))
            if bn:
                layer, weights = keras_batchnorm(keras, b, fork, variant)
                x = layer(x)
                assign.append((layer, weights))
            if activation(net, spec) == "leaky":
                x = keras.layers.LeakyReLU(negative_slope=0.1)(x)
        elif spec.section == "batchnorm":
            layer, weights = keras_batchnorm(keras, b, fork, variant)
            x = layer(x)
            assign.append((layer, weights))
        elif spec.section == "maxpool":
            x = keras.layers.MaxPool2D(spec.size, spec.stride, "same")(x)
        elif spec.section == "avgpool":
            x = keras.layers.GlobalAveragePooling2D()(x)
        else:
            raise SystemExit(f"{spec.section}: not in this fixture builder")
    model = keras.Model(inputs, x)
    for layer, weights in assign:
        layer.set_weights(weights)
    return model


def activation(net, spec):
    from darknet_bn.darknet.parser import read_cfg
    sections = [s for s in read_cfg(net.path) if s.type != "net"]
    return sections[spec.index].find_str("activation", "logistic")


def convert(model, precision, shape, seed):
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        rng = np.random.default_rng(seed)
        print(f"representative dataset: seed {seed}")
        samples = [rng.standard_normal((1,) + shape).astype(np.float32) for _ in range(16)]
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([s] for s in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for fork in sorted({f for f, _ in VARIANTS}):
        synthesize_weights(CFG, fork, out / f"tflite-small-{fork}.weights", SEEDS[fork])
    for fork, variant in VARIANTS:
        net = parse_cfg(str(CFG), dialect=fork)
        blocks = blocks_of(net, out / f"tflite-small-{fork}.weights")
        model = build_keras(net, blocks, fork, variant)
        for precision in PRECISIONS:
            data = convert(model, precision, (net.h, net.w, net.c), SEEDS[fork] + 100)
            path = out / f"tflite-small-{fork}-{variant}-{precision}.tflite"
            path.write_bytes(data)
            print(f"{path.name}: {len(data)} bytes")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main(sys.argv[1] if len(sys.argv) > 1 else ROOT / "tests" / "data" / "tflite")
