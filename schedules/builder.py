"""A MetaSchedule builder that works on a 2-core machine: candidates compiled in forked children.

TVM's ``LocalBuilder`` starts a fresh process pool for every batch, and each worker
imports ``tvm.s_tir.tensor_intrin`` (CUDA/ROCm/Hexagon intrinsics): about 100 s here,
longer than its 30 s default timeout, so every candidate failed to build and tuning
silently produced nothing (see ../shared/DESIGN.md). Here each candidate is compiled in a
child forked from the tuner itself: TVM is already imported there, so a build costs only
the compile; one child per core runs at a time. A child can be killed: a candidate whose
LLVM code generation runs away (seen here: one SqueezeNet candidate still compiling after
10 minutes, which stalled the whole tuning run) fails with a timeout instead of hanging the
night. A candidate that fails to build is reported as that candidate's error; it never
stops the run.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.builder import BuilderInput, BuilderResult, PyBuilder

log = logging.getLogger(__name__)

BUILD_TIMEOUT_S = 120.0
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>


def _compile_to(build_input: BuilderInput, path: str) -> None:
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    from tvm.support.tar import tar

    from schedules.stack_accumulators import accumulators_on_stack

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(build_input.mod)
    if build_input.target.kind.name == "llvm":  # measure what a compile ships
        mod = accumulators_on_stack(build_input.target)(mod)
    tvm.compile(mod, target=build_input.target).export_library(path, fcompile=tar)


def _die_with_parent(parent: int) -> None:
    """Linux: this child gets SIGKILL when the tuner dies, so a killed run leaves no builds behind.
    (The forking thread waits for its children, so its exit is the tuner's death.)"""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # died before prctl took effect
            os._exit(1)


@dataclass
class _Child:
    """One forked compile: its pid, the pipe it reports errors on, and when it must be done."""

    index: int
    pid: int
    read_fd: int
    deadline: float
    message: bytes = field(default=b"")


def _fork_build(index: int, build_input: BuilderInput, path: str, timeout: float) -> _Child:
    read_end, write_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # child: compile, report, leave without running the parent's cleanup
        os.close(read_end)
        _die_with_parent(parent)
        code = 0
        try:
            _compile_to(build_input, path)
        except BaseException as err:  # everything goes back to the parent as text
            os.write(write_end, f"{type(err).__name__}: {err}".encode(errors="replace")[-4000:])
            code = 1
        os._exit(code)
    os.close(write_end)
    return _Child(index, pid, read_end, time.monotonic() + timeout)


def _exit_error(child: _Child, status: int) -> str | None:
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return None
    if child.message:
        return child.message.decode(errors="replace")
    return f"build process died (status {status})"


def build_in_children(build_inputs: list[BuilderInput], paths: list[str], timeout: float,
                      workers: int) -> list[str | None]:
    """Compile each input into its path, ``workers`` forked children at a time; per input the error text, or None."""
    errors: list[str | None] = [None] * len(build_inputs)
    waiting = list(range(len(build_inputs)))[::-1]
    running: dict[int, _Child] = {}  # by read_fd
    try:
        while waiting or running:
            while waiting and len(running) < max(1, workers):
                index = waiting.pop()
                child = _fork_build(index, build_inputs[index], paths[index], timeout)
                running[child.read_fd] = child
            now = time.monotonic()
            for child in [c for c in running.values() if c.deadline <= now]:
                os.kill(child.pid, signal.SIGKILL)
                os.waitpid(child.pid, 0)
                os.close(child.read_fd)
                del running[child.read_fd]
                errors[child.index] = f"build timed out after {timeout:.0f} s"
            if not running:
                continue
            wait_s = max(0.0, min(min(c.deadline for c in running.values()) - now, 1.0))
            ready, _, _ = select.select(list(running), [], [], wait_s)
            for fd in ready:
                child = running[fd]
                chunk = os.read(fd, 65536)
                if chunk:
                    child.message += chunk
                    continue
                _, status = os.waitpid(child.pid, 0)  # the child closed the pipe: it is exiting
                os.close(fd)
                del running[fd]
                errors[child.index] = _exit_error(child, status)
    finally:  # an exception in the parent (e.g. KeyboardInterrupt) leaves no orphan compiling
        for child in running.values():
            os.kill(child.pid, signal.SIGKILL)
            os.waitpid(child.pid, 0)
            os.close(child.read_fd)
    return errors


def build_in_child(build_input: BuilderInput, path: str, timeout: float) -> str | None:
    """Compile ``build_input`` into ``path`` in a forked child; the error text, or None."""
    return build_in_children([build_input], [path], timeout, workers=1)[0]


@derived_object
class ForkedBuilder(PyBuilder):
    """Compile candidates with ``tvm.compile`` in forked children (one per core) and export tars for the runner."""

    def __init__(self, timeout: float = BUILD_TIMEOUT_S, workers: int | None = None) -> None:
        super().__init__()
        self.timeout = timeout
        self.workers = workers or os.cpu_count() or 1
        self.built = 0
        self.failed = 0
        self.seconds = 0.0

    def build(self, build_inputs: list[BuilderInput]) -> list[BuilderResult]:
        start = time.perf_counter()
        paths = [os.path.join(tempfile.mkdtemp(prefix="kiln-candidate-"), "candidate.tar") for _ in build_inputs]
        errors = build_in_children(build_inputs, paths, self.timeout, self.workers)
        results = []
        for path, error in zip(paths, errors):
            if error is None:
                results.append(BuilderResult(path, None))
                self.built += 1
            else:  # one bad candidate must not end the run
                results.append(BuilderResult(None, f"kiln ForkedBuilder: {error}"))
                self.failed += 1
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        self.seconds += time.perf_counter() - start
        return results
