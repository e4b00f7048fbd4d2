"""The decoder as the graphs see it: flat tensors in, flat tensors out.

``PrefillDecoder`` and ``DecodeStep`` are what the exporter traces and what the parity
tests run in PyTorch, so the ONNX graphs and their reference share one definition.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from .family import Family


def flatten_cache(cache: DynamicCache) -> list[torch.Tensor]:
    tensors = []
    for layer in cache.layers:
        tensors += [layer.keys, layer.values]
    return tensors


def prefill_input_names(family: Family) -> list[str]:
    return ["inputs_embeds", "attention_mask", "position_ids"] + [e.name for e in family.extra_inputs]


def cache_names(prefix: str, num_layers: int) -> list[str]:
    return [f"{prefix}.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def decode_input_names(num_layers: int) -> list[str]:
    return ["inputs_embeds", "attention_mask", "position_ids"] + cache_names("past_key_values", num_layers)


def output_names(num_layers: int) -> list[str]:
    return ["logits"] + cache_names("present", num_layers)


class PrefillDecoder(torch.nn.Module):
    """inputs_embeds, attention_mask, position_ids, *extras -> logits, present.*"""

    def __init__(self, family: Family, model: torch.nn.Module, all_logits: bool = False):
        super().__init__()
        self.family = family
        self.model = model
        self.all_logits = all_logits

    def forward(self, inputs_embeds, attention_mask, position_ids, *extras):
        text_model = self.family.text_model(self.model)
        extra = dict(zip((e.name for e in self.family.extra_inputs), extras))
        kwargs = {"attention_mask": attention_mask, **self.family.decoder_kwargs(extra)}
        cache = self.family.new_cache(text_model.config)
        out = text_model(inputs_embeds=inputs_embeds, position_ids=position_ids, past_key_values=cache,
                         use_cache=True, **kwargs)
        hidden = out.last_hidden_state if self.all_logits else out.last_hidden_state[:, -1:, :]
        return (self.family.logits(self.model, hidden), *flatten_cache(out.past_key_values))


class DecodeStep(torch.nn.Module):
    """inputs_embeds, attention_mask (past + new), position_ids, *past -> logits, present.*

    The new tokens come as their embeddings, like the prefill's: the runtime looks them up
    in the embedding table beside the graphs, so no graph holds a vocab x hidden gather
    (as TensorRT-Edge-LLM's decoder graphs are fed). :func:`embed_tokens` gives them.
    """

    def __init__(self, family: Family, model: torch.nn.Module):
        super().__init__()
        self.family = family
        self.model = model

    def forward(self, inputs_embeds, attention_mask, position_ids, *past):
        text_model = self.family.text_model(self.model)
        cache = self.family.new_cache(text_model.config)
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = text_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True)
        return (self.family.logits(self.model, out.last_hidden_state), *flatten_cache(out.past_key_values))


def embed_tokens(family: Family, model: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """The decode step's ``inputs_embeds`` for ``input_ids``: the text model's own input
    embeddings (Gemma3's scale included), what the embedding table holds."""
    with torch.no_grad():
        return family.text_model(model).get_input_embeddings()(input_ids)
