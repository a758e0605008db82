"""kiln's own Relax passes; ``compiler.pipeline`` decides their order.

One pass per module, named alike three ways: the file ``fold_stacked_reduce.py`` holds the
pass ``fold_stacked_reduce`` (a ``tvm.transform.Pass``; a function returning one where the
pass takes arguments, as ``convert_conv_layout(layout)``), registered as ``FoldStackedReduce``:
the file name in PascalCase, acronyms upper case as TVM writes them (``InPlaceCallsAsCallTIR``),
no prefix. Each module's docstring says what the pass expects and what it guarantees; each
pass has a Before/Expected test (``tests/test_<file name>.py``). Helpers that are not passes
live in ``compiler.relax_utils``.
"""
