"""Reading feeds from and writing outputs to .npz files, with one-line errors."""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .errors import VskipError


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise VskipError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise VskipError(f"{path}: not a readable .npz file ({exc})") from None


def write_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write through a temporary file in the same directory, then rename."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise VskipError(f"{directory}: no such directory")
    if not os.access(directory, os.W_OK):
        raise VskipError(f"{directory}: directory is not writable")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
