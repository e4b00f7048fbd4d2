"""Host-side visual rows: from token ids or ranges to the compiled graph's row inputs.

A compiled graph takes the rows that stay live in skipping layers, never a boolean mask
(TensorRT cannot build boolean indexing with dynamic shapes):

- ``vskip_text_rows``: every row that is not visual, ascending;
- ``vskip_suffix_rows`` (only for freeze layers with ``prefix_through_visual``): the rows
  after the last visual row.

The rows are shared by every batch row: a batch must have its images at the same
positions (which left padding by equal amounts keeps).
"""

from __future__ import annotations

import re

import numpy as np

from .errors import VskipError
from .plan import Plan, Rows

TEXT_ROWS = "vskip_text_rows"
SUFFIX_ROWS = "vskip_suffix_rows"
ROW_INPUTS = (TEXT_ROWS, SUFFIX_ROWS)
# The graph input that carries each row set a skipping layer keeps live.
ROW_INPUT = {Rows.TEXT: TEXT_ROWS, Rows.SUFFIX: SUFFIX_ROWS}


def row_inputs(plan: Plan) -> list[str]:
    """The row inputs a graph compiled with ``plan`` takes: ``vskip_text_rows`` always (an
    empty plan's graph takes it too, so every compiled graph is fed alike), and
    ``vskip_suffix_rows`` when some layer keeps only the suffix live."""
    kinds = {kind for layer in range(plan.num_layers) for kind in plan.live_rows(layer)}
    return [TEXT_ROWS] + ([SUFFIX_ROWS] if Rows.SUFFIX in kinds else [])


def live_mask(kind: Rows, visual: np.ndarray) -> np.ndarray:
    """The rows of ``kind`` for the visual-row mask ``visual`` [..., S], as a mask of the same shape."""
    visual = np.asarray(visual, dtype=bool)
    if kind is Rows.ALL:
        return np.ones_like(visual)
    if kind is Rows.TEXT:
        return ~visual
    positions = np.arange(visual.shape[-1])
    last = np.where(visual, positions, -1).max(axis=-1, keepdims=True)
    return positions > last

_RANGE = re.compile(r"^\s*(\d{1,12})\s*:\s*(\d{1,12})\s*$")  # bounded: no 5000-digit ints


def parse_ranges(text: str, sequence_length: int) -> np.ndarray:
    """'5:21,30:46' (half-open, like Python slices) -> bool mask [S] of visual rows."""
    mask = np.zeros(sequence_length, dtype=bool)
    if not text.strip():
        raise VskipError("--visual-rows is empty: give ranges like 5:21,30:46")
    for part in text.split(","):
        match = _RANGE.match(part)
        if not match:
            shown = part.strip() if len(part.strip()) <= 40 else part.strip()[:37] + "..."
            raise VskipError(f"--visual-rows: {shown!r} is not a range START:END of row numbers (e.g. 5:21)")
        start, end = int(match.group(1)), int(match.group(2))
        if start >= end:
            raise VskipError(f"--visual-rows: range {start}:{end} is empty (END must be greater than START)")
        if end > sequence_length:
            raise VskipError(f"--visual-rows: range {start}:{end} is out of range for {sequence_length} rows")
        if mask[start:end].any():
            raise VskipError(f"--visual-rows: range {start}:{end} overlaps another range")
        mask[start:end] = True
    return mask


def format_ranges(visual: np.ndarray) -> str:
    """The visual-row mask [S] as the ranges :func:`parse_ranges` reads: '5:21,30:46' ('' for none)."""
    padded = np.concatenate([[False], np.asarray(visual, dtype=bool), [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return ",".join(f"{a}:{b}" for a, b in zip(edges[::2], edges[1::2]))


# The prompt a FLOPs count or a benchmark describes when none is given: 1088 rows =
# 16 text rows (a chat template's header), one 1024-token image, then 48 text rows.
DEFAULT_ROWS = 1088
_DEFAULT_IMAGE = (16, 1040)
DEFAULT_VISUAL_RANGES = f"{_DEFAULT_IMAGE[0]}:{_DEFAULT_IMAGE[1]}"


def workload(rows: int | None, visual_ranges: str | None, max_rows: int) -> np.ndarray:
    """The visual-row mask of a described prompt (``--rows`` S, ``--visual-rows`` ranges),
    bounded by ``max_rows`` before anything is allocated. At least one text row must follow
    the last visual row, as a question follows an image."""
    rows = DEFAULT_ROWS if rows is None else rows
    if type(rows) is not int or not 1 <= rows <= max_rows:
        raise VskipError(f"--rows must be a row count in 1-{max_rows}, got {rows}")
    if visual_ranges is None and rows <= _DEFAULT_IMAGE[1]:
        raise VskipError(f"the default --visual-rows {DEFAULT_VISUAL_RANGES} does not fit --rows {rows}; "
                         "give --visual-rows too")
    visual = parse_ranges(DEFAULT_VISUAL_RANGES if visual_ranges is None else visual_ranges, rows)
    if visual[-1]:
        raise VskipError(f"--visual-rows: the prompt must end with a text row after the image; row {rows - 1} "
                         "is visual (lower the last range's END or raise --rows)")
    return visual


def workload_fields(visual: np.ndarray) -> dict:
    """A prompt's visual-row mask as reports record it: rows, visual and text counts, ranges."""
    return {"sequence_length": int(visual.size), "visual_rows": int(visual.sum()),
            "text_rows": int(visual.size - visual.sum()), "visual_ranges": format_ranges(visual)}


def visual_mask(input_ids: np.ndarray, image_token_id: int, span: bool = False) -> np.ndarray:
    """Visual rows of each prompt, bool [B, S]: exactly the image-token rows, or with
    ``span`` every row from the first to the last image token (OpSkip's choice for
    Qwen2.5-VL). ``input_ids`` is [S] or [B, S]."""
    ids = np.atleast_2d(np.asarray(input_ids))
    rows = ids == image_token_id
    if span:
        positions = np.arange(ids.shape[1])
        for b in range(ids.shape[0]):
            where = positions[rows[b]]
            if where.size:
                rows[b, where.min():where.max() + 1] = True
    return rows


def visual_rows_from_ids(input_ids: np.ndarray, image_token_id: int, span: bool = False) -> np.ndarray:
    """The visual rows (:func:`visual_mask`) a batch shares, bool [S]; every batch row must
    have the same ones."""
    return shared_rows(visual_mask(input_ids, image_token_id, span))


def shared_rows(rows: np.ndarray) -> np.ndarray:
    """The one visual-row mask [S] of a batch's masks [B, S], which must all be equal."""
    if (rows != rows[:1]).any():
        raise VskipError("the visual rows differ between batch rows; a compiled graph shares one row set "
                         "per batch: align the images (e.g. equal left padding) or run the rows separately")
    return rows[0]


def row_feeds(visual: np.ndarray, names: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
    """The row inputs ``names`` (a compiled graph's) for the visual-row mask ``visual`` [S]."""
    visual = np.asarray(visual, dtype=bool)
    kinds = {name: kind for kind, name in ROW_INPUT.items()}
    feeds = {}
    for name in names:
        if name not in kinds:
            raise ValueError(f"unknown row input {name}")
        rows = np.flatnonzero(live_mask(kinds[name], visual)).astype(np.int64)
        if rows.size == 0 and name == TEXT_ROWS:
            raise VskipError("every row is visual: at least one text row must be left to update")
        if rows.size == 0:
            raise VskipError("the prompt ends with a visual row: freeze_scope prefix_through_visual "
                             "needs at least one text row after the last visual row")
        feeds[name] = rows
    return feeds


def sequence_length(feeds: dict) -> int:
    """The prompt length of a decoder's feeds."""
    for name, axis in (("inputs_embeds", 1), ("attention_mask", 1), ("input_ids", 1)):
        if name in feeds and np.ndim(feeds[name]) > axis:
            return int(np.shape(feeds[name])[axis])
    raise VskipError("cannot tell the sequence length: the feeds have no inputs_embeds or attention_mask")


def check_row_feeds(rows: dict[str, np.ndarray], length: int) -> None:
    """Row inputs fed to a compiled graph directly must be what :func:`row_feeds` would give:
    1-D integer rows, ascending, unique, inside the sequence, at least one of them.

    A graph cannot check this itself: Gather wraps -1 to the last row, and ScatterND with
    a duplicated row writes one of two values.
    """
    for name, value in rows.items():
        value = np.asarray(value)
        if value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
            raise VskipError(f"{name}: must be a 1-D integer array of row numbers, got {value.dtype} "
                             f"with shape {value.shape}")
        if value.size == 0:
            raise VskipError(f"{name}: is empty; at least one text row must be left to update")
        if value.min() < 0 or value.max() >= length:
            raise VskipError(f"{name}: rows must be in 0-{length - 1} for a sequence of {length}, "
                             f"got {int(value.min())}..{int(value.max())}")
        if value.size > 1 and not (np.diff(value) > 0).all():
            raise VskipError(f"{name}: rows must be ascending and unique")
    if SUFFIX_ROWS in rows and TEXT_ROWS in rows:
        text, suffix = np.asarray(rows[TEXT_ROWS]), np.asarray(rows[SUFFIX_ROWS])
        if not np.isin(suffix, text).all() or suffix[-1] != length - 1 or suffix.size != suffix[-1] - suffix[0] + 1:
            raise VskipError(f"{SUFFIX_ROWS}: must be the text rows after the last visual row, a run that ends "
                             "with the last row")
