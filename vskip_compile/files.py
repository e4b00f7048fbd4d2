"""Files in and out: .npz feeds and outputs, text and bytes, written atomically.

Every output goes through a temporary file in the target directory and a rename, so a
reader (or a failed run) never leaves half a file; errors are one-line VskipErrors.
"""

from __future__ import annotations

import os
import shutil
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
    _write_atomic(Path(path), lambda handle: np.savez(handle, **arrays))


def write_text_atomic(path: str | Path, text: str) -> None:
    _write_atomic(Path(path), lambda handle: handle.write(text.encode()))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    _write_atomic(Path(path), lambda handle: handle.write(data))


def copy_file_atomic(source: str | Path, target: str | Path) -> None:
    """Copy through a temporary name in the target's directory, then rename."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.vskip-tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def output_directory(path: str | Path) -> Path:
    """The directory ``path`` will be written in; VskipError unless it exists and is writable."""
    directory = Path(path).parent if str(Path(path).parent) else Path(".")
    if not directory.is_dir():
        raise VskipError(f"{directory}: no such directory")
    try:
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as exc:  # os.access lies for root; creating a file does not
        raise VskipError(f"{directory}: directory is not writable ({exc.strerror})") from None
    return directory


def _write_atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=output_directory(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; outputs are not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
