"""Linear quantization of stored parameters (int8, uint8, int32), as ONNX's
``DequantizeLinear``, TFLite's quantized tensors and OpenVINO's ``FakeQuantize``
define it: ``value = (q - zero_point) * scale``, the scale per tensor or per channel
along one axis.

A dequantized parameter is known to half its quantization step (``scale / 2``):
that is the precision ``check`` judges a quantized parameter in.  ``Quantization``
holds the scales and zero points; ``steps(shape)`` gives each element's step, which
travels with the dequantized value through reshapes and transposes.
"""
from dataclasses import dataclass

import numpy as np

#: Storage type -> (smallest, largest) stored integer.
INTEGER_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767),
                 "uint16": (0, 65535), "int32": (-2 ** 31, 2 ** 31 - 1)}


@dataclass(frozen=True, eq=False)
class Quantization:
    """``value = (q - zero_point) * scale``; ``scale`` and ``zero_point`` hold one value
    (per tensor) or one per index of ``axis`` (per channel)."""
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int
    storage: str                    #: "int8", "uint8", "int32"...

    @property
    def per_channel(self):
        return np.size(self.scale) > 1

    def describe(self):
        """``int8, per channel`` / ``int8, per tensor``."""
        return f"{self.storage}, per {'channel' if self.per_channel else 'tensor'}"

    def _along(self, values, shape):
        v = np.asarray(values, np.float64).reshape(-1)
        if v.size == 1:
            return np.full(shape, v[0])
        axis = self.axis % len(shape)
        if shape[axis] != v.size:
            raise ValueError(f"{v.size} quantization parameters for axis {self.axis} of "
                             f"a tensor of shape {tuple(shape)}")
        view = [1] * len(shape)
        view[axis] = v.size
        return np.broadcast_to(v.reshape(view), shape).copy()

    def steps(self, shape):
        """Each element's quantization step (its scale), float64, of ``shape``."""
        return self._along(np.abs(self.scale), tuple(shape))

    def dequantize(self, q):
        """``(q - zero_point) * scale`` in float64 (exact for 8-bit ``q``)."""
        q = np.asarray(q)
        shape = q.shape if q.ndim else (1,)
        q = q.reshape(shape).astype(np.float64)
        return (q - self._along(self.zero_point, shape)) * self._along(self.scale, shape)

    def saturated(self, q):
        """Boolean mask: the stored integers at the ends of the storage range (a value
        beyond them was clipped there)."""
        low, high = INTEGER_RANGE.get(self.storage, (None, None))
        q = np.asarray(q)
        if low is None:
            return np.zeros(q.shape, bool)
        return (q <= low) | (q >= high)


def quantization(scale, zero_point, axis, storage, what):
    """A ``Quantization`` from a file's arrays, checked: finite positive-or-negative
    nonzero scales, zero points as many as scales (or one)."""
    scale = np.asarray(scale, np.float64).reshape(-1)
    zero = np.asarray(zero_point if zero_point is not None else 0).reshape(-1).astype(np.int64)
    if scale.size == 0:
        raise ValueError(f"{what}: no quantization scale")
    if not np.all(np.isfinite(scale)) or np.any(scale == 0):
        raise ValueError(f"{what}: quantization scales must be finite and nonzero")
    if zero.size not in (1, scale.size):
        raise ValueError(f"{what}: {zero.size} zero points for {scale.size} scales")
    return Quantization(scale, zero, int(axis or 0), storage)
