"""The check of kiln's pass tests, in TVM's Before/Expected style (``tests/test_<pass>.py``)."""

from __future__ import annotations

import tvm
import tvm_ffi


def assert_rewrites(transform: tvm.transform.Pass, before: tvm.IRModule, expected: tvm.IRModule) -> None:
    """``transform(before)`` is structurally ``expected``, and it changed something: ``before`` is
    not ``expected`` already (the test can fail) and is left as it was (a pass does not write
    into its input module)."""
    assert not tvm_ffi.structural_equal(before, expected), "Before is already Expected: the test could not fail"
    after = transform(before)
    tvm.ir.assert_structural_equal(after, expected)
    assert not tvm_ffi.structural_equal(before, after), "the pass rewrote its input module in place"


def assert_unchanged(transform: tvm.transform.Pass, before: tvm.IRModule) -> None:
    """``transform`` leaves ``before`` as it is."""
    tvm.ir.assert_structural_equal(transform(before), before)
