"""Every difference between the Darknet forks, in one record per fork.

pjreddie/darknet (commit f6afaabc) and AlexeyAB/darknet (commit 59596d78) share
the routines of ``blas.c`` except for the epsilon placement in ``normalize_cpu``
and ``normalize_delta_cpu``, and their ``batchnorm_layer.c`` differ in the
rolling-average momentum, when ``x`` is saved, whether the BN backward computes
``bias_updates``, which statistics an inference-mode backward uses, and whether
a standalone ``[batchnorm]`` layer has an ``update`` on CPU.  Their cfg parsers,
``.weights`` layouts and folding differ too (``CfgRules``, ``Folding``).
hank-ai/darknet (commit f684e1d7, Darknet/YOLO V5) has AlexeyAB's source lines,
compiled as C++ with the float overloads of ``sqrt`` and ``pow`` in scope, and no
standalone ``[batchnorm]`` layer on the CPU.

A ``Dialect`` holds all of it and travels as an object: entry points take a
name or a ``Dialect`` and resolve it once with ``get_dialect``; no other module
compares fork names or keys a table by them.  The kernels take the small
integer ``Dialect.code`` and find the fork's arithmetic through
``normalize_denominator``, ``normalize_delta_denominator``, ``normalize_quotient``,
``mean_delta_factor`` and ``variance_delta_factor`` below (compile-time tables
indexed by code).  The constants and formulas themselves are defined in ``c_arith``.

==============================  ====================  ====================  ====================
                                pjreddie              alexeyab              hankai
==============================  ====================  ====================  ====================
normalize_cpu's denominator     sqrt(var)+.000001f    sqrt(var+.00001f)     sqrtf(var+.00001f)
normalize_cpu's division        double                double                float
normalize_delta_cpu's first     delta*1./             delta*1./             delta*1./
term                            sqrt(var+.00001f)     (sqrt(var)+.00001f)   (sqrtf(var)+.00001f)
mean_delta_cpu's root           sqrt (double)         sqrt (double)         sqrtf
variance_delta_cpu's power      pow (double)          pow (double)          powf
rolling update                  scal .99, axpy .01    scal .9, axpy .1      scal .9, axpy .1
copy output -> x                always                training only         training only
backward_bias in BN backward    yes                   no                    no
inference-mode backward         rolling mean/var      last batch's          last batch's
standalone [batchnorm] (CPU)    yes, no update        yes, with update      none
PyTorch's form (torch_form)     (sqrt(v)+1e-6)^2,     var v, eps 1e-5       var v, eps 1e-5
                                eps 0
==============================  ====================  ====================  ====================

(``sqrtf``/``powf``: C++'s ``sqrt(float)``/``pow(float, float)``; ``variance_cpu``'s
``pow(float, 2)`` promotes to double in C++ too, so it is C's everywhere.)
"""
import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ._jit import helper
from .c_arith import (DOUBLE_QUOTIENT, EPS, EPS_NORMALIZE_PJ, FLOAT_QUOTIENT, eps_denominator,
                      mean_delta_factor as c_mean_delta_factor,
                      variance_delta_factor as c_variance_delta_factor)


# --------------------------------------------------------------------------
# The cfg parser's and the .weights layout's differences
# --------------------------------------------------------------------------
#: Blocks a batch-normalized stage stores, by Darknet buffer name, in file order.
BN_BLOCKS = ("biases", "scales", "rolling_mean", "rolling_variance")

_COMMON_SECTIONS = frozenset({
    "convolutional", "batchnorm", "maxpool", "avgpool", "route", "shortcut", "upsample",
    "connected", "dropout", "softmax", "yolo", "region", "detection", "reorg", "cost",
    "local", "activation"})

#: Sections every fork knows but the cfg parser does not model: (reason shown).
_UNSUPPORTED_COMMON = {
    "rnn": "a recurrent layer (its weights are several connected layers)",
    "gru": "a recurrent layer (its weights are several connected layers)",
    "lstm": "a recurrent layer (its weights are several connected layers)",
    "crnn": "a recurrent layer (its weights are several convolutional layers)",
    "crop": "a crop layer", "normalization": "a local response normalization layer",
}


@dataclass(frozen=True, eq=False)
class CfgRules:
    """How a fork's ``parse_network_cfg`` reads a cfg, and what its ``load_weights``
    reads for a ``[batchnorm]`` section (``darknet_bn.darknet.parser``)."""
    sections: frozenset            #: supported section names in this fork
    unsupported: dict              #: sections the fork knows that are not modelled here
    batchnorm_blocks: tuple        #: what load_batchnorm_weights reads, in order
    route_groups: bool             #: [route] groups/group_id; route sets w, h, c, groups
    shortcut_multi: bool           #: [shortcut] from=a,b,...; weights_type; l.c = input c
    stride_xy: bool                #: conv/maxpool stride_x, stride_y (and maxpool_depth)
    n_for_bn_and_connected: bool   #: make_batchnorm/connected_layer set l.n (and size=1...)
    groups_clamp: bool             #: make_convolutional_layer: groups < 1 -> 1, xnor -> 1
    conv_cbn: bool                 #: [convolutional] cbn=1 makes batch_normalize = 2
    dropblock_sets_input: bool     #: [dropout] dropblock=1 sets the layer's c, h, w
    reorg_extra: bool              #: [reorg] extra= adds outputs (and zeroes out_w, out_h)

    def knows(self, section):
        """Whether the fork's parser has the section (modelled here or not)."""
        return section in self.sections or section in self.unsupported


#: How a fork folds batchnorm into the conv weights (``darknet_bn.darknet.fold``).
FUSE = "fuse_conv_batchnorm"               # AlexeyAB src/network.c, all in double
DENORMALIZE = "denormalize"                # pjreddie denormalize_{convolutional,connected}_layer


@dataclass(frozen=True)
class Folding:
    """How a fork folds batchnorm into the weights (``darknet_bn.darknet.fold``).

    ==========================  ====================================  ==========================
                                pjreddie                              alexeyab
    ==========================  ====================================  ==========================
    when                        on request: ``darknet denormalize``   every inference load:
                                (``denormalize_net``)                 ``load_network_custom``
    ``formula``                 ``DENORMALIZE``                       ``FUSE``
    ``[connected]``             ``denormalize_connected_layer``       not folded
    inference runs folded conv  no (``normalize_cpu``)                yes
    ``save_weights`` revision   0                                     5
    ==========================  ====================================  ==========================
    """
    formula: str                   #: FUSE or DENORMALIZE
    folds_connected: bool          #: [connected] layers with batchnorm are folded too
    inference_folds_conv: bool     #: the fork's inference computes the folded conv
    save_weights_revision: int     #: header revision save_weights writes (major 0, minor 2)
    command: str                   #: the Darknet command that writes a folded file


class EpsForm(NamedTuple):
    """A batchnorm denominator: ``sqrt(var + eps)`` (``inside``) or ``sqrt(var) + eps``."""
    inside: bool
    eps: float

    def text(self):
        return (f"sqrt(var + {self.eps:.3g})" if self.inside
                else f"(sqrt(var) + {self.eps:.3g})")

    def denominator(self, var):
        """The denominator in double for float64 ``var`` (NaN for a negative one)."""
        with np.errstate(invalid="ignore"):
            return np.sqrt(var + self.eps) if self.inside else np.sqrt(var) + self.eps

    def same(self, other):
        return self.inside == other.inside and math.isclose(self.eps, other.eps,
                                                            rel_tol=1e-6, abs_tol=0.0)


# --------------------------------------------------------------------------
# The record
# --------------------------------------------------------------------------
@dataclass(frozen=True, repr=False)
class Dialect:
    """One fork: its arithmetic (the kernels), its layer flow, its folding, its cfg
    parser and ``.weights`` layout.  Built-in objects only (``DIALECTS``)."""
    name: str
    code: int                      #: what the kernels take (an index into the tables below)
    normalize_eps: np.float32      #: normalize_cpu's epsilon (.000001f / .00001f)
    normalize_eps_in_sqrt: bool    #: normalize_cpu: sqrt(var + eps), else sqrt(var) + eps
    normalize_delta_eps_in_sqrt: bool  #: same for normalize_delta_cpu (eps .00001f)
    rolling_keep: np.float32       #: scal_cpu factor on rolling stats ((float).99 / (float).9)
    rolling_new: np.float32        #: axpy_cpu factor on batch stats ((float).01 / (float).1)
    copy_x_in_inference: bool      #: forward copies output -> x also when train == 0
    backward_bias_in_bn: bool      #: backward_batchnorm_layer calls backward_bias
    inference_backward_uses_rolling: bool  #: backward with train == 0 swaps in rolling stats
    standalone_update: bool        #: a [batchnorm] layer has update_batchnorm_layer on CPU
    #: The fork has a standalone ``[batchnorm]`` layer on the CPU (a cfg section and
    #: ``make_batchnorm_layer``); else batchnorm exists only as a conv/connected stage.
    standalone_batchnorm: bool
    #: Built as C++ with ``std::sqrt(float)``/``std::pow(float, float)`` in the global
    #: namespace: an unqualified ``sqrt``/``pow`` of a float is ``sqrtf``/``powf`` (a
    #: float), so normalize_cpu divides float by float (``c_arith.c_sqrt``).
    float_overloads: bool
    folding: Folding               #: how the fork folds batchnorm into the weights
    cfg: CfgRules                  #: how the fork's parser reads a cfg (and [batchnorm] blocks)

    def __repr__(self):
        return f"get_dialect({self.name!r})"

    def __reduce__(self):
        # Pickles and copies of a Network, a record or a layer carry the built-in
        # object itself, which the entry points compare by identity.
        return get_dialect, (self.name,)

    def __str__(self):
        return self.name

    @property
    def layer_types(self):
        """The ``BatchNormLayer`` layer types the fork has on the CPU, the standalone
        ``"batchnorm"`` first where it exists; ``"convolutional"`` (the batchnorm stage
        of a ``[convolutional]`` or ``[connected]`` layer) always."""
        return ("batchnorm", "convolutional") if self.standalone_batchnorm else ("convolutional",)

    def no_standalone_text(self):
        """Why a standalone batchnorm layer is refused for this fork, for messages."""
        return (f"dialect {self.name!r} has no standalone batchnorm layer on the CPU (its "
                "Darknet has no [batchnorm] cfg section and no make_batchnorm_layer; "
                "batchnorm runs only as the stage of a [convolutional] or [connected] "
                "layer with batch_normalize=1)")

    @property
    def normalize_form(self):
        """normalize_cpu's denominator as an ``EpsForm`` (what ``check`` compares with)."""
        return EpsForm(self.normalize_eps_in_sqrt, float(self.normalize_eps))

    @property
    def normalize_text(self):
        """normalize_cpu as C writes it, for messages: ``(x - mean)/sqrt(var + 0.00001f)``."""
        eps = f"{np.format_float_positional(self.normalize_eps)}f"
        return "(x - mean)/" + (f"sqrt(var + {eps})" if self.normalize_eps_in_sqrt
                                else f"(sqrt(var) + {eps})")

    @property
    def torch_eps(self):
        """The eps of PyTorch's (and ONNX's) ``BatchNorm`` that ``torch_form`` pairs with:
        the fork's epsilon as its shortest decimal (``1e-05``, which rounds to the same
        float32 ``.00001f`` PyTorch adds), or 0."""
        if self.normalize_eps_in_sqrt:
            return float(np.format_float_positional(self.normalize_eps))
        return 0.0

    def torch_form(self, variance, sqrt):
        """``(running_var, eps)``: the statistics in PyTorch's ``(x - m)/sqrt(var + eps)``
        form giving this fork's normalize_cpu denominator.  ``variance``: the rolling
        variance in float64 (a numpy array or a torch tensor), ``sqrt`` its library's
        square root.  Where the fork adds eps outside the root (pjreddie), the same
        denominator is ``sqrt(v' + 0)`` with ``v' = (sqrt(v) + eps)**2``, computed in
        float64 as the C computes its denominator; the caller rounds it once to its
        storage precision.  Otherwise the variance is returned as it is."""
        if self.normalize_eps_in_sqrt:
            return variance, self.torch_eps
        root = sqrt(variance) + float(self.normalize_eps)
        return root * root, self.torch_eps


_PJREDDIE_CODE, _ALEXEYAB_CODE, _HANKAI_CODE = 0, 1, 2

PJREDDIE = Dialect(
    name="pjreddie", code=_PJREDDIE_CODE,
    normalize_eps=EPS_NORMALIZE_PJ, normalize_eps_in_sqrt=False,
    normalize_delta_eps_in_sqrt=True,
    # C passes the double literals .99/.01 to a float parameter: rounded once.
    rolling_keep=np.float32(0.99), rolling_new=np.float32(0.01),
    copy_x_in_inference=True, backward_bias_in_bn=True,
    inference_backward_uses_rolling=True, standalone_update=False,
    standalone_batchnorm=True, float_overloads=False,
    folding=Folding(formula=DENORMALIZE, folds_connected=True, inference_folds_conv=False,
                    save_weights_revision=0, command="darknet denormalize cfg weights out"),
    cfg=CfgRules(
        sections=_COMMON_SECTIONS,
        unsupported={**_UNSUPPORTED_COMMON,
                     "deconvolutional": "a deconvolutional layer",
                     "logistic": "a logistic loss layer", "l2norm": "an l2norm layer",
                     "iseg": "an instance segmentation layer"},
        batchnorm_blocks=BN_BLOCKS[1:], route_groups=False, shortcut_multi=False,
        stride_xy=False, n_for_bn_and_connected=False, groups_clamp=False,
        conv_cbn=False, dropblock_sets_input=False, reorg_extra=True),
)

_ALEXEYAB_SECTIONS = _COMMON_SECTIONS | {"local_avgpool", "reorg3d", "empty"}
_ALEXEYAB_UNSUPPORTED = {
    **_UNSUPPORTED_COMMON,
    "conv_lstm": "a recurrent layer (several convolutional layers)",
    "history": "a history layer", "scale_channels": "a scale_channels layer",
    "sam": "a sam layer", "Gaussian_yolo": "a Gaussian_yolo layer",
    "implicit": "an implicit layer", "contrastive": "a contrastive layer"}

ALEXEYAB = Dialect(
    name="alexeyab", code=_ALEXEYAB_CODE,
    normalize_eps=EPS, normalize_eps_in_sqrt=True,
    normalize_delta_eps_in_sqrt=False,
    rolling_keep=np.float32(0.9), rolling_new=np.float32(0.1),
    copy_x_in_inference=False, backward_bias_in_bn=False,
    inference_backward_uses_rolling=False, standalone_update=True,
    standalone_batchnorm=True, float_overloads=False,
    folding=Folding(formula=FUSE, folds_connected=False, inference_folds_conv=True,
                    save_weights_revision=5,
                    command="load_network_custom(cfg, weights, 0, 1) + save_weights"),
    cfg=CfgRules(
        sections=_ALEXEYAB_SECTIONS,
        unsupported=_ALEXEYAB_UNSUPPORTED,
        batchnorm_blocks=BN_BLOCKS, route_groups=True, shortcut_multi=True,
        stride_xy=True, n_for_bn_and_connected=True, groups_clamp=True,
        conv_cbn=True, dropblock_sets_input=True, reorg_extra=False),
)

# hank-ai/darknet (commit f684e1d7, "V5 Moonlit" v5.1-104): AlexeyAB's batchnorm_layer,
# blas, fuse_conv_batchnorm and save_weights lines, compiled as C++ with the float
# overloads in scope (measured object code: docs/darknet-semantics.md).  Its cfg parser
# is AlexeyAB's for everything modelled here, without the [batchnorm] section.
HANKAI = dataclasses.replace(
    ALEXEYAB, name="hankai", code=_HANKAI_CODE, standalone_update=False,
    standalone_batchnorm=False, float_overloads=True,
    cfg=dataclasses.replace(ALEXEYAB.cfg, sections=_ALEXEYAB_SECTIONS - {"batchnorm"}))

#: The registry: every built-in dialect by name (the CLI's ``--dialect`` choices).
DIALECTS = {d.name: d for d in (PJREDDIE, ALEXEYAB, HANKAI)}

#: The dialects indexed by ``Dialect.code`` (the small int the kernels take).
BY_CODE = tuple(sorted(DIALECTS.values(), key=lambda d: d.code))
assert [d.code for d in BY_CODE] == list(range(len(BY_CODE)))
# The table by code, as tuples the kernels read (compile-time constants).
_NORMALIZE_EPS = tuple(d.normalize_eps for d in BY_CODE)
_NORMALIZE_IN_SQRT = tuple(d.normalize_eps_in_sqrt for d in BY_CODE)
_NORMALIZE_DELTA_IN_SQRT = tuple(d.normalize_delta_eps_in_sqrt for d in BY_CODE)
_FLOAT_OVERLOADS = tuple(d.float_overloads for d in BY_CODE)


@helper(inline="always")
def normalize_denominator(variance, code):
    """normalize_cpu's denominator (a double) for one channel of dialect ``code``."""
    return eps_denominator(variance, _NORMALIZE_EPS[code], _NORMALIZE_IN_SQRT[code],
                           _FLOAT_OVERLOADS[code])


@helper(inline="always")
def normalize_quotient(code):
    """How normalize_cpu divides for dialect ``code``: ``c_arith.FLOAT_QUOTIENT`` where
    the denominator is a float (C++'s overloads), else ``c_arith.DOUBLE_QUOTIENT``.
    Either gives the same bits with ``normalize_denominator``'s value (see
    ``c_arith.normalize_by``); the float division is the faster one."""
    return FLOAT_QUOTIENT if _FLOAT_OVERLOADS[code] else DOUBLE_QUOTIENT


@helper(inline="always")
def normalize_delta_denominator(variance, code):
    """normalize_delta_cpu's first-term denominator (a double) for dialect ``code``."""
    return eps_denominator(variance, EPS, _NORMALIZE_DELTA_IN_SQRT[code], _FLOAT_OVERLOADS[code])


@helper(inline="always")
def mean_delta_factor(variance, code):
    """mean_delta_cpu's factor ``-1./sqrt(variance + .00001f)`` (a double) for ``code``."""
    return c_mean_delta_factor(variance, _FLOAT_OVERLOADS[code])


@helper(inline="always")
def variance_delta_factor(variance, code):
    """variance_delta_cpu's factor ``-.5*pow(variance + .00001f, (float)(-3./2.))`` (a
    double) for dialect ``code``."""
    return c_variance_delta_factor(variance, _FLOAT_OVERLOADS[code])


def names():
    """The built-in dialects' names, for messages and the CLI's choices."""
    return tuple(DIALECTS)


def get_dialect(dialect, routine="darknet_bn"):
    """One of the built-in ``DIALECTS``: by name (``"pjreddie"``, ``"alexeyab"`` or
    ``"hankai"``, any case) or a ``Dialect`` equal to one of them (the built-in object is
    returned)."""
    if isinstance(dialect, Dialect):
        for builtin in BY_CODE:
            if dialect == builtin:
                return builtin
        raise ValueError(
            f"{routine}: dialect {dialect.name!r} (a modified Dialect) is not one of the "
            f"built-in dialects {list(DIALECTS)}; pass one of their names"
        )
    if not isinstance(dialect, str):
        raise TypeError(
            f"{routine}: dialect must be a string, one of {list(DIALECTS)}; "
            f"got {type(dialect).__name__}"
        )
    try:
        return DIALECTS[dialect.lower()]
    except KeyError:
        raise ValueError(
            f"{routine}: unknown dialect {dialect!r}; use one of {list(DIALECTS)}"
        ) from None


def others(dialect):
    """The built-in dialects other than ``dialect`` (a ``Dialect``), for hints."""
    return tuple(d for d in BY_CODE if d is not dialect)
