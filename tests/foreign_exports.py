"""Decoder graphs that vskip did not export: the legacy TorchScript exporter and
transformers' own OnnxExporter, for any family's tiny preset.

Both take the feeds of ``prepare_decoder_inputs`` (vskip's prefill inputs, by name) as
their sample. The legacy export traces vskip's ``PrefillDecoder`` wrapper, so its graph
has vskip's input and output names. transformers' exporter traces the text model itself
with the keyword arguments the full model would give it (``text_model_kwargs``), and
names the graph inputs after those keywords, flattened (``deepstack_visual_embeds.0``,
...): ``graph_feeds`` maps decoder feeds onto them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch.utils import _pytree as pytree
from transformers import exporters

from conftest import tiny_model
from vskip_compile.models.wrappers import PrefillDecoder, output_names, prefill_input_names

_COMMON = ("inputs_embeds", "attention_mask", "position_ids")


def text_model_kwargs(family, feeds: dict) -> dict:
    """What the full model passes its text model for these decoder feeds (cache aside):
    the common inputs plus the family's extras in the text model's own form (Qwen3-VL's
    DeepStack list, Gemma3's mask dict in place of the 2-D mask)."""
    extras = {e.name: feeds[e.name] for e in family.extra_inputs}
    return {**{name: feeds[name] for name in _COMMON}, **family.decoder_kwargs(extras)}


def _flat_tensors(kwargs: dict) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(kwargs) if isinstance(t, torch.Tensor)]


def graph_feeds(path: Path, family, feeds: dict) -> dict:
    """The feeds of a transformers-exported graph: its inputs are the text model's keyword
    tensors in pytree order (an input the trace found unused is dropped from the graph,
    which shows as a name that does not start with its keyword)."""
    kwargs = text_model_kwargs(family, feeds)
    leaves = [(key, t) for key, value in kwargs.items() for t in _flat_tensors({key: value})]
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    picked, position = {}, 0
    for name in names:
        while position < len(leaves) and not name.startswith(leaves[position][0]):
            position += 1  # a keyword tensor the graph does not read
        if position == len(leaves):
            raise AssertionError(f"graph input {name!r} matches none of the keywords {list(kwargs)}")
        picked[name] = leaves[position][1]
        position += 1
    return picked


def legacy_export(path: Path, feeds: dict, family: str = "qwen2_vl") -> Path:
    """``torch.onnx.export(..., dynamo=False)`` of the prefill wrapper: present.{i}.* outputs."""
    loaded = tiny_model(family)
    names = prefill_input_names(loaded.family)
    layers = loaded.text_config.num_hidden_layers
    axes = {"inputs_embeds": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "position_ids": {0: "batch", 1: "seq"} if loaded.family.position_rank == 1 else {1: "batch", 2: "seq"}}
    axes.update({e.name: dict(e.dynamic) for e in loaded.family.extra_inputs})
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(PrefillDecoder(loaded.family, loaded.model), tuple(feeds[n] for n in names),
                          str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=output_names(layers), dynamic_axes=axes)
    return path


def transformers_export(directory: Path, feeds: dict, opset: int, family: str = "qwen2_vl") -> Path:
    """transformers' OnnxExporter on the text model: last_hidden_state and
    past_key_values.layers.{i}.keys/values outputs, weights in model.onnx.data."""
    loaded = tiny_model(family)
    sample = text_model_kwargs(loaded.family, feeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = exporters.OnnxExporter().export(loaded.text_model, {**sample, "use_cache": True},
                                                   exporters.OnnxConfig(dynamic=True, opset_version=opset))
        exported.save_pretrained(directory)
    return directory / "model.onnx"
