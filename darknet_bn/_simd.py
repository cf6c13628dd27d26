"""Eight float32 lanes as one value: ``vec8``, for the fused kernels' channel groups.

Darknet's reductions are serial chains, one per channel; they cannot be
vectorized along a channel without changing the summation order.  They can be
vectorized *across* channels: lane c of a ``vec8`` carries channel f0+c's
chain, and every lane does exactly the scalar C operation of its channel, in
its channel's order.  ``vtranspose`` turns eight 8-element rows (one per
channel plane, consecutive positions k..k+7) into eight columns (one per
position, the eight channels side by side), so the chains advance one position
per vector operation.

Numba has no SIMD vector type, so ``vec8`` is a small Numba extension type
whose data model is LLVM's ``<8 x float>``, and each operation below is an
``@intrinsic`` emitting the corresponding LLVM instruction (``fadd``, ``fsub``,
``fmul``, ``fpext``, ``fptrunc``, ``shufflevector``, unaligned ``load`` /
``store``).  LLVM maps them to AVX on x86-64 and to pairs of NEON registers on
aarch64.  Every operation rounds per lane exactly like the scalar IEEE
operation (fastmath flags are never set, so nothing is contracted into an FMA
or reassociated).

Memory access: ``vload(a, i)`` / ``vstore(a, i, v)`` touch ``a[i:i+8]`` and do
no bounds check; callers guarantee ``0 <= i`` and ``i + 8 <= a.size``.

With ``NUMBA_DISABLE_JIT=1`` the same names are plain NumPy functions (a
``vec8`` is then a float32 array of 8), so the kernels' bodies still run as
Python, e.g. for coverage.
"""
import numpy as np
from numba.core import config

LANES = 8

if config.DISABLE_JIT:                                   # pragma: no cover - pure Python mode
    def vload(a, i):
        return a[i:i + LANES].copy()

    def vstore(a, i, v):
        a[i:i + LANES] = v

    def vsplat(x):
        return np.full(LANES, x, dtype=np.float32)

    def vadd(a, b):
        return (a + b).astype(np.float32)

    def vsub(a, b):
        return (a - b).astype(np.float32)

    def vmul(a, b):
        return (a * b).astype(np.float32)

    def vvar_step(acc, v, m):
        d = (v - m).astype(np.float64)
        return (acc.astype(np.float64) + d * d).astype(np.float32)

    def vtranspose(r0, r1, r2, r3, r4, r5, r6, r7):
        t = np.stack((r0, r1, r2, r3, r4, r5, r6, r7)).T
        return tuple(np.ascontiguousarray(t[k]) for k in range(LANES))

else:
    from llvmlite import ir
    from numba import types
    from numba.core.datamodel import models
    from numba.extending import intrinsic, register_model

    class Vec8(types.Type):
        """Numba type of eight float32 lanes (LLVM ``<8 x float>``)."""

        def __init__(self):
            super().__init__(name="vec8f32")

    vec8 = Vec8()
    _F32x8 = ir.VectorType(ir.FloatType(), LANES)
    _F64x8 = ir.VectorType(ir.DoubleType(), LANES)
    _I32x8 = ir.VectorType(ir.IntType(32), LANES)

    @register_model(Vec8)
    class _Vec8Model(models.PrimitiveModel):
        def __init__(self, dmm, fe_type):
            super().__init__(dmm, fe_type, _F32x8)

    def _element_ptr(context, builder, arrty, arr, idx):
        data = context.make_array(arrty)(context, builder, arr).data
        return builder.bitcast(builder.gep(data, [idx]), _F32x8.as_pointer())

    def _is_f32_buffer(a):
        return isinstance(a, types.Array) and a.dtype == types.float32

    @intrinsic
    def vload(typingctx, a, i):
        """``a[i:i+8]`` as a vec8 (unaligned load; no bounds check)."""
        if not (_is_f32_buffer(a) and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            idx = context.cast(builder, args[1], sig.args[1], types.intp)
            return builder.load(_element_ptr(context, builder, sig.args[0], args[0], idx),
                                align=4)
        return vec8(a, i), codegen

    @intrinsic
    def vstore(typingctx, a, i, v):
        """``a[i:i+8] = v`` (unaligned store; no bounds check)."""
        if not (_is_f32_buffer(a) and isinstance(i, types.Integer) and v == vec8):
            return None

        def codegen(context, builder, sig, args):
            idx = context.cast(builder, args[1], sig.args[1], types.intp)
            builder.store(args[2], _element_ptr(context, builder, sig.args[0], args[0], idx),
                          align=4)
            return context.get_dummy_value()
        return types.none(a, i, v), codegen

    @intrinsic
    def vsplat(typingctx, x):
        """Eight copies of the float32 ``x``."""
        if x != types.float32:
            return None

        def codegen(context, builder, sig, args):
            v = builder.insert_element(ir.Constant(_F32x8, ir.Undefined), args[0],
                                       ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(v, v, ir.Constant(_I32x8, [0] * LANES))
        return vec8(x), codegen

    def _lanewise(instruction, doc):
        @intrinsic
        def op(typingctx, a, b):
            if not (a == vec8 and b == vec8):
                return None

            def codegen(context, builder, sig, args):
                return getattr(builder, instruction)(args[0], args[1])
            return vec8(a, b), codegen
        op.__doc__ = doc
        return op

    vadd = _lanewise("fadd", "Per lane ``a + b`` in float32 (C's ``float + float``).")
    vsub = _lanewise("fsub", "Per lane ``a - b`` in float32.")
    vmul = _lanewise("fmul", "Per lane ``a * b`` in float32.")

    @intrinsic
    def vvar_step(typingctx, acc, v, m):
        """``c_arith.variance_step`` per lane: ``(float)((double)acc + pow(v - m, 2))``.

        ``v - m`` in float32, widened to double, squared (exact) and added in
        double, rounded back to float32: C's ``variance[i] += pow(x - mean, 2)``.
        """
        if not (acc == vec8 and v == vec8 and m == vec8):
            return None

        def codegen(context, builder, sig, args):
            d = builder.fpext(builder.fsub(args[1], args[2]), _F64x8)
            s = builder.fadd(builder.fpext(args[0], _F64x8), builder.fmul(d, d))
            return builder.fptrunc(s, _F32x8)
        return vec8(acc, v, m), codegen

    def _mask(lanes):
        return ir.Constant(_I32x8, lanes)

    # The three shuffle stages of an 8x8 transpose (AVX's unpack / shuffle / 128-bit
    # permute pattern): interleave pairs of rows, then pairs of pairs, then halves.
    _UNPACK = ([0, 8, 1, 9, 4, 12, 5, 13], [2, 10, 3, 11, 6, 14, 7, 15])
    _PAIRS = ([0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15])
    _HALVES = ([0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15])

    @intrinsic
    def vtranspose(typingctx, r0, r1, r2, r3, r4, r5, r6, r7):
        """Eight rows to eight columns: ``out[k]`` holds lane k of every row, in row order."""
        rows = (r0, r1, r2, r3, r4, r5, r6, r7)
        if not all(r == vec8 for r in rows):
            return None
        tup = types.UniTuple(vec8, LANES)

        def codegen(context, builder, sig, args):
            sh = builder.shuffle_vector
            t = []
            for i in range(0, LANES, 2):              # (r0 r1), (r2 r3), ...: unpack lo/hi
                t += [sh(args[i], args[i + 1], _mask(m)) for m in _UNPACK]
            s = []
            for i in (0, 4):                          # pairs of pairs
                s += [sh(t[i], t[i + 2], _mask(_PAIRS[0])), sh(t[i], t[i + 2], _mask(_PAIRS[1])),
                      sh(t[i + 1], t[i + 3], _mask(_PAIRS[0])),
                      sh(t[i + 1], t[i + 3], _mask(_PAIRS[1]))]
            out = [sh(s[i], s[i + 4], _mask(_HALVES[0])) for i in range(4)]
            out += [sh(s[i], s[i + 4], _mask(_HALVES[1])) for i in range(4)]
            return context.make_tuple(builder, tup, out)
        return tup(*rows), codegen
