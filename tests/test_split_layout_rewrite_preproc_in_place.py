"""SplitLayoutRewritePreprocInPlace: the weight packing marked inside a kernel called in place moves
into its own kernel, as TVM's ``SplitLayoutRewritePreproc`` does for ``call_tir`` (Before/Expected)."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from compiler.passes.split_layout_rewrite_preproc_in_place import split_layout_rewrite_preproc_in_place
from tests.pass_checks import assert_rewrites, assert_unchanged


def test_packing_moves_out_of_an_in_place_kernel():
    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def add_into(x: T.Buffer((4, 8), "float32"), w: T.Buffer((4, 8), "float32"), out: T.Buffer((8, 8), "float32")):
            w_packed = T.sblock_alloc_buffer((2, 4, 2, 2))
            for i, j in T.grid(4, 8):
                with T.sblock("w_packed"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    T.sblock_attr({"meta_schedule.layout_rewrite_preproc": True})
                    w_packed[vi // 2, vj // 2, vi % 2, vj % 2] = w[vi, vj]
            for i, j in T.grid(4, 8):
                with T.sblock("add"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    out[vi + 4, vj] = x[vi, vj] + w_packed[vi // 2, vj // 2, vi % 2, vj % 2]

        @R.function
        def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((4, 8), "float32"),
                 buf: R.Tensor((8, 8), "float32")) -> R.Tensor((8, 8), "float32"):
            cls = Before
            with R.dataflow():
                y = R.call_tir_inplace(cls.add_into, (x, w, buf), [2], out_ty=R.Tensor((8, 8), "float32"))
                gv: R.Tensor((8, 8), "float32") = y
                R.output(gv)
            return gv

    @I.ir_module
    class Expected:
        @T.prim_func(private=True, s_tir=True)
        def add_into_weight_prepack(w: T.Buffer((4, 8), "float32"), w_packed: T.Buffer((2, 4, 2, 2), "float32")):
            for i, j in T.grid(4, 8):
                with T.sblock("w_packed"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    w_packed[vi // 2, vj // 2, vi % 2, vj % 2] = w[vi, vj]

        @T.prim_func(private=True, s_tir=True)
        def add_into_prepacked(x: T.Buffer((4, 8), "float32"), w_packed: T.Buffer((2, 4, 2, 2), "float32"),
                               out: T.Buffer((8, 8), "float32")):
            for i, j in T.grid(4, 8):
                with T.sblock("add"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    out[vi + 4, vj] = x[vi, vj] + w_packed[vi // 2, vj // 2, vi % 2, vj % 2]

        @R.function
        def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((4, 8), "float32"),
                 buf: R.Tensor((8, 8), "float32")) -> R.Tensor((8, 8), "float32"):
            cls = Expected
            with R.dataflow():
                packed = R.call_tir(cls.add_into_weight_prepack, (w,), out_ty=R.Tensor((2, 4, 2, 2), "float32"))
                y = R.call_tir_inplace(cls.add_into_prepacked, (x, packed, buf), [2],
                                       out_ty=R.Tensor((8, 8), "float32"))
                gv: R.Tensor((8, 8), "float32") = y
                R.output(gv)
            return gv

    assert_rewrites(split_layout_rewrite_preproc_in_place, Before, Expected)


def test_a_kernel_without_marked_packing_stays():
    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def add_into(x: T.Buffer((4, 8), "float32"), w: T.Buffer((4, 8), "float32"), out: T.Buffer((8, 8), "float32")):
            for i, j in T.grid(4, 8):
                with T.sblock("add"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    out[vi + 4, vj] = x[vi, vj] + w[vi, vj]

        @R.function
        def main(x: R.Tensor((4, 8), "float32"), w: R.Tensor((4, 8), "float32"),
                 buf: R.Tensor((8, 8), "float32")) -> R.Tensor((8, 8), "float32"):
            cls = Before
            with R.dataflow():
                y = R.call_tir_inplace(cls.add_into, (x, w, buf), [2], out_ty=R.Tensor((8, 8), "float32"))
                gv: R.Tensor((8, 8), "float32") = y
                R.output(gv)
            return gv

    assert_unchanged(split_layout_rewrite_preproc_in_place, Before)
