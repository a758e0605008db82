"""AttachAttrLayoutFreeBuffersInPlace: a kernel called in place with a constant argument gets that
argument's position as ``layout_free_buffers``, as TVM's pass does for ``call_tir`` (Before/Expected)."""

from __future__ import annotations

import numpy as np
from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from compiler.passes.attach_attr_layout_free_buffers_in_place import attach_attr_layout_free_buffers_in_place
from tests.pass_checks import assert_rewrites, assert_unchanged

WEIGHT = np.arange(4, dtype="float32")


def test_constant_argument_of_an_in_place_kernel_is_marked():
    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def add_into(x: T.Buffer((4,), "float32"), w: T.Buffer((4,), "float32"), out: T.Buffer((8,), "float32")):
            for i in range(4):
                with T.sblock("add"):
                    vi = T.axis.remap("S", [i])
                    out[vi + 4] = x[vi] + w[vi]

        @R.function
        def main(x: R.Tensor((4,), "float32"), buf: R.Tensor((8,), "float32")) -> R.Tensor((8,), "float32"):
            cls = Before
            with R.dataflow():
                y = R.call_tir_inplace(cls.add_into, (x, R.const(WEIGHT), buf), [2], out_ty=R.Tensor((8,), "float32"))
                R.output(y)
            return y

    @I.ir_module
    class Expected:
        @T.prim_func(private=True, s_tir=True)
        def add_into(x: T.Buffer((4,), "float32"), w: T.Buffer((4,), "float32"), out: T.Buffer((8,), "float32")):
            T.func_attr({"layout_free_buffers": [1]})
            for i in range(4):
                with T.sblock("add"):
                    vi = T.axis.remap("S", [i])
                    out[vi + 4] = x[vi] + w[vi]

        @R.function
        def main(x: R.Tensor((4,), "float32"), buf: R.Tensor((8,), "float32")) -> R.Tensor((8,), "float32"):
            cls = Expected
            with R.dataflow():
                y = R.call_tir_inplace(cls.add_into, (x, R.const(WEIGHT), buf), [2], out_ty=R.Tensor((8,), "float32"))
                R.output(y)
            return y

    assert_rewrites(attach_attr_layout_free_buffers_in_place, Before, Expected)


def test_a_kernel_already_marked_stays():
    """As TVM's pass would have left it for a ``call_tir`` of the same kernel."""

    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def add_into(x: T.Buffer((4,), "float32"), w: T.Buffer((4,), "float32"), out: T.Buffer((8,), "float32")):
            T.func_attr({"layout_free_buffers": []})
            for i in range(4):
                with T.sblock("add"):
                    vi = T.axis.remap("S", [i])
                    out[vi + 4] = x[vi] + w[vi]

        @R.function
        def main(x: R.Tensor((4,), "float32"), buf: R.Tensor((8,), "float32")) -> R.Tensor((8,), "float32"):
            cls = Before
            with R.dataflow():
                y = R.call_tir_inplace(cls.add_into, (x, R.const(WEIGHT), buf), [2], out_ty=R.Tensor((8,), "float32"))
                R.output(y)
            return y

    assert_unchanged(attach_attr_layout_free_buffers_in_place, Before)
