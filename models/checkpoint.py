"""What a checkpoint directory must be before transformers may load it.

``from_pretrained`` trusts its directory: it unpickles a ``pytorch_model.bin`` (or any file
``config.json``'s ``transformers_weights`` names), builds whatever the config declares (a
million layers, a hidden size of 10**9) before reading one weight, fills missing tensors
with random values and only warns, and stops with a traceback on a truncated file.
:func:`inspect_checkpoint` refuses all of that with one line, cheapest check first, reading
nothing but ``config.json`` and the safetensors headers (a few KiB per file):

1. ``config.json``: bounded JSON (:mod:`vskip_compile.core.files`), a supported ``model_type``,
   every size named in :data:`CONFIG_LIMITS` within its bound wherever it appears (text,
   vision and any other sub-config), no ``quantization_config``, no ``transformers_weights``.
2. The file list: no weight file in another format (:data:`FOREIGN_WEIGHT_PARTS`) beside the
   safetensors; either ``model.safetensors`` alone, or an index whose ``weight_map`` names
   plain file names, all present, and every ``*.safetensors`` of the directory named.
3. Every header parsed here (:func:`read_header`) by the rules the safetensors library
   applies, so that nothing it would refuse gets through: a bounded length, JSON, known
   dtypes, shapes of non-negative integers, offsets that cover the data exactly.
4. Memory: the tensors in the type they are loaded in (fp32 unless the export asks for
   fp16/bf16) must fit :func:`available_memory`.
5. The architecture, built on the meta device (no memory; bounded in time by step 1), must
   find every tensor it expects, with its shape, floating parameters from F16/BF16/F32/F64,
   and no tensor it does not expect (:func:`match_tensors`).

Checkpoint names are not the model's names. ``save_pretrained`` (transformers 5.23) writes
the original hub layout: Qwen2-VL's ``model.language_model.layers.0...`` is stored as
``model.layers.0...``, LLaVA's as ``language_model.model.layers.0...``; only Qwen3-VL and
SmolVLM store their module names. So names are mapped the way ``from_pretrained`` maps
them, with transformers' own conversion mapping and renaming calls (pinned with the
transformers version); a plain comparison with ``state_dict()`` would refuse five of
vskip's seven families. After loading, :func:`check_loading_info` checks transformers' own
report as well, so a conversion this module models differently cannot pass unseen.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vskip_compile.core.dtypes import numpy_dtype
from vskip_compile.core.errors import VskipError
from vskip_compile.core.files import (
    MAX_JSON_BYTES,
    available_memory,
    escape,
    input_file,
    open_input,
    parse_json,
    read_json,
    read_text,
)

from .family import Family, get_family

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

#: The safetensors library refuses longer headers ("header too large"): so do we.
MAX_HEADER_BYTES = 100_000_000
#: All headers together: a real checkpoint's are a few MiB even with hundreds of shards.
MAX_TOTAL_HEADER_BYTES = 256 * 2**20
#: The index of a 600B-parameter MoE is about 10 MiB.
MAX_INDEX_BYTES = 64 * 2**20

#: safetensors dtype -> (bytes per element, kind). Sub-byte types (F4, F6_*, F8_E8M0) are
#: packed quantization formats vskip does not read.
DTYPES = {
    "F64": (8, "float"), "F32": (4, "float"), "F16": (2, "float"), "BF16": (2, "float"),
    "F8_E4M3": (1, "float8"), "F8_E4M3FNUZ": (1, "float8"), "F8_E5M2": (1, "float8"),
    "F8_E5M2FNUZ": (1, "float8"),
    "I64": (8, "int"), "I32": (4, "int"), "I16": (2, "int"), "I8": (1, "int"),
    "U64": (8, "int"), "U32": (4, "int"), "U16": (2, "int"), "U8": (1, "int"),
    "BOOL": (1, "bool"), "C64": (8, "complex"),
}
FLOAT_WEIGHT_DTYPES = ("F16", "BF16", "F32", "F64")

#: Name parts (after the first dot) of weight files in other formats: torch pickles (.bin,
#: .pt, .pth, .ckpt), plain pickles, Keras/TF (.h5, .keras, TF1 .ckpt.index/.ckpt.data-*)
#: and Flax (.msgpack). Any part counts, so "pytorch_model.bin.index.json" does too.
FOREIGN_WEIGHT_PARTS = frozenset({"bin", "pt", "pth", "ckpt", "pkl", "pickle", "joblib", "h5", "hdf5", "keras",
                                  "msgpack"})

#: Largest accepted value of each config size, wherever it appears in config.json; the
#: smallest is 1. Each is several times the largest released model's (Llama-3 405B:
#: 126 layers, hidden 16384, FFN 53248, 128 heads; Gemma-3: vocab 262144) and bounds what
#: building the model may cost: at these limits the meta-device build takes about 2 s.
CONFIG_LIMITS = {
    "num_hidden_layers": 1024, "num_layers": 1024, "depth": 1024,               # depth: Qwen-VL vision
    "hidden_size": 65536, "embed_dim": 65536, "out_hidden_size": 65536, "projection_dim": 65536,
    "intermediate_size": 2**20, "head_dim": 4096,
    "num_attention_heads": 1024, "num_key_value_heads": 1024, "num_heads": 1024,
    "vocab_size": 2**22,
    "image_size": 16384, "patch_size": 16384,
    "max_position_embeddings": 2**24,                                            # Llama-4: 10M
}

_SHOWN = 3  # names listed per problem in a message


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a safetensors header declares it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path

    @property
    def numel(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count


@dataclass
class Checkpoint:
    """A checked checkpoint directory: what ``from_pretrained`` will read, and its config."""

    path: Path
    family: Family
    config: object                  # the transformers config built from config.json
    files: list[Path]
    tensors: dict[str, TensorInfo]


def inspect_checkpoint(path: str | os.PathLike, dtype: str = "float32") -> Checkpoint:
    """Check the checkpoint directory ``path`` (see the module docstring), to be loaded in
    ``dtype`` (a sidecar dtype name: its floating tensors take that type); one-line errors."""
    path = Path(path)
    if not path.exists():
        raise VskipError(f"{path}: no such file or directory (expected a checkpoint directory or 'tiny:<model_type>')")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise VskipError(f"{path}: not a transformers checkpoint directory (no config.json)")
    raw = read_config(path / "config.json")
    model_type = raw.get("model_type")
    if not isinstance(model_type, str):
        raise VskipError(f"{path / 'config.json'}: has no 'model_type'")
    family = get_family(model_type)
    check_config(raw, path / "config.json")

    files = weight_files(path)
    tensors = read_headers(files)
    width = numpy_dtype(dtype).itemsize  # a floating tensor's bytes once loaded
    check_memory(sum(t.numel * (width if DTYPES[t.dtype][1] == "float" else DTYPES[t.dtype][0])
                     for t in tensors.values()), path, f"its {len(tensors)} tensors", dtype)
    if (path / "generation_config.json").exists():  # from_pretrained reads it too
        read_json(path / "generation_config.json", "generation config")

    cls = family.model_class()
    config = _build_config(cls, path)
    check_config(config.to_dict(), path / "config.json")  # sizes the config class derives
    model = build_on_meta(cls, config, path)
    match_tensors(model, tensors, path)
    check_memory(model_bytes(model, width), path, f"the {cls.__name__} it describes", dtype)
    return Checkpoint(path, family, config, files, tensors)


# ------------------------------------------------------------------------------ config

def read_config(path: Path) -> dict:
    text = read_text(path, "config.json", MAX_JSON_BYTES)
    try:
        raw = parse_json(text, str(path), "config.json")
    except VskipError as exc:
        detail = str(exc).removeprefix(f"{path}: ")
        raise VskipError(f"{path}: not valid JSON: {detail}") from None
    if not isinstance(raw, dict):
        raise VskipError(f"{path}: not valid JSON for a config: a JSON object is expected")
    return raw


def check_config(config: dict, where: Path) -> None:
    """Every size of CONFIG_LIMITS in range, and nothing that redirects or changes loading."""
    quantization = config.get("quantization_config")
    if quantization is not None:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else None
        method = escape(str(method or "quantization_config"))[:40]
        raise VskipError(f"{where}: a quantized checkpoint ({method}); vskip loads unquantized "
                         f"{'/'.join(FLOAT_WEIGHT_DTYPES)} weights")
    if config.get("transformers_weights") is not None:
        raise VskipError(f"{where}: 'transformers_weights' would point transformers at "
                         f"{escape(str(config['transformers_weights'])[:80])!r} instead of the checked safetensors "
                         f"files; remove the key (vskip loads {SINGLE_FILE} or the shards of {INDEX_FILE})")

    def walk(node, trail: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                name = f"{trail}.{key}" if trail else str(key)
                if key in CONFIG_LIMITS:
                    _check_size(value, name, CONFIG_LIMITS[key], where)
                walk(value, name)
        elif isinstance(node, list):
            for item in node:
                walk(item, trail)

    walk(config, "")


def _check_size(value, name: str, limit: int, where: Path) -> None:
    for item in value if isinstance(value, list) else [value]:
        if item is None:  # "use the default"
            continue
        if type(item) is not int:
            raise VskipError(f"{where}: {escape(name)} is {escape(repr(item)[:40])}, not a whole number")
        if not 1 <= item <= limit:
            raise VskipError(f"{where}: {escape(name)} is {item}, outside 1..{limit}; no real model is that size, "
                             "and vskip refuses it before building anything")


def _build_config(cls, path: Path):
    try:
        return cls.config_class.from_pretrained(path, local_files_only=True)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, OSError) as exc:
        raise VskipError(f"{path / 'config.json'}: transformers cannot read it as a "
                         f"{cls.config_class.__name__}: {_first_line(exc)}") from None


# ------------------------------------------------------------------------------- files

def weight_files(directory: Path) -> list[Path]:
    """The safetensors files ``from_pretrained`` will read.

    Mirrors transformers' choice (``model.safetensors`` first, else the index) and refuses
    every case where it would read something else, or silently not read a file.
    """
    entries = sorted(os.listdir(directory))  # transformers reads only the top level
    for name in entries:
        if FOREIGN_WEIGHT_PARTS.intersection(name.lower().split(".")[1:]) and not (directory / name).is_dir():
            raise VskipError(f"{directory / escape(name)}: a weight file in a format other than safetensors "
                             "(pickle-based files can run code when loaded); vskip loads safetensors only: delete or "
                             "move it")
    present = {name for name in entries if name.endswith(".safetensors") and not (directory / name).is_dir()}

    if os.path.lexists(directory / INDEX_FILE):
        if SINGLE_FILE in present:
            raise VskipError(f"{directory}: holds both {SINGLE_FILE} and {INDEX_FILE}; transformers would load "
                             f"{SINGLE_FILE} alone and ignore the shards: remove one")
        weight_map = _read_index(directory / INDEX_FILE)
        named = sorted(set(weight_map.values()))
        for name in named:
            if not os.path.lexists(directory / name):
                raise VskipError(f"{directory / INDEX_FILE}: names the shard {escape(name)!r}, which is not in "
                                 f"{directory}; the checkpoint is incomplete")
            input_file(directory / name, "safetensors shard")
        unnamed = sorted(present - set(named))
        if unnamed:
            raise VskipError(f"{directory / escape(unnamed[0])}: not named in {INDEX_FILE}, so transformers would not "
                             f"load it{_more(unnamed)}: add it to the index or move it")
        return [directory / name for name in named]

    if SINGLE_FILE not in present:
        raise VskipError(f"{directory}: no *.safetensors weights next to config.json (vskip loads {SINGLE_FILE}, or "
                         f"the shards {INDEX_FILE} names)")
    others = sorted(present - {SINGLE_FILE})
    if others:
        raise VskipError(f"{directory / escape(others[0])}: beside {SINGLE_FILE} without an {INDEX_FILE}, transformers "
                         f"would not load it{_more(others)}: move it, or shard the checkpoint with an index")
    input_file(directory / SINGLE_FILE, "safetensors file")
    return [directory / SINGLE_FILE]


def _read_index(path: Path) -> dict[str, str]:
    index = read_json(path, "safetensors index", MAX_INDEX_BYTES)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise VskipError(f"{path}: has no 'weight_map' object naming each tensor's shard")
    for tensor, name in weight_map.items():
        if not isinstance(name, str) or not _plain_shard_name(name):
            raise VskipError(f"{path}: tensor {escape(tensor)!r} is mapped to {escape(repr(name)[:80])}; a shard must "
                             "be a plain file name ending in .safetensors in the checkpoint directory (no '/', '\\' "
                             "or '..')")
    return weight_map


def _plain_shard_name(name: str) -> bool:
    return name.endswith(".safetensors") and not name.startswith(".") and not any(c in name for c in "/\\\x00")


# ----------------------------------------------------------------------------- headers

def read_headers(files: list[Path]) -> dict[str, TensorInfo]:
    """Every tensor of ``files``; a name in two files is refused.

    The index's per-tensor entries are not compared with the shards: transformers loads
    every tensor of every shard the index names, whatever the entries say, and
    :func:`match_tensors` compares what the shards hold.
    """
    tensors: dict[str, TensorInfo] = {}
    budget = MAX_TOTAL_HEADER_BYTES
    for path in files:
        header, length = read_header(path, budget)
        budget -= length
        for name, info in header.items():
            if name in tensors:
                raise VskipError(f"{path}: tensor {escape(name)!r} is also in {tensors[name].file.name}; transformers "
                                 "would keep one of the two silently")
            tensors[name] = info
    return tensors


def read_header(path: Path, budget: int = MAX_HEADER_BYTES) -> tuple[dict[str, TensorInfo], int]:
    """The tensors a safetensors file declares, and its header length; the data is not read.

    Layout: an unsigned little-endian 8-byte header length N, N bytes of JSON (an object of
    name -> {dtype, shape, data_offsets [begin, end]} plus an optional ``__metadata__`` of
    strings), then the data. Offsets count from the end of the header and must cover the
    data exactly, tensor after tensor, as the safetensors library requires.
    """
    with open_input(path, "safetensors file") as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise VskipError(f"{path}: {size} bytes, too short for a safetensors file (an empty or truncated file)")
        length = int.from_bytes(prefix, "little")
        limit = min(MAX_HEADER_BYTES, budget)
        if length > limit:
            raise VskipError(f"{path}: not a safetensors file: its header claims {length} bytes (at most {limit})")
        if length > size - 8:
            raise VskipError(f"{path}: truncated or not a safetensors file: its header claims {length} bytes, but "
                             f"only {size - 8} follow")
        raw = handle.read(length)
    if len(raw) != length:
        raise VskipError(f"{path}: changed while being read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise VskipError(f"{path}: not a safetensors file: its header is not UTF-8 JSON") from None
    if not text.startswith("{"):
        raise VskipError(f"{path}: not a safetensors file: its header is not a JSON object")
    header = parse_json(text, str(path), "safetensors header")
    if not isinstance(header, dict):
        raise VskipError(f"{path}: not a safetensors file: its header is not a JSON object")

    data_bytes = size - 8 - length
    tensors: dict[str, TensorInfo] = {}
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise VskipError(f"{path}: its __metadata__ must map names to strings")
            continue
        info, begin, end = _tensor_entry(path, name, entry)
        if end > data_bytes:
            raise VskipError(f"{path}: truncated: tensor {escape(name)!r} ends at data byte {end}, but the file holds "
                             f"{data_bytes} bytes of data")
        tensors[name] = info
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            problem = "overlaps the tensor before it" if begin < position else f"leaves a gap at data byte {position}"
            raise VskipError(f"{path}: tensor {escape(name)!r} {problem}; not a valid safetensors file")
        position = end
    if position != data_bytes:
        raise VskipError(f"{path}: {data_bytes - position} bytes after the last tensor; not a valid safetensors file")
    return tensors, length


def _tensor_entry(path: Path, name: str, entry) -> tuple[TensorInfo, int, int]:
    where = f"{path}: tensor {escape(name)!r}"
    if not isinstance(entry, dict):
        raise VskipError(f"{where}: its header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise VskipError(f"{where}: unknown dtype {escape(repr(dtype)[:40])} (vskip reads {', '.join(DTYPES)})")
    if not isinstance(shape, list) or len(shape) > 64 or not all(type(d) is int and d >= 0 for d in shape):
        raise VskipError(f"{where}: the shape must be a list of non-negative integers, got {escape(repr(shape)[:60])}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise VskipError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, got "
                         f"{escape(repr(offsets)[:60])}")
    info = TensorInfo(name, dtype, tuple(shape), path)
    declared = info.numel * DTYPES[dtype][0]
    if offsets[1] - offsets[0] != declared:
        raise VskipError(f"{where}: {dtype} {list(shape)} is {declared} bytes, but its data_offsets span "
                         f"{offsets[1] - offsets[0]}")
    return info, offsets[0], offsets[1]


# ----------------------------------------------------------------------- architecture

def build_on_meta(cls, config, path: Path):
    """``cls(config)`` on the meta device, in the contexts ``from_pretrained`` builds it in."""
    import torch
    from transformers.utils.generic import ContextManagers

    try:
        with ContextManagers(cls.get_init_context(torch.float32, False, False, None)):
            return cls(config)
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError,
            ZeroDivisionError) as exc:
        # Raised by the model's constructor on values the config class let through
        raise VskipError(f"{path / 'config.json'}: transformers cannot build {cls.__name__} from it: "
                         f"{_first_line(exc)}") from None


def match_tensors(model, tensors: dict[str, TensorInfo], path: Path) -> None:
    """Refuse unless the checkpoint holds exactly what ``model`` (on meta) loads.

    Each checkpoint name is mapped as ``convert_and_load_state_dict_in_model`` maps it
    (transformers 5.23: every renaming, then at most one converter, the base-model prefix
    added or removed; the unrenamed name when only it matches). Tied parameters load from
    whichever member of their group the checkpoint holds; names transformers ignores on
    load (``_keys_to_ignore_on_load_*``, old ``rotary_emb.inv_freq`` / ``position_ids``
    buffers) are ignored here too. Tensors a converter merges or splits (none in vskip's
    families) cannot be compared one to one: transformers checks their result's shape, and
    :func:`check_loading_info` reads that check.
    """
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    expected = model.state_dict()
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    by_pattern = {pattern: converter for converter in converters for pattern in converter.source_patterns}
    prefix = model.base_model_prefix

    loaded: dict[str, str] = {}   # model name -> checkpoint name
    unexpected, misshapen, wrong_dtype, twice = [], [], [], []
    for name in sorted(tensors):
        target, pattern = rename_source_key(name, renamings, converters, prefix, expected)
        if target not in expected and name in expected:
            target, pattern = rename_source_key(name, [], [], prefix, expected)
        if target not in expected:
            unexpected.append((target, name))
            continue
        if pattern is not None:
            converter = by_pattern[pattern]
            for other in converter.target_patterns:
                loaded.setdefault(target.replace(converter.target_patterns[0], other), name)
            continue
        if target in loaded:
            twice.append(f"{escape(loaded[target])} and {escape(name)} -> {escape(target)}")
            continue
        loaded[target] = name
        info, want = tensors[name], expected[target]
        if tuple(want.shape) != info.shape:
            misshapen.append(f"{escape(name)} is {list(info.shape)}, expected {list(want.shape)}")
        elif want.is_floating_point() != (info.dtype in FLOAT_WEIGHT_DTYPES) or (
                not want.is_floating_point() and DTYPES[info.dtype][1] not in ("int", "bool")):
            need = "/".join(FLOAT_WEIGHT_DTYPES) if want.is_floating_point() else f"an integer type ({want.dtype})"
            wrong_dtype.append(f"{escape(name)} is {info.dtype}, needs {need}")

    missing = set(expected) - set(loaded)
    groups: dict[str, set[str]] = {}
    for target, source in getattr(model, "all_tied_weights_keys", {}).items():
        groups.setdefault(source, {source}).add(target)
    for members in groups.values():
        if members - missing:
            missing -= members
    ignore_missing = _patterns(getattr(model, "_keys_to_ignore_on_load_missing", None) or ())
    missing = sorted(k for k in missing if not (ignore_missing and ignore_missing.search(k)))
    ignore_unexpected = _patterns(_ignored_unexpected(model))
    unexpected = sorted(name for target, name in unexpected
                        if not (ignore_unexpected and ignore_unexpected.search(target)))

    problems = [_listing(len(missing), "missing", [escape(k) for k in missing]),
                _listing(len(unexpected), "unexpected", [escape(k) for k in unexpected]),
                _listing(len(misshapen), "of the wrong shape", misshapen),
                _listing(len(wrong_dtype), "of the wrong dtype", wrong_dtype),
                _listing(len(twice), "loaded twice", twice)]
    problems = [p for p in problems if p]
    if problems:
        raise VskipError(f"{path}: the checkpoint does not match {type(model).__name__}: {'; '.join(problems)}")


def _ignored_unexpected(model) -> set[str]:
    """The patterns ``_adjust_missing_and_unexpected_keys`` drops from unexpected keys."""
    patterns = set(getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    buffers = [name for name, _ in model.named_buffers()]
    if any(name.endswith("rotary_emb.inv_freq") for name in buffers):
        patterns.add(r"rotary_emb\.inv_freq")
    if any(name.endswith("position_ids") for name in buffers):
        patterns.add(r"(^|\.)position_ids$")
    return patterns


def _patterns(patterns) -> re.Pattern | None:
    patterns = list(patterns)
    return re.compile("|".join(f"({p})" for p in patterns)) if patterns else None


def model_bytes(model, width: int = 4) -> int:
    """Bytes ``model`` takes once loaded with ``width``-byte floats (4: fp32): parameters
    (tied ones once) and buffers."""
    tied = set(getattr(model, "all_tied_weights_keys", {}))
    total = 0
    for name, tensor in model.named_parameters():
        if name not in tied:
            total += tensor.numel() * (width if tensor.is_floating_point() else tensor.element_size())
    for _, tensor in model.named_buffers():
        total += tensor.numel() * tensor.element_size()
    return total


def check_memory(needed: int, path: Path, what: str, dtype: str = "float32") -> None:
    available = available_memory()
    if needed > available:
        hint = "" if dtype != "float32" else " (--dtype bfloat16 or float16 loads it in half the memory)"
        raise VskipError(f"{path}: loading {what} in {dtype} needs {_size(needed)} of memory, but {_size(available)} "
                         f"is available{hint}")


def check_loading_info(info: dict, path: Path, model_name: str) -> None:
    """Refuse what ``from_pretrained(..., output_loading_info=True)`` reports as not loaded."""
    mismatched = sorted(info.get("mismatched_keys") or ())
    problems = [
        _listing(len(info.get("missing_keys") or ()), "missing", sorted(map(escape, info.get("missing_keys") or ()))),
        _listing(len(info.get("unexpected_keys") or ()), "unexpected",
                 sorted(map(escape, info.get("unexpected_keys") or ()))),
        _listing(len(mismatched), "of the wrong shape",
                 [f"{escape(m[0])} is {list(m[1])}, expected {list(m[2])}" for m in mismatched]),
    ]
    errors = [_first_line(e) for e in info.get("error_msgs") or ()]
    if errors:
        problems.append(f"{len(errors)} load error{'s' if len(errors) != 1 else ''} ({errors[0]})")
    problems = [p for p in problems if p]
    if problems:
        raise VskipError(f"{path}: transformers could not load every tensor of {model_name}: {'; '.join(problems)}")


# ---------------------------------------------------------------------------- messages

def _listing(count: int, label: str, items: list[str]) -> str:
    if not count:
        return ""
    shown = ", ".join(items[:_SHOWN])
    more = f" and {count - _SHOWN} more" if count > _SHOWN else ""
    return f"{count} tensor{'s' if count != 1 else ''} {label} ({shown}{more})"


def _more(names: list[str]) -> str:
    return f" (and {len(names) - 1} more .safetensors files)" if len(names) > 1 else ""


def _size(count: int) -> str:
    if count >= 2**30:
        return f"{count / 2**30:.1f} GiB"
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count} bytes"


def _first_line(exc: object) -> str:
    lines = str(exc).strip().splitlines()
    return escape(lines[0]) if lines else type(exc).__name__
