"""SmolVLM (Idefics3-like, Llama text): decoder at ``model.text_model``, pixels laid out
per batch row as [B, num_images, C, H, W] with a matching ``pixel_attention_mask``.

One unsplit image appears in the prompt as
``<fake_token_around_image> <global-img> <image> * image_seq_len <fake_token_around_image>``
(``_prompt_single_image`` in transformers' processing_smolvlm.py); only the ``<image>``
rows receive vision features, so only they are visual rows.
"""

from __future__ import annotations

import torch

from ..family import Family, ImagePrompt, register
from .tiny import TINY_TEXT

# The tiny preset's special tokens: inside the vocab and >= 256, so synthetic text
# (ids < 256) never collides. Real checkpoints take the fake/global ids from the
# tokenizer; the config only carries image_token_id.
_IMAGE, _FAKE_AROUND_IMAGE, _GLOBAL_IMAGE = 300, 301, 302


def image_seq_len(config) -> int:
    """Image tokens per image: patches per image folded by the connector's pixel shuffle
    (SmolVLMModel.image_seq_len)."""
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 // config.scale_factor ** 2


@register
class SmolVLM(Family):
    model_type = "smolvlm"

    def model_class(self):
        from transformers import SmolVLMForConditionalGeneration

        return SmolVLMForConditionalGeneration

    def tiny_config(self):
        from transformers import SmolVLMConfig

        return SmolVLMConfig(
            text_config=dict(
                TINY_TEXT, model_type="llama", tie_word_embeddings=False,
            ),
            # 32 x 32 pixels in 4 x 4 patches: 64 patches, 16 image tokens after the 2 x 2 shuffle.
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=32, patch_size=4),
            scale_factor=2, pad_token_id=0,
            image_token_id=_IMAGE, fake_image_token_id=_FAKE_AROUND_IMAGE, global_image_token_id=_GLOBAL_IMAGE,
            tie_word_embeddings=False,
        )

    def text_model(self, model):
        return model.model.text_model

    def image_prompt(self, config, generator):
        vision = config.vision_config
        size = vision.image_size
        fake = getattr(config, "fake_image_token_id", _FAKE_AROUND_IMAGE)
        global_image = getattr(config, "global_image_token_id", _GLOBAL_IMAGE)
        ids = [fake, global_image] + [config.image_token_id] * image_seq_len(config) + [fake]
        # Random pixels are never all zero, which the model would take for a padding image.
        pixels = torch.randn(1, vision.num_channels, size, size, generator=generator)
        mask = torch.ones(1, size, size, dtype=torch.bool)
        return ImagePrompt(ids, {"pixel_values": pixels, "pixel_attention_mask": mask})

    def stack_pixels(self, prompts):
        """[B, max_images, ...]: rows with fewer images are padded with all-zero images and
        an all-False pixel mask, which the model drops (as the SmolVLM image processor pads)."""
        count = max((len(row) for row in prompts), default=0)
        if count == 0:
            return {}
        sample = next(p for row in prompts for p in row)
        stacked = {}
        for key, value in sample.pixels.items():
            pad = torch.zeros_like(value)
            stacked[key] = torch.stack([
                torch.cat([p.pixels[key] for p in row] + [pad] * (count - len(row)), dim=0) for row in prompts
            ])
        return stacked
