"""Qwen2.5-VL: the Qwen2-VL decoder contract (3 x B x S M-RoPE positions, decoder at
``model.language_model``); only the vision tower differs (window attention with a few
full-attention blocks, and a merger projecting to ``out_hidden_size``), which runs on the
host and never reaches the exported decoder."""

from __future__ import annotations

from ..family import register
from .tiny import TINY_TEXT
from .qwen2_vl import QwenVLBase


@register
class Qwen2_5_VL(QwenVLBase):
    model_type = "qwen2_5_vl"

    def model_class(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration

    def tiny_config(self):
        from transformers import Qwen2_5_VLConfig

        return Qwen2_5_VLConfig(
            text_config=dict(
                TINY_TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},  # sums to head_dim / 2
            ),
            # Two blocks so the tiny tower has both kinds: block 0 windowed, block 1 full.
            # window_size is in pixels: 16 / merge 2 / patch 4 = windows of 2 x 2 merged tokens.
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=4, spatial_merge_size=2, temporal_patch_size=2, window_size=16,
                               fullatt_block_indexes=[1]),
            image_token_id=300, video_token_id=301, vision_start_token_id=302, vision_end_token_id=303,
            tie_word_embeddings=False,
        )
