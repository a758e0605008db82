"""Kernels with a symbolic extent: full tiles with the last one shifted back
(``schedules.tail_tiles``), and every kernel of a symbolic build compiled with ``noalias``
(``compiler.passes.shape_functions_noalias``)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import s_tir, te, tirx
from tvm.script import tirx as T

from compiler.frontend import import_onnx, parse_input_shapes
from compiler.passes.shape_functions_noalias import shape_functions_noalias
from compiler.pipeline import build_pipeline
from compiler.build import _symbolic_twins, CompileOptions
from schedules.defaults import replay_twin
from schedules.tail_tiles import clamp_tail_tiles, fits_symbolic_sizes, serial_symbolic_vectors
from targets.registry import resolve_target
from tests.test_symbolic_shapes import _dynamic_tiny

TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})


def _dense_bias(rows) -> tirx.PrimFunc:
    """``relu(x @ w + b)`` with ``rows`` rows (an int or a symbolic variable), as TE writes it."""
    x = te.placeholder((rows, 64), name="x")
    w = te.placeholder((64, 48), name="w")
    b = te.placeholder((48,), name="b")
    k = te.reduce_axis((0, 64), name="k")
    mm = te.compute((rows, 48), lambda i, j: te.sum(x[i, k] * w[k, j], axis=k), name="matmul")
    out = te.compute((rows, 48), lambda i, j: te.max(mm[i, j] + b[j], tirx.const(0.0, "float32")), name="out")
    return te.create_prim_func([x, w, b, out]).with_attr("tirx.noalias", True)


def _stmts(stmt, kind) -> list:
    found = [stmt] if isinstance(stmt, kind) else []
    children = (list(stmt.seq) if isinstance(stmt, tirx.SeqStmt) else [stmt.body] if isinstance(stmt, tirx.For)
                else [stmt.then_case, stmt.else_case] if isinstance(stmt, tirx.IfThenElse)
                else [stmt.block.body] if isinstance(stmt, s_tir.SBlockRealize) else [])
    for child in children:
        if child is not None:
            found += _stmts(child, kind)
    return found


def _run(func: tirx.PrimFunc, rows: int, rng) -> tuple[np.ndarray, np.ndarray]:
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=TARGET)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((rows, 64), (64, 48), (48,)))
    out = tvm.runtime.tensor(np.zeros((rows, 48), np.float32), tvm.cpu())
    lib["main"](*(tvm.runtime.tensor(a, tvm.cpu()) for a in (x, w, b)), out)
    return out.numpy(), np.maximum(x @ w + b, 0)


def test_replayed_matmul_has_full_tiles_and_is_exact_at_every_size():
    n = tirx.Var("n", "int64")
    func, rule = replay_twin(_dense_bias(n), _dense_bias(32), TARGET)
    assert rule == "ChannelVectorized (replayed)"
    guards = _stmts(func.body, tirx.IfThenElse)
    assert len(guards) == 1 and "n >=" in str(guards[0].condition)
    full = _stmts(guards[0].then_case, s_tir.SBlockRealize)
    partial = _stmts(guards[0].else_case, s_tir.SBlockRealize)
    assert full and all(isinstance(r.predicate, tirx.IntImm) and r.predicate.value == 1 for r in full)
    assert all("n" in str(r.predicate) for r in partial)  # inputs smaller than one tile keep their checks
    rows_per_tile = int(str(guards[0].condition).split(">=")[1].strip().split("(")[-1].rstrip(")"))
    rng = np.random.default_rng(0)
    for rows in (1, rows_per_tile - 1, rows_per_tile, rows_per_tile + 1, 3 * rows_per_tile + 5):
        ours, expected = _run(func, rows, rng)
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4, err_msg=f"{rows} rows")


@T.prim_func(s_tir=True)
def _column_sums(a: T.handle, b: T.Buffer((T.int64(16),), "float32")):
    n = T.int64()
    A = T.match_buffer(a, (n, T.int64(16)))
    for j in T.parallel(T.int64(16)):
        for k0 in range((n + T.int64(7)) // T.int64(8)):
            for k1 in range(T.int64(8)):
                with T.sblock("sum"):
                    vj = T.axis.spatial(T.int64(16), j)
                    vk = T.axis.reduce(n, k0 * T.int64(8) + k1)
                    T.where(k0 * T.int64(8) + k1 < n)
                    with T.init():
                        b[vj] = T.float32(0.0)
                    b[vj] = b[vj] + A[vk, vj]


def test_a_bound_check_on_a_reduction_is_left_alone():
    # shifting a reduction's last chunk back would add some rows twice
    assert clamp_tail_tiles(_column_sums).same_as(_column_sums)


def test_symbolic_build_has_full_tiles_and_noalias_kernels():
    preset = resolve_target("host")
    model = _dynamic_tiny((3,))
    shapes = parse_input_shapes(["data:1x3x32x16..96"])
    imported = import_onnx(model, shapes, preset.tvm_target())
    twins = _symbolic_twins(imported, preset, CompileOptions(target="host", input_shapes=shapes))
    with tvm.transform.PassContext(opt_level=3):
        lowered = build_pipeline(preset, twins=twins)(imported.mod)
    prims = {gv.name_hint: f for gv, f in lowered.functions_items() if isinstance(f, tirx.PrimFunc)}
    assert any(f.attrs.get("tirx.is_host_func") for f in prims.values())  # the shape functions
    assert all(f.attrs.get("tirx.noalias") for f in prims.values()), sorted(prims)
    convs = [f for name, f in prims.items() if name.startswith("fused_conv2d")]
    assert len(convs) == 2 and all(_stmts(f.body, tirx.IfThenElse) for f in convs)


def test_shape_function_pass_marks_only_host_functions():
    @T.prim_func(s_tir=True)
    def shape_func(h: T.Buffer((T.int64(2),), "int64")):
        T.func_attr({"tirx.is_host_func": True})
        h[T.int64(1)] = h[T.int64(0)] * T.int64(4)

    @T.prim_func(s_tir=True)
    def kernel(a: T.Buffer((T.int64(4),), "float32"), b: T.Buffer((T.int64(4),), "float32")):
        for i in range(T.int64(4)):
            with T.sblock("copy"):
                vi = T.axis.spatial(T.int64(4), i)
                b[vi] = a[vi]

    mod = shape_functions_noalias(tvm.IRModule({"shape_func": shape_func, "kernel": kernel}))
    assert mod["shape_func"].attrs.get("tirx.noalias")
    assert mod["kernel"].same_as(kernel)


@T.prim_func(s_tir=True)
def _scaled_row(a: T.handle, b: T.handle):
    n = T.int64()
    A = T.match_buffer(a, (T.int64(8), n))
    B = T.match_buffer(b, (T.int64(8), n))
    for i in T.parallel(T.int64(8)):
        for j in T.vectorized(n):
            with T.sblock("scale"):
                vi, vj = T.axis.remap("SS", [i, j])
                B[vi, vj] = A[vi, vj] * T.float32(2.0)


def test_a_vectorized_loop_of_symbolic_extent_runs_serial():
    with pytest.raises(Exception, match="vectorize"):  # what TVM does with it
        tvm.compile(tvm.IRModule({"main": _scaled_row}), target=TARGET)
    func = serial_symbolic_vectors(_scaled_row)
    kinds = [loop.kind for loop in _stmts(func.body, tirx.For)]
    assert kinds == [tirx.ForKind.PARALLEL, tirx.ForKind.SERIAL]
    lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)
    x = np.arange(8 * 13, dtype=np.float32).reshape(8, 13)
    out = tvm.runtime.tensor(np.zeros_like(x), tvm.cpu())
    lib["main"](tvm.runtime.tensor(x, tvm.cpu()), out)
    np.testing.assert_array_equal(out.numpy(), 2 * x)
    assert serial_symbolic_vectors(func).same_as(func)


def test_blocked_conv_on_a_symbolic_width_takes_a_design_space_that_fits(tmp_path, monkeypatch):
    # the default schedule of this conv blocks whole rows of output pixels (its accumulator spans
    # the width); replayed on a symbolic width it would not fit in registers, so another of
    # ChannelVectorized's design spaces is replayed instead
    import schedules.defaults as defaults
    from compiler.build import compile_model
    from compiler.reference import OnnxRuntimeReference, max_abs_diff
    from compiler.runtime import load
    from onnx import helper
    from tests.onnx_graphs import const, model

    verdicts = []
    monkeypatch.setattr(defaults, "fits_symbolic_sizes",
                        lambda func: verdicts.append(fits_symbolic_sizes(func)) or verdicts[-1])
    conv = model([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])],
                 [("x", [1, 48, 16, "width"])], [("y", [1, 192, 16, "width"])],
                 [const("w", 192, 48, 3, 3, rng=np.random.default_rng(0)), const("b", 192, rng=np.random.default_rng(1))])
    compile_model(conv, tmp_path / "m.so", target="host", input_shapes=parse_input_shapes(["x:1x48x16x16..128"]))
    assert verdicts[0] is False and verdicts[-1] is True, verdicts
    lib, ref = load(tmp_path / "m.so", threads=2), OnnxRuntimeReference(conv, 2)
    for width in (16, 37, 128):
        x = {"x": np.random.default_rng(width).standard_normal((1, 48, 16, width)).astype(np.float32)}
        assert max_abs_diff(lib.run(x), ref.run(x))[1] <= 1e-5
