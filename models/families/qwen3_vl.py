"""Qwen3-VL: Qwen-VL prompts and M-RoPE, plus DeepStack.

The vision tower also returns features from some of its blocks; the text model adds
feature ``i`` to the visual rows' hidden states after decoder layer ``i``. The decoder
therefore needs two extra prefill inputs, or it differs from the full model:

* ``visual_pos_masks`` [B, S] bool: which rows receive DeepStack features;
* ``deepstack_visual_embeds`` [num_deepstack_layers, num_visual_rows, hidden]: the
  features in row-major order of the mask's True entries (the text model takes a list of
  [num_visual_rows, hidden] tensors; one stacked graph input keeps the input count fixed).

Decode steps have no visual rows and need neither. Text layers add per-head q_norm /
k_norm, which are row-wise and change nothing for the row split. The text model accepts
3 x B x S positions (4 x B x S would prepend text positions for packed sequences, which
the full model never passes here), and rotates with interleaved M-RoPE whose
``mrope_section`` must sum to head_dim / 2.

Its vision graph takes, besides the Qwen2-VL inputs, the resampling of the learned
position grid made on the host (``interp_indices`` / ``interp_weights``, four bilinear
taps per patch), and returns the DeepStack features stacked as ``deepstack_features``
[num_deepstack_layers, image_tokens, text_hidden], what the full model hands its text
model as ``deepstack_visual_embeds``.
"""

from __future__ import annotations

import contextlib
import types

import torch

from vskip_compile.core.errors import VskipError

from ..family import ExtraInput, VisionInput, register
from .tiny import TINY_TEXT
from .qwen2_vl import QWEN_VISION_INPUTS, TOKENS, QwenVisionBase, QwenVLBase, segment_mask, vision_block


@register
class Qwen3VL(QwenVLBase):
    model_type = "qwen3_vl"
    extra_inputs = (
        ExtraInput("visual_pos_masks", {0: "batch", 1: "seq"}, torch.bool),
        ExtraInput("deepstack_visual_embeds", {1: "visual"}, torch.float32),
    )
    vision_outputs = ("image_features", "deepstack_features")

    def model_class(self):
        from transformers import Qwen3VLForConditionalGeneration

        return Qwen3VLForConditionalGeneration

    def tiny_config(self):
        from transformers import Qwen3VLConfig

        return Qwen3VLConfig(
            text_config=dict(
                TINY_TEXT, head_dim=16,
                # Interleaved M-RoPE over head_dim / 2 = 8 frequencies: 4 temporal, 2 height, 2 width.
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 2, 2],
                                 "mrope_interleaved": True},
            ),
            # Two blocks, both DeepStack sources, so the decoder injects after layers 0 and 1.
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
                               num_position_embeddings=16, deepstack_visual_indexes=[0, 1]),
            image_token_id=300, video_token_id=301, vision_start_token_id=302, vision_end_token_id=303,
            tie_word_embeddings=False,
        )

    @contextlib.contextmanager
    def export_patches(self, model):
        # transformers adds the features with boolean-mask indexing, which exports as
        # NonZero + GatherND + ScatterND; TensorRT cannot build those with dynamic shapes.
        text_model = self.text_model(model)
        text_model._deepstack_process = types.MethodType(_dense_deepstack, text_model)
        try:
            yield
        finally:
            del text_model._deepstack_process

    def vision_inputs(self, config):
        return QWEN_VISION_INPUTS + (
            VisionInput("interp_indices", TOKENS, "int64"),
            VisionInput("interp_weights", TOKENS),
        )

    def vision_encoder(self, model):
        from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

        if not model.model.visual.deepstack_visual_indexes:
            raise VskipError("qwen3_vl: the vision config lists no deepstack_visual_indexes, so there are no "
                             "DeepStack features to export")
        return Qwen3VLVision(model, apply_rotary_pos_emb_vision)

    def capture_extras(self, kwargs):
        masks, embeds = kwargs.get("visual_pos_masks"), kwargs.get("deepstack_visual_embeds")
        if masks is None or embeds is None:
            raise ValueError("qwen3_vl: the prompt has no images, so there are no DeepStack inputs to capture")
        return {"visual_pos_masks": masks.bool(), "deepstack_visual_embeds": torch.stack(list(embeds), dim=0)}

    def decoder_kwargs(self, extras):
        return {"visual_pos_masks": extras["visual_pos_masks"],
                "deepstack_visual_embeds": list(extras["deepstack_visual_embeds"].unbind(0))}


def _dense_deepstack(self, hidden_states, visual_pos_masks, visual_embeds):
    """``hidden[mask] += embeds`` without boolean indexing.

    Row k of ``visual_embeds`` belongs to the k-th visual row (row-major over batch and
    sequence). A running count of visual rows indexes a table with a zero row in front,
    so every visual row gathers its feature and every other row gathers zeros: adding
    gives exactly transformers' result, with Gather + CumSum instead of NonZero.

    The count runs in fp32: TensorRT's CumSum takes float types only (onnx-tensorrt's
    operator table), and fp32 counts exactly up to 2^24 rows, far beyond any prompt.
    """
    mask = visual_pos_masks.to(hidden_states.device).reshape(-1)
    table = torch.cat([visual_embeds.new_zeros(1, visual_embeds.shape[-1]),
                       visual_embeds.to(hidden_states.dtype)], dim=0)
    index = (torch.cumsum(mask.float(), dim=0) * mask.float()).long()
    return hidden_states + table[index].reshape(hidden_states.shape)


class Qwen3VLVision(QwenVisionBase):
    """Qwen3-VL's tower: patch embeddings plus the resampled learned positions, blocks under
    full (per-frame) attention, DeepStack mergers after their blocks, the final merger."""

    def forward(self, pixel_values, vision_position_ids, attention_segments, interp_indices, interp_weights):
        visual = self.visual
        hidden, position_embeddings = self.embed(pixel_values, vision_position_ids)
        taps = interp_indices.shape[-1]
        # The model weighs the table's rows with fp32 weights whatever its dtype; upcasting
        # here keeps that product in fp32 in a half-precision graph too.
        weights = interp_weights.reshape(-1, taps).float()
        positions = (visual.pos_embed(interp_indices.reshape(-1, taps)) * weights[:, :, None]).sum(1)
        hidden = hidden + positions.to(hidden.dtype)
        allowed = segment_mask(attention_segments, self.unit)
        deepstack = []
        for number, block in enumerate(visual.blocks):
            hidden = vision_block(block, hidden, position_embeddings, allowed, self.rotate)
            if number in visual.deepstack_visual_indexes:
                merger = visual.deepstack_merger_list[visual.deepstack_visual_indexes.index(number)]
                deepstack.append(merger(hidden))
        return visual.merger(hidden), torch.stack(deepstack, dim=0)
