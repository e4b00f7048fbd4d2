"""LLaVA (1.5): a Llama decoder at ``model.language_model`` fed by a CLIP vision tower.

Each image is a fixed run of ``<image>`` tokens, one per vision patch (the processor adds
no begin/end-of-image wrappers), and positions are plain 1-D RoPE positions, so the
shared cumsum-based host positions apply unchanged.
"""

from __future__ import annotations

import torch

from ..family import Family, ImagePrompt, register
from ..vision import FixedSizeImages
from .tiny import TINY_TEXT


def llava_image_tokens(config) -> int:
    """Placeholders per image, as ``LlavaProcessor`` counts them.

    One per patch of the (square) vision input; the "default" feature strategy drops the
    CLS token from the vision features, "full" keeps it as one more placeholder.
    """
    vision = config.vision_config
    patches = (vision.image_size // vision.patch_size) ** 2
    return patches if config.vision_feature_select_strategy == "default" else patches + 1


@register
class Llava(FixedSizeImages, Family):
    model_type = "llava"

    def model_class(self):
        from transformers import LlavaForConditionalGeneration

        return LlavaForConditionalGeneration

    def tiny_config(self):
        from transformers import LlavaConfig

        return LlavaConfig(
            text_config=dict(
                TINY_TEXT, model_type="llama",
            ),
            # 16 x 16 pixels in 4 x 4 patches: 16 image tokens.
            vision_config=dict(
                model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, image_size=16, patch_size=4, projection_dim=32,
            ),
            # With one vision layer, the real default (-2) would bypass it; -1 keeps it in use.
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            image_token_index=300,
            tie_word_embeddings=False,
        )

    def image_token_id(self, config) -> int:
        # LlavaConfig stores the id as ``image_token_index``; ``image_token_id`` is only an alias.
        return config.image_token_index

    def image_prompt(self, config, generator: torch.Generator) -> ImagePrompt:
        vision = config.vision_config
        pixels = torch.randn(1, vision.num_channels, vision.image_size, vision.image_size, generator=generator)
        return ImagePrompt([self.image_token_id(config)] * llava_image_tokens(config), {"pixel_values": pixels})

    def vision_encoder(self, model):
        return _LlavaVision(model)


class _LlavaVision(torch.nn.Module):
    """``pixel_values`` [N, C, H, W] -> ``image_features`` [N * tokens, hidden].

    What ``get_image_features`` computes, written without its ``list(features)`` (which
    fixes the number of images while tracing): the configured feature layer(s) of the
    vision tower, the CLS token dropped under the "default" strategy, the projector.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model.model

    def forward(self, pixel_values):
        config = self.model.config
        hidden = self.model.vision_tower(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
        layers = config.vision_feature_layer
        chosen = [hidden[i] for i in ([layers] if isinstance(layers, int) else layers)]
        if config.vision_feature_select_strategy == "default":
            chosen = [h[:, 1:] for h in chosen]
        features = self.model.multi_modal_projector(torch.cat(chosen, dim=-1))
        return features.reshape(-1, features.shape[-1])
