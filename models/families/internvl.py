"""InternVL (transformers' ``-hf`` port): a Qwen2 decoder at ``model.language_model`` fed
by an InternViT tower whose patch features are pixel-shuffled (downsampled) before the
projector.

The processor writes each image as ``<img>`` + ``image_seq_length`` context tokens per tile +
``</img>`` (the tiny preset's images are one tile each); only the context tokens receive
vision features, the wrappers are ordinary text embeddings. Positions are plain 1-D RoPE positions.
"""

from __future__ import annotations

import torch

from ..family import Family, ImagePrompt, register
from ..vision import FixedSizeImages
from .tiny import TINY_TEXT

# The tiny preset's <img> / </img> ids. InternVLConfig does not carry them (they live in
# the tokenizer), so they are fixed here, next to the context token id, outside the
# range synthetic text draws from.
_TINY_START_IMAGE_ID = 301
_TINY_END_IMAGE_ID = 302


def internvl_image_tokens(config) -> int:
    """Context tokens per image tile, as ``InternVLProcessor`` counts them.

    (image_size / patch_size)^2 patches, pixel-shuffled by ``downsample_ratio`` in each
    spatial direction; the CLS token is dropped ("default" strategy).
    """
    vision = config.vision_config
    side = vision.image_size[0] // vision.patch_size[0]
    return int(side * side * config.downsample_ratio ** 2)


@register
class InternVL(FixedSizeImages, Family):
    model_type = "internvl"

    def model_class(self):
        from transformers import InternVLForConditionalGeneration

        return InternVLForConditionalGeneration

    def tiny_config(self):
        from transformers import InternVLConfig

        tokens = 9
        return InternVLConfig(
            text_config=dict(
                TINY_TEXT, model_type="qwen2",
            ),
            # 24 x 24 pixels in 4 x 4 patches: a 6 x 6 grid, pixel-shuffled by 0.5 to 3 x 3 tokens.
            vision_config=dict(
                hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                image_size=24, patch_size=4,
            ),
            downsample_ratio=0.5,
            image_seq_length=tokens,
            image_token_id=300,
            tie_word_embeddings=False,
        )

    def image_prompt(self, config, generator: torch.Generator) -> ImagePrompt:
        vision = config.vision_config
        tokens = internvl_image_tokens(config)
        if tokens != config.image_seq_length:
            raise ValueError(f"image_seq_length {config.image_seq_length} != {tokens} tokens from the vision config")
        height, width = vision.image_size
        pixels = torch.randn(1, vision.num_channels, height, width, generator=generator)
        ids = [_TINY_START_IMAGE_ID] + [config.image_token_id] * tokens + [_TINY_END_IMAGE_ID]
        return ImagePrompt(ids, {"pixel_values": pixels})

    def special_token_ids(self, config) -> set[int]:
        return super().special_token_ids(config) | {_TINY_START_IMAGE_ID, _TINY_END_IMAGE_ID}

    # --- vision graph: InternViT + pixel shuffle + projector, fixed-size tiles -------------
    # The processor's tiles (several per image with dynamic tiling) are images along axis 0.
    def vision_encoder(self, model):
        return _InternVLVision(model)


class _InternVLVision(torch.nn.Module):
    """``pixel_values`` [N, C, H, W] -> ``image_features`` [N * image_seq_length, hidden].

    The model's own ``get_image_features`` (feature layer and CLS strategy from the config,
    pixel shuffle, projector) traces as it is: every shape in it follows from the fixed tile
    size. Only the per-tile token axis is folded into the row axis ``masked_scatter`` fills.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model.model

    def forward(self, pixel_values):
        features = self.model.get_image_features(pixel_values=pixel_values, return_dict=True).pooler_output
        return features.reshape(-1, features.shape[-1])
