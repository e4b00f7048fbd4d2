"""Qwen2-VL: M-RoPE position ids (3 x B x S) from ``get_rope_index``, decoder at
``model.language_model``, each image wrapped in <|vision_start|> ... <|vision_end|>."""

from __future__ import annotations

import torch

from ..family import Family, ImagePrompt, register
from .tiny import TINY_TEXT

# A tiny image: grid (t, h, w) in patches; the merger folds 2x2 patches into one token.
_TINY_GRID = (1, 4, 8)


class QwenVLBase(Family):
    """Shared by the Qwen-VL families: M-RoPE positions from ``get_rope_index`` and
    image placeholders counted from the patch grid."""

    position_rank = 3

    def image_prompt(self, config, generator: torch.Generator) -> ImagePrompt:
        vision = config.vision_config
        t, h, w = _TINY_GRID
        merge = vision.spatial_merge_size
        patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
        pixels = torch.randn(t * h * w, patch_dim, generator=generator)
        n_tokens = t * h * w // merge ** 2
        ids = [config.vision_start_token_id] + [config.image_token_id] * n_tokens + [config.vision_end_token_id]
        return ImagePrompt(ids, {"pixel_values": pixels, "image_grid_thw": torch.tensor([[t, h, w]])})

    def model_kwargs(self, input_ids, attention_mask, config):
        # transformers 5.x needs the modality of each token to build M-RoPE positions.
        return {"mm_token_type_ids": (input_ids == config.image_token_id).int()}

    def host_position_ids(self, input_ids, attention_mask):
        return None  # the model's get_rope_index computes 3-D positions, honouring padding


@register
class Qwen2VL(QwenVLBase):
    model_type = "qwen2_vl"

    def model_class(self):
        from transformers import Qwen2VLForConditionalGeneration

        return Qwen2VLForConditionalGeneration

    def tiny_config(self):
        from transformers import Qwen2VLConfig

        return Qwen2VLConfig(
            text_config=dict(
                TINY_TEXT, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},  # sums to head_dim / 2
            ),
            vision_config=dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2,
                               patch_size=4, spatial_merge_size=2, temporal_patch_size=2),
            image_token_id=300, video_token_id=301, vision_start_token_id=302, vision_end_token_id=303,
            tie_word_embeddings=False,
        )
