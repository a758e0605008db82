"""kiln's fusion passes: each rewrite happens on a small graph, and the numbers still match ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import helper
from tvm import relax, tirx

from compiler.frontend import import_onnx
from compiler.passes.write_concat_in_place import concat_axis, slice_copy
from compiler.pipeline import build_pipeline, pipeline_steps
from compiler.reference import OnnxRuntimeReference, max_abs_diff
from targets.registry import resolve_target
from tests.onnx_graphs import const, model

TOLERANCE = 1e-4
FUSION_STEPS = {"FoldStackedReduce", "CanonicalizeBindings", "DropDropout", "WriteConcatInPlace", "PadOutputChannels"}


def lowered(onnx_model: onnx.ModelProto, fusion: bool = True) -> tvm.IRModule:
    """The module kiln hands to ``tvm.compile`` for this machine."""
    preset = resolve_target("host")
    with tvm.transform.PassContext(opt_level=3):
        return build_pipeline(preset, fusion=fusion)(import_onnx(onnx_model, {}).mod)


def launched(mod: tvm.IRModule) -> list[str]:
    """The kernels ``main`` calls per inference, in order (weight packing folded away at compile time)."""
    out = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.GlobalVar) \
                    and isinstance(mod[value.op], tirx.PrimFunc):
                out.append(value.op.name_hint)
    return out


def matches_onnxruntime(onnx_model: onnx.ModelProto, mod: tvm.IRModule) -> float:
    """Relative max error of the built module against ONNX Runtime on random inputs."""
    executable = tvm.compile(mod, resolve_target("host").tvm_target(), relax_pipeline=None)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    rng = np.random.default_rng(7)
    inputs = {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
              for i in onnx_model.graph.input}
    out = vm["main"](*[tvm.runtime.tensor(v) for v in inputs.values()])
    ref = OnnxRuntimeReference(onnx_model, 1).run(inputs)
    _, rel = max_abs_diff({next(iter(ref)): out.numpy()}, ref)
    return rel


def fire() -> onnx.ModelProto:
    """SqueezeNet's fire module (1x1 and 3x3 expands concatenated) plus the block input itself."""
    return model([helper.make_node("Conv", ["x", "w0", "b0"], ["q"]),
                  helper.make_node("Relu", ["q"], ["rq"]),
                  helper.make_node("Conv", ["rq", "w1", "b1"], ["e1"]),
                  helper.make_node("Relu", ["e1"], ["r1"]),
                  helper.make_node("Conv", ["rq", "w3", "b3"], ["e3"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["e3"], ["r3"]),
                  helper.make_node("Concat", ["r1", "r3", "x"], ["cat"], axis=1),
                  helper.make_node("MaxPool", ["cat"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                 [("x", [1, 8, 12, 12])], [("y", None)],
                 [const("w0", 8, 8, 1, 1), const("b0", 8), const("w1", 16, 8, 1, 1), const("b1", 16),
                  const("w3", 16, 8, 3, 3), const("b3", 16)])


def _bn(name: str, x: str, c: int) -> tuple[list, list]:
    nodes = [helper.make_node("BatchNormalization", [x, f"{name}s", f"{name}b", f"{name}m", f"{name}v"], [f"{name}n"]),
             helper.make_node("Relu", [f"{name}n"], [f"{name}r"])]
    inits = [const(f"{name}s", c, low=0.5, high=1.5), const(f"{name}b", c), const(f"{name}m", c),
             const(f"{name}v", c, low=0.5, high=1.5)]
    return nodes, inits


def dense_block() -> onnx.ModelProto:
    """Three DenseNet layers: c[k] = concat(c[k-1], f(c[k-1])) from c[0] = maxpool(x), batch-norm + ReLU
    before every conv (the last concatenation fuses with its batch-norm, as in DenseNet-121)."""
    nodes = [helper.make_node("MaxPool", ["x"], ["x0"], kernel_shape=[2, 2], strides=[2, 2])]
    inits = []
    channels = 8
    prev = "x0"
    for k in (1, 2, 3):
        bn, bn_inits = _bn(f"l{k}", prev, channels)
        nodes += bn + [helper.make_node("Conv", [f"l{k}r", f"w{k}"], [f"f{k}"], pads=[1, 1, 1, 1]),
                       helper.make_node("Concat", [prev, f"f{k}"], [f"c{k}"], axis=1)]
        inits += bn_inits + [const(f"w{k}", 4, channels, 3, 3)]
        prev, channels = f"c{k}", channels + 4
    bn, bn_inits = _bn("out", prev, channels)
    nodes += bn + [helper.make_node("Conv", ["outr", "wo"], ["y"])]
    inits += bn_inits + [const("wo", 8, channels, 1, 1)]
    return model(nodes, [("x", [1, 8, 16, 16])], [("y", None)], inits)


def test_fusion_steps_are_listed_and_can_be_left_out():
    preset = resolve_target("host")
    names = {s.name for s in pipeline_steps(preset)}
    assert FUSION_STEPS <= names and "SplitLayoutRewritePreprocInPlace" in names
    assert not FUSION_STEPS & {s.name for s in pipeline_steps(preset, fusion=False)}
    # CUDA keeps the target-independent ones; in-place concatenation is proven on CPU only
    cuda = {s.name for s in pipeline_steps(resolve_target("cuda-sm80"))}
    assert "CanonicalizeBindings" in cuda and "WriteConcatInPlace" not in cuda


def test_fold_stacked_reduce_removes_the_stack_copy():
    m = model([helper.make_node("Sum", ["a", "b", "c"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
              [("a", [1, 4, 5, 5]), ("b", [1, 4, 5, 5]), ("c", [1, 4, 5, 5])], [("y", None)])
    stock, kiln = lowered(m, fusion=False), lowered(m)
    assert any("stack" in k for k in launched(stock))
    assert not any("stack" in k for k in launched(kiln)) and len(launched(kiln)) == 1
    assert matches_onnxruntime(m, kiln) <= TOLERANCE


def test_canonicalize_bindings_fuses_batchnorm_with_its_neighbours():
    """A batch-norm that cannot fold into a conv (DenseNet's pre-activation) is one kernel with the ReLU."""
    nodes, inits = _bn("p", "x", 8)
    m = model(nodes + [helper.make_node("Conv", ["pr", "w"], ["y"])], [("x", [1, 8, 6, 6])], [("y", None)],
              inits + [const("w", 8, 8, 1, 1)])
    stock, kiln = launched(lowered(m, fusion=False)), launched(lowered(m))
    assert len(stock) == 3 and len(kiln) == 2, (stock, kiln)
    assert matches_onnxruntime(m, lowered(m)) <= TOLERANCE


def test_drop_dropout_leaves_no_copy():
    m = model([helper.make_node("Conv", ["x", "w"], ["c"]),
               helper.make_node("Dropout", ["c"], ["d"]),
               helper.make_node("Concat", ["d", "x"], ["y"], axis=1)],
              [("x", [1, 4, 6, 6])], [("y", None)], [const("w", 4, 4, 1, 1)])
    kiln = lowered(m)
    assert not [k for k in launched(kiln) if "dropout" in k]
    assert not [k for k in launched(kiln) if k.startswith("concatenate") or "_concatenate" in k]
    assert matches_onnxruntime(m, kiln) <= TOLERANCE


def test_concat_inputs_are_written_in_place():
    """Both expands write their slice; the block input (a function parameter) is copied into its own."""
    m = fire()
    stock, mod = launched(lowered(m, fusion=False)), lowered(m)
    kiln = launched(mod)
    assert any("concatenate" in k for k in stock)
    assert not any("concatenate" in k for k in kiln), kiln
    assert len([k for k in kiln if k.endswith("_into_concat") or "_into_concat_" in k]) == 2, kiln
    assert len([k for k in kiln if k.startswith("copy_into_concat")]) == 1, kiln
    assert len(kiln) == len(stock), (stock, kiln)  # one concat kernel traded for one partial copy
    assert "call_tir_inplace" in lowered_script(m) or any("_into_concat" in k for k in kiln)
    assert matches_onnxruntime(m, mod) <= TOLERANCE


def lowered_script(onnx_model: onnx.ModelProto) -> str:
    """``main`` right after WriteConcatInPlace and FuseTIR."""
    preset = resolve_target("host")
    steps = pipeline_steps(preset)
    mod = import_onnx(onnx_model, {}).mod
    with tvm.transform.PassContext(opt_level=3), preset.tvm_target():
        for step in steps:
            mod = step.make()(mod)
            if step.name == "FuseTIR":
                return mod["main"].script()
    raise AssertionError("no FuseTIR step")


def test_dense_block_concatenations_share_one_buffer():
    """DenseNet's chain: the pooled input and the first two layers' features write one buffer
    (c1 is a prefix of c2); the batch-norms read their prefix of it. The third concatenation is
    fused with its batch-norm (an elementwise kernel) and stays."""
    m = dense_block()
    stock, mod = launched(lowered(m, fusion=False)), lowered(m)
    kiln = launched(mod)
    assert sum("concatenate" in k for k in stock) == 3
    left = [k for k in kiln if "concatenate" in k]
    assert len(left) == 1 and left[0].startswith("fused_concatenate") and "relu" in left[0], kiln
    assert not any("copy_into" in k for k in kiln), kiln
    # two concat kernels gone, and each batch-norm + ReLU is one kernel (CanonicalizeBindings)
    assert len(kiln) == len(stock) - 2 - 4, (stock, kiln)
    text = lowered_script(m)
    assert text.count("R.call_tir_inplace") == 2  # second and third writer; the first allocates
    assert matches_onnxruntime(m, mod) <= TOLERANCE


def _conv(x: str, y: str, w: str) -> tuple[onnx.NodeProto, onnx.TensorProto]:
    return helper.make_node("Conv", [x, w], [y]), const(w, 4, 4, 1, 1)


def _concat_cases() -> dict[str, onnx.ModelProto]:
    (ca, wa), (cb, wb), (cd, wd), (ce, we) = (_conv("x", v, f"w{v}") for v in "abde")
    pool = [helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2])]
    x = [("x", [1, 4, 5, 5])]
    return {
        # the graph's output is the concatenation (the buffer's last version leaves the dataflow block)
        "output": model([ca, cb, helper.make_node("Concat", ["a", "b", "x"], ["y"], axis=1)], x, [("y", None)],
                        [wa, wb]),
        # c1 feeds two concatenations: one absorbs it, the other copies it out of that buffer
        "shared_inner": model([ca, cb, cd, ce, helper.make_node("Concat", ["a", "b"], ["c1"], axis=1),
                               helper.make_node("Concat", ["c1", "d"], ["c2"], axis=1),
                               helper.make_node("Concat", ["c1", "e"], ["c3"], axis=1),
                               helper.make_node("MaxPool", ["c2"], ["p2"], kernel_shape=[1, 1]),
                               helper.make_node("MaxPool", ["c3"], ["p3"], kernel_shape=[1, 1]),
                               helper.make_node("Add", ["p2", "p3"], ["y"])], x, [("y", None)], [wa, wb, wd, we]),
        "last_axis": model([ca, cb, helper.make_node("Concat", ["a", "b"], ["c"], axis=3), *pool], x, [("y", None)],
                           [wa, wb]),
        "batch_2": model([ca, cb, helper.make_node("Concat", ["a", "b"], ["c"], axis=1), *pool], [("x", [2, 4, 5, 5])],
                         [("y", None)], [wa, wb]),
    }


@pytest.mark.parametrize("name", sorted(_concat_cases()))
def test_concat_in_place_edge_cases(name):
    m = _concat_cases()[name]
    mod = lowered(m)
    assert not [k for k in launched(mod) if "concatenate" in k], launched(mod)
    assert matches_onnxruntime(m, mod) <= TOLERANCE


def test_in_place_writers_keep_compile_time_weight_packing():
    """SplitLayoutRewritePreprocInPlace: the in-place convs read prepacked weights; no packing runs per call."""
    kiln = launched(lowered(fire()))
    writers = [k for k in kiln if "conv2d" in k and "_into_concat" in k]
    assert writers and all(k.endswith("_prepacked") for k in writers), kiln
    assert not [k for k in kiln if "weight_prepack" in k], kiln


def test_tuning_extracts_the_in_place_kernels_as_built():
    """MetaSchedule's extract_tasks sees call_tir only: the tuning input shows the writers as call_tir, and
    each task is the very kernel the build schedules (constant weights marked layout-free), so records apply."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from compiler.pipeline import tuning_input_pipeline

    preset = resolve_target("host")
    with tvm.transform.PassContext(opt_level=3):
        tasks = ms.relax_integration.extract_tasks(tuning_input_pipeline(preset)(import_onnx(fire(), {}).mod),
                                                   preset.tvm_target())
    mod = import_onnx(fire(), {}).mod
    with tvm.transform.PassContext(opt_level=3), preset.tvm_target():
        for step in pipeline_steps(preset):
            mod = step.make()(mod)
            if step.name == "AttachAttrLayoutFreeBuffersInPlace":
                break

    def key(f: tirx.PrimFunc) -> int:
        return tvm_ffi.structural_hash(f.without_attr("global_symbol"))

    built = {key(f): gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    names = {t.task_name for t in tasks}
    assert len([n for n in names if "_into_concat" in n]) == 3, names  # two conv writers and the copy
    for task in tasks:
        assert key(task.dispatched[0]["main"]) in built, task.task_name
    writer = next(t for t in tasks if "conv2d2" in t.task_name).dispatched[0]["main"]
    assert [int(i) for i in writer.attrs["layout_free_buffers"]] == [1, 2]
    # plain ints, as TVM's own pass stores them: MetaSchedule's RewriteLayout fails on IntImm
    assert all(type(i) is int for i in writer.attrs["layout_free_buffers"])


def test_concat_axis_is_recognised_by_structure_not_name():
    """A kernel named like a concat that computes something else is not taken for one."""
    mod = relax.transform.LegalizeOps()(import_onnx(fire(), {}).mod)
    concat = next(gv for gv in mod.get_global_vars() if gv.name_hint.startswith("concatenate"))
    call = next(b.value for b in mod["main"].body.blocks[0].bindings
                if isinstance(b.value, relax.Call) and b.value.args and b.value.args[0].same_as(concat))
    assert concat_axis(mod, call) == 1
    fake = slice_copy((1, 16, 12, 12), (1, 40, 12, 12), 1, 0, "float32", write=True)
    mod[concat] = fake.with_attr("global_symbol", concat.name_hint)
    assert concat_axis(mod, call) is None


@pytest.mark.parametrize("write", [True, False])
def test_slice_copy_kernels(write):
    """The write/read slice kernels move exactly one slice along the axis."""
    func = slice_copy((2, 3), (2, 7), 1, 4, "float32", write)
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), "llvm")
    small, big = np.arange(6, dtype=np.float32).reshape(2, 3), np.full((2, 7), -1, np.float32)
    a, b = tvm.runtime.tensor(small), tvm.runtime.tensor(big)
    if write:
        lib["main"](a, b)
        expected = big.copy()
        expected[:, 4:7] = small
        np.testing.assert_array_equal(b.numpy(), expected)
    else:
        big = np.arange(14, dtype=np.float32).reshape(2, 7)
        b = tvm.runtime.tensor(big)
        lib["main"](b, a)
        np.testing.assert_array_equal(a.numpy(), big[:, 4:7])


def _relax_ops(mod: tvm.IRModule) -> list[relax.Call]:
    calls = []
    relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e) if isinstance(e, relax.Call)
                                    and isinstance(e.op, tvm.ir.Op) else None)
    return calls


def test_convert_conv_layout_runs_convs_in_nhwc_with_one_transpose_at_each_end():
    from targets.registry import with_conv_layout

    graph = fire()
    steps = pipeline_steps(with_conv_layout(resolve_target("host"), "NHWC"))
    names = [s.name for s in steps]
    assert "ConvertConvLayout" in names and "ConvertConvLayout" not in [s.name for s in pipeline_steps(
        with_conv_layout(resolve_target("host"), "NCHW"))]
    converted = import_onnx(graph, {}).mod
    with tvm.transform.PassContext(opt_level=3):
        for step in steps[: names.index("ConvertConvLayout") + 1]:
            converted = step.make()(converted)
    calls = _relax_ops(converted)
    convs = [c for c in calls if c.op.name == "relax.nn.conv2d"]
    assert len(convs) == 3 and all(c.attrs.data_layout == "NHWC" and c.attrs.kernel_layout == "OHWI" for c in convs)
    transposes = [c for c in calls if c.op.name == "relax.permute_dims"]
    assert len(transposes) == 2  # the input once (conv and concat share it), the output once; weights folded
    preset = with_conv_layout(resolve_target("host"), "NHWC")
    with tvm.transform.PassContext(opt_level=3):
        mod = build_pipeline(preset)(import_onnx(graph, {}).mod)
    assert matches_onnxruntime(graph, mod) < TOLERANCE


def _transposes_after_layout(graph: onnx.ModelProto, preset, skip: set[str]) -> int:
    """Transposes in ``graph`` after the pipeline's steps up to ConvertConvLayout, less ``skip``."""
    steps = pipeline_steps(preset)
    names = [s.name for s in steps]
    converted = import_onnx(graph, {}).mod
    with tvm.transform.PassContext(opt_level=3):
        for step in steps[: names.index("ConvertConvLayout") + 1]:
            if step.name not in skip:
                converted = step.make()(converted)
    return sum(1 for c in _relax_ops(converted) if c.op.name == "relax.permute_dims")


def test_clips_convert_to_nhwc_without_transposes():
    """ReLU6 as Clip with bound inputs (the importer's call_tir kernels) and HardSwish (relax.clip):
    ClipAsMaxMin makes them maximum/minimum, so NHWC needs one transpose at each end only
    (without it: two more around each clip). Results equal ONNX Runtime."""
    from targets.registry import with_conv_layout

    rng = np.random.default_rng(4)
    bounds = [onnx.numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("lo", 0.0), ("hi", 6.0))]
    graph = model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                   helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
                   helper.make_node("Conv", ["r", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
                   helper.make_node("HardSwish", ["c2"], ["y"])],
                  [("x", [1, 8, 12, 12])], [("y", None)],
                  [const("w", 16, 8, 3, 3, rng=rng), const("b", 16, rng=rng),
                   const("w2", 16, 16, 3, 3, rng=rng), const("b2", 16, rng=rng), *bounds])
    preset = with_conv_layout(resolve_target("host"), "NHWC")
    assert _transposes_after_layout(graph, preset, set()) == 2
    assert _transposes_after_layout(graph, preset, {"ClipAsMaxMin"}) == 6
    with tvm.transform.PassContext(opt_level=3):
        mod = build_pipeline(preset)(import_onnx(graph, {}).mod)
    assert matches_onnxruntime(graph, mod) < TOLERANCE


def test_one_element_constants_convert_to_nhwc_without_transposes():
    """PP-LCNetV3's learnable affine block: ``Mul(scale[1], x)`` and ``Add(x, bias[1])`` between
    convs. ScalarConstants makes the [1] constants 0-d, so NHWC needs one transpose at each end
    only (without it: two more around the pair). Results equal ONNX Runtime."""
    from targets.registry import with_conv_layout

    rng = np.random.default_rng(5)
    scalars = [onnx.numpy_helper.from_array(np.array([v], np.float32), n) for n, v in (("s", 1.7), ("t", -0.3))]
    graph = model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                   helper.make_node("Mul", ["s", "c"], ["m"]),
                   helper.make_node("Add", ["m", "t"], ["a"]),
                   helper.make_node("Conv", ["a", "w2", "b2"], ["y"], pads=[1, 1, 1, 1])],
                  [("x", [1, 8, 12, 12])], [("y", None)],
                  [const("w", 16, 8, 3, 3, rng=rng), const("b", 16, rng=rng),
                   const("w2", 16, 16, 3, 3, rng=rng), const("b2", 16, rng=rng), *scalars])
    preset = with_conv_layout(resolve_target("host"), "NHWC")
    assert _transposes_after_layout(graph, preset, set()) == 2
    assert _transposes_after_layout(graph, preset, {"ScalarConstants"}) == 4
    with tvm.transform.PassContext(opt_level=3):
        mod = build_pipeline(preset)(import_onnx(graph, {}).mod)
    assert matches_onnxruntime(graph, mod) < TOLERANCE


def test_convert_conv_layout_leaves_int8_convolutions_in_nchw():
    from compiler.passes.convert_conv_layout import _has_int8_conv, convert_conv_layout

    x = relax.Var("x", relax.TensorType((1, 8, 6, 6), "uint8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            w = relax.const(np.ones((8, 8, 1, 1), "int8"))
            y = bb.emit_output(relax.op.nn.conv2d(x, w, out_dtype="int32"))
        bb.emit_func_output(y)
    mod = bb.get()
    assert _has_int8_conv(mod)
    assert convert_conv_layout("NHWC")(mod).same_as(mod)


def _classifier_head(columns: int) -> onnx.ModelProto:
    """A Gemm to ``columns`` classes (PP-OCR's recognizer ends in 6625) and a softmax over them."""
    return model([helper.make_node("Gemm", ["x", "w", "b"], ["g"], transB=1),
                  helper.make_node("Softmax", ["g"], ["y"], axis=-1)],
                 [("x", [40, 120])], [("y", None)], [const("w", columns, 120), const("b", columns)])


def _rules(mod: tvm.IRModule) -> dict[str, str]:
    from schedules.defaults import RULE_ATTR

    return {gv.name_hint: str(f.attrs[RULE_ATTR]) for gv, f in mod.functions_items()
            if isinstance(f, tirx.PrimFunc) and f.attrs is not None and RULE_ATTR in f.attrs}


def test_pad_output_channels_lets_the_vectorized_conv_take_60_channels():
    """The recognizer's (1, 3) conv to 60 channels: padded to 64 (whole vectors, where 60 would
    take 4-lane ones on AVX-512), ChannelVectorized, same values."""
    m = model([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[0, 1, 0, 1])],
              [("x", [1, 48, 1, 40])], [("y", None)], [const("w", 60, 48, 1, 3), const("b", 60)])
    mod = lowered(m)
    kiln = _rules(mod)
    assert {r for n, r in kiln.items() if "conv2d" in n} == {"ChannelVectorized"}
    conv = next(f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint)
    assert "T.int64(64)" in conv.script() and "T.int64(60)" in conv.script()  # computes 64, keeps 60
    assert matches_onnxruntime(m, lowered(m)) < TOLERANCE


@pytest.mark.parametrize("channels, padded", [(1000, 1008), (40, 40), (60, 64), (512, 512)])
def test_pad_output_channels_pads_a_multiple_of_8_only_when_cheap(channels, padded):
    """SqueezeNet's 1000-class conv gets 1008 channels (AVX-512's 16 lanes, 0.8 % more work);
    40 stays (20 % more work; AVX2's 8 lanes take it as is)."""
    from compiler.passes.pad_output_channels import pad_output_channels

    x = relax.Var("x", relax.TensorType((1, 16, 13, 13), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            w = relax.const(np.ones((channels, 16, 1, 1), "float32"))
            out = bb.emit_output(relax.op.nn.conv2d(x, w))
        bb.emit_func_output(out)
    convs = []
    relax.analysis.post_order_visit(pad_output_channels(bb.get())["main"], lambda e: convs.append(e) if (
        isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d") else None)
    assert [int(c.args[1].value.shape[0]) for c in convs] == [padded]


def test_pad_matmul_columns_lets_the_vectorized_kernel_take_odd_class_counts():
    """6625 columns: padded to 6640 with zero columns, computed by the vectorized matmul rule and
    sliced back in its epilogue."""
    head = _classifier_head(6625)
    stock, kiln = lowered(head, fusion=False), lowered(head)
    stock_rules, kiln_rules = _rules(stock), _rules(kiln)
    assert [r for n, r in stock_rules.items() if "matmul" in n] == ["SpatialVectorized"]
    assert {r for n, r in kiln_rules.items() if "matmul" in n} == {"ChannelVectorized"}
    assert [r for n, r in kiln_rules.items() if "softmax" in n] == ["RowSoftmax"]  # 40 rows, last axis
    assert matches_onnxruntime(head, kiln) < TOLERANCE
    assert _rules(lowered(_classifier_head(48))) == _rules(lowered(_classifier_head(48), fusion=False))  # small: unchanged


def test_a_single_row_softmax_stays_on_the_fallback():
    """SqueezeNet's softmax over 1000 classes is one row: dlight's rule took 3.0 ms on it (fallback 0.009)."""
    m = model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [("x", [1, 1000])], [("y", None)])
    assert list(_rules(lowered(m)).values()) == ["ParallelFallback"]
    assert matches_onnxruntime(m, lowered(m)) < TOLERANCE


def _bottleneck() -> onnx.ModelProto:
    """An RGB 3x3 conv, a depthwise conv, then a residual 1x1 -> 3x3 -> 1x1 bottleneck with max-pool."""
    return model([helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["c0"], ["r0"]),
                  helper.make_node("Conv", ["r0", "wd"], ["d"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=16),
                  helper.make_node("MaxPool", ["d"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                  helper.make_node("Conv", ["p", "w1", "b1"], ["c1"], kernel_shape=[1, 1]),
                  helper.make_node("Relu", ["c1"], ["r1"]),
                  helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", ["c2"], ["r2"]),
                  helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], kernel_shape=[1, 1]),
                  helper.make_node("Add", ["c3", "p"], ["s"]),
                  helper.make_node("Relu", ["s"], ["y"])],
                 [("x", [1, 3, 28, 28])], [("y", [1, 16, 14, 14])],
                 [const("w0", 16, 3, 3, 3), const("b0", 16), const("wd", 16, 1, 3, 3),
                  const("w1", 32, 16, 1, 1), const("b1", 32), const("w2", 32, 32, 3, 3), const("b2", 32),
                  const("w3", 16, 32, 1, 1), const("b3", 16)])


def test_blocked_layout_runs_eligible_convs_in_nchw8c():
    """--layout NCHWc on AVX2: the ungrouped convs with channels in multiples of 8 compute in
    NCHW8c (weights OIHW8i8o, pre-transformed), the RGB and depthwise convs stay NCHW; the
    blocked convs are legalized by kiln (TVM refuses them), scheduled without a weight copy,
    and the module equals ONNX Runtime."""
    from targets.registry import with_conv_layout

    graph = _bottleneck()
    preset = with_conv_layout(resolve_target("x86-avx2"), "nchwc")
    assert preset.conv_layout == "NCHWc"
    steps = pipeline_steps(preset)
    names = [s.name for s in steps]
    converted = import_onnx(graph, {}).mod
    with tvm.transform.PassContext(opt_level=3):
        for step in steps[: names.index("ConvertConvLayout") + 1]:
            converted = step.make()(converted)
    layouts = sorted((str(c.attrs.data_layout), str(c.attrs.kernel_layout)) for c in _relax_ops(converted)
                     if c.op.name == "relax.nn.conv2d")
    assert layouts == [("NCHW", "OIHW")] * 2 + [("NCHW8c", "OIHW8i8o")] * 3, layouts
    host = with_conv_layout(resolve_target("host"), "NCHWc")
    with tvm.transform.PassContext(opt_level=3):
        mod = build_pipeline(host)(import_onnx(graph, {}).mod)
    blocked = [f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and "conv" in gv.name_hint
               and any(len(p.shape) == 6 for p in f.params)]
    assert len(blocked) == 3 and all(str(f.attrs["kiln.default_schedule"]) == "ChannelVectorized" for f in blocked)
    assert matches_onnxruntime(graph, mod) < TOLERANCE
