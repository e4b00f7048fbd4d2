"""Qwen2-VL: M-RoPE position ids (3 x B x S) from ``get_rope_index``, decoder at
``model.language_model``, each image wrapped in <|vision_start|> ... <|vision_end|>.

The vision graph: the Qwen-VL towers split attention by ``cu_seqlens`` with ``.tolist()``
and build their rotary (and window, interpolation) tables from ``image_grid_thw`` in Python
loops, none of which traces with a dynamic number of patches. The encoders here call the
tower's own modules (patch embedding, rotary embedding, block norms, qkv, proj, mlp,
mergers) and take the grid-dependent tables as inputs made on the host
(``vskip_compile.host.vision_qwen``); attention runs once over all patches with the
block-diagonal mask those tables describe, which gives every patch the same softmax as the
per-image split (masked keys weigh exactly zero).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..family import Family, ImagePrompt, VisionInput, register
from .tiny import TINY_TEXT

# A tiny image: grid (t, h, w) in patches; the merger folds 2x2 patches into one token.
_TINY_GRID = (1, 4, 8)
# The vision graph's trace sample: two images of different, non-square grids (14 image
# tokens: no size torch.export would specialise or confuse with a fixed dimension).
_SAMPLE_GRIDS = ((1, 4, 8), (1, 6, 4))

#: Axis 0 of every vision input: one entry per image token (merged patch), over all images.
TOKENS = {0: "image_tokens"}


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

    def vision_sample(self, config, generator):
        vision = config.vision_config
        patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
        patches = sum(t * h * w for t, h, w in _SAMPLE_GRIDS)
        return {"pixel_values": torch.randn(patches, patch_dim, generator=generator),
                "image_grid_thw": torch.tensor(_SAMPLE_GRIDS)}


#: Inputs of every Qwen-VL vision graph (the host's layout: ``[image_tokens, merge_unit, ...]``):
#: the processor's patches, each patch's (row, column) for the rotary table, and each
#: token's full-attention segment (one per frame of each image).
QWEN_VISION_INPUTS = (
    VisionInput("pixel_values", TOKENS),
    VisionInput("vision_position_ids", TOKENS, "int64"),
    VisionInput("attention_segments", TOKENS, "int64"),
)


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

    def vision_inputs(self, config):
        return QWEN_VISION_INPUTS

    def vision_encoder(self, model):
        from transformers.models.qwen2_vl.modeling_qwen2_vl import apply_rotary_pos_emb_vision

        return Qwen2VLVision(model, apply_rotary_pos_emb_vision)


def segment_mask(segments: torch.Tensor, unit: int) -> torch.Tensor:
    """[patches, patches] bool, True where two patches share a segment (may attend).

    ``segments`` holds one id per image token; its ``unit`` patches share it.
    """
    patches = segments[:, None].expand(-1, unit).reshape(-1)
    return patches[:, None] == patches[None, :]


def unit_rows(table: torch.Tensor, index: torch.Tensor, unit: int) -> torch.Tensor:
    """Rows of a per-patch ``table`` regrouped by image token: token ``index[j]``'s patches
    go to place ``j`` (what Qwen2.5-VL's ``permute_input_for_window_attn`` does, written with
    ``-1`` so the patch count stays symbolic)."""
    return table.reshape(-1, unit, table.shape[-1])[index].reshape(-1, table.shape[-1])


def masked_attention(attn, hidden: torch.Tensor, position_embeddings, allowed: torch.Tensor,
                     rotate: Callable) -> torch.Tensor:
    """The Qwen-VL vision attention over all patches at once, ``allowed`` as its mask.

    Same projections, rotary and scale as the tower's own attention module; only its
    ``torch.split(..., lengths.tolist())`` is replaced by the mask.
    """
    n = hidden.shape[0]
    query, key, value = attn.qkv(hidden).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    query, key = rotate(query, key, cos, sin)
    query, key, value = (x.transpose(0, 1).unsqueeze(0) for x in (query, key, value))
    # The mask as [1, 1, P, P]: the same broadcast, and the 4-D mask TensorRT's Attention
    # takes (vskip lint refuses a 2-D one at opset 23).
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allowed[None, None],
                                                           scale=attn.scaling)
    return attn.proj(out.transpose(1, 2).reshape(n, -1))


def vision_block(block, hidden: torch.Tensor, position_embeddings, allowed: torch.Tensor,
                 rotate: Callable) -> torch.Tensor:
    """One tower block (pre-norm attention, then pre-norm MLP, both residual)."""
    hidden = hidden + masked_attention(block.attn, block.norm1(hidden), position_embeddings, allowed, rotate)
    return hidden + block.mlp(block.norm2(hidden))


class QwenVisionBase(torch.nn.Module):
    """What the three Qwen-VL encoders share: the tower, its merge unit, the patch embedding."""

    def __init__(self, model, rotate: Callable):
        super().__init__()
        self.visual = model.model.visual
        self.unit = self.visual.spatial_merge_size ** 2
        self.rotate = rotate

    def embed(self, pixel_values: torch.Tensor, position_ids: torch.Tensor):
        """``(hidden [patches, C], (cos, sin))``: patch embeddings and the rotary table, in
        the processor's patch order."""
        hidden = self.visual.patch_embed(pixel_values.reshape(-1, pixel_values.shape[-1]))
        return hidden, self.visual.rotary_pos_emb(hidden, position_ids.reshape(-1, 2))


class Qwen2VLVision(QwenVisionBase):
    """``(pixel_values, vision_position_ids, attention_segments)`` -> ``image_features``
    [image_tokens, text_hidden]: the tower's blocks under full (per-frame) attention, then
    its merger."""

    def forward(self, pixel_values, vision_position_ids, attention_segments):
        hidden, position_embeddings = self.embed(pixel_values, vision_position_ids)
        allowed = segment_mask(attention_segments, self.unit)
        for block in self.visual.blocks:
            hidden = vision_block(block, hidden, position_embeddings, allowed, self.rotate)
        return self.visual.merger(hidden)
