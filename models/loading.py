"""Load a model from a checkpoint directory, a tiny preset (``tiny:<model_type>``) or a
packaged trained checkpoint (``testbed:vqa``, :mod:`vskip_compile.testbed`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import check_loading_info, inspect_checkpoint
from .family import Family, get_family
from .families.tiny import perturb_constant_parameters

TINY_PREFIX = "tiny:"


def checkpoint_directory(source: str) -> Path | None:
    """The checkpoint directory SOURCE names: None for a tiny preset (it has none), the
    packaged directory for ``testbed:<name>``, else SOURCE itself. Every reader of a
    source's files goes through here, so a packaged name works wherever a path does."""
    from vskip_compile.testbed import resolve

    if source.startswith(TINY_PREFIX):
        return None
    return Path(resolve(source))


@dataclass
class LoadedModel:
    family: Family
    model: torch.nn.Module
    source: str
    seed: int | None

    @property
    def config(self):
        return self.model.config

    @property
    def text_model(self) -> torch.nn.Module:
        return self.family.text_model(self.model)

    @property
    def text_config(self):
        return self.family.text_config(self.model)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a sidecar dtype name (``float32``, ``float16``, ``bfloat16``)."""
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def load_model(source: str, seed: int = 0, dtype: str = "float32") -> LoadedModel:
    """Load SOURCE in ``dtype`` (a sidecar dtype name), eval mode, with SDPA attention.

    A tiny preset is built in fp32 and then rounded, so its half-precision model is its
    fp32 model's weights in that type (what the dtype gates compare). A checkpoint loads
    straight into ``dtype``: half the memory of an fp32 load.

    Raises VskipError for an unknown preset, an architecture vskip does not support, or a
    checkpoint directory :func:`~.checkpoint.inspect_checkpoint` refuses (missing,
    incomplete, oversized or hostile), before anything of the model is allocated.
    """
    if source.startswith(TINY_PREFIX):
        family = get_family(source[len(TINY_PREFIX):])
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = family.model_class()._from_config(family.tiny_config(), attn_implementation="sdpa")
        perturb_constant_parameters(model, generator)
        if dtype != "float32":
            # Built in the type the way from_pretrained builds it (rotary tables stay fp32),
            # then given the fp32 weights, rounded.
            typed = family.model_class()._from_config(family.tiny_config(), attn_implementation="sdpa",
                                                      dtype=torch_dtype(dtype))
            typed.load_state_dict(model.state_dict())
            model = typed
        return LoadedModel(family, model.eval(), source, seed)

    path = checkpoint_directory(source)
    checkpoint = inspect_checkpoint(path, dtype)
    cls = checkpoint.family.model_class()
    # The checked config, and safetensors only: nothing from_pretrained could reach beyond
    # what inspect_checkpoint read. Mismatched shapes come back in the loading info (one
    # line below) instead of transformers' multi-line RuntimeError.
    model, info = cls.from_pretrained(path, config=checkpoint.config, dtype=torch_dtype(dtype), attn_implementation="sdpa",
                                      use_safetensors=True, local_files_only=True, output_loading_info=True,
                                      ignore_mismatched_sizes=True)
    check_loading_info(info, path, cls.__name__)
    # The source as given: an export of testbed:vqa records the name, not this install's path.
    return LoadedModel(checkpoint.family, model.eval(), str(source), None)


def timed(progress, label: str):
    """Context manager printing '<label> ... done in X s' through ``progress``."""

    class _Timer:
        def __enter__(self):
            self.start = time.perf_counter()
            return self

        def __exit__(self, exc_type, exc, tb):
            if exc_type is None and progress is not None:
                progress(f"{label}: {time.perf_counter() - self.start:.1f} s")

    return _Timer()
