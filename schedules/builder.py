"""A MetaSchedule builder that works on a 2-core machine: each candidate in a forked child.

TVM's ``LocalBuilder`` starts a fresh process pool for every batch, and each worker
imports ``tvm.s_tir.tensor_intrin`` (CUDA/ROCm/Hexagon intrinsics): about 100 s here,
longer than its 30 s default timeout, so every candidate failed to build and tuning
silently produced nothing (see ../shared/DESIGN.md). Here each candidate is compiled in a
child forked from the tuner itself: TVM is already imported there, so a build costs only
the compile, and the child can be killed: a candidate whose LLVM code generation runs
away (seen here: one SqueezeNet candidate still compiling after 10 minutes, which stalled
the whole tuning run) fails with a timeout instead of hanging the night. A candidate that
fails to build is reported as that candidate's error; it never stops the run.
"""

from __future__ import annotations

import logging
import os
import select
import shutil
import signal
import tempfile
import time

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 120.0


def _compile_to(build_input: BuilderInput, path: str) -> None:
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    from tvm.support.tar import tar

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(build_input.mod)
    tvm.compile(mod, target=build_input.target).export_library(path, fcompile=tar)


def build_in_child(build_input: BuilderInput, path: str, timeout: float) -> str | None:
    """Compile ``build_input`` into ``path`` in a forked child; the error text, or None."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: compile, report, leave without running the parent's cleanup
        os.close(read_end)
        code = 0
        try:
            _compile_to(build_input, path)
        except BaseException as err:  # everything goes back to the parent as text
            os.write(write_end, f"{type(err).__name__}: {err}".encode(errors="replace")[-4000:])
            code = 1
        os._exit(code)
    os.close(write_end)
    deadline = time.monotonic() + timeout
    message = b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return f"build timed out after {timeout:.0f} s"
            ready, _, _ = select.select([read_end], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(read_end, 65536)
                if chunk:
                    message += chunk
                    continue
                break  # the child closed the pipe: it is exiting
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(read_end)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return None
    if message:
        return message.decode(errors="replace")
    return f"build process died (status {status})"


@derived_object
class InProcessBuilder(PyBuilder):
    """Compile each candidate with ``tvm.compile`` in a forked child and export it as a tar for the runner."""

    def __init__(self, timeout: float = BUILD_TIMEOUT_S) -> None:
        super().__init__()
        self.timeout = timeout
        self.built = 0
        self.failed = 0
        self.seconds = 0.0

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        results = []
        for build_input in build_inputs:
            start = time.perf_counter()
            path = os.path.join(tempfile.mkdtemp(prefix="kiln-candidate-"), "candidate.tar")
            error = build_in_child(build_input, path, self.timeout)
            if error is None:
                results.append(BuilderResult(path, None))
                self.built += 1
            else:  # one bad candidate must not end the run
                results.append(BuilderResult(None, f"kiln InProcessBuilder: {error}"))
                self.failed += 1
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
            self.seconds += time.perf_counter() - start
        return results
