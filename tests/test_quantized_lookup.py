"""QuantizedLookup: a quantize that is a function of one 8-bit tensor becomes a 256-entry table lookup
(Before/Expected; the table is computed by TVM for the host, so this test compiles a small module)."""

from __future__ import annotations

import numpy as np
from tvm.script import ir as I
from tvm.script import relax as R

from compiler.passes.quantized_lookup import quantized_lookup
from tests.pass_checks import assert_rewrites, assert_unchanged


def test_dequantize_add_quantize_becomes_a_table():
    """``quantize(dequantize(q) + 3)`` with scales 0.5 and zero points 0 is ``clip(q + 6, 0, 255)``."""
    table = np.clip(np.arange(256) + 6, 0, 255).astype("uint8")

    @I.ir_module
    class Before:
        @R.function
        def main(q: R.Tensor((1, 4), "uint8")) -> R.Tensor((1, 4), "uint8"):
            with R.dataflow():
                d = R.dequantize(q, R.const(0.5, "float32"), R.const(0, "int8"), axis=1, out_dtype="float32")
                a = R.add(d, R.const(3.0, "float32"))
                r = R.quantize(a, R.const(0.5, "float32"), R.const(0, "int8"), axis=1, out_dtype="uint8")
                R.output(r)
            return r

    @I.ir_module
    class Expected:
        @R.function
        def main(q: R.Tensor((1, 4), "uint8")) -> R.Tensor((1, 4), "uint8"):
            with R.dataflow():
                index = R.astype(q, "int32")
                r = R.take(R.const(table), index, axis=0, mode="clip")
                R.output(r)
            return r

    assert_rewrites(quantized_lookup, Before, Expected)


def test_an_int8_leaf_indexes_the_table_from_minus_128():
    """``quantize(relu(dequantize(q)))`` from int8 to uint8: the table starts at q = -128."""
    table = np.clip(np.arange(-128, 128), 0, 255).astype("uint8")

    @I.ir_module
    class Before:
        @R.function
        def main(q: R.Tensor((1, 4), "int8")) -> R.Tensor((1, 4), "uint8"):
            with R.dataflow():
                d = R.dequantize(q, R.const(0.5, "float32"), R.const(0, "int8"), axis=1, out_dtype="float32")
                a = R.nn.relu(d)
                r = R.quantize(a, R.const(0.5, "float32"), R.const(0, "int8"), axis=1, out_dtype="uint8")
                R.output(r)
            return r

    @I.ir_module
    class Expected:
        @R.function
        def main(q: R.Tensor((1, 4), "int8")) -> R.Tensor((1, 4), "uint8"):
            with R.dataflow():
                index = R.add(R.astype(q, "int32"), R.const(128, "int32"))
                r = R.take(R.const(table), index, axis=0, mode="clip")
                R.output(r)
            return r

    assert_rewrites(quantized_lookup, Before, Expected)


def test_a_lone_requantize_stays():
    """Nothing between the quantizes: a table would not pay off."""

    @I.ir_module
    class Before:
        @R.function
        def main(q: R.Tensor((1, 4), "uint8")) -> R.Tensor((1, 4), "uint8"):
            with R.dataflow():
                d = R.dequantize(q, R.const(0.5, "float32"), R.const(0, "int8"), axis=1, out_dtype="float32")
                r = R.quantize(d, R.const(0.25, "float32"), R.const(0, "int8"), axis=1, out_dtype="uint8")
                R.output(r)
            return r

    assert_unchanged(quantized_lookup, Before)
