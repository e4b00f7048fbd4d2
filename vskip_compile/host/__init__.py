"""Host-side preparation for the runtime, in numpy only (no torch).

What a graph cannot compute without data-dependent shapes is made here from the
model's inputs under transformers' argument names (``input_ids``, ``attention_mask``,
``pixel_values``, ``image_grid_thw``, ...) and the model's config as a plain dict (the
``config.json`` an export writes):

- :func:`vision_feeds`: the vision graph's inputs (rotary position ids, window indices,
  block-diagonal attention masks of the Qwen-VL towers);
- positions and the decoder's extra inputs (M-RoPE, DeepStack masks, Gemma3's 4-D masks).

Each family's functions live in one module here, registered by ``model_type``; the tests
check every one against what transformers computes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..core.errors import VskipError

VisionFeeds = Callable[[dict, dict[str, np.ndarray]], dict[str, np.ndarray]]

_VISION_FEEDS: dict[str, VisionFeeds] = {}


def register_vision_feeds(*model_types: str):
    def add(function: VisionFeeds) -> VisionFeeds:
        for model_type in model_types:
            _VISION_FEEDS[model_type] = function
        return function
    return add


def vision_feeds(model_type: str, config: dict, model_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The vision graph's feeds for ``model_inputs`` (one batch's images, in order)."""
    from . import vision as _  # noqa: F401  (importing registers every family)

    if model_type not in _VISION_FEEDS:
        raise VskipError(f"{model_type}: vskip has no vision graph for this family yet")
    return _VISION_FEEDS[model_type](config, model_inputs)
