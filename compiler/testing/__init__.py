"""Models, data and generators shared by kiln's tests and its scripts (``scripts/``).

Nothing here is needed to compile or run a model; each module imports its heavier
dependencies (hypothesis, scikit-learn, rapidocr) only when used:

- ``int8_data``: labelled models (digits, PP-OCR) and the light-zoo INT8 cases;
- ``onnx_strategies``: hypothesis strategies for hostile ONNX models (the import fuzzers);
- ``tuning``: a small tunable model and a tuning database's complete record lines (kill tests).
"""
