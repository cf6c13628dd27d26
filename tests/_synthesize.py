"""Synthesized Darknet ``.weights`` files and the network each fork's tests use,
without torch: shared by the test modules (through ``_check_models``) and by
``tools/make_tflite_fixtures.py``, which runs in TensorFlow's venv."""
from pathlib import Path

import numpy as np

from darknet_bn.darknet import parse_cfg
from darknet_bn.dialects import get_dialect

CFG_DIR = Path(__file__).resolve().parent.parent / "data" / "golden" / "cfg"
#: Each fork's network: (the folder of its cfg, its name).  hank-ai's fork reads
#: AlexeyAB's cfgs.
NETWORKS = {"alexeyab": ("alexeyab", "yolov4-tiny"), "pjreddie": ("pjreddie", "yolov3-tiny"),
            "hankai": ("alexeyab", "yolov4-tiny")}


def synthesize_weights(cfg, fork, path, seed):
    """A ``.weights`` file for ``cfg`` with random blocks (every float random) and the
    fork's header with ``seen`` 0.  Variances are log-uniform in [1e-4, 4]."""
    net = parse_cfg(cfg, dialect=fork)
    rng = np.random.default_rng(seed)
    print(f"synthesize_weights({cfg}, {fork}): seed {seed}")
    header = np.array([0, 2, get_dialect(fork).folding.save_weights_revision], "<i4").tobytes() + \
        np.array([0], "<u8").tobytes()
    chunks = [header]
    for spec in net.layers:
        for name, count in spec.blocks:
            if name == "rolling_variance":
                values = 10 ** rng.uniform(-4, np.log10(4), count)
            elif name == "scales":
                values = rng.normal(1, 0.2, count)
            elif name == "rolling_mean":
                values = rng.normal(0, 1, count)
            elif name == "biases":
                values = rng.normal(0, 0.5, count)
            else:
                values = rng.normal(0, 0.1, count)
            chunks.append(values.astype("<f4").tobytes())
    with open(path, "wb") as f:
        f.write(b"".join(chunks))
    return net


def network_with_weights(fork, directory, seed):
    """``(cfg, weights, net)``: the fork's network (``NETWORKS``) and a ``.weights``
    file for it synthesized with ``seed`` in ``directory``."""
    folder, name = NETWORKS[fork]
    cfg = CFG_DIR / folder / f"{name}.cfg"
    weights = Path(directory) / f"{name}.weights"
    return cfg, weights, synthesize_weights(cfg, fork, weights, seed)
