"""Linear quantization of stored parameters (int8, uint8, int32), as ONNX's
``DequantizeLinear``, TFLite's quantized tensors and OpenVINO's ``FakeQuantize``
define it: ``value = (q - zero_point) * scale``, the scale per tensor or per channel
along one axis.

A dequantized parameter is known to half its quantization step (``scale / 2``):
that is the precision ``check`` judges a quantized parameter in.  Translators call
``dequantize`` on the stored integers; the graph's ``Constant`` then holds the
dequantized values (float64, so anything reading the value computes with the
model's numbers) and a ``Quant`` (its ``quant``), which gives each element's
step and which stored integers sat at the ends of their range.
"""
from dataclasses import dataclass

import numpy as np

#: Storage type -> (smallest, largest) stored integer.
INTEGER_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
                 "uint16": (0, 65535), "int32": (-2 ** 31, 2 ** 31 - 1)}

#: The precision a quantized constant is judged in (its ``Constant.precision``).
QUANTIZED = "int8"


@dataclass(frozen=True, eq=False)
class Quant:
    """``value = (q - zero_point) * scale``; ``scale`` and ``zero_point`` hold one value
    (per tensor, ``axis`` None) or one per index of ``axis`` (per channel).
    ``storage``: the stored integers' type; ``saturated``: a boolean array of the
    value's shape, the integers at the ends of their range (None: unknown)."""
    scale: object
    zero_point: object = 0
    axis: object = None
    storage: str = "int8"
    saturated: object = None

    @property
    def per_channel(self):
        return np.size(self.scale) > 1

    def describe(self):
        """``int8, per channel`` / ``int8, per tensor``."""
        return f"{self.storage}, per {'channel' if self.per_channel else 'tensor'}"

    def along(self, values, shape):
        """``values`` (one, or one per index of ``axis``) broadcast to ``shape``."""
        v = np.asarray(values, np.float64).reshape(-1)
        shape = tuple(shape)
        if v.size == 1:
            return np.full(shape, v[0])
        axis = (self.axis or 0) % max(len(shape), 1)
        if not shape or shape[axis] != v.size:
            raise ValueError(f"{v.size} quantization parameters for axis {self.axis} of a "
                             f"tensor of shape {shape}")
        view = [1] * len(shape)
        view[axis] = v.size
        return np.broadcast_to(v.reshape(view), shape).copy()

    def steps(self, shape):
        """Each element's quantization step (its scale), float64, of ``shape``."""
        return self.along(np.abs(np.asarray(self.scale, np.float64)), shape)

    def moved(self, axis, saturated):
        """The same quantization after a transpose: the channel axis now ``axis``."""
        return Quant(self.scale, self.zero_point, axis if self.per_channel else None,
                            self.storage, saturated)


@dataclass(eq=False)
class QuantizedParam:
    """A quantized parameter of a unit, aligned with its dequantized values: each
    element's quantization step (``scale``), which stored integers sat at the ends of
    the storage range (a larger value was clipped there) and the description
    (``int8, per channel``)."""
    steps: np.ndarray
    saturated: np.ndarray
    description: str


def dequantize(q, scale, zero_point, axis, storage, what):
    """``(value, Quant)``: the stored integers ``q`` dequantized in float64 (exact
    for 8-bit ``q``), checked: finite nonzero scales, as many zero points as scales (or
    one), one scale per index of ``axis``.  ``ValueError`` naming ``what`` otherwise."""
    q = np.asarray(q)
    scale = np.asarray(scale, np.float64).reshape(-1)
    zero = np.asarray(0 if zero_point is None else zero_point).reshape(-1).astype(np.int64)
    if scale.size == 0:
        raise ValueError(f"{what}: no quantization scale")
    if not np.all(np.isfinite(scale)) or np.any(scale == 0):
        raise ValueError(f"{what}: quantization scales must be finite and nonzero")
    if zero.size not in (1, scale.size):
        raise ValueError(f"{what}: {zero.size} zero points for {scale.size} scales")
    quant = Quant(scale, zero, None if scale.size == 1 else int(axis or 0), storage)
    try:
        zeros = quant.along(zero, q.shape)
        value = (q.astype(np.float64) - zeros) * quant.along(scale, q.shape)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    return value, quant.moved(quant.axis, saturated_mask(q, zeros, storage))


def saturated_mask(q, zeros, storage):
    """The stored integers at an end of their range: the storage type's ends, and for a
    symmetric quantization (zero point 0) also ``-largest`` (the narrow range
    [-127, 127] that TFLite and onnxruntime quantize int8 weights to)."""
    low, high = INTEGER_RANGE.get(storage, (None, None))
    if low is None:
        return np.zeros(q.shape, bool)
    q = q.astype(np.int64)
    return (q <= low) | (q >= high) | ((zeros == 0) & (q <= -high))


def quantized_param(quant, shape):
    """The ``QuantizedParam`` of a constant with ``quant``, reshaped to ``shape`` (the
    unit's layout of the same values, in the same order)."""
    steps = quant.steps(np.shape(quant.saturated) if quant.saturated is not None else shape)
    saturated = (np.zeros(shape, bool) if quant.saturated is None
                 else np.asarray(quant.saturated).reshape(shape))
    return QuantizedParam(steps.reshape(shape), saturated, quant.describe())
