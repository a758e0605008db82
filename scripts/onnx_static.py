"""Re-export of ``compiler.shape_folding.freeze_input_shapes`` for the scripts that import it by this name.

The folding now lives in kiln itself (``compiler/shape_folding.py``), and ``kiln compile``
applies it whenever input shapes are static and the graph reads shapes at run time.
"""

from __future__ import annotations

import sys
from pathlib import Path

if str(Path(__file__).resolve().parent.parent) not in sys.path:  # `compiler` when scripts/ is on the path
    sys.path.append(str(Path(__file__).resolve().parent.parent))

from compiler.shape_folding import freeze_input_shapes  # noqa: E402

__all__ = ["freeze_input_shapes"]
