"""WriteConcatInPlace: the kernels producing a concatenation's inputs write into its buffer, the first
allocating it, the next in place; the concatenation kernel is left unused (Before/Expected, in the form
``FuseOps`` leaves)."""

from __future__ import annotations

from tvm.script import ir as I
from tvm.script import relax as R
from tvm.script import tirx as T

from compiler.passes.write_concat_in_place import write_concat_in_place
from tests.pass_checks import assert_rewrites, assert_unchanged


def test_two_producers_write_their_slices_of_the_concatenation():
    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def relu(a: T.Buffer((T.int64(1), T.int64(2), T.int64(4)), "float32"),
                 compute: T.Buffer((T.int64(1), T.int64(2), T.int64(4)), "float32")):
            T.func_attr({"tirx.noalias": True})
            for i0, i1, i2 in T.grid(T.int64(1), T.int64(2), T.int64(4)):
                with T.sblock("compute"):
                    v0, v1, v2 = T.axis.remap("SSS", [i0, i1, i2])
                    compute[v0, v1, v2] = T.max(a[v0, v1, v2], T.float32(0.0))

        @T.prim_func(private=True, s_tir=True)
        def concatenate(a: T.Buffer((T.int64(1), T.int64(2), T.int64(4)), "float32"),
                        b: T.Buffer((T.int64(1), T.int64(2), T.int64(4)), "float32"),
                        out: T.Buffer((T.int64(1), T.int64(4), T.int64(4)), "float32")):
            # what LegalizeOps makes of R.concat((a, b), axis=1) (topi.concatenate)
            T.func_attr({"tirx.noalias": True})
            for ax0, ax1, ax2 in T.grid(T.int64(1), T.int64(4), T.int64(4)):
                with T.sblock("T_concat"):
                    v0, v1, v2 = T.axis.remap("SSS", [ax0, ax1, ax2])
                    out[v0, v1, v2] = T.if_then_else(T.int64(2) <= v1, b[v0, v1 - T.int64(2), v2], a[v0, v1, v2])

        @R.function
        def main(a: R.Tensor((1, 2, 4), "float32"), b: R.Tensor((1, 2, 4), "float32")
                 ) -> R.Tensor((1, 4, 4), "float32"):
            cls = Before
            with R.dataflow():
                ra = R.call_tir(cls.relu, (a,), out_ty=R.Tensor((1, 2, 4), "float32"))
                rb = R.call_tir(cls.relu, (b,), out_ty=R.Tensor((1, 2, 4), "float32"))
                c = R.call_tir(cls.concatenate, (ra, rb), out_ty=R.Tensor((1, 4, 4), "float32"))
                R.output(c)
            return c

    @I.ir_module
    class Expected:
        @T.prim_func(private=True, s_tir=True)
        def relu(a: T.Buffer((T.int64(1), T.int64(2), T.int64(4)), "float32"),
                 compute: T.Buffer((T.int64(1), T.int64(2), T.int64(4)), "float32")):
            T.func_attr({"tirx.noalias": True})
            for i0, i1, i2 in T.grid(T.int64(1), T.int64(2), T.int64(4)):
                with T.sblock("compute"):
                    v0, v1, v2 = T.axis.remap("SSS", [i0, i1, i2])
                    compute[v0, v1, v2] = T.max(a[v0, v1, v2], T.float32(0.0))

        @T.prim_func(private=True, s_tir=True)
        def concatenate(a: T.Buffer((T.int64(1), T.int64(2), T.int64(4)), "float32"),
                        b: T.Buffer((T.int64(1), T.int64(2), T.int64(4)), "float32"),
                        out: T.Buffer((T.int64(1), T.int64(4), T.int64(4)), "float32")):
            # unused now, left for DeadCodeElimination
            T.func_attr({"tirx.noalias": True})
            for ax0, ax1, ax2 in T.grid(T.int64(1), T.int64(4), T.int64(4)):
                with T.sblock("T_concat"):
                    v0, v1, v2 = T.axis.remap("SSS", [ax0, ax1, ax2])
                    out[v0, v1, v2] = T.if_then_else(T.int64(2) <= v1, b[v0, v1 - T.int64(2), v2], a[v0, v1, v2])

        @T.prim_func(private=True, s_tir=True)
        def write_slice(small: T.Buffer((T.int64(1), T.int64(2), T.int64(4)), "float32"),
                        big: T.Buffer((T.int64(1), T.int64(4), T.int64(4)), "float32")):
            T.func_attr({"tirx.noalias": True})
            for i0, i1, i2 in T.grid(T.int64(1), T.int64(2), T.int64(4)):
                with T.sblock("write_slice"):
                    v0, v1, v2 = T.axis.remap("SSS", [i0, i1, i2])
                    big[v0, v1, v2] = small[v0, v1, v2]

        @T.prim_func(private=True, s_tir=True)
        def write_slice1(small: T.Buffer((T.int64(1), T.int64(2), T.int64(4)), "float32"),
                         big: T.Buffer((T.int64(1), T.int64(4), T.int64(4)), "float32")):
            T.func_attr({"tirx.noalias": True})
            for i0, i1, i2 in T.grid(T.int64(1), T.int64(2), T.int64(4)):
                with T.sblock("write_slice"):
                    v0, v1, v2 = T.axis.remap("SSS", [i0, i1, i2])
                    big[v0, v1 + T.int64(2), v2] = small[v0, v1, v2]

        @R.function(private=True)
        def relu_into_concat(p0: R.Tensor((1, 2, 4), "float32")) -> R.Tensor((1, 4, 4), "float32"):
            R.func_attr({"Primitive": True})
            cls = Expected
            with R.dataflow():
                r = R.call_tir(cls.relu, (p0,), out_ty=R.Tensor((1, 2, 4), "float32"))
                w = R.call_tir(cls.write_slice, (r,), out_ty=R.Tensor((1, 4, 4), "float32"))
                gv: R.Tensor((1, 4, 4), "float32") = w
                R.output(gv)
            return gv

        @R.function(private=True)
        def relu_into_concat2(p0: R.Tensor((1, 2, 4), "float32"), p1: R.Tensor((1, 4, 4), "float32")
                              ) -> R.Tensor((1, 4, 4), "float32"):
            R.func_attr({"Primitive": True})
            cls = Expected
            with R.dataflow():
                r = R.call_tir(cls.relu, (p0,), out_ty=R.Tensor((1, 2, 4), "float32"))
                w = R.call_tir_inplace(cls.write_slice1, (r, p1), [1], out_ty=R.Tensor((1, 4, 4), "float32"))
                gv: R.Tensor((1, 4, 4), "float32") = w
                R.output(gv)
            return gv

        @R.function
        def main(a: R.Tensor((1, 2, 4), "float32"), b: R.Tensor((1, 2, 4), "float32")
                 ) -> R.Tensor((1, 4, 4), "float32"):
            cls = Expected
            with R.dataflow():
                first = cls.relu_into_concat(a)
                second = cls.relu_into_concat2(b, first)
                c: R.Tensor((1, 4, 4), "float32") = second
                R.output(c)
            return c

    assert_rewrites(write_concat_in_place, Before, Expected)


def test_a_concatenation_of_parameters_stays():
    """No kernel of the block produces its inputs: two copies would replace one concatenation."""

    @I.ir_module
    class Before:
        @T.prim_func(private=True, s_tir=True)
        def concatenate(a: T.Buffer((T.int64(1), T.int64(2), T.int64(4)), "float32"),
                        b: T.Buffer((T.int64(1), T.int64(2), T.int64(4)), "float32"),
                        out: T.Buffer((T.int64(1), T.int64(4), T.int64(4)), "float32")):
            # what LegalizeOps makes of R.concat((a, b), axis=1) (topi.concatenate)
            T.func_attr({"tirx.noalias": True})
            for ax0, ax1, ax2 in T.grid(T.int64(1), T.int64(4), T.int64(4)):
                with T.sblock("T_concat"):
                    v0, v1, v2 = T.axis.remap("SSS", [ax0, ax1, ax2])
                    out[v0, v1, v2] = T.if_then_else(T.int64(2) <= v1, b[v0, v1 - T.int64(2), v2], a[v0, v1, v2])

        @R.function
        def main(a: R.Tensor((1, 2, 4), "float32"), b: R.Tensor((1, 2, 4), "float32")
                 ) -> R.Tensor((1, 4, 4), "float32"):
            cls = Before
            with R.dataflow():
                c = R.call_tir(cls.concatenate, (a, b), out_ty=R.Tensor((1, 4, 4), "float32"))
                R.output(c)
            return c

    assert_unchanged(write_concat_in_place, Before)
