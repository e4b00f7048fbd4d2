"""The prompt a benchmark times: its visual-row mask, bounded, and random feeds for it.

The mask comes from the caller (``vskip bench --rows --visual-rows``, read by
:func:`vskip_compile.core.visual_rows.workload`); :func:`default_visual` is the prompt
bench describes when none is given: 16 text rows, one 1024-row image, 48 text rows.
Feeds are made over a backend session's :class:`~vskip_compile.backends.TensorSpec`
list, so every backend's sessions are fed the same arrays.
"""

from __future__ import annotations

import numpy as np

from ..backends import TensorSpec
from ..core.errors import VskipError
from ..core.visual_rows import ROW_INPUTS, row_feeds, workload, workload_fields

# Bounds on a benchmark's size, checked before anything is allocated: the prompt's rows
# (its embeddings alone are rows x hidden floats) and the timed repetitions.
MAX_ROWS = 2**17
MAX_ROUNDS = 10_000


def default_visual() -> np.ndarray:
    """The default prompt: 16 text + 1024 visual + 48 text rows (1088)."""
    return workload(None, None, MAX_ROWS)


def check_visual(visual) -> np.ndarray:
    """``visual`` if it is a prompt bench can time: a 1-D boolean mask of 1 to
    :data:`MAX_ROWS` rows whose last row is text (a question follows the image, and
    ``freeze_scope`` ``prefix_through_visual`` needs a row after the last visual one)."""
    if not isinstance(visual, np.ndarray) or visual.dtype != np.bool_ or visual.ndim != 1:
        shown = (f"{visual.dtype} array of shape {visual.shape}" if isinstance(visual, np.ndarray)
                 else type(visual).__name__)
        raise VskipError(f"the visual-row mask must be a 1-D numpy bool array (one entry per prompt row), "
                         f"got {shown}")
    if not 1 <= visual.size <= MAX_ROWS:
        raise VskipError(f"the prompt must have 1-{MAX_ROWS} rows, got {visual.size}")
    if visual[-1]:
        raise VskipError(f"the prompt must end with a text row after the image; row {visual.size - 1} is visual")
    return visual


def describe(visual: np.ndarray) -> str:
    """'16 text + 1024 visual + 48 text': the runs of text and visual rows, in order."""
    if not visual.any():
        return f"{visual.size} text + 0 visual + 0 text"
    edges = np.flatnonzero(np.diff(visual.astype(np.int8))) + 1
    bounds = [0, *edges.tolist(), int(visual.size)]
    parts = [f"{b - a} {'visual' if visual[a] else 'text'}" for a, b in zip(bounds, bounds[1:])]
    if not visual[0]:
        return " + ".join(parts)
    return " + ".join(["0 text", *parts])


def record(visual: np.ndarray) -> dict:
    """The workload fields of a result."""
    return {**workload_fields(visual), "layout": describe(visual)}


def synthesize_feeds(inputs: list[TensorSpec], visual: np.ndarray, hidden_size: int,
                     seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Random prefill feeds for a batch of one over the rows of ``visual``.

    Returns the feeds and a note per input saying what it holds (for the report). The
    row inputs of compiled graphs are left out (see :func:`config_feeds`); any other
    input this cannot make is refused by name. An input whose dtype the backend does not
    say gets the type a decoder export gives it.
    """
    rng = np.random.default_rng(seed)
    length = int(visual.shape[0])
    positions = np.arange(length, dtype=np.int64)
    feeds, notes, unknown = {}, {}, []
    for spec in inputs:
        name, rank = spec.name, len(spec.shape)
        if name in ROW_INPUTS:
            continue
        if name == "inputs_embeds":
            feeds[name] = rng.standard_normal((1, length, hidden_size)).astype(spec.dtype or np.float32)
            notes[name] = f"standard normal [1, {length}, {hidden_size}]"
        elif name == "attention_mask":
            feeds[name] = np.ones((1, length), dtype=spec.dtype or np.int64)
            notes[name] = "ones"
        elif name == "position_ids" and rank in (2, 3):
            # Text-style positions on every M-RoPE axis: the rotation costs the same
            # whatever the values, and a benchmark needs no image grid.
            shape = (1, length) if rank == 2 else (spec.shape[0] if isinstance(spec.shape[0], int) else 3, 1, length)
            feeds[name] = np.broadcast_to(positions, shape).astype(spec.dtype or np.int64)
            notes[name] = f"arange {list(shape)}"
        elif name == "visual_pos_masks":  # Qwen3-VL: where DeepStack features are added
            feeds[name] = visual[None, :].astype(spec.dtype or np.bool_)
            notes[name] = "the visual rows"
        elif name == "deepstack_visual_embeds" and rank == 3 and isinstance(spec.shape[0], int):
            shape = (spec.shape[0], int(visual.sum()), hidden_size)
            feeds[name] = rng.standard_normal(shape).astype(spec.dtype or np.float32)
            notes[name] = f"standard normal [{shape[0]}, {shape[1]}, {hidden_size}]"
        elif name in ("full_attention_mask", "sliding_attention_mask") and rank == 4:
            # Gemma3's prepared masks. The sliding window is not in the sidecar; a dense
            # masked attention costs the same whatever the mask holds, so causal stands in.
            feeds[name] = np.tril(np.ones((length, length), dtype=bool))[None, None]
            notes[name] = "causal (no sliding window: dense attention costs the same)"
        else:
            unknown.append(f"{name} {list(spec.shape)}")
    if unknown:
        raise VskipError(f"cannot synthesise the graph input(s) {', '.join(unknown)}; bench makes "
                         "inputs_embeds, attention_mask, position_ids and the Qwen3-VL / Gemma3 extras")
    return feeds, notes


def config_feeds(inputs: list[TensorSpec], base: dict[str, np.ndarray], visual: np.ndarray,
                 where: str = "the graph") -> dict[str, np.ndarray]:
    """Exactly one session's feeds: the shared random inputs plus its row inputs.

    A graph that takes an input the vanilla graph does not is refused: its timing would
    not be comparable.
    """
    missing = [i.name for i in inputs if i.name not in ROW_INPUTS and i.name not in base]
    if missing:
        raise VskipError(f"{where}: takes inputs the vanilla graph does not ({', '.join(missing)})")
    feeds = {i.name: base[i.name] for i in inputs if i.name not in ROW_INPUTS}
    feeds.update(row_feeds(visual, [i.name for i in inputs if i.name in ROW_INPUTS]))
    return feeds
