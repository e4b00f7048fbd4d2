"""The export sidecar ``vskip.json``: one dataclass, one reader that validates, one writer.

``vskip export`` writes it beside ``prefill.onnx``; compile, validate, bench and the
PyTorch backend read it for the family, the source model, the layer count and the
dimensions. A sidecar may come from anywhere with the graph, so the reader checks every
field and fails in one line; a hand-written one (``bench --sidecar``) may hold only the
fields its reader needs, which :meth:`Sidecar.require` asks for by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from .dtypes import DTYPES
from .errors import VskipError
from .files import read_json

SIDECAR = "vskip.json"
SIDECAR_FORMAT = "vskip-export"
SIDECAR_VERSION = 1
MAX_DIM = 2**24          # far above any real model's widths or layer count
MAX_SIDECAR_BYTES = 2**20

# The model dimensions the FLOPs formula and bench need, each a positive integer.
DIM_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size")
_POSITIVE = DIM_FIELDS + ("vocab_size", "position_rank", "opset")
# A sidecar without a dtype describes a float32 export: every vskip before typed exports
# wrote float32 only.


@dataclass(frozen=True)
class GraphEntry:
    """One exported graph: its file name and its input and output names, in order."""

    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Sidecar:
    family: str | None = None            # transformers model_type
    source: str | None = None            # checkpoint directory or tiny:<model_type>
    seed: int | None = None              # a tiny preset's weight seed
    num_layers: int | None = None
    hidden_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    vocab_size: int | None = None
    image_token_id: int | None = None
    position_rank: int | None = None     # 1: [B, S] positions; 3: M-RoPE [3, B, S]
    opset: int | None = None
    logits: str | None = None            # "last" or "all"
    dtype: str | None = None             # one of DTYPES; None reads as float32
    prefill: GraphEntry | None = None
    decode: GraphEntry | None = None
    vision: GraphEntry | None = None     # the vision encoder (image pixels -> image-token rows)
    embedding: str | None = None         # the token embedding table's file (safetensors)
    config: str | None = None            # the model's config.json, for the host functions
    eos_token_ids: tuple[int, ...] | None = None  # generation stops at any of these
    special_token_ids: tuple[int, ...] | None = None  # image, video, vision start/end, ... ids
    pad_token_id: int | None = None
    processor: tuple[str, ...] | None = None  # the processor's files (tokenizer, image processor, template)
    path: str = "the sidecar"            # where it was read from, for messages (not written)

    def require(self, names, hint: str = "re-export with `vskip export`") -> "Sidecar":
        """This sidecar, if it has every field in ``names``; else one line naming the missing ones."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise VskipError(f"{self.path}: the sidecar lacks {', '.join(missing)}; {hint}")
        return self

    def dims(self) -> dict:
        """The dimension fields that are set, as the FLOPs formula takes them."""
        return {n: getattr(self, n) for n in (*DIM_FIELDS, "vocab_size", "logits") if getattr(self, n) is not None}

    @property
    def float_type(self) -> str:
        """The export's floating type (``float32`` for sidecars older than typed exports)."""
        return self.dtype or "float32"

    def to_dict(self) -> dict:
        data: dict = {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "path" or value is None:
                continue
            data[f.name] = ({"file": value.file, "inputs": list(value.inputs), "outputs": list(value.outputs)}
                            if isinstance(value, GraphEntry) else value)
        return data

    def to_json(self) -> str:
        """The one writer: what ``vskip export`` puts in vskip.json."""
        return json.dumps(self.to_dict(), indent=2) + "\n"


def sidecar_path(graph_path: str | Path) -> Path:
    return Path(graph_path).parent / SIDECAR


def read_sidecar(graph_path: str | Path) -> Sidecar | None:
    """The sidecar beside ``graph_path``, checked; None if there is none."""
    path = sidecar_path(graph_path)
    if not path.exists() and not path.is_symlink():
        return None
    return load_sidecar_file(path)


def load_sidecar_file(path: str | Path) -> Sidecar:
    """A sidecar file named explicitly (``bench --sidecar``), checked."""
    return parse_sidecar(read_json(path, "sidecar", MAX_SIDECAR_BYTES), str(path))


def parse_sidecar(data, source: str) -> Sidecar:
    """The one reader: ``data`` (parsed JSON) as a :class:`Sidecar`, every field checked."""
    def fail(problem: str):
        raise VskipError(f"{source}: {problem}")

    if not isinstance(data, dict):
        fail(f"a sidecar must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(Sidecar)} - {"path"}
    unknown = [k for k in data if k not in known | {"format", "version"}]
    if unknown:
        fail(f"unknown sidecar field(s) {', '.join(repr(k)[:40] for k in unknown[:5])}; re-export with `vskip export`")
    if "format" in data and data["format"] != SIDECAR_FORMAT:
        fail(f"'format' must be {SIDECAR_FORMAT!r}: not a vskip export sidecar")
    if "version" in data and data["version"] != SIDECAR_VERSION:
        fail(f"sidecar version {str(data['version'])[:20]} is not supported; this vskip reads version "
             f"{SIDECAR_VERSION} (re-export with this vskip)")
    values: dict = {"path": source}
    for key in _POSITIVE:
        if key in data:
            if type(data[key]) is not int or not 0 < data[key] <= MAX_DIM:
                fail(f"'{key}' must be a positive integer, got {str(data[key])[:40]}")
            values[key] = data[key]
    for key in ("seed", "image_token_id", "pad_token_id"):
        if data.get(key) is not None:
            if type(data[key]) is not int or abs(data[key]) > 2**63:
                fail(f"'{key}' must be an integer")
            values[key] = data[key]
    for key in ("family", "source", "logits", "dtype"):
        if data.get(key) is not None:
            if not isinstance(data[key], str) or len(data[key]) > 4096:
                fail(f"'{key}' must be a string")
            values[key] = data[key]
    if values.get("logits") not in (None, "last", "all"):
        fail(f"'logits' must be \"last\" or \"all\", got {values['logits'][:40]!r}")
    if values.get("dtype") not in (None, *DTYPES):
        fail(f"'dtype' must be one of {', '.join(DTYPES)}, got {values['dtype'][:40]!r}")
    for key in ("prefill", "decode", "vision"):
        if data.get(key) is not None:
            values[key] = _graph_entry(data[key], f"'{key}'", fail)
    for key in ("embedding", "config"):
        if data.get(key) is not None:
            values[key] = _file_name(data[key], f"'{key}'", fail)
    for key in ("eos_token_ids", "special_token_ids"):
        if data.get(key) is not None:
            ids = data[key]
            if not (isinstance(ids, list) and len(ids) <= 64 and all(type(i) is int and 0 <= i < 2**31 for i in ids)):
                fail(f"'{key}' must be a list of token ids")
            values[key] = tuple(ids)
    if data.get("processor") is not None:
        names = data["processor"]
        if not isinstance(names, list) or len(names) > 64:
            fail("'processor' must be a list of file names")
        values["processor"] = tuple(_file_name(n, "'processor' entry", fail) for n in names)
    return Sidecar(**values)


def _file_name(value, where: str, fail) -> str:
    """A file beside the sidecar: a plain name, never a path that could lead elsewhere."""
    if not isinstance(value, str) or not value or len(value) > 255 or "/" in value or "\\" in value \
            or value in (".", "..") or "\x00" in value:
        fail(f"{where} must be a file name beside the sidecar, got {str(value)[:40]!r}")
    return value


def _graph_entry(value, where: str, fail) -> GraphEntry:
    if not isinstance(value, dict) or set(value) != {"file", "inputs", "outputs"}:
        fail(f"{where} must be an object with file, inputs and outputs")
    _file_name(value["file"], f"{where} file", fail)
    names = (value["inputs"], value["outputs"])
    if not isinstance(value["file"], str) or not all(
            isinstance(n, list) and all(isinstance(x, str) for x in n) for n in names):
        fail(f"{where}: file must be a string, inputs and outputs lists of names")
    return GraphEntry(value["file"], tuple(value["inputs"]), tuple(value["outputs"]))
