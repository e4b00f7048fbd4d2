"""Position ids of a prefill and of the decode steps after it, in numpy.

Two kinds, by the sidecar's ``position_rank``:

- 1: plain RoPE positions, counting real tokens only, so left padding does not shift them
  (what ``generate`` passes; padded rows get 0, and no real row ever attends to them);
- 3: Qwen-VL's M-RoPE, [3, B, S] (temporal, height, width). Text advances all three by
  one per token; an image's tokens take (t, row, column) of its merged grid, offset by
  the position reached before it, and the text after it continues from that offset plus
  the larger of the image's merged height and width. This is ``get_rope_index`` of
  transformers' Qwen2-VL, Qwen2.5-VL and Qwen3-VL for images, which agree on images (they
  differ only for videos, which vskip does not take); tests/host check it against them.

Decode steps continue from the largest position used so far, per row (transformers'
``rope_deltas``).
"""

from __future__ import annotations

import numpy as np

from ..core.errors import VskipError


def text_positions(attention_mask: np.ndarray) -> np.ndarray:
    """[B, S] positions: the count of real tokens before each one."""
    mask = np.asarray(attention_mask).astype(np.int64)
    return np.maximum(np.cumsum(mask, axis=-1) - 1, 0)


def mrope_positions(input_ids: np.ndarray, attention_mask: np.ndarray, image_token_id: int,
                    image_grid_thw: np.ndarray | None, spatial_merge_size: int) -> np.ndarray:
    """[3, B, S] M-RoPE positions; the images' grids are in prompt order, row after row."""
    input_ids = np.asarray(input_ids)
    mask = np.asarray(attention_mask).astype(bool)
    batch, length = input_ids.shape
    grids = iter(np.zeros((0, 3), np.int64) if image_grid_thw is None else np.asarray(image_grid_thw, np.int64))
    positions = np.zeros((3, batch, length), dtype=np.int64)
    for b in range(batch):
        real = np.flatnonzero(mask[b])
        is_image = input_ids[b, real] == image_token_id
        row = np.zeros((3, len(real)), dtype=np.int64)
        start, current = 0, 0
        for kind, run in _runs(is_image):
            if not kind:
                row[:, start:start + run] = current + np.arange(run)
                current += run
            else:
                grid = next(grids, None)
                if grid is None:
                    raise VskipError(f"prompt {b} has more images than image_grid_thw has grids")
                row[:, start:start + run] = current + _grid_positions(grid, spatial_merge_size, run, b)
                current += int(max(grid[1], grid[2])) // spatial_merge_size
            start += run
        positions[:, b, real] = row
    if next(grids, None) is not None:
        raise VskipError("image_grid_thw has more grids than the prompts have images")
    return positions


def _runs(flags: np.ndarray):
    """(value, length) of each run of equal values."""
    if not len(flags):
        return
    edges = np.flatnonzero(np.diff(flags.astype(np.int8))) + 1
    bounds = [0, *edges.tolist(), len(flags)]
    for first, end in zip(bounds, bounds[1:]):
        yield bool(flags[first]), end - first


def _grid_positions(grid: np.ndarray, merge: int, tokens: int, row: int) -> np.ndarray:
    t, h, w = (int(v) for v in grid)
    if t < 1 or h % merge or w % merge:
        raise VskipError(f"image grid {t}x{h}x{w} does not divide by the spatial merge size {merge}")
    h, w = h // merge, w // merge
    if t * h * w != tokens:
        raise VskipError(f"prompt {row}: an image of grid {t}x{h * merge}x{w * merge} needs {t * h * w} image "
                         f"tokens, the prompt has a run of {tokens}")
    tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h), np.arange(w), indexing="ij")
    return np.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)])


def decode_positions(prefill_positions: np.ndarray, steps: int, done: int = 0) -> np.ndarray:
    """Positions of ``steps`` new tokens after ``done`` already decoded ([B, q] or [3, B, q])."""
    offsets = np.arange(done, done + steps, dtype=np.int64)
    if prefill_positions.ndim == 2:
        return prefill_positions.max(axis=-1, keepdims=True) + 1 + offsets
    start = prefill_positions.max(axis=(0, 2)).reshape(1, -1, 1) + 1
    return np.broadcast_to(start + offsets, (prefill_positions.shape[0], prefill_positions.shape[1], steps)).copy()
