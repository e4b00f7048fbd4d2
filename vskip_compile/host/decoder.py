"""The prefill graph's family-specific inputs, in numpy (the graph's ``extra_inputs``).

- Gemma3 (``full_attention_mask``, ``sliding_attention_mask``, bool [B, 1, S, S], True
  where a query may attend a key): causal, or bidirectional inside each image's run of
  image tokens; sliding layers additionally see only keys less than ``sliding_window``
  rows back; padded keys never. That is transformers' ``create_masks_for_vision_model``
  (full: OR(causal, block); sliding: AND(window, OR(causal, block)); both AND padding),
  checked against the masks the full model builds in tests/host.
- Qwen3-VL (``visual_pos_masks`` [B, S] bool, ``deepstack_visual_embeds`` [K, T, hidden]):
  the image-token rows, and the vision graph's DeepStack features, already in the order
  of those rows.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import VskipError


def block_ids(is_image: np.ndarray) -> np.ndarray:
    """[B, S]: the index of each image-token run within its row, -1 on text."""
    starts = is_image & ~np.pad(is_image, ((0, 0), (1, 0)))[:, :-1]
    return np.where(is_image, np.cumsum(starts, axis=1) - 1, -1)


def gemma3_masks(is_image: np.ndarray, attention_mask: np.ndarray, sliding_window: int) -> dict[str, np.ndarray]:
    length = is_image.shape[1]
    q = np.arange(length)[:, None]
    k = np.arange(length)[None, :]
    blocks = block_ids(is_image)
    same_block = (blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0)
    seen = (k <= q)[None] | same_block
    keys = np.asarray(attention_mask).astype(bool)[:, None, :]
    full = seen & keys
    sliding = seen & (k > q - sliding_window)[None] & keys
    return {"full_attention_mask": full[:, None], "sliding_attention_mask": sliding[:, None]}


def decoder_extras(family: str, config: dict, input_ids: np.ndarray, attention_mask: np.ndarray,
                   image_token_id: int, vision_outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The prefill's extra inputs for ``family`` (empty for families without any)."""
    is_image = np.asarray(input_ids) == image_token_id
    if family == "gemma3":
        window = (config.get("text_config") or {}).get("sliding_window")
        if not isinstance(window, int) or window < 1:
            raise VskipError("gemma3: the export's config.json has no text_config.sliding_window")
        return gemma3_masks(is_image, attention_mask, window)
    if family == "qwen3_vl":
        deepstack = vision_outputs.get("deepstack_features")
        if deepstack is None:
            raise VskipError("qwen3_vl: the vision graph gave no deepstack_features")
        if deepstack.shape[1] != int(is_image.sum()):
            raise VskipError(f"qwen3_vl: {deepstack.shape[1]} DeepStack rows for {int(is_image.sum())} image tokens")
        return {"visual_pos_masks": is_image, "deepstack_visual_embeds": deepstack}
    return {}
