"""What differs between MLLM families, in one small interface.

The export core, the host-side input preparation and the reference are written once
against :class:`Family`; a family module only says where its decoder lives, how its tiny
preset looks, how one image appears in the prompt, and which extra decoder inputs it
needs. Nothing here decides anything by a module's name at run time: these are
facts about each transformers class, pinned with the transformers version.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class ExtraInput:
    """A family-specific prefill input, passed to the text model as a keyword.

    ``dynamic`` maps an axis to "batch", "seq" or "visual" (the number of visual rows).
    """

    name: str
    dynamic: dict[int, str]
    dtype: torch.dtype


@dataclass(frozen=True)
class VisionInput:
    """One input of a family's vision graph.

    ``dynamic`` maps an axis to a dimension name shared by the graph's inputs ("images",
    "patches", ...). ``dtype`` is "float" (the export's floating type) or a numpy integer
    or bool type name ("int64", "bool").
    """

    name: str
    dynamic: dict[int, str]
    dtype: str = "float"


@dataclass
class ImagePrompt:
    """What one image contributes: its prompt tokens and its pixel tensors."""

    token_ids: list[int]
    # Per-image model kwargs, concatenated over images along dim 0 (e.g. pixel_values,
    # image_grid_thw). A family with a batch-shaped layout overrides ``stack_pixels``.
    pixels: dict[str, torch.Tensor] = field(default_factory=dict)


class Family:
    """Base class; each family module defines one subclass and registers it."""

    #: transformers ``model_type``; also the tiny preset's name (``tiny:<model_type>``).
    model_type: str = ""
    #: number of rows of position_ids: 1 -> [B, S], 3 -> [3, B, S] (M-RoPE).
    position_rank: int = 1
    #: extra prefill inputs beyond inputs_embeds / attention_mask / position_ids.
    extra_inputs: tuple[ExtraInput, ...] = ()

    # --- model construction -------------------------------------------------------
    def model_class(self) -> type:
        raise NotImplementedError

    def tiny_config(self):
        """A config small enough for tests: a few layers, hidden 64-128."""
        raise NotImplementedError

    # --- where things live ----------------------------------------------------------
    def text_model(self, model) -> torch.nn.Module:
        return model.model.language_model

    def decoder_layers(self, model) -> torch.nn.ModuleList:
        return self.text_model(model).layers

    def ffn_branch(self, layer, hidden: torch.Tensor) -> torch.Tensor:
        """What a layer adds to the residual in its FFN half, for rows ``hidden``."""
        return layer.mlp(layer.post_attention_layernorm(hidden))

    def attention_branch(self, layer, attention_output: torch.Tensor) -> torch.Tensor:
        """What a layer adds to the residual from its attention module's output."""
        return attention_output

    def logits(self, model, hidden: torch.Tensor) -> torch.Tensor:
        return model.lm_head(hidden)

    def text_config(self, model):
        return self.text_model(model).config

    def image_token_id(self, config) -> int:
        return config.image_token_id

    # --- prompts --------------------------------------------------------------------
    def image_prompt(self, config, generator: torch.Generator) -> ImagePrompt:
        """Tokens and random pixels for one synthetic image of the tiny preset."""
        raise NotImplementedError

    def special_token_ids(self, config) -> set[int]:
        """Ids that synthetic text must avoid (image, video, vision start/end, ...)."""
        ids = set()
        for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                     "boi_token_id", "eoi_token_id", "image_token_index", "fake_image_token_id",
                     "global_image_token_id", "start_image_token_id", "end_image_token_id"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                ids.add(value)
        return ids

    def stack_pixels(self, prompts: list[list[ImagePrompt]]) -> dict[str, torch.Tensor]:
        """Model kwargs for all images of a batch (prompts[b] are row b's images in order)."""
        flat = [p for row in prompts for p in row]
        if not flat:
            return {}
        return {key: torch.cat([p.pixels[key] for p in flat], dim=0) for key in flat[0].pixels}

    def model_kwargs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, config) -> dict[str, Any]:
        """Extra kwargs the full model needs besides ids, mask and pixels."""
        return {}

    def host_position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """Position ids the host passes to the full model; None lets the model compute them.

        Default: positions count only real tokens, so left padding does not shift them
        (what ``generate`` does).
        """
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def export_patches(self, model):
        """A context manager active while the exporter traces ``model``.

        For rewriting code whose traced form would not suit the graph contract (DESIGN.md
        section 3), with numerically identical PyTorch; the parity tests run the
        unpatched model against the exported graph, so they check the equivalence.
        """
        return contextlib.nullcontext()

    # --- vision graph -----------------------------------------------------------------
    #: the vision graph's outputs. ``image_features`` [T, text_hidden]: the rows the full
    #: model writes over its image tokens, all images of a batch concatenated in order
    #: (row-major over batch and sequence, as ``masked_scatter`` fills them). A family with
    #: more (Qwen3-VL's ``deepstack_features`` [K, T, text_hidden]) overrides this.
    vision_outputs: tuple[str, ...] = ("image_features",)

    def vision_inputs(self, config) -> tuple[VisionInput, ...]:
        """The vision graph's inputs, in order. Whatever depends on the image grid and would
        need data-dependent shapes to trace (rotary tables, window indices, attention
        masks) is an input, made on the host by ``vskip_compile.host.vision_feeds``."""
        raise NotImplementedError(f"{self.model_type}: no vision graph yet")

    def vision_encoder(self, model) -> torch.nn.Module:
        """The vision tower plus projector as a module: ``forward(*inputs)`` in
        :meth:`vision_inputs` order returns the :attr:`vision_outputs`, in order."""
        raise NotImplementedError(f"{self.model_type}: no vision graph yet")

    def vision_sample(self, config, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Pixels to trace the vision graph on, as the model takes them (transformers'
        argument names: ``pixel_values``, ``image_grid_thw``, ...): two images of
        different sizes where the family allows it, so every dynamic axis stays dynamic.
        The host's ``vision_feeds`` turns them into the graph's inputs."""
        raise NotImplementedError(f"{self.model_type}: no vision graph yet")

    # --- decoder inputs -------------------------------------------------------------
    def capture_extras(self, kwargs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Pick the extra inputs out of the kwargs the full model passed to its text model."""
        return {}

    def decoder_kwargs(self, extras: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Turn the extra inputs back into text-model kwargs (inverse of capture_extras)."""
        return dict(extras)

    def new_cache(self, text_config):
        """The empty KV cache the prefill and decode wrappers hand the text model.

        Default: transformers' own choice for the config. A family whose config makes
        that cache drop rows (sliding-window layers) overrides this, because ``present.*``
        must hold every row.
        """
        from transformers.cache_utils import DynamicCache

        return DynamicCache(config=text_config)

    def decode_position_ids(self, prefill_positions: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """Positions for ``step`` ([B, q] offsets 0..) after a prefill with the given positions.

        Text after the prompt continues from the largest position used so far, which is
        right for 1-D positions (count of real tokens) and for M-RoPE (rope deltas).
        """
        if self.position_rank == 1:
            start = prefill_positions.amax(dim=-1, keepdim=True) + 1
            return start + step
        start = prefill_positions.amax(dim=(0, 2)).view(1, -1, 1) + 1
        return (start + step.unsqueeze(0)).expand(self.position_rank, -1, -1).contiguous()


_REGISTRY: dict[str, Callable[[], Family]] = {}


def register(cls: type[Family]) -> type[Family]:
    _REGISTRY[cls.model_type] = cls
    return cls


def families() -> dict[str, Callable[[], Family]]:
    from . import families as _  # noqa: F401  (importing registers every family)

    return dict(_REGISTRY)


def get_family(model_type: str) -> Family:
    from vskip_compile.core.errors import VskipError

    registry = families()
    if model_type not in registry:
        raise VskipError(
            f"unsupported architecture '{model_type}': vskip supports {', '.join(sorted(registry))}"
        )
    return registry[model_type]()
