"""INT8 matmuls and convolutions on CUDA int8 tensor cores (``wmma`` s8 x s8 -> s32).

TVM's dlight ``MatmulInt8Tensorization`` writes the schedule; kiln only removes its
software-pipeline annotations: with them TVM 0.27's ``InjectSoftwarePipeline`` stops the
build ("Check failed: (it != fragment_info_.end())" in ``GetWmmaFragmentSize``, seen on
SqueezeNet's int8 build for sm_90), so dlight's ``Matmul``, which calls that rule itself,
cannot build an int8 x int8 model for CUDA. Shared-memory double buffering stays.

Expects: a CUDA target of sm_72 or newer and a kernel whose main reduction reads int8 x int8
into int32, with the matmul's I, J and K each over 64 (dlight's own threshold). Declines
(``None``) otherwise, so such kernels reach dlight's scalar int32 schedules.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import (
    MatmulInt8Tensorization,
    get_in_out_dtypes,
    get_index_map,
    get_reduction_blocks,
)
from tvm.target import Target

from schedules.int8 import has_int8_tensor_cores
from schedules.intrinsics import import_tensor_intrinsics

PIPELINE_ANNOTATIONS = ("software_pipeline_stage", "software_pipeline_order")
MIN_TENSORIZED_EXTENT = 64  # dlight Matmul's minimal_tensorize_threshold


class Int8TensorCore(GPUScheduleRule):
    """dlight's int8 ``wmma`` matmul schedule without software pipelining (see module doc)."""

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        if not has_int8_tensor_cores(target) or not _is_large_int8_matmul(func):
            return None
        import_tensor_intrinsics()  # dlight imports them on first use: ~11 s this way instead of ~100 s
        sch = MatmulInt8Tensorization().apply(func, target, tunable)
        if sch is None:
            return None
        remove_pipelining(sch)
        return sch


def _is_large_int8_matmul(func: tirx.PrimFunc) -> bool:
    """dlight ``Matmul``'s test for its int8 tensor-core path: the main reduction is a matmul
    (after reindexing) reading int8 into int32, with I, J and K each over 64."""
    sch = s_tir.Schedule(func)
    reductions = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
    if not reductions:
        return False
    block = sch.get(reductions[0])
    maps = get_index_map(block)
    if maps is None or get_in_out_dtypes(block) != ("int8", "int32"):
        return False
    extents = [iv.dom.extent for iv in block.iter_vars]
    _, *sizes = maps[0].map_shape(extents)  # (batch, I, J, K)
    return all(isinstance(n, tirx.IntImm) and n.value > MIN_TENSORIZED_EXTENT for n in sizes)


def remove_pipelining(sch: s_tir.Schedule) -> None:
    """Remove the software-pipeline annotations from every loop of ``sch``."""
    pending = [get_root_block(sch)]
    while pending:
        block = pending.pop()
        for loop in sch.get_loops(block):
            for key in PIPELINE_ANNOTATIONS:
                if key in sch.get(loop).annotations:
                    sch.unannotate(loop, key)
        pending.extend(sch.get_child_blocks(block))
