"""The converted model as units: its conv/dense layers and its batchnorms, as arrays.

Every reader (``readers``) turns a model into ``Unit`` objects; pairing
(``pairing``) matches them with the cfg's layers; judging (``judging``) runs
them against Darknet's inference.  Values are held in float64 (exact for the
float32/float16/bfloat16 values a model stores); ``precision`` says what they
were stored as.
"""
from dataclasses import dataclass, field

import numpy as np


class CheckError(ValueError):
    """The converted model cannot be read or paired with the Darknet layers."""


#: Unit roundoff of each storage precision (half an ulp at 1).
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}

#: The model input, as a data-flow source (graph readers).
MODEL_INPUT = "input"


def precision_of(dtype):
    """The storage precision of a numpy/torch dtype name: float16, bfloat16 or float32."""
    name = str(dtype).rsplit(".", 1)[-1]
    return name if name in ("float16", "bfloat16") else "float32"


def narrowest(*precisions):
    """The precision with the largest unit roundoff among ``precisions``."""
    given = [p for p in precisions if p]
    return max(given, key=UNIT_ROUNDOFF.__getitem__) if given else "float32"


@dataclass(eq=False)
class Unit:
    """A conv/dense layer or a batchnorm of the converted model.

    conv/dense: ``weight`` (out, k) and ``bias`` (out,) or None; ``kernel_shape``
    (out, in/groups, kh, kw) for a conv.  batchnorm: ``weight`` (the scale),
    ``bias``, ``mean``, ``var`` and ``eps``; or, for a batchnorm written as
    ``Mul``/``Add`` of constants (``affine`` form), ``alpha``/``beta`` with
    ``y = alpha*x + beta``.  ``stored`` keeps a torch module's tensors as they
    are (float32 arrays, ``running_var`` not remapped) for writing ``.weights``.
    """
    kind: str                      #: "conv", "dense" or "bn"
    name: str
    weight: object = None
    bias: object = None
    mean: object = None
    var: object = None
    eps: object = None
    alpha: object = None
    beta: object = None
    kernel_shape: tuple = None
    precision: str = "float32"
    form: str = ""                 #: how the model writes it (node types, module class)
    module: object = None          #: the live torch module (run when its forward is custom)
    run_module: bool = False       #: judge by running ``module`` (a custom forward)
    cfg_index: object = None       #: a cfg layer index the name carries, if any
    order: int = 0                 #: position in the model (named_modules / state_dict order)
    sources: frozenset = frozenset()   #: graph readers: units (or MODEL_INPUT) feeding it
    stored: dict = field(default_factory=dict)

    @property
    def channels(self):
        for a in (self.weight, self.mean, self.alpha):
            if a is not None:
                return a.shape[0]
        return 0

    @property
    def affine_form(self):
        return self.alpha is not None

    def __repr__(self):
        return f"<{self.kind} {self.name!r} {self.channels} channels>"


def as_float64(array, what):
    """``array`` as a float64 ndarray; ``CheckError`` naming ``what`` if it is not numeric."""
    a = np.asarray(array)
    if a.dtype.kind not in "fiu" and str(a.dtype) != "bfloat16":
        raise CheckError(f"{what}: holds {a.dtype} values, not numbers")
    return a.astype(np.float64)
