"""The token embedding table beside the graphs: ``embedding.safetensors``.

As TensorRT-Edge-LLM ships it: the rows the text model's input embedding module gives
each token id (Gemma3's scale included), so the prefill graph takes ``inputs_embeds`` and
no runtime needs the model. One tensor, ``embedding`` [vocab, hidden], in the export's
floating type.

The format is safetensors (an 8-byte little-endian header length, a JSON header, the raw
bytes). Writing and reading are done here rather than with the ``safetensors`` package:
its numpy API has no bfloat16, the writer must stream a table larger than the memory
it may use, and the reader must refuse a hostile file in one line (header size, offsets
inside the file, the shape matching the bytes) before mapping it. Reading maps the file
(``numpy.memmap``), so only the rows a prompt uses are ever paged in.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .dtypes import numpy_dtype
from .errors import VskipError
from .files import open_input

EMBEDDING_FILE = "embedding.safetensors"
TENSOR = "embedding"
MAX_HEADER_BYTES = 1 << 16
_CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_NAMES = {code: name for name, code in _CODES.items()}


def write_table(path: Path, rows: int, width: int, dtype: str, chunks: Iterable[np.ndarray]) -> None:
    """Write a [rows, width] table from ``chunks`` (row blocks, in order) to ``path``.

    ``path`` is a file the caller owns (an export's staging directory); the chunks are
    written as they come, so the table is never whole in memory.
    """
    itemsize = numpy_dtype(dtype).itemsize
    size = rows * width * itemsize
    header = json.dumps({TENSOR: {"dtype": _CODES[dtype], "shape": [rows, width], "data_offsets": [0, size]}},
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    written = 0
    with open(path, "xb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        for chunk in chunks:
            block = np.ascontiguousarray(chunk, dtype=numpy_dtype(dtype))
            if block.ndim != 2 or block.shape[1] != width:
                raise ValueError(f"an embedding chunk of shape {block.shape} for width {width}")
            handle.write(block.tobytes())
            written += block.shape[0]
    if written != rows:
        raise ValueError(f"wrote {written} embedding rows of {rows}")


def read_table(path: Path) -> np.ndarray:
    """The table at ``path``, memory-mapped read-only, after checking the file's layout."""
    where = f"{path}: embedding table"
    with open_input(path, "embedding table") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise VskipError(f"{where} is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise VskipError(f"{where} declares a {length}-byte header (at most {MAX_HEADER_BYTES})")
        try:
            header = json.loads(handle.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise VskipError(f"{where} has no valid safetensors header") from None
        handle.seek(0, 2)
        file_size = handle.tell()
    entry = header.get(TENSOR) if isinstance(header, dict) else None
    if not isinstance(entry, dict):
        raise VskipError(f"{where} holds no tensor named {TENSOR!r}")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in _NAMES:
        raise VskipError(f"{where}: dtype {str(dtype)[:20]!r} is not one of {', '.join(_NAMES)}")
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(d) is int and d > 0 for d in shape)):
        raise VskipError(f"{where}: shape must be [vocab, hidden], got {str(shape)[:40]}")
    itemsize = numpy_dtype(_NAMES[dtype]).itemsize
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] and offsets[1] - offsets[0] == shape[0] * shape[1] * itemsize):
        raise VskipError(f"{where}: data offsets {str(offsets)[:40]} do not hold a {shape} {_NAMES[dtype]} tensor")
    start = 8 + length + offsets[0]
    if start + offsets[1] - offsets[0] > file_size:
        raise VskipError(f"{where} is truncated: {file_size} bytes, the header needs {start + offsets[1] - offsets[0]}")
    return np.memmap(path, dtype=numpy_dtype(_NAMES[dtype]), mode="r", offset=start, shape=tuple(shape))


def embed(table: np.ndarray, input_ids: np.ndarray) -> np.ndarray:
    """The rows of ``input_ids`` [B, S]; ids outside the table are refused."""
    ids = np.asarray(input_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise VskipError(f"token id {int(ids.max() if ids.max() >= table.shape[0] else ids.min())} is outside "
                         f"the embedding table's {table.shape[0]} rows")
    return np.asarray(table[ids.reshape(-1)]).reshape(*ids.shape, table.shape[1])


def table_chunks(embed_rows: Callable[[int, int], np.ndarray], rows: int, block: int = 4096):
    """Row blocks of a table whose rows ``embed_rows(start, stop)`` computes."""
    for start in range(0, rows, block):
        yield embed_rows(start, min(rows, start + block))
