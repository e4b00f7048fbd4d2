"""Qwen2.5-VL: the Qwen2-VL decoder contract (3 x B x S M-RoPE positions, decoder at
``model.language_model``); only the vision tower differs (window attention with a few
full-attention blocks, and a merger projecting to ``out_hidden_size``), which runs on the
host and never reaches the exported decoder.

Its vision graph takes, besides the Qwen2-VL inputs, the window grouping made on the host:
``window_index`` (token ``window_index[j]`` goes to place ``j``), ``window_reverse`` (its
inverse) and ``window_segments`` (each place's window, for the windowed blocks' mask);
``attention_segments`` is given in the window order too, as the blocks see the tokens.
"""

from __future__ import annotations

from ..family import VisionInput, register
from .tiny import TINY_TEXT
from .qwen2_vl import (QWEN_VISION_INPUTS, TOKENS, QwenVisionBase, QwenVLBase, segment_mask, unit_rows,
                       vision_block)


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

    def vision_inputs(self, config):
        return QWEN_VISION_INPUTS + (
            VisionInput("window_segments", TOKENS, "int64"),
            VisionInput("window_index", TOKENS, "int64"),
            VisionInput("window_reverse", TOKENS, "int64"),
        )

    def vision_encoder(self, model):
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

        return Qwen2_5_VLVision(model, apply_rotary_pos_emb_vision)


class Qwen2_5_VLVision(QwenVisionBase):
    """Qwen2.5-VL's tower: tokens (and their rotary rows) grouped by window, windowed
    attention except in ``fullatt_block_indexes``, the merger, then the original order."""

    def forward(self, pixel_values, vision_position_ids, attention_segments, window_segments, window_index,
                window_reverse):
        hidden, (cos, sin) = self.embed(pixel_values, vision_position_ids)
        hidden = unit_rows(hidden, window_index, self.unit)
        position_embeddings = (unit_rows(cos, window_index, self.unit), unit_rows(sin, window_index, self.unit))
        full = segment_mask(attention_segments, self.unit)
        windowed = segment_mask(window_segments, self.unit)
        for number, block in enumerate(self.visual.blocks):
            allowed = full if number in self.visual.fullatt_block_indexes else windowed
            hidden = vision_block(block, hidden, position_embeddings, allowed, self.rotate)
        return self.visual.merger(hidden)[window_reverse]
