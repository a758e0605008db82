"""MarkInt8WeightBits: a kernel called with an int8 constant gets the bits the constant needs, 7 or 8,
the most over its calls, ``call_tir_inplace`` included (Before/Expected)."""

from __future__ import annotations

import numpy as np
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from compiler.passes.mark_int8_weight_bits import mark_int8_weight_bits
from tests.pass_checks import assert_rewrites, assert_unchanged

SEVEN_BITS = np.array([[1, -64], [64, 4]], "int8")  # [-64, 64]: vpmaddubsw's pair sums fit int16
EIGHT_BITS = np.array([[1, 100], [3, 4]], "int8")


def test_kernels_get_the_bits_of_their_weights():
    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def dense(x: T.Buffer((2,), "uint8"), w: T.Buffer((2, 2), "int8"), out: T.Buffer((2,), "int32")):
            for i, k in T.grid(2, 2):
                with T.sblock("dense"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    with T.init():
                        out[vi] = 0
                    out[vi] = out[vi] + T.Cast("int32", x[vk]) * T.Cast("int32", w[vi, vk])

        @T.prim_func(private=True, s_tir=True)
        def dense_into(x: T.Buffer((2,), "uint8"), w: T.Buffer((2, 2), "int8"), out: T.Buffer((4,), "int32")):
            for i, k in T.grid(2, 2):
                with T.sblock("dense"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    with T.init():
                        out[vi + 2] = 0
                    out[vi + 2] = out[vi + 2] + T.Cast("int32", x[vk]) * T.Cast("int32", w[vi, vk])

        @R.function
        def main(x: R.Tensor((2,), "uint8"), buf: R.Tensor((4,), "int32")):
            cls = Before
            with R.dataflow():
                a = R.call_tir(cls.dense, (x, R.const(SEVEN_BITS)), out_ty=R.Tensor((2,), "int32"))
                b = R.call_tir(cls.dense, (x, R.const(SEVEN_BITS)), out_ty=R.Tensor((2,), "int32"))
                c = R.call_tir_inplace(cls.dense_into, (x, R.const(EIGHT_BITS), buf), [2],
                                       out_ty=R.Tensor((4,), "int32"))
                R.output(a, b, c)
            return (a, b, c)

    @I.ir_module
    class Expected:
        @T.prim_func(private=True, s_tir=True)
        def dense(x: T.Buffer((2,), "uint8"), w: T.Buffer((2, 2), "int8"), out: T.Buffer((2,), "int32")):
            T.func_attr({"kiln.int8_weight_bits": T.int32(7)})
            for i, k in T.grid(2, 2):
                with T.sblock("dense"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    with T.init():
                        out[vi] = 0
                    out[vi] = out[vi] + T.Cast("int32", x[vk]) * T.Cast("int32", w[vi, vk])

        @T.prim_func(private=True, s_tir=True)
        def dense_into(x: T.Buffer((2,), "uint8"), w: T.Buffer((2, 2), "int8"), out: T.Buffer((4,), "int32")):
            T.func_attr({"kiln.int8_weight_bits": T.int32(8)})
            for i, k in T.grid(2, 2):
                with T.sblock("dense"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    with T.init():
                        out[vi + 2] = 0
                    out[vi + 2] = out[vi + 2] + T.Cast("int32", x[vk]) * T.Cast("int32", w[vi, vk])

        @R.function
        def main(x: R.Tensor((2,), "uint8"), buf: R.Tensor((4,), "int32")):
            cls = Expected
            with R.dataflow():
                a = R.call_tir(cls.dense, (x, R.const(SEVEN_BITS)), out_ty=R.Tensor((2,), "int32"))
                b = R.call_tir(cls.dense, (x, R.const(SEVEN_BITS)), out_ty=R.Tensor((2,), "int32"))
                c = R.call_tir_inplace(cls.dense_into, (x, R.const(EIGHT_BITS), buf), [2],
                                       out_ty=R.Tensor((4,), "int32"))
                R.output(a, b, c)
            return (a, b, c)

    assert_rewrites(mark_int8_weight_bits, Before, Expected)


def test_a_float_kernel_stays():
    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def scale(x: T.Buffer((2,), "float32"), w: T.Buffer((2,), "float32"), out: T.Buffer((2,), "float32")):
            for i in range(2):
                with T.sblock("scale"):
                    vi = T.axis.remap("S", [i])
                    out[vi] = x[vi] * w[vi]

        @R.function
        def main(x: R.Tensor((2,), "float32")) -> R.Tensor((2,), "float32"):
            cls = Before
            with R.dataflow():
                y = R.call_tir(cls.scale, (x, R.const(np.ones(2, "float32"))), out_ty=R.Tensor((2,), "float32"))
                R.output(y)
            return y

    assert_unchanged(mark_int8_weight_bits, Before)
