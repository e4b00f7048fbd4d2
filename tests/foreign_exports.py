"""Decoder graphs that vskip did not export: the legacy TorchScript exporter and
transformers' own OnnxExporter, on the tiny Qwen2-VL."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from transformers import exporters

from conftest import tiny_model
from vskip_compile.models.wrappers import PrefillDecoder, output_names, prefill_input_names


def legacy_export(path: Path, feeds: dict, family: str = "qwen2_vl") -> Path:
    """``torch.onnx.export(..., dynamo=False)`` of the prefill wrapper: present.{i}.* outputs."""
    loaded = tiny_model(family)
    names = prefill_input_names(loaded.family)
    layers = loaded.text_config.num_hidden_layers
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(PrefillDecoder(loaded.family, loaded.model), tuple(feeds[n] for n in names),
                          str(path), dynamo=False, opset_version=17, input_names=names,
                          output_names=output_names(layers),
                          dynamic_axes={"inputs_embeds": {0: "batch", 1: "seq"},
                                        "attention_mask": {0: "batch", 1: "seq"},
                                        "position_ids": {1: "batch", 2: "seq"}})
    return path


def transformers_export(directory: Path, feeds: dict, opset: int, family: str = "qwen2_vl") -> Path:
    """transformers' OnnxExporter on the text model: last_hidden_state and
    past_key_values.layers.{i}.keys/values outputs, weights in model.onnx.data."""
    loaded = tiny_model(family)
    sample = {name: feeds[name] for name in ("inputs_embeds", "attention_mask", "position_ids")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = exporters.OnnxExporter().export(loaded.text_model, {**sample, "use_cache": True},
                                                   exporters.OnnxConfig(dynamic=True, opset_version=opset))
        exported.save_pretrained(directory)
    return directory / "model.onnx"
