"""Gemma3: the decoder takes its two prepared 4-D masks as inputs.

The full model builds a full-attention mask and a sliding-window mask from
``token_type_ids`` (bidirectional inside each image, causal elsewhere, sliding layers
additionally windowed) and hands them to its language model as a dict. Those masks
cannot be rebuilt from the 2-D padding mask alone, so the prefill graph takes them as
inputs (``full_attention_mask``, ``sliding_attention_mask``: bool [B, 1, S, S], True
where a query may attend a key). They already contain the left padding, so the 2-D
``attention_mask`` input stays in the prefill graph only to keep every family's input
list alike; its values are not read there. The decode step is unchanged: its new rows
are text, so the text model's own causal and sliding masks from the 2-D mask are right.

The KV cache keeps every row of every layer, sliding layers included: transformers'
sliding cache layers would drop rows older than the window, but the compiled graph's
``present.*`` outputs must hold all rows in their original order (DESIGN.md section 3),
and the window is enforced by the masks anyway, so attention is unchanged.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from ..family import ExtraInput, Family, ImagePrompt, register
from ..vision import FixedSizeImages
from .tiny import TINY_TEXT

# Tiny vision tower: a 32 x 32 image in 4 x 4 patches (8 x 8 grid), average-pooled by the
# projector to mm_tokens_per_image = 16 tokens (4 x 4).
_IMAGE_SIZE, _PATCH_SIZE, _TOKENS_PER_IMAGE = 32, 4, 16

# Keys of the mask dict the full model passes as ``attention_mask``, by graph input name;
# the dict keys are the layer types of ``text_config.layer_types``.
_MASKS = {"full_attention_mask": "full_attention", "sliding_attention_mask": "sliding_attention"}


@register
class Gemma3(FixedSizeImages, Family):
    model_type = "gemma3"
    extra_inputs = tuple(ExtraInput(name, {0: "batch", 2: "seq", 3: "seq"}, torch.bool) for name in _MASKS)

    def model_class(self):
        from transformers import Gemma3ForConditionalGeneration

        return Gemma3ForConditionalGeneration

    def tiny_config(self):
        from transformers import Gemma3Config

        return Gemma3Config(
            text_config=dict(
                TINY_TEXT, head_dim=16, query_pre_attn_scalar=16,
                # Shorter than the test prompts (about 20-55 tokens) and than one image's 16
                # tokens, so windowing cuts into both text and images.
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
                bos_token_id=2, eos_token_id=1, pad_token_id=0,
            ),
            vision_config=dict(
                model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, image_size=_IMAGE_SIZE, patch_size=_PATCH_SIZE,
            ),
            mm_tokens_per_image=_TOKENS_PER_IMAGE,
            boi_token_index=300, eoi_token_index=301, image_token_index=302,
        )

    def image_prompt(self, config, generator: torch.Generator) -> ImagePrompt:
        # The processor expands an image to "\n\n<boi>" + <image> * mm_tokens_per_image + "<eoi>\n\n";
        # the newlines are ordinary text, which the synthetic text around an image stands in for.
        vision = config.vision_config
        pixels = torch.randn(1, vision.num_channels, vision.image_size, vision.image_size, generator=generator)
        ids = [config.boi_token_id] + [config.image_token_id] * config.mm_tokens_per_image + [config.eoi_token_id]
        return ImagePrompt(ids, {"pixel_values": pixels})

    def model_kwargs(self, input_ids, attention_mask, config):
        # What the processor returns: 1 on image tokens (not boi/eoi); it makes each image
        # block bidirectional in the masks.
        return {"token_type_ids": (input_ids == config.image_token_id).long()}

    def capture_extras(self, kwargs):
        masks = kwargs["attention_mask"]
        # With token_type_ids the full model always materialises both masks; a missing one
        # means transformers changed how it prepares them, so say so instead of failing later.
        missing = [t for t in _MASKS.values() if not isinstance(masks, dict) or masks.get(t) is None]
        if missing:
            raise RuntimeError(f"gemma3: the full model passed no {', '.join(missing)} mask to its text model")
        return {name: masks[layer_type] for name, layer_type in _MASKS.items()}

    def decoder_kwargs(self, extras):
        # Replaces the 2-D mask the wrappers pass: a dict makes the text model use these as is.
        return {"attention_mask": {layer_type: extras[name] for name, layer_type in _MASKS.items()}}

    def new_cache(self, text_config) -> DynamicCache:
        return DynamicCache()  # full layers only: see the module docstring

    def ffn_branch(self, layer, hidden):
        return layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(hidden)))

    def attention_branch(self, layer, attention_output):
        return layer.post_attention_layernorm(attention_output)

    # --- vision graph: SigLIP tower + pooling projector, fixed-size images ---------------
    # Pan-and-scan crops arrive as more images along axis 0, each at the tower's size.
    def vision_encoder(self, model):
        return _Gemma3Vision(model)


class _Gemma3Vision(torch.nn.Module):
    """``pixel_values`` [N, C, H, W] -> ``image_features`` [N * mm_tokens_per_image, hidden].

    The model's own ``get_image_features`` traces as it is (its shapes depend only on the
    config); only the per-image token axis is folded into one row axis, the order
    ``masked_scatter`` fills the image tokens in. The SigLIP pooling head, which the tower
    computes and Gemma3 never reads, leaves no node in the graph.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model.model

    def forward(self, pixel_values):
        features = self.model.get_image_features(pixel_values, return_dict=True).pooler_output
        return features.reshape(-1, features.shape[-1])
