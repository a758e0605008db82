"""kiln: compile ONNX models with Apache TVM (Relax) into deployable shared libraries.

Python API::

    from compiler import compile_model, load
    compile_model("model.onnx", "model.so", target="host")
    m = load("model.so")
    outs = m.run({"data": x})
"""

import os as _os

__version__ = "0.1.0"

# TVM sizes each calling thread's CPU pool once, at its first parallel kernel, from
# TVM_NUM_THREADS (default: half the cores, one thread on a 2-vCPU machine). A compile runs
# kernels (constant folding) before any library is loaded, so the pool must start with every
# core; ``compiler.runtime.configure_threads`` then chooses how many a library uses.
_os.environ.setdefault("TVM_NUM_THREADS", str(len(_os.sched_getaffinity(0)) if hasattr(_os, "sched_getaffinity")
                                              else (_os.cpu_count() or 1)))
_os.environ.setdefault("TVM_BIND_THREADS", "0")  # no pinning: shared machines, no affinity warnings


def __getattr__(name: str):
    # Lazy: `import compiler.runtime` must not pull in onnx or the compiler stack.
    if name in ("compile_model", "CompileOptions", "CompileReport"):
        from compiler import build

        return getattr(build, name)
    if name == "load":
        from compiler.runtime import load

        return load
    if name in _ERRORS:  # the error types live in targets/ (every layer raises them)
        from targets import errors

        return getattr(errors, name)
    raise AttributeError(name)


_ERRORS = ("KilnError", "ModelError", "UnsupportedOperatorError", "InputError", "TargetError", "LibraryError", "DeviceError",
           "ToolMissingError")


__all__ = ["__version__", "compile_model", "CompileOptions", "CompileReport", "load", *_ERRORS]
