"""The target registry: named presets (x86, ARM64, CUDA) mapped to TVM targets."""

from targets.registry import PRESETS, TargetPreset, detect_host, list_presets, resolve_target

__all__ = ["PRESETS", "TargetPreset", "detect_host", "list_presets", "resolve_target"]
