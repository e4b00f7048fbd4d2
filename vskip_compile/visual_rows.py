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

_RANGE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_ranges(text: str, sequence_length: int) -> np.ndarray:
    """'5:21,30:46' (half-open, like Python slices) -> bool mask [S] of visual rows."""
    mask = np.zeros(sequence_length, dtype=bool)
    if not text.strip():
        raise VskipError("--visual-rows is empty: give ranges like 5:21,30:46")
    for part in text.split(","):
        match = _RANGE.match(part)
        if not match:
            raise VskipError(f"--visual-rows: '{part.strip()}' is not a range START:END (e.g. 5:21)")
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
