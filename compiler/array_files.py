"""Reading user arrays from .npz / .npy files: one clear ``InputError`` for any damaged file."""

from __future__ import annotations

import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from targets.errors import InputError

# What numpy raises for truncated, bit-flipped or foreign files (found by scripts/fuzz_files.py):
# a bad zip directory or compression method, a member that ends early, a corrupt deflate
# stream, an array header that does not parse (numpy reads it with Python's tokenizer).
DAMAGED = (ValueError, OSError, EOFError, KeyError, SyntaxError, NotImplementedError, zipfile.BadZipFile, zlib.error,
           tokenize.TokenError)


def read_npz(path: str | Path, purpose: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file by name (no pickles); ``purpose`` names the option in errors."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise InputError(f"{purpose} {path}: expected an .npz file (arrays by input name), got one array")
        with data:
            return {k: data[k] for k in data.files}
    except DAMAGED as err:
        raise _unreadable(purpose, path, ".npz", err) from None


def read_npy(path: str | Path, purpose: str) -> np.ndarray:
    """One array from an .npy file (no pickles)."""
    path = Path(path)
    try:
        return np.load(path, allow_pickle=False)
    except DAMAGED as err:
        raise _unreadable(purpose, path, ".npy", err) from None


def _unreadable(purpose: str, path: Path, kind: str, err: Exception) -> InputError:
    detail = str(err).splitlines()[0] if str(err) else "damaged"
    return InputError(f"{purpose} {path}: not a readable {kind} file ({type(err).__name__}: {detail}); "
                      "pickled arrays are refused")
