"""SmolVLM (Idefics3-like, Llama text): decoder at ``model.text_model``, pixels laid out
per batch row as [B, num_images, C, H, W] with a matching ``pixel_attention_mask``.

One unsplit image appears in the prompt as
``<fake_token_around_image> <global-img> <image> * image_seq_len <fake_token_around_image>``
(``_prompt_single_image`` in transformers' processing_smolvlm.py); only the ``<image>``
rows receive vision features, so only they are visual rows. That is what a real SmolVLM
processor sends with ``do_image_splitting=False``: one frame per image, squared to
``max_image_size`` (the tower's ``image_size`` in the checkpoints), with an all-ones pixel
mask. Splitting (the processor's default) turns an image into its tiles plus a global
frame, all of that size, with row/column tokens in the prompt; the vision graph takes
those frames as more images.
"""

from __future__ import annotations

import torch
from transformers.masking_utils import create_bidirectional_mask

from ..family import Family, ImagePrompt, VisionInput, register
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

    # --- vision graph: SigLIP tower + pixel-shuffle connector -----------------------------
    def vision_inputs(self, config):
        # Made by vskip_compile.host.vision_fixed.smolvlm_feeds: the batch's real images
        # flattened along axis 0, and each one's [rows, cols] patch mask.
        return (VisionInput("pixel_values", {0: "images"}),
                VisionInput("patch_attention_mask", {0: "images"}, "bool"))

    def vision_encoder(self, model):
        return _SmolVLMVision(model)

    def vision_sample(self, config, generator):
        """Two batch rows of two images, the second image of row 1 all-zero padding (how the
        processor pads rows with fewer images): the host drops it and three images remain."""
        vision = config.vision_config
        size = vision.image_size
        pixels = torch.randn(2, 2, vision.num_channels, size, size, generator=generator)
        pixels[1, 1] = 0
        mask = torch.ones(2, 2, size, size, dtype=torch.bool)
        mask[1, 1] = False
        return {"pixel_values": pixels, "pixel_attention_mask": mask}


class _SmolVLMVision(torch.nn.Module):
    """``pixel_values`` [N, C, H, W] and ``patch_attention_mask`` [N, rows, cols] bool ->
    ``image_features`` [N * image_seq_len, hidden].

    ``get_image_features`` after its padding-image removal and pixel-to-patch mask, which
    the host makes (boolean indexing would make the image count data-dependent):
    ``SmolVLMVisionTransformer.forward`` and the connector, from the model's own modules,
    with its embeddings' one untraceable step restated (:class:`_SmolVLMEmbeddings`).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model.model
        self.embeddings = _SmolVLMEmbeddings(self.model.vision_model.embeddings)

    def forward(self, pixel_values, patch_attention_mask):
        tower = self.model.vision_model
        hidden = self.embeddings(pixel_values.to(self.model.dtype), patch_attention_mask)
        # The model's own mask builder, so the mask suits whichever attention is loaded.
        mask = create_bidirectional_mask(config=tower.config, inputs_embeds=hidden,
                                         attention_mask=patch_attention_mask.reshape(hidden.shape[0], -1))
        hidden = tower.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        features = self.model.connector(tower.post_layernorm(hidden))
        return features.reshape(-1, features.shape[-1])


class _SmolVLMEmbeddings(torch.nn.Module):
    """``SmolVLMVisionEmbeddings.forward`` with its ``torch.bucketize`` restated.

    The exporter turns bucketize into an unrolled binary search of GatherND nodes, which
    ONNX Runtime refuses on a 19-patch grid (an index past the boundaries). Here each
    coordinate's bucket is a count of comparisons, the same bucket; the rest is the
    model's float32 arithmetic, op for op.
    """

    def __init__(self, embeddings):
        super().__init__()
        self.embeddings = embeddings
        side = embeddings.num_patches_per_side
        # The very tensor the model's forward builds, made once by the same call: its float32
        # values come from torch's vectorised arange kernel, and coordinates of a full patch
        # grid lie exactly on these boundaries, so the last bit decides the bucket.
        self.register_buffer("boundaries", torch.arange(1 / side, 1.0, 1 / side), persistent=False)

    def forward(self, pixel_values, patch_attention_mask):
        embeddings = self.embeddings
        count, rows, cols = patch_attention_mask.shape
        patches = embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        down = self._buckets(patch_attention_mask[:, :, 0].sum(dim=1), rows)
        across = self._buckets(patch_attention_mask[:, 0, :].sum(dim=1), cols)
        positions = (down[:, :, None] * embeddings.num_patches_per_side + across[:, None, :]).reshape(count, -1)
        positions = torch.where(patch_attention_mask.reshape(count, -1), positions, 0)
        return patches + embeddings.position_embedding(positions)

    def _buckets(self, extent: torch.Tensor, length: int) -> torch.Tensor:
        """``bucketize(clamp(arange(length) / extent), boundaries, right=True)`` per image:
        how many boundaries lie at or below each coordinate, counted as "not below" so that
        nan (an image without a valid first row or column) counts them all, as bucketize
        puts nan last."""
        coords = torch.arange(length, dtype=torch.float32, device=extent.device)[None, :] * (1.0 / extent)[:, None]
        coords = torch.clamp(coords, max=(1.0 - 1e-6))
        return (~(coords[..., None] < self.boundaries)).sum(dim=-1)
