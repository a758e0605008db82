"""kiln's own Relax passes: graph rewrites, fusion, calibration and quantization.

Each module is one pass (or one closely related family) with a docstring saying what it
expects and what it guarantees; ``compiler.pipeline`` decides their order.
"""
