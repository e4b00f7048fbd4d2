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

TEXT_ROWS = "vskip_text_rows"
SUFFIX_ROWS = "vskip_suffix_rows"
ROW_INPUTS = (TEXT_ROWS, SUFFIX_ROWS)

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


def visual_rows_from_ids(input_ids: np.ndarray, image_token_id: int, span: bool = False) -> np.ndarray:
    """Visual rows of a prompt: exactly the image-token rows, or with ``span`` every row from the
    first to the last image token (OpSkip's choice for Qwen2.5-VL). Returns bool [S].

    ``input_ids`` is [S] or [B, S]; every batch row must have the same visual rows.
    """
    ids = np.atleast_2d(np.asarray(input_ids))
    rows = ids == image_token_id
    if span:
        positions = np.arange(ids.shape[1])
        for b in range(ids.shape[0]):
            where = positions[rows[b]]
            if where.size:
                rows[b, where.min():where.max() + 1] = True
    if (rows != rows[:1]).any():
        raise VskipError("the visual rows differ between batch rows; a compiled graph shares one row set "
                         "per batch: align the images (e.g. equal left padding) or run the rows separately")
    return rows[0]


def row_feeds(visual: np.ndarray, names: list[str] | tuple[str, ...]) -> dict[str, np.ndarray]:
    """The row inputs ``names`` (a compiled graph's) for the visual-row mask ``visual`` [S]."""
    visual = np.asarray(visual, dtype=bool)
    positions = np.arange(visual.shape[0], dtype=np.int64)
    text = positions[~visual]
    if text.size == 0:
        raise VskipError("every row is visual: at least one text row must be left to update")
    feeds = {}
    for name in names:
        if name == TEXT_ROWS:
            feeds[name] = text
        elif name == SUFFIX_ROWS:
            last = positions[visual].max() if visual.any() else -1
            suffix = positions[last + 1:]
            if suffix.size == 0:
                raise VskipError("the prompt ends with a visual row: freeze_scope prefix_through_visual "
                                 "needs at least one text row after the last visual row")
            feeds[name] = suffix
        else:
            raise ValueError(f"unknown row input {name}")
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
