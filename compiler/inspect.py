"""``kiln inspect``: what a compiled library or an ONNX model holds, as plain data."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from compiler.inter_op import describe_inter_op
from targets.library_format import read_metadata


def inspect_library(path: Path) -> dict[str, Any]:
    meta = read_metadata(path)
    info = asdict(meta)
    info["inputs"] = [s.describe() for s in meta.inputs]
    info["outputs"] = [s.describe() for s in meta.outputs]
    schedules = info["extra"].pop("kernel_schedules", {})
    info["kernels"] = [f"{name}: {source}" for name, source in schedules.items()]
    info["inter_op"] = describe_inter_op(info["extra"].pop("inter_op", None))  # the stage plan itself is long
    info["file"] = str(path)
    info["size_bytes"] = path.stat().st_size
    if meta.device == "cuda":
        from targets.cuda import fatbin_entries

        info["cuda_device_code"] = [f"{e.kind} {e.arch} ({e.size} bytes)" for e in fatbin_entries(path.read_bytes())]
    return info


def inspect_onnx(path: Path) -> dict[str, Any]:
    from compiler.frontend import _graph_inputs, _opset, find_unsupported_ops, read_model, _dims

    model, data, name = read_model(path)
    from targets.library_format import sha256_bytes

    ops = Counter(n.op_type for n in model.graph.node)
    return {
        "file": str(path),
        "name": name,
        "opset": _opset(model),
        "ir_version": model.ir_version,
        "sha256": sha256_bytes(data),
        "inputs": [f"{i.name}: {'x'.join(map(str, _dims(i)))}" for i in _graph_inputs(model)],
        "outputs": [f"{o.name}: {'x'.join(map(str, _dims(o)))}" for o in model.graph.output],
        "nodes": len(model.graph.node),
        "operators": [f"{op} x{n}" for op, n in ops.most_common()],
        "unsupported": [f"{op} x{n} (e.g. {', '.join(names)})" for op, n, names in find_unsupported_ops(model)],
    }


def inspect_path(path: str | Path) -> dict[str, Any]:
    """Library metadata for a ``.so``; interface and operator census for an ONNX file."""
    path = Path(path)
    with open(path, "rb") if path.is_file() else _missing(path) as f:
        magic = f.read(4)
    return inspect_library(path) if magic == b"\x7fELF" else inspect_onnx(path)


def _missing(path: Path):
    from targets.errors import KilnError

    raise KilnError(f"{path}: no such file")


def _count(mod) -> tuple[int, int]:
    """(Relax bindings, TIR kernels) of a module."""
    import tvm
    from tvm import relax

    bindings = kernels = 0
    for _, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            kernels += 1
        elif isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
            bindings += sum(len(block.bindings) for block in func.body.blocks)
    return bindings, kernels


def kernel_launches(mod) -> int:
    """TIR kernels ``main`` launches per inference (a kernel called twice counts twice).

    Reshape kernels are not counted: the build turns them into views (RewriteDataflowReshape).
    """
    import tvm
    from tvm import relax

    mod = relax.transform.DeadCodeElimination()(relax.transform.RewriteDataflowReshape()(mod))
    count = 0
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not isinstance(value, relax.Call):
                continue
            if isinstance(value.op, tvm.ir.Op) and value.op.name in ("relax.call_tir", "relax.call_tir_inplace"):
                count += 1
            elif isinstance(value.op, tvm.ir.GlobalVar) and isinstance(mod[value.op], tvm.tirx.PrimFunc):
                count += 1
    return count


def _kernel_names(mod) -> list[str]:
    import tvm

    return sorted(g.name_hint for g, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc))


def inspect_passes(path: str | Path, target: str = "host", input_shapes: dict | None = None) -> dict[str, Any]:
    """Run kiln's pipeline one step at a time up to scheduling; bindings, kernels and launches after each step.

    "kernels" counts distinct TIR functions, "launches" the kernel calls ``main`` makes
    per inference (the same kernel called for two layers counts twice).

    Also counts the kernels of TVM's stock lowering (LegalizeOps, FoldConstant, FuseOps,
    FuseTIR, nothing before) for comparison.
    """
    import tvm
    from tvm import relax

    from compiler.frontend import import_onnx
    from compiler.pipeline import pipeline_steps
    from schedules.resolved_target import resolve

    preset = resolve(target)
    imported = import_onnx(path, input_shapes or {}, preset.tvm_target())
    target_obj = preset.tvm_target()
    steps = pipeline_steps(preset)
    last = max(i for i, s in enumerate(steps) if s.name == "FuseTIR")
    per_pass = []
    with target_obj, tvm.transform.PassContext(opt_level=3):
        mod = imported.mod
        bindings, kernels = _count(mod)
        per_pass.append({"pass": "import", "bindings": bindings, "kernels": kernels,
                         "launches": kernel_launches(mod), "why": "TVM's ONNX importer"})
        for step in steps[: last + 1]:
            mod = step.make()(mod)
            bindings, kernels = _count(mod)
            per_pass.append({"pass": step.name, "bindings": bindings, "kernels": kernels,
                             "launches": kernel_launches(mod), "why": step.why})
        stock = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                          relax.transform.FoldConstant(), relax.transform.FuseOps(),
                                          relax.transform.FuseTIR()])(imported.mod)
    return {
        "model": str(path), "target": preset.name,
        "kernels_stock": _count(stock)[1], "kernels_kiln": per_pass[-1]["kernels"],
        "launches_stock": kernel_launches(stock), "launches_kiln": per_pass[-1]["launches"],
        "passes": per_pass, "fused_kernels": _kernel_names(mod),
    }
