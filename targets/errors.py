"""kiln's user-facing error types: one per kind of user error, each saying what to do.

The CLI turns any ``KilnError`` into one line on stderr and exit code 2.
"""


class KilnError(Exception):
    """Base class: something the user can fix (bad model, bad input, missing tool, no device)."""


class ModelError(KilnError):
    """The model file is unreadable, malformed or invalid ONNX."""


class UnsupportedOperatorError(ModelError):
    """The model uses operators kiln (TVM's Relax ONNX importer) cannot import."""


class InputError(KilnError, ValueError):
    """Runtime or compile inputs do not match what the model expects."""


class TargetError(KilnError):
    """Unknown or invalid target."""


class ToolMissingError(KilnError):
    """An external tool (cross compiler, nvcc, qemu) is not installed."""


class DeviceError(KilnError):
    """The device a library needs (e.g. a CUDA GPU) is not present."""


class LibraryError(KilnError):
    """A compiled library is missing, not made by kiln, or built for another machine."""


class BuildError(KilnError):
    """TVM failed while generating code: a bug in kiln or TVM, not in the model. The message
    gives TVM's reason and, for a symbolic-size build, what to try."""
