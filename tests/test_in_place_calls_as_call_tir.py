"""InPlaceCallsAsCallTIR: for task extraction, ``call_tir_inplace(k, (…, buf), [last])`` is shown as
``call_tir(k, (…))`` (Before/Expected)."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from compiler.passes.in_place_calls_as_call_tir import in_place_calls_as_call_tir
from tests.pass_checks import assert_rewrites, assert_unchanged


def test_a_slice_writer_is_shown_as_call_tir():
    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def relu_into(x: T.Buffer((4,), "float32"), out: T.Buffer((8,), "float32")):
            for i in range(4):
                with T.sblock("relu"):
                    vi = T.axis.remap("S", [i])
                    out[vi + 4] = T.max(x[vi], T.float32(0))

        @R.function
        def main(x: R.Tensor((4,), "float32"), buf: R.Tensor((8,), "float32")) -> R.Tensor((8,), "float32"):
            cls = Before
            with R.dataflow():
                y = R.call_tir_inplace(cls.relu_into, (x, buf), [1], out_ty=R.Tensor((8,), "float32"))
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @T.prim_func(private=True, s_tir=True)
        def relu_into(x: T.Buffer((4,), "float32"), out: T.Buffer((8,), "float32")):
            for i in range(4):
                with T.sblock("relu"):
                    vi = T.axis.remap("S", [i])
                    out[vi + 4] = T.max(x[vi], T.float32(0))

        @R.function
        def main(x: R.Tensor((4,), "float32"), buf: R.Tensor((8,), "float32")) -> R.Tensor((8,), "float32"):
            cls = Expected
            with R.dataflow():
                y = R.call_tir(cls.relu_into, (x,), out_ty=R.Tensor((8,), "float32"))
                R.output(y)
            return y

    assert_rewrites(in_place_calls_as_call_tir, Before, Expected)


def test_a_kernel_writing_in_place_into_another_argument_stays():
    """Only the last argument in place reads like a ``call_tir`` kernel (inputs, then the output)."""

    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def relu_in_place(x: T.Buffer((4,), "float32"), y: T.Buffer((4,), "float32")):
            for i in range(4):
                with T.sblock("relu"):
                    vi = T.axis.remap("S", [i])
                    x[vi] = T.max(x[vi] + y[vi], T.float32(0))

        @R.function
        def main(x: R.Tensor((4,), "float32"), y: R.Tensor((4,), "float32")) -> R.Tensor((4,), "float32"):
            cls = Before
            with R.dataflow():
                z = R.call_tir_inplace(cls.relu_in_place, (x, y), [0], out_ty=R.Tensor((4,), "float32"))
                R.output(z)
            return z

    assert_unchanged(in_place_calls_as_call_tir, Before)
