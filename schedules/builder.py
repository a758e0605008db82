"""A MetaSchedule builder that works on a 2-core machine: builds candidates in process.

TVM's ``LocalBuilder`` starts a fresh process pool for every batch, and each worker
imports ``tvm.s_tir.tensor_intrin`` (CUDA/ROCm/Hexagon intrinsics): about 100 s here,
longer than its 30 s default timeout, so every candidate failed to build and tuning
silently produced nothing (see ../shared/DESIGN.md). Building in the tuner's own
process costs only the compile itself. A candidate that fails to build is reported as
that candidate's error; it never stops the run.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder

log = logging.getLogger(__name__)


@derived_object
class InProcessBuilder(PyBuilder):
    """Compile each candidate with ``tvm.compile`` here and export it as a tar for the runner."""

    def __init__(self) -> None:
        super().__init__()
        self.built = 0
        self.failed = 0
        self.seconds = 0.0

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        import tvm
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
        from tvm.support.tar import tar

        results = []
        for build_input in build_inputs:
            start = time.perf_counter()
            try:
                mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(build_input.mod)
                rt_mod = tvm.compile(mod, target=build_input.target)
                path = os.path.join(tempfile.mkdtemp(prefix="kiln-candidate-"), "candidate.tar")
                rt_mod.export_library(path, fcompile=tar)
                results.append(BuilderResult(path, None))
                self.built += 1
            except Exception as err:  # one bad candidate must not end the run
                results.append(BuilderResult(None, f"kiln InProcessBuilder: {type(err).__name__}: {err}"))
                self.failed += 1
            self.seconds += time.perf_counter() - start
        return results
