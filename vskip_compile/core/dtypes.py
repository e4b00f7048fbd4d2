"""The floating types a decoder graph is exported in, by their three spellings.

Sidecars and ``--dtype`` use torch's names (``float16``), reports the short ones
(``fp16``), and arrays numpy dtypes. NumPy has no bfloat16: ``ml_dtypes`` (a dependency
of onnx) supplies the one onnx and ONNX Runtime use, so a bf16 array moves between
them without conversion.
"""

from __future__ import annotations

import numpy as np

from .errors import VskipError

DTYPES = ("float32", "float16", "bfloat16")
SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a vskip dtype name."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name not in DTYPES:
        raise VskipError(f"unknown floating type {str(name)[:40]!r}; vskip knows {', '.join(DTYPES)}")
    return np.dtype(name)


def dtype_name(dtype) -> str | None:
    """The vskip name of a numpy dtype, or None for a non-floating or other type."""
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":
        return "bfloat16"
    return dtype.name if dtype.name in DTYPES else None


def graph_float_type(specs) -> str:
    """The floating type of a decoder's float inputs (``inputs_embeds`` first); ``float32``
    when it has none. Mixed float inputs are refused: every vskip decoder has one type."""
    kinds = {dtype_name(s.dtype) for s in specs if s.dtype is not None and np.dtype(s.dtype).kind in "fV"}
    kinds.discard(None)
    if len(kinds) > 1:
        raise VskipError(f"the graph's float inputs mix {', '.join(sorted(kinds))}; a decoder takes one type")
    return kinds.pop() if kinds else "float32"
