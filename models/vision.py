"""The vision graph ``vision.onnx``: a family's vision tower plus projector, traced.

The graph's inputs are what :meth:`Family.vision_inputs` lists, made on the host by
:func:`vskip_compile.host.vision_feeds` from the model's own pixel inputs; its outputs are
the rows the decoder receives at the image tokens (:attr:`Family.vision_outputs`).

:func:`decoder_image_rows` is the ground truth the tests hold the graph to: the full
model is run on a prompt and the ``inputs_embeds`` its text model receives are read at
the image-token rows, so the reference is the model's own merging, not vskip's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vskip_compile.core.dtypes import numpy_dtype
from vskip_compile.core.sidecar import GraphEntry

from .family import Family, VisionInput
from .inputs import Prompt, prepare_decoder_inputs

VISION_GRAPH = "vision.onnx"
CONFIG_FILE = "config.json"


def config_dict(model) -> dict:
    """The model's config as the host functions read it (JSON round trip: plain types)."""
    return json.loads(model.config.to_json_string(use_diff=False))


def vision_entry(family: Family, config) -> GraphEntry:
    return GraphEntry(VISION_GRAPH, tuple(i.name for i in family.vision_inputs(config)), family.vision_outputs)


def host_feeds(family: Family, model, model_inputs: dict[str, torch.Tensor], dtype: str = "float32"
               ) -> dict[str, np.ndarray]:
    """The vision graph's feeds for ``model_inputs``, from the host functions, with float
    inputs in the export's type."""
    from vskip_compile.host import vision_feeds

    arrays = {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.detach().cpu().numpy()
              for k, v in model_inputs.items()}
    feeds = vision_feeds(family.model_type, config_dict(model), arrays)
    float_type = numpy_dtype(dtype)
    kinds = {i.name: i.dtype for i in family.vision_inputs(model.config)}
    return {name: value.astype(float_type if kinds[name] == "float" else np.dtype(kinds[name]), copy=False)
            for name, value in feeds.items()}


def _to_torch(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        return torch.from_numpy(np.asarray(array, dtype=np.float32)).to(dtype)
    return torch.from_numpy(np.ascontiguousarray(array))


def export_vision(family: Family, model, path: Path, opset: int, external: bool, export_one) -> GraphEntry:
    """Trace the family's vision encoder on its sample images and save it at ``path``.

    ``export_one`` is the exporter's one-graph function (``models.export._export_one``),
    so the vision graph is traced and finished exactly like the decoder graphs.
    """
    entry = vision_entry(family, model.config)
    generator = torch.Generator().manual_seed(3)
    dtype = next(model.parameters()).dtype
    feeds = host_feeds(family, model, family.vision_sample(model.config, generator))
    args = tuple(_to_torch(feeds[name], dtype) for name in entry.inputs)
    dims: dict[str, torch.export.Dim] = {}
    shapes = {}
    for spec in family.vision_inputs(model.config):
        shapes[spec.name] = {axis: dims.setdefault(name, torch.export.Dim(name)) for axis, name in spec.dynamic.items()}
    export_one(_Positional(family.vision_encoder(model)), args, path, list(entry.inputs), list(entry.outputs),
               (tuple(shapes.values()),), opset, external)
    return entry


class FixedSizeImages:
    """Vision-graph inputs of a tower that takes fixed-size images, ``pixel_values``
    [images, C, H, W] (LLaVA's CLIP, Gemma3's SigLIP, InternVL's tiles): crops and tiles a
    processor makes are more images along axis 0. Mixed into those families' classes."""

    def vision_inputs(self, config):
        return (VisionInput("pixel_values", {0: "images"}),)

    def vision_sample(self, config, generator):
        vision = config.vision_config
        size = vision.image_size
        height, width = (size, size) if isinstance(size, int) else size
        return {"pixel_values": torch.randn(2, vision.num_channels, height, width, generator=generator)}


class _Positional(torch.nn.Module):
    """Any encoder as ``forward(*inputs)``, so one dynamic-shapes form fits every family."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, *inputs):
        return self.encoder(*inputs)


@torch.no_grad()
def decoder_image_rows(family: Family, model, prompt: Prompt) -> dict[str, torch.Tensor]:
    """What the full model hands its decoder at the image tokens, as the vision graph
    outputs it: ``image_features`` [T, hidden] (+ ``deepstack_features`` where the family has them)."""
    inputs = prepare_decoder_inputs(family, model, prompt)
    visual = inputs.visual_rows
    rows = {"image_features": inputs.feeds["inputs_embeds"][visual]}
    if "deepstack_features" in family.vision_outputs:
        rows["deepstack_features"] = inputs.feeds["deepstack_visual_embeds"]
    return rows

