"""The export sidecar ``vskip.json``: one reader that validates, one name.

``vskip export`` writes it beside ``prefill.onnx``; compile, validate and bench read it
for the family, the layer count and the dimensions. A sidecar may come from anywhere
with the graph, so the reader checks every field it hands out and fails in one line.
"""

from __future__ import annotations

from pathlib import Path

from .errors import VskipError
from .files import read_json

SIDECAR = "vskip.json"
SIDECAR_FORMAT = "vskip-export"
SIDECAR_VERSION = 1
MAX_DIM = 2**24          # far above any real model's widths or layer count

# The model dimensions a sidecar gives, each a positive integer where present.
DIM_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size")
_OPTIONAL_STRINGS = ("family", "source", "logits")


def sidecar_path(graph_path: str | Path) -> Path:
    return Path(graph_path).parent / SIDECAR


def read_sidecar(graph_path: str | Path) -> dict | None:
    """The sidecar beside ``graph_path``, checked; None if there is none."""
    path = sidecar_path(graph_path)
    if not path.exists() and not path.is_symlink():
        return None
    return check_sidecar(read_json(path, "sidecar"), str(path))


def load_sidecar_file(path: str | Path) -> dict:
    """A sidecar named explicitly (``bench --sidecar``)."""
    return check_sidecar(read_json(path, "sidecar"), str(path))


def check_sidecar(data, source: str) -> dict:
    """``data`` if it is a usable sidecar: an object whose dimension fields are positive
    integers (as many as it has; readers ask for the ones they need with :func:`require`)."""
    if not isinstance(data, dict):
        raise VskipError(f"{source}: a sidecar must be a JSON object, got {type(data).__name__}")
    for key in DIM_FIELDS:
        if key in data and (type(data[key]) is not int or not 0 < data[key] <= MAX_DIM):
            raise VskipError(f"{source}: '{key}' must be a positive integer, got {str(data[key])[:40]}")
    for key in _OPTIONAL_STRINGS:
        if key in data and data[key] is not None and not isinstance(data[key], str):
            raise VskipError(f"{source}: '{key}' must be a string")
    if "seed" in data and data["seed"] is not None and type(data["seed"]) is not int:
        raise VskipError(f"{source}: 'seed' must be an integer")
    return data


def require(data: dict, fields, source: str, hint: str = "re-export with `vskip export`") -> dict:
    missing = [k for k in fields if k not in data]
    if missing:
        raise VskipError(f"{source}: the sidecar lacks {', '.join(missing)}; {hint}")
    return data
