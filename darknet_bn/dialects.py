"""Every difference between the two Darknet forks, in one place.

pjreddie/darknet (commit f6afaabc) and AlexeyAB/darknet (commit 59596d78) share
the routines of ``blas.c`` except for the epsilon placement in ``normalize_cpu``
and ``normalize_delta_cpu``, and their ``batchnorm_layer.c`` differ in the
rolling-average momentum, when ``x`` is saved, whether the BN backward computes
``bias_updates``, which statistics an inference-mode backward uses, and whether
a standalone ``[batchnorm]`` layer has an ``update`` on CPU.

The kernels take the dialect as the small integer ``Dialect.code`` and find the
epsilon placement through ``normalize_denominator`` / ``normalize_delta_denominator``
below (read from ``DIALECTS``); everything else is read from the table by the
layer code.  The constants themselves are defined in ``c_arith``.

=================================  ===============================  ===============================
                                   pjreddie                         alexeyab
=================================  ===============================  ===============================
normalize_cpu                      (x-mean)/(sqrt(var)+.000001f)    (x-mean)/sqrt(var+.00001f)
normalize_delta_cpu, first term    delta*1./sqrt(var+.00001f)       delta*1./(sqrt(var)+.00001f)
rolling update                     scal .99, axpy .01               scal .9, axpy .1
copy output -> x                   always (train and inference)     training only
backward_bias inside BN backward   yes                              no (bias_updates untouched)
inference-mode backward            rolling mean/variance            last batch's mean/variance
update of a standalone layer       none on CPU                      update_batchnorm_layer
=================================  ===============================  ===============================
"""
from dataclasses import dataclass

import numpy as np

from ._jit import helper
from .c_arith import EPS, EPS_NORMALIZE_PJ, eps_denominator

PJREDDIE = 0
ALEXEYAB = 1


@dataclass(frozen=True)
class Dialect:
    name: str
    code: int                      #: passed to normalize_cpu / normalize_delta_cpu kernels
    normalize_eps: np.float32      #: normalize_cpu's epsilon (.000001f / .00001f)
    normalize_eps_in_sqrt: bool    #: normalize_cpu: sqrt(var + eps), else sqrt(var) + eps
    normalize_delta_eps_in_sqrt: bool  #: same for normalize_delta_cpu (eps .00001f)
    rolling_keep: np.float32       #: scal_cpu factor on rolling stats ((float).99 / (float).9)
    rolling_new: np.float32        #: axpy_cpu factor on batch stats ((float).01 / (float).1)
    copy_x_in_inference: bool      #: forward copies output -> x also when train == 0
    backward_bias_in_bn: bool      #: backward_batchnorm_layer calls backward_bias
    inference_backward_uses_rolling: bool  #: backward with train == 0 swaps in rolling stats
    standalone_update: bool        #: a [batchnorm] layer has update_batchnorm_layer on CPU


DIALECTS = {
    "pjreddie": Dialect(
        name="pjreddie", code=PJREDDIE,
        normalize_eps=EPS_NORMALIZE_PJ, normalize_eps_in_sqrt=False,
        normalize_delta_eps_in_sqrt=True,
        # C passes the double literals .99/.01 to a float parameter: rounded once.
        rolling_keep=np.float32(0.99), rolling_new=np.float32(0.01),
        copy_x_in_inference=True, backward_bias_in_bn=True,
        inference_backward_uses_rolling=True, standalone_update=False,
    ),
    "alexeyab": Dialect(
        name="alexeyab", code=ALEXEYAB,
        normalize_eps=EPS, normalize_eps_in_sqrt=True,
        normalize_delta_eps_in_sqrt=False,
        rolling_keep=np.float32(0.9), rolling_new=np.float32(0.1),
        copy_x_in_inference=False, backward_bias_in_bn=False,
        inference_backward_uses_rolling=False, standalone_update=True,
    ),
}

#: The dialects indexed by ``Dialect.code`` (the small int the kernels take).
BY_CODE = tuple(sorted(DIALECTS.values(), key=lambda d: d.code))
assert [d.code for d in BY_CODE] == list(range(len(BY_CODE)))
# The table by code, as tuples the kernels read (compile-time constants).
_NORMALIZE_EPS = tuple(d.normalize_eps for d in BY_CODE)
_NORMALIZE_IN_SQRT = tuple(d.normalize_eps_in_sqrt for d in BY_CODE)
_NORMALIZE_DELTA_IN_SQRT = tuple(d.normalize_delta_eps_in_sqrt for d in BY_CODE)


@helper(inline="always")
def normalize_denominator(variance, code):
    """normalize_cpu's denominator (a double) for one channel of dialect ``code``."""
    return eps_denominator(variance, _NORMALIZE_EPS[code], _NORMALIZE_IN_SQRT[code])


@helper(inline="always")
def normalize_delta_denominator(variance, code):
    """normalize_delta_cpu's first-term denominator (a double) for dialect ``code``."""
    return eps_denominator(variance, EPS, _NORMALIZE_DELTA_IN_SQRT[code])


def get_dialect(dialect, routine="darknet_bn"):
    """One of the built-in ``DIALECTS``: by name (``"pjreddie"`` or ``"alexeyab"``, any
    case) or a ``Dialect`` equal to one of them (the built-in object is returned)."""
    if isinstance(dialect, Dialect):
        for builtin in DIALECTS.values():
            if dialect == builtin:
                return builtin
        raise ValueError(
            f"{routine}: dialect {dialect!r} is not one of the built-in dialects "
            f"{sorted(DIALECTS)}; pass one of their names"
        )
    if not isinstance(dialect, str):
        raise TypeError(
            f"{routine}: dialect must be a string, one of {sorted(DIALECTS)}; "
            f"got {type(dialect).__name__}"
        )
    try:
        return DIALECTS[dialect.lower()]
    except KeyError:
        raise ValueError(
            f"{routine}: unknown dialect {dialect!r}; use one of {sorted(DIALECTS)}"
        ) from None


@dataclass(frozen=True)
class Folding:
    """How a fork folds batchnorm into the weights (``darknet_bn.darknet.fold``).

    ==========================  ====================================  ==========================
                                pjreddie                              alexeyab
    ==========================  ====================================  ==========================
    when                        on request: ``darknet denormalize``   every inference load:
                                (``denormalize_net``)                 ``load_network_custom``
    ``[convolutional]``         ``denormalize_convolutional_layer``   ``fuse_conv_batchnorm``
    ``[connected]``             ``denormalize_connected_layer``       not folded
    inference runs folded conv  no (``normalize_cpu``)                yes
    ``save_weights`` revision   0                                     5
    ==========================  ====================================  ==========================
    """
    name: str
    folds_connected: bool          #: [connected] layers with batchnorm are folded too
    inference_folds_conv: bool     #: the fork's inference computes the folded conv
    save_weights_revision: int     #: header revision save_weights writes (major 0, minor 2)
    command: str                   #: the Darknet command that writes a folded file


FOLDING = {
    "pjreddie": Folding(name="pjreddie", folds_connected=True, inference_folds_conv=False,
                        save_weights_revision=0,
                        command="darknet denormalize cfg weights out"),
    "alexeyab": Folding(name="alexeyab", folds_connected=False, inference_folds_conv=True,
                        save_weights_revision=5,
                        command="load_network_custom(cfg, weights, 0, 1) + save_weights"),
}
