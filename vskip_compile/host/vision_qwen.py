"""Vision-graph feeds of the Qwen-VL towers (Qwen2-VL, Qwen2.5-VL, Qwen3-VL).

The towers derive several tables from ``image_grid_thw`` with Python loops and
``.tolist()`` (rotary positions, attention segments, Qwen2.5-VL's windows, Qwen3-VL's
position-embedding interpolation); here they are made in numpy, and the graph only
gathers and compares them.

Every per-patch feed is laid out ``[image_tokens, merge_unit, ...]``: the processor
orders patches so that each run of ``spatial_merge_size ** 2`` rows is one merged (image)
token, and giving the graph that axis explicitly lets the merger's fold of a unit into one
row trace without a divisibility guard on the number of patches. Attention masks go in as
one segment id per image token: two patches may attend to each other iff their tokens
carry the same id, which the graph expands to the [patches, patches] block-diagonal mask
(O(N) host data instead of O(N^2)).
"""

from __future__ import annotations

import numpy as np

from ..core.errors import VskipError
from . import register_vision_feeds

#: How Qwen3-VL resamples its learned position grid (fixed attributes of
#: ``Qwen3VLVisionModel`` in transformers 5.23, not config fields).
QWEN3_INTERPOLATION = dict(mode="bilinear", align_corners=True)


def checked_grids(vision: dict, model_inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(grids [images, 3] int64, pixel_values [patches, patch_dim])``, or a one-line
    VskipError when they do not fit each other or the tower's config."""
    if "image_grid_thw" not in model_inputs or "pixel_values" not in model_inputs:
        raise VskipError("Qwen-VL vision feeds need both pixel_values and image_grid_thw")
    grids = np.asarray(model_inputs["image_grid_thw"])
    pixels = np.asarray(model_inputs["pixel_values"])
    if grids.ndim != 2 or grids.shape[1] != 3 or grids.shape[0] == 0 or grids.dtype.kind not in "iu":
        raise VskipError(f"image_grid_thw must be a non-empty integer [images, 3] array, got {grids.dtype} "
                         f"{list(grids.shape)}")
    grids = grids.astype(np.int64)
    if (grids <= 0).any():
        raise VskipError(f"image_grid_thw has a non-positive entry: {grids.tolist()}")
    merge = vision["spatial_merge_size"]
    odd = [g for g in grids.tolist() if g[1] % merge or g[2] % merge]
    if odd:
        raise VskipError(f"image grid {odd[0]} (t, h, w) is not divisible by spatial_merge_size {merge} "
                         "in h and w")
    patch_dim = vision["in_channels"] * vision["temporal_patch_size"] * vision["patch_size"] ** 2
    patches = int(grids.prod(axis=1).sum())
    if pixels.ndim != 2 or pixels.shape != (patches, patch_dim):
        raise VskipError(f"pixel_values has shape {list(pixels.shape)}, but image_grid_thw "
                         f"{grids.tolist()} needs [{patches}, {patch_dim}]")
    return grids, pixels


def patch_coordinates(grids: np.ndarray, merge: int) -> np.ndarray:
    """[patches, 2] (row, column) of every patch inside its frame, in the processor's order.

    Patches come block-major: merge blocks in raster order, the merge x merge patches of a
    block in raster order inside it; each frame of a multi-frame grid repeats its image's
    coordinates.
    """
    out = []
    for t, h, w in grids.tolist():
        rows = np.arange(h).reshape(h // merge, 1, merge, 1)
        cols = np.arange(w).reshape(1, w // merge, 1, merge)
        shape = (h // merge, w // merge, merge, merge)
        frame = np.stack([np.broadcast_to(rows, shape).reshape(-1), np.broadcast_to(cols, shape).reshape(-1)], -1)
        out.append(np.tile(frame, (t, 1)))
    return np.concatenate(out, axis=0).astype(np.int64)


def frame_segments(grids: np.ndarray, merge: int) -> np.ndarray:
    """[image_tokens] segment id of every token for the towers' full attention: one
    segment per frame of every image (patches of different images, or of different
    frames of a video, never attend to each other)."""
    tokens_per_frame = np.repeat(grids[:, 1] * grids[:, 2] // merge ** 2, grids[:, 0])
    return np.repeat(np.arange(len(tokens_per_frame)), tokens_per_frame).astype(np.int64)


def window_order(grids: np.ndarray, merge: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen2.5-VL's windows, in image tokens: ``(window_index, window_segments)``.

    ``window_index[j]`` is the token that goes to place ``j`` once tokens are grouped by
    window (windows of ``window`` x ``window`` tokens in raster order per frame, the last
    row and column of windows cut short by the grid's edge; tokens in raster order inside
    a window); ``window_segments[j]`` is the window of place ``j``, unique over all frames
    and images.
    """
    index, segments = [], []
    token_base = window_base = 0
    for t, h, w in grids.tolist():
        th, tw = h // merge, w // merge
        across = -(-tw // window)
        per_frame = -(-th // window) * across
        rows, cols = np.meshgrid(np.arange(th), np.arange(tw), indexing="ij")
        frame_windows = ((rows // window) * across + cols // window).reshape(-1)
        windows = (np.arange(t)[:, None] * per_frame + frame_windows[None, :]).reshape(-1)
        # Tokens are in (frame, row, column) order already, so a stable sort by window
        # keeps raster order inside each window.
        order = np.argsort(windows, kind="stable")
        index.append(order + token_base)
        segments.append(windows[order] + window_base)
        token_base += t * th * tw
        window_base += t * per_frame
    return np.concatenate(index).astype(np.int64), np.concatenate(segments).astype(np.int64)


def position_interpolation(grids: np.ndarray, merge: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen3-VL's learned position embedding resampled to each grid: ``(indices, weights)``,
    both [patches, 4], so a patch's embedding is ``sum_k weights[:, k] * table[indices[:, k]]``
    for the flattened ``side`` x ``side`` table.

    Bilinear with aligned corners (the grid's first and last patch sit on the table's first
    and last entry), taps ordered (top-left, top-right, bottom-left, bottom-right); a tap
    past the edge is clamped onto it, where its weight is zero.
    """
    coords = patch_coordinates(grids, merge)
    sizes = np.repeat(grids[:, 1:], grids.prod(axis=1), axis=0)

    def axis(position: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # fp32, each step rounded as the tower rounds it, so the weights are the model's to
        # the bit: on a 48-wide table fp64 weights differ from them by up to 2e-6.
        one = np.float32(1)
        source = (position * (side - 1)).astype(np.float32) / np.maximum(size - 1, 1).astype(np.float32)
        low = np.floor(source)
        frac = source - low  # exact in fp32
        taps = np.clip(low.astype(np.int64)[:, None] + np.array([0, 1]), 0, side - 1)
        # The far tap's weight is 1 - |frac - 1|, which fp32 does not always round to frac.
        return taps, np.stack([one - frac, one - (one - frac)], axis=-1)

    row_taps, row_weights = axis(coords[:, 0], sizes[:, 0])
    col_taps, col_weights = axis(coords[:, 1], sizes[:, 1])
    indices = (row_taps[:, :, None] * side + col_taps[:, None, :]).reshape(-1, 4)
    weights = (row_weights[:, :, None] * col_weights[:, None, :]).reshape(-1, 4)
    return indices.astype(np.int64), weights.astype(np.float32)


def _common_feeds(vision: dict, model_inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The feeds every Qwen-VL tower takes (pixels, rotary positions, full-attention
    segments) in the ``[image_tokens, merge_unit, ...]`` layout, and the checked grids."""
    grids, pixels = checked_grids(vision, model_inputs)
    merge = vision["spatial_merge_size"]
    unit = merge ** 2
    feeds = {
        "pixel_values": pixels.reshape(-1, unit, pixels.shape[-1]),
        "vision_position_ids": patch_coordinates(grids, merge).reshape(-1, unit, 2),
        "attention_segments": frame_segments(grids, merge),
    }
    return feeds, grids


@register_vision_feeds("qwen2_vl")
def qwen2_vl_feeds(config: dict, model_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Qwen2-VL: pixels, rotary positions and per-frame attention segments."""
    return _common_feeds(config["vision_config"], model_inputs)[0]


@register_vision_feeds("qwen2_5_vl")
def qwen2_5_vl_feeds(config: dict, model_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Qwen2.5-VL: the Qwen2-VL feeds plus its windows.

    The tower runs on tokens grouped by window, so both segment inputs are given in that
    order; ``window_reverse`` (the inverse permutation) puts the merged tokens back.
    """
    vision = config["vision_config"]
    feeds, grids = _common_feeds(vision, model_inputs)
    merge = vision["spatial_merge_size"]
    window = vision["window_size"] // merge // vision["patch_size"]
    if window < 1:
        raise VskipError(f"window_size {vision['window_size']} is smaller than one merged token "
                         f"({merge} x {vision['patch_size']} pixels)")
    index, segments = window_order(grids, merge, window)
    feeds["attention_segments"] = feeds["attention_segments"][index]
    feeds["window_segments"] = segments
    feeds["window_index"] = index
    feeds["window_reverse"] = np.argsort(index).astype(np.int64)
    return feeds


@register_vision_feeds("qwen3_vl")
def qwen3_vl_feeds(config: dict, model_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Qwen3-VL: the Qwen2-VL feeds plus the interpolation of its learned position grid."""
    vision = config["vision_config"]
    feeds, grids = _common_feeds(vision, model_inputs)
    merge = vision["spatial_merge_size"]
    side = int(vision["num_position_embeddings"] ** 0.5)
    indices, weights = position_interpolation(grids, merge, side)
    feeds["interp_indices"] = indices.reshape(-1, merge ** 2, indices.shape[-1])
    feeds["interp_weights"] = weights.reshape(-1, merge ** 2, weights.shape[-1])
    return feeds
