"""The converted model as typed units: its conv/dense layers and its batchnorms, as arrays.

Every reader (``graph`` for ONNX and the formats translated into its op graph,
``torch_reader`` for state_dicts and live modules) turns a model into units;
``pairing`` matches them with the cfg's layers; ``darknet_bn.darknet.check``
judges them against Darknet's inference.  Values are held in float64 (exact for
the float32/float16/bfloat16 values a model stores); ``precision`` says what
they were stored as.

The unit types (each validates its arrays when built: a unit of the wrong shape
cannot exist):

- ``ConvUnit``: ``weight`` (out, in/groups*kh*kw), ``bias`` (out,) or None,
  ``kernel_shape`` (out, in/groups, kh, kw) or None (unknown);
- ``DenseUnit``: ``weight`` (out, in), ``bias`` (out,) or None;
- ``BatchNormUnit``: ``weight`` (the scale), ``bias``, ``mean``, ``var`` (all
  (channels,)) and ``eps`` (None: the model does not store it, as a
  state_dict), ``run_module`` (judge by running the live module: its class
  overrides ``forward``);
- ``AffineUnit``: a batchnorm written as ``Mul``/``Add`` of constants,
  ``y = alpha*x + beta`` (``alpha``, ``beta`` (channels,)).

``ConvUnit``/``DenseUnit`` are ``LinearUnit``s, ``BatchNormUnit``/``AffineUnit``
are ``NormUnit``s.  Shared fields (``Unit``): ``name``, ``precision``, ``form``
(how the model writes it: node types, module class), ``sources`` (graph
readers: the units or inputs feeding it), ``order`` (position in the model),
``cfg_index`` (a cfg layer index its name carries), ``stored`` (a torch
module's tensors as they are, for writing ``.weights``), ``module`` (the
live torch module), ``quantized`` (the quantized parameters' steps) and
``origins`` (graph readers: where each parameter is stored, ``graph.Origin``, for
``darknet_bn.darknet.fix``).
"""
import re
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np


class CheckError(ValueError):
    """The converted model cannot be read or paired with the Darknet layers."""


#: Unit roundoff of each storage precision (half an ulp at 1); for int8 (any linear
#: quantization), half a step of a full-range value (1/254, about ``2**-8``), used to
#: order precisions: a quantized parameter is judged by its own steps (``quantized``).
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8,
                 "int8": 2.0 ** -8}

#: The model input, as a data-flow source (the cfg's side, and a model with one input).
MODEL_INPUT = "input"


@dataclass(frozen=True)
class GraphInput:
    """A data input of a model graph other than its first (per-layer exports, cut
    subgraphs): a source pairing binds to the cfg layer whose input it stands for."""
    name: str


#: Names that carry a cfg layer index: module_list.N / models.N / layers.N prefixes,
#: or convolutional_N / conv_N / batch_norm_N / batchnorm_N / bn_N / connected_N leaves.
_INDEXED_PREFIX = re.compile(r"(?:^|\.)(?:module_list|models|layers|module_defs)\.(\d+)(?:\.|$)")
_INDEXED_LEAF = re.compile(
    r"(?:^|\.)(?:convolutional|conv|batch_norm|batchnorm|bn|connected|linear|fc)_(\d+)$")


def cfg_index_in_name(name):
    """The cfg layer index a module/parameter name carries, or None."""
    match = _INDEXED_PREFIX.search(name) or _INDEXED_LEAF.search(name)
    return int(match.group(1)) if match else None


def precision_of(dtype):
    """The storage precision of a numpy/torch dtype name: float16, bfloat16 or float32."""
    name = str(dtype).rsplit(".", 1)[-1]
    return name if name in ("float16", "bfloat16") else "float32"


def narrowest(*precisions):
    """The precision with the largest unit roundoff among ``precisions``."""
    given = [p for p in precisions if p]
    return max(given, key=UNIT_ROUNDOFF.__getitem__) if given else "float32"


def as_float64(array, what):
    """``array`` as a float64 ndarray; ``CheckError`` naming ``what`` if it is not numeric."""
    a = np.asarray(array)
    if a.dtype.kind not in "fiu" and str(a.dtype) != "bfloat16":
        raise CheckError(f"{what}: holds {a.dtype} values, not numbers")
    return a.astype(np.float64, copy=False)


def _vector(unit, what, value, channels):
    v = as_float64(value, f"{unit.name!r} {what}").reshape(-1)
    if v.size != channels:
        raise CheckError(f"{unit.name!r}: {what} of {v.size} values for {channels} channels; "
                         "they must be one per channel")
    return v


@dataclass(eq=False, kw_only=True)
class Unit:
    """What every unit has (module docstring); build one of the subclasses."""
    kind: ClassVar[str] = ""
    name: str
    precision: str = "float32"
    form: str = ""
    sources: frozenset = frozenset()
    order: float = 0
    cfg_index: object = None
    stored: dict = field(default_factory=dict)
    module: object = None
    #: quantized parameters ("weight", "bias", "alpha", "beta") -> ``QuantizedParam``
    quantized: dict = field(default_factory=dict)
    #: where a graph unit's parameters are stored: parameter -> ``graph.Origin``,
    #: "node" -> its op's first output, and the affine chain's "links"/"bias_links"
    origins: dict = field(default_factory=dict)

    def __post_init__(self):
        if type(self) in (Unit, LinearUnit, NormUnit):
            raise TypeError(f"{type(self).__name__} is abstract: build a ConvUnit, DenseUnit, "
                            "BatchNormUnit or AffineUnit")
        if self.precision not in UNIT_ROUNDOFF:
            raise CheckError(f"{self.name!r}: precision {self.precision!r}; one of "
                             f"{', '.join(UNIT_ROUNDOFF)}")

    @property
    def channels(self):
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r} {self.channels} channels>"


@dataclass(eq=False, kw_only=True)
class LinearUnit(Unit):
    """A conv or dense layer: ``weight`` (out, k), ``bias`` (out,) or None."""
    weight: np.ndarray
    bias: object = None

    def __post_init__(self):
        super().__post_init__()
        w = as_float64(self.weight, repr(self.name))
        if w.ndim != 2 or w.shape[0] == 0:
            raise CheckError(f"{self.name!r}: weight of shape {w.shape}; expected (outputs, "
                             "inputs per output)")
        self.weight = w
        if self.bias is not None:
            self.bias = _vector(self, "bias", self.bias, w.shape[0])

    @property
    def channels(self):
        return self.weight.shape[0]

    def add_bias(self, extra, precision):
        """Add ``extra`` (a per-channel or scalar addition following the layer) to the bias."""
        extra = np.broadcast_to(as_float64(extra, repr(self.name)), (self.channels,))
        self.bias = extra.copy() if self.bias is None else self.bias + extra
        self.precision = narrowest(self.precision, precision)


@dataclass(eq=False, kw_only=True)
class ConvUnit(LinearUnit):
    kind: ClassVar[str] = "conv"
    kernel_shape: object = None

    def __post_init__(self):
        super().__post_init__()
        if self.kernel_shape is not None:
            shape = tuple(int(s) for s in self.kernel_shape)
            if len(shape) != 4 or shape[0] != self.channels or \
                    int(np.prod(shape[1:])) != self.weight.shape[1]:
                raise CheckError(f"{self.name!r}: kernel shape {shape} does not hold the "
                                 f"weight's {self.weight.shape}; expected (out, in/groups, "
                                 "kh, kw)")
            self.kernel_shape = shape


@dataclass(eq=False, kw_only=True)
class DenseUnit(LinearUnit):
    kind: ClassVar[str] = "dense"


@dataclass(eq=False, kw_only=True)
class NormUnit(Unit):
    """A batchnorm: ``affine()`` gives ``(alpha, beta)`` with ``y = alpha*x + beta``."""
    kind: ClassVar[str] = "bn"

    def affine(self):
        raise NotImplementedError


@dataclass(eq=False, kw_only=True)
class BatchNormUnit(NormUnit):
    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: object = None
    run_module: bool = False

    def __post_init__(self):
        super().__post_init__()
        channels = np.size(self.mean)
        if channels == 0:
            raise CheckError(f"{self.name!r}: a batchnorm without channels")
        for what in ("weight", "bias", "mean", "var"):
            setattr(self, what, _vector(self, what, getattr(self, what), channels))
        if self.eps is not None:
            self.eps = float(self.eps)
        if self.run_module and self.module is None:
            raise CheckError(f"{self.name!r}: run_module without a module to run")

    @property
    def channels(self):
        return self.mean.shape[0]

    def affine(self):
        with np.errstate(all="ignore"):
            alpha = self.weight / np.sqrt(self.var + self.eps)
            return alpha, self.bias - alpha * self.mean


@dataclass(eq=False, kw_only=True)
class AffineUnit(NormUnit):
    alpha: np.ndarray
    beta: np.ndarray

    def __post_init__(self):
        super().__post_init__()
        channels = max(np.size(self.alpha), np.size(self.beta))
        for what in ("alpha", "beta"):
            value = as_float64(getattr(self, what), repr(self.name)).reshape(-1)
            if value.size == 1:
                value = np.full(channels, value[0])
            setattr(self, what, _vector(self, what, value, channels))

    @property
    def channels(self):
        return self.alpha.shape[0]

    def affine(self):
        return self.alpha, self.beta


@dataclass
class ModelUnits:
    """A reader's result: the ``units``; ``graph``: they carry ``sources`` (a
    data-flow graph) and ``consumers`` (unit -> units fed by it); ``source``: the
    model's name; ``stores_eps``: the model stores its batchnorms' eps; ``notes``:
    how the model was read where that matters for the report (a fallback taken)."""
    units: list
    graph: bool
    source: str
    stores_eps: bool
    consumers: dict = None
    notes: list = field(default_factory=list)


def consumers_of(units):
    """``{unit: [units whose sources hold it]}``."""
    consumers = {unit: [] for unit in units}
    for unit in units:
        for source in unit.sources:
            if source in consumers:
                consumers[source].append(unit)
    return consumers
