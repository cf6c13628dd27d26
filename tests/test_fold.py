"""darknet_bn.darknet.fold: Darknet's BN folding against files written by both forks'
builds, against a naive transcription of the C, and ``darknet-bn fold``."""
from pathlib import Path

import numpy as np
import pytest

import naive_fold
from darknet_bn.cli import main
from darknet_bn.darknet import (denormalize_connected_layer, denormalize_convolutional_layer,
                                fold_batchnorm, fold_weights, fuse_conv_batchnorm, parse_cfg,
                                read_weights)
from darknet_bn.darknet.weights import WeightsFormatError

DATA = Path(__file__).resolve().parent.parent / "data" / "golden"
FOLD = DATA / "fold"
FORKS = ("pjreddie", "alexeyab")
F32 = np.float32


def _bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.int32)


def _same_bits(a, b):
    return a.shape == b.shape and np.array_equal(_bits(a), _bits(b))


def _inputs(fork, name):
    if name == "fold-zoo":
        return FOLD / "fold-zoo.cfg", FOLD / fork / "fold-zoo.weights"
    return DATA / "cfg" / fork / "bn-zoo.cfg", DATA / "cfg" / fork / "bn-zoo.weights"


CASES = [(f, n) for f in FORKS for n in ("fold-zoo", "bn-zoo")]


# --------------------------------------------------------------------------
# Darknet's own files, byte for byte
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fork,name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_folded_file_is_byte_identical_to_darknets(fork, name, tmp_path):
    cfg, weights = _inputs(fork, name)
    res = fold_weights(cfg, weights, tmp_path / "out.weights", dialect=fork)
    assert (tmp_path / "out.weights").read_bytes() == \
        (FOLD / fork / f"{name}.folded.weights").read_bytes()
    net = parse_cfg(cfg, dialect=fork)
    expect = [s.index for s in net.layers if s.bn_channels and (
        s.section == "convolutional" or (s.section == "connected" and fork == "pjreddie"))]
    assert list(res.folded) == expect and expect


def test_hankai_folds_as_alexeyab(tmp_path):
    """hank-ai's fuse_conv_batchnorm is AlexeyAB's lines with explicit double casts: the
    file AlexeyAB's build wrote, byte for byte (fold-zoo has no [batchnorm] section, which
    hank-ai's parser would refuse), and the same folded layers."""
    cfg, weights = _inputs("alexeyab", "fold-zoo")
    res = fold_weights(cfg, weights, tmp_path / "out.weights", dialect="hankai")
    assert (tmp_path / "out.weights").read_bytes() == \
        (FOLD / "alexeyab" / "fold-zoo.folded.weights").read_bytes()
    net = parse_cfg(cfg, dialect="hankai")
    assert list(res.folded) == [s.index for s in net.layers
                                if s.bn_channels and s.section == "convolutional"]
    rng = np.random.default_rng(6)
    blocks = [rng.normal(0, 1, 64).astype(F32), rng.normal(0, 1, 8).astype(F32),
              rng.normal(1, .2, 8).astype(F32), rng.normal(0, 1, 8).astype(F32),
              rng.uniform(1e-6, 4, 8).astype(F32)]
    for a, b in zip(fold_batchnorm(*blocks, dialect="hankai"),
                    fold_batchnorm(*blocks, dialect="alexeyab")):
        assert _same_bits(a, b), "seed 6"
    with pytest.raises(ValueError, match=r"'hankai' does not fold \[connected\]"):
        fold_batchnorm(*blocks, dialect="hankai", layer_type="connected")


@pytest.mark.parametrize("fork,name", CASES, ids=[f"{f}-{n}" for f, n in CASES])
def test_every_layer_struct_after_folding(fork, name):
    """The per-layer values Darknet's structs hold after folding (``.folded.npz``), bit
    for bit: folded layers from fold_batchnorm, the others as stored."""
    cfg, weights = _inputs(fork, name)
    ref = np.load(FOLD / fork / f"{name}.folded.npz")
    net = parse_cfg(cfg, dialect=fork)
    raw = np.fromfile(weights, dtype="<f4", offset=20)
    records = {r.index: r for r in read_weights(cfg, weights, dialect=fork,
                                                layer_weights=True).layers}
    checked = 0
    specials = 0
    for index in ref["layers"]:
        spec = net.layers[index]
        rec = records.get(index)
        folded = rec is not None and (spec.section == "convolutional" or fork == "pjreddie")
        assert int(ref[f"layer{index}_batch_normalize_after"]) == int(
            bool(spec.bn_channels) and not folded)
        if folded:
            w, b = fold_batchnorm(rec.weights, rec.biases, rec.scales, rec.rolling_mean,
                                  rec.rolling_variance, dialect=fork, layer_type=spec.section)
            specials += int(np.count_nonzero(~np.isfinite(w)))
        else:
            n = dict(spec.blocks)
            b = raw[spec.offsets["biases"]:][:n["biases"]]
            w = raw[spec.offsets["weights"]:][:n["weights"]]
        assert _same_bits(b, ref[f"layer{index}_biases"]), index
        if f"layer{index}_weights" in ref:
            assert _same_bits(w, ref[f"layer{index}_weights"]), index
        else:
            assert fork == "alexeyab" and spec.section == "connected"
        checked += 1
    assert checked == len(ref["layers"])
    if name == "fold-zoo":
        assert specials > 0          # the fixture's NaN/Inf regimes reach the weights


def test_layer_weights_are_the_stored_block():
    cfg, weights = _inputs("alexeyab", "fold-zoo")
    raw = np.fromfile(weights, dtype="<f4", offset=20)
    w = read_weights(cfg, weights, dialect="alexeyab", layer_weights=True)
    for rec in w.layers:
        off, n = rec.spec.offsets["weights"], dict(rec.spec.blocks)["weights"]
        assert _same_bits(rec.weights, raw[off:off + n])
    assert all(r.weights is None for r in read_weights(cfg, weights, dialect="alexeyab").layers)


def test_write_weights_writes_edited_weight_blocks(tmp_path):
    cfg, weights = _inputs("pjreddie", "fold-zoo")
    w = read_weights(cfg, weights, layer_weights=True)
    w.layers[0].weights[:] = 0.5
    write_weights_path = tmp_path / "edited.weights"
    from darknet_bn.darknet import write_weights
    write_weights(cfg, write_weights_path, w)
    back = read_weights(cfg, write_weights_path, layer_weights=True)
    assert np.all(back.layers[0].weights == 0.5)
    assert _same_bits(back.layers[1].weights, w.layers[1].weights)
    w.layers[0].weights = np.zeros(3, F32)
    with pytest.raises(ValueError, match=r"layer 0 \[convolutional\]: weights has shape"):
        write_weights(cfg, tmp_path / "bad.weights", w)


# --------------------------------------------------------------------------
# random parameters in every regime, against the naive transcription
# --------------------------------------------------------------------------
FLT_MAX = float(np.finfo(F32).max)
REGIMES = {
    "normal": lambda r, n: r.normal(0, 1, n),
    "tiny": lambda r, n: r.choice([-1, 1], n) * 10.0 ** r.uniform(-38, -30, n),
    "denormal": lambda r, n: r.choice([-1, 1], n) * r.uniform(1e-45, 1.1e-38, n),
    "huge": lambda r, n: r.choice([-1, 1], n) * 10.0 ** r.uniform(20, 38.5, n),
    "near_flt_max": lambda r, n: r.choice([-1, 1], n) * r.uniform(0.9, 1.0, n) * FLT_MAX,
    "zero": lambda r, n: r.choice([0.0, -0.0], n),
    "special": lambda r, n: r.choice([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0], n),
}


def _values(rng, regime, n):
    with np.errstate(over="ignore"):
        v = np.asarray(REGIMES[regime](rng, n), dtype=np.float64).astype(F32)
    mix = rng.random(n) < 0.3                     # some ordinary values in every regime
    v[mix] = rng.normal(0, 2, int(mix.sum())).astype(F32)
    return v


def _random_layer(seed, regime):
    rng = np.random.default_rng(seed)
    n, size, c = int(rng.integers(1, 7)), int(rng.choice([1, 3])), int(rng.integers(1, 5))
    groups = int(rng.choice([g for g in (1, 2, c) if c % g == 0]))
    k = size * size * c // groups
    blocks = {name: _values(rng, regime if rng.random() < 0.7 else "normal", count)
              for name, count in (("weights", n * k), ("biases", n), ("scales", n),
                                  ("rolling_mean", n), ("rolling_variance", n))}
    if regime == "normal":                       # variances of every sign and size
        blocks["rolling_variance"] = rng.choice([1e-12, 1e-6, 0.25, 4.0, -1.0, 0.0], n).astype(F32)
    return n, size, c, groups, blocks


RANDOM = [(regime, seed) for regime in REGIMES for seed in range(6)]


@pytest.mark.parametrize("regime,seed", RANDOM, ids=[f"{r}-seed{s}" for r, s in RANDOM])
def test_random_conv_layers_match_the_naive_c(regime, seed):
    n, size, c, groups, blocks = _random_layer(1000 + seed, regime)
    for fork, routine in (("alexeyab", naive_fold.fuse_conv_batchnorm),
                          ("pjreddie", naive_fold.denormalize_convolutional_layer)):
        want = {k: v.copy() for k, v in blocks.items()}
        routine(want["weights"], want["biases"], want["scales"], want["rolling_mean"],
                want["rolling_variance"], n, size, c, groups)
        w, b = fold_batchnorm(blocks["weights"], blocks["biases"], blocks["scales"],
                              blocks["rolling_mean"], blocks["rolling_variance"], dialect=fork)
        assert _same_bits(w, want["weights"]), f"{fork} seed={1000 + seed} weights"
        assert _same_bits(b, want["biases"]), f"{fork} seed={1000 + seed} biases"
        # the in-place routine under Darknet's name: the same bits, and the C's resets
        got = {k: v.copy() for k, v in blocks.items()}
        inplace = fuse_conv_batchnorm if fork == "alexeyab" else denormalize_convolutional_layer
        inplace(got["weights"], got["biases"], got["scales"], got["rolling_mean"],
                got["rolling_variance"], n, size * size * c // groups)
        for name in blocks:
            expect = want[name] if (fork == "pjreddie" or name in ("weights", "biases")) \
                else blocks[name]
            assert _same_bits(got[name], expect), f"{fork} seed={1000 + seed} {name}"


@pytest.mark.parametrize("regime,seed", RANDOM[::2], ids=[f"{r}-seed{s}" for r, s in RANDOM[::2]])
def test_random_connected_layers_match_the_naive_c(regime, seed):
    n, size, c, groups, blocks = _random_layer(2000 + seed, regime)
    inputs = size * size * c // groups
    want = {k: v.copy() for k, v in blocks.items()}
    naive_fold.denormalize_connected_layer(want["weights"], want["biases"], want["scales"],
                                           want["rolling_mean"], want["rolling_variance"],
                                           n, inputs)
    w, b = fold_batchnorm(blocks["weights"], blocks["biases"], blocks["scales"],
                          blocks["rolling_mean"], blocks["rolling_variance"],
                          dialect="pjreddie", layer_type="connected")
    assert _same_bits(w, want["weights"]) and _same_bits(b, want["biases"]), 2000 + seed
    got = {k: v.copy() for k, v in blocks.items()}
    denormalize_connected_layer(got["weights"], got["biases"], got["scales"],
                                got["rolling_mean"], got["rolling_variance"], n, inputs)
    assert all(_same_bits(got[k], want[k]) for k in blocks), 2000 + seed


def test_the_forks_fold_differently_and_neither_is_normalize():
    """Same parameters, three different results: AlexeyAB's double fold, pjreddie's
    float fold (eps 1e-5 inside the root), and the connected variant (1e-6)."""
    rng = np.random.default_rng(5)
    blocks = [rng.normal(0, 1, 64).astype(F32), rng.normal(0, 1, 8).astype(F32),
              rng.normal(1, .2, 8).astype(F32), rng.normal(0, 1, 8).astype(F32),
              rng.uniform(1e-4, 1e-3, 8).astype(F32)]
    ab = fold_batchnorm(*blocks, dialect="alexeyab")
    pj = fold_batchnorm(*blocks, dialect="pjreddie")
    pjc = fold_batchnorm(*blocks, dialect="pjreddie", layer_type="connected")
    assert not _same_bits(ab[0], pj[0]) and not _same_bits(pj[0], pjc[0])


def test_inputs_are_not_modified():
    rng = np.random.default_rng(9)
    blocks = [rng.normal(0, 1, n).astype(F32) for n in (12, 3, 3, 3, 3)]
    blocks[4] = np.abs(blocks[4])
    before = [b.copy() for b in blocks]
    for fork in FORKS:
        fold_batchnorm(*blocks, dialect=fork)
    assert all(_same_bits(a, b) for a, b in zip(blocks, before))


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------
def _blocks(n=3, k=4):
    return [np.ones(n * k, F32)] + [np.ones(n, F32) for _ in range(4)]


@pytest.mark.parametrize("change,exc,match", [
    ({"weights": np.ones(12)}, TypeError, r"fold_batchnorm: weights must have dtype float32"),
    ({"weights": np.ones(13, F32)}, ValueError, r"weights has 13 elements.*n = 3"),
    ({"weights": np.ones(2, F32)}, ValueError, r"weights has 2 elements"),
    ({"biases": [1.0, 1.0, 1.0]}, TypeError, r"biases must be a numpy.ndarray"),
    ({"biases": np.ones(0, F32)}, ValueError, r"biases is empty"),
    ({"scales": np.ones(4, F32)}, ValueError, r"scales has 4 elements but needs exactly 3"),
    ({"rolling_variance": np.ones((3, 1), F32)}, ValueError, r"rolling_variance must be a flat"),
    ({"rolling_mean": None}, TypeError, r"rolling_mean must be a numpy.ndarray"),
])
def test_fold_batchnorm_bad_arrays(change, exc, match):
    names = ("weights", "biases", "scales", "rolling_mean", "rolling_variance")
    args = dict(zip(names, _blocks()))
    args.update(change)
    with pytest.raises(exc, match=match):
        fold_batchnorm(**args, dialect="pjreddie")


def test_fold_batchnorm_bad_options():
    with pytest.raises(ValueError, match=r"'alexeyab' does not fold \[connected\].*pjreddie"):
        fold_batchnorm(*_blocks(), dialect="alexeyab", layer_type="connected")
    with pytest.raises(ValueError, match=r"layer_type must be one of"):
        fold_batchnorm(*_blocks(), dialect="pjreddie", layer_type="batchnorm")
    with pytest.raises(ValueError, match=r"unknown dialect 'darknet'"):
        fold_batchnorm(*_blocks(), dialect="darknet")
    with pytest.raises(TypeError, match=r"dialect"):
        fold_batchnorm(*_blocks())                     # the fork must be named


def test_in_place_routines_refuse_before_writing():
    blocks = _blocks()
    blocks[1].flags.writeable = False
    before = [b.copy() for b in blocks]
    with pytest.raises(ValueError, match=r"fuse_conv_batchnorm: biases is read-only"):
        fuse_conv_batchnorm(*blocks, 3, 4)
    blocks[1].flags.writeable = True
    with pytest.raises(ValueError, match=r"filter_size"):
        denormalize_convolutional_layer(*blocks, 3, 5)
    with pytest.raises(ValueError, match=r"shares memory"):
        denormalize_connected_layer(blocks[0], blocks[0][:3], *blocks[2:], 3, 4)
    assert all(_same_bits(a, b) for a, b in zip(blocks, before))


def test_fold_weights_refuses_to_overwrite_its_input(tmp_path):
    cfg, weights = _inputs("alexeyab", "fold-zoo")
    copy = tmp_path / "in.weights"
    copy.write_bytes(weights.read_bytes())
    for out in (copy, tmp_path / "." / "in.weights"):
        with pytest.raises(ValueError, match=r"refuses to overwrite its input"):
            fold_weights(cfg, copy, out, dialect="alexeyab")
    link = tmp_path / "link.weights"
    link.symlink_to(copy)
    with pytest.raises(ValueError, match=r"refuses to overwrite its input"):
        fold_weights(cfg, copy, link, dialect="alexeyab")
    assert copy.read_bytes() == weights.read_bytes()


def test_fold_weights_bad_files(tmp_path):
    cfg, weights = _inputs("pjreddie", "fold-zoo")
    short = tmp_path / "short.weights"
    short.write_bytes(weights.read_bytes()[:-4])
    with pytest.raises(WeightsFormatError, match=r"truncated"):
        fold_weights(cfg, short, tmp_path / "out.weights", dialect="pjreddie")
    flipped = tmp_path / "flipped.cfg"
    flipped.write_text(cfg.read_text().replace("groups=2\n", "groups=2\nflipped=1\n"))
    with pytest.raises(ValueError, match=r"flipped=1 is not supported by fold"):
        fold_weights(flipped, weights, tmp_path / "out.weights", dialect="pjreddie")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flipped.cfg", "short.weights"]


# --------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------
@pytest.mark.parametrize("fork", FORKS)
def test_fold_cli_writes_darknets_bytes(fork, tmp_path, capsys):
    cfg, weights = _inputs(fork, "fold-zoo")
    out = tmp_path / "folded.weights"
    assert main(["fold", str(cfg), str(weights), str(out), "--dialect", fork]) == 0
    assert out.read_bytes() == (FOLD / fork / "fold-zoo.folded.weights").read_bytes()
    assert "layers folded" in capsys.readouterr().out


def test_fold_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    cfg, weights = _inputs("pjreddie", "fold-zoo")
    copy = tmp_path / "in.weights"
    copy.write_bytes(weights.read_bytes())
    for argv in (["fold", str(cfg), str(copy), str(copy), "--dialect", "pjreddie"],
                 ["fold", str(cfg), str(tmp_path / "nope.weights"), str(tmp_path / "o"),
                  "--dialect", "pjreddie"],
                 ["fold", str(DATA / "cfg" / "alexeyab" / "bn-zoo.cfg"), str(copy),
                  str(tmp_path / "o"), "--dialect", "alexeyab"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("darknet-bn fold: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
    assert copy.read_bytes() == weights.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.weights"]
