"""Which reference to trust for models with 8-bit integer weights on this CPU.

ONNX Runtime's u8s8 integer kernels use AVX2's saturating ``vpmaddubsw`` when the CPU has no
VNNI: with 8-bit weights its results are then not the integer math (on an AVX2 EPYC,
DynamicQuantizeLinear + MatMulIntegerToFloat came out 10.2 off numpy's exact result, kiln
1.4e-6; pyfrspell's int8 derive model 2.28 off ONNX's reference evaluator, kiln 3.8e-6).
There, tests compare with ``exact_outputs`` (ONNX's own numpy reference evaluator) instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from schedules.resolved_target import as_resolved
from targets.registry import resolve_target

# kiln's own int8 kernels need 7-bit weights for vpmaddubsw exactly where ONNX Runtime's saturate
ORT_INT8_EXACT = as_resolved(resolve_target("host")).int8_weight_bits == 8
needs_exact_ort = pytest.mark.skipif(not ORT_INT8_EXACT, reason="ONNX Runtime's u8s8 kernels saturate on this "
                                     "CPU (AVX2 without VNNI), so they are not a reference for 8-bit weights")
INTEGER_OPS = {"MatMulInteger", "ConvInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}


def has_integer_ops(model: onnx.ModelProto) -> bool:
    return any(node.op_type in INTEGER_OPS for node in model.graph.node)


def exact_outputs(path: str | Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of ONNX's numpy reference evaluator. Its DequantizeLinear starts at opset 19, which
    computes what opsets 13-17 define for these models, so older default-domain opsets are read as 19."""
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(path))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < 19:
            opset.version = 19
    evaluator = ReferenceEvaluator(model)
    names = {i.name for i in model.graph.input}
    return dict(zip(evaluator.output_names, evaluator.run(None, {k: v for k, v in inputs.items() if k in names})))
