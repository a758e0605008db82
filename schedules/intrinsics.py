"""Import TVM's tensor intrinsics quickly.

MetaSchedule imports ``tvm.s_tir.tensor_intrin`` when it creates a tuning context. That
module parses ~250 TVMScript functions (CUDA, ROCm, Hexagon, x86, ARM intrinsics), and
TVM's parser calls ``inspect.stack()`` for each one; with the default ``context=1``
Python looks up source lines for every frame, which scans ``sys.modules`` each time:
about 100 s on this 2-core machine (measured: 103 s of a 113 s tuning run on a
two-kernel model). The parser only reads the frames' variables, never the source
lines, so importing with ``context=0`` gives the same intrinsics in about 11 s.
"""

from __future__ import annotations

import inspect
import sys
import threading

_lock = threading.Lock()


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` once, without the per-frame source lookups."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    with _lock:
        original = inspect.stack
        inspect.stack = lambda context=1: original(0)
        try:
            import tvm.s_tir.tensor_intrin  # noqa: F401  (registers the intrinsics)
        finally:
            inspect.stack = original
