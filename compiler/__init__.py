"""kiln: compile ONNX models with Apache TVM (Relax) into deployable shared libraries.

Python API::

    from compiler import compile_model, load
    compile_model("model.onnx", "model.so", target="host")
    m = load("model.so")
    outs = m.run({"data": x})
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import compiler.runtime` must not pull in onnx or the compiler stack.
    if name in ("compile_model", "CompileOptions", "CompileReport"):
        from compiler import build

        return getattr(build, name)
    if name == "load":
        from compiler.runtime import load

        return load
    raise AttributeError(name)


__all__ = ["__version__", "compile_model", "CompileOptions", "CompileReport", "load"]
