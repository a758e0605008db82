"""One naming style for kiln's passes (``compiler/passes/__init__.py``): one pass per file, the file
name is the pass's Python name, and its registered name is that name in PascalCase; pipeline
steps are named by the pass they run."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import tvm

from compiler import pipeline
from compiler.quantization.plan import QuantizationPlan
from schedules.database import apply_database_pass
from schedules.defaults import default_schedule_pass
from targets.registry import resolve_target, with_conv_layout

PASSES = Path(__file__).resolve().parent.parent / "compiler" / "passes"
# TVM registers both of its decompositions as "DecomposeOps"; the step keeps TVM's Python name.
TVM_ALIASES = {"DecomposeOpsForInference": "DecomposeOps"}
# passes that take arguments: a function returning the pass
FACTORY_ARGS = {"convert_conv_layout": ("NHWC",), "insert_qdq": (QuantizationPlan({}),), "lower_qdq": ()}


def _pass_files() -> list[str]:
    return sorted(p.stem for p in PASSES.glob("*.py") if p.stem != "__init__")


def _pascal_case_of(registered: str, snake: str) -> bool:
    """``registered`` is ``snake`` in PascalCase (acronyms may be upper case: ``CallTIR``), no prefix."""
    return (registered[:1].isupper() and registered.isalnum()
            and registered.lower() == snake.replace("_", ""))


@pytest.mark.parametrize("stem", _pass_files())
def test_each_file_holds_one_pass_named_after_it(stem):
    module = importlib.import_module(f"compiler.passes.{stem}")
    made = getattr(module, stem, None)
    assert made is not None, f"compiler/passes/{stem}.py defines no {stem}"
    if stem in FACTORY_ARGS:
        made = made(*FACTORY_ARGS[stem])
    assert isinstance(made, tvm.transform.Pass)
    assert _pascal_case_of(made.info.name, stem), made.info.name
    module_level = [name for name, value in vars(module).items() if isinstance(value, tvm.transform.Pass)]
    assert module_level == ([] if stem in FACTORY_ARGS else [stem])


def test_schedule_passes_are_named_alike(tmp_path):
    assert default_schedule_pass().info.name == "DefaultCPUSchedule"
    assert apply_database_pass(tmp_path).info.name == "ApplyTuningDatabase"


@pytest.mark.parametrize("preset", [resolve_target("x86-avx2"), with_conv_layout(resolve_target("x86-avx2"), "NHWC"),
                                    resolve_target("cuda-sm80")], ids=["cpu", "cpu-nhwc", "cuda"])
def test_every_step_is_named_by_its_pass(preset, tmp_path):
    steps = pipeline.pipeline_steps(preset, db=tmp_path, inter_op=True)
    int8 = pipeline.pipeline_steps(preset, precision="int8", plan=QuantizationPlan({}))
    assert {"FuseTIR", "LegalizeOps"} <= {step.name for step in steps}
    assert {"InsertQDQ", "LowerQDQ", "FoldReluIntoQuantize"} <= {step.name for step in int8}
    steps += int8
    for step in steps:
        assert step.make().info.name == TVM_ALIASES.get(step.name, step.name)


def test_whole_pipelines_are_named_by_their_function():
    preset = resolve_target("x86-avx2")
    assert pipeline.build_pipeline(preset).info.name == "BuildPipeline"
    assert pipeline.tuning_input_pipeline(preset).info.name == "TuningInputPipeline"
    assert pipeline.simplify_pipeline(preset).info.name == "SimplifyPipeline"
    assert pipeline.lowering_pipeline(preset).info.name == "LoweringPipeline"
