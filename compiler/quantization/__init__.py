"""INT8 post-training quantization: calibration, weight rounding, layer choice, the plan.

One module per idea:

- ``calibrators``: ``Calibrator`` and ``create_calibrator`` (minmax, percentile, entropy, mse);
- ``calibration_data``: samples from ``.npz``/``.npy`` files, directories or memory;
- ``calibrate``: runs the FP32 model over the samples (through the caller's ``ModelRunner``,
  ``runner``) and calibrates every quantizable layer's input;
- ``gptq`` and ``weights``: how weights round to their int8 steps;
- ``sensitivity``: the probe that measures each layer's effect on the output;
- ``planner``: ``Int8Options`` in, ``plan_int8`` → ``Int8Result`` (the plan and a report) out;
- ``plan``: the ``QuantizationPlan`` the passes consume (``compiler.passes.insert_qdq``);
- ``plan_file``: the plan saved as a ``.kq`` file and read back;
- ``report``: the per-layer table of ``kiln quantize-report``.

The names most callers need are importable from the package itself.
"""

from __future__ import annotations

_EXPORTS = {
    "Int8Options": "planner", "Int8Result": "report", "plan_int8": "planner",
    "QuantizationPlan": "plan", "LayerReport": "plan",
    "load_calibration": "calibration_data", "create_calibrator": "calibrators", "describe_layers": "report",
    "save_plan": "plan_file", "load_plan": "plan_file",
}


def __getattr__(name: str):
    # Lazy, so that the passes importing ``compiler.quantization.plan`` do not import the planner.
    if name in _EXPORTS:
        from importlib import import_module

        return getattr(import_module(f"compiler.quantization.{_EXPORTS[name]}"), name)
    raise AttributeError(name)


__all__ = sorted(_EXPORTS)
