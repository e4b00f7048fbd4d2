"""Load a model from a checkpoint directory or a tiny preset (``tiny:<model_type>``)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vskip_compile.errors import VskipError

from .family import Family, get_family
from .families.tiny import perturb_constant_parameters

TINY_PREFIX = "tiny:"


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


def load_model(source: str, seed: int = 0) -> LoadedModel:
    """Load SOURCE in fp32, eval mode, with SDPA attention.

    Raises VskipError for a missing directory, a directory without config.json or
    safetensors weights, an unknown preset, or an architecture vskip does not support.
    """
    if source.startswith(TINY_PREFIX):
        family = get_family(source[len(TINY_PREFIX):])
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = family.model_class()._from_config(family.tiny_config(), attn_implementation="sdpa")
        perturb_constant_parameters(model, generator)
        return LoadedModel(family, model.float().eval(), source, seed)

    path = Path(source)
    if not path.exists():
        raise VskipError(f"{source}: no such file or directory (expected a checkpoint directory or 'tiny:<model_type>')")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise VskipError(f"{source}: not a transformers checkpoint directory (no config.json)")
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VskipError(f"{source}/config.json: not valid JSON ({exc})") from None
    if not isinstance(model_type, str):
        raise VskipError(f"{source}/config.json: has no 'model_type'")
    family = get_family(model_type)
    if not any(path.glob("*.safetensors")):
        raise VskipError(f"{source}: no *.safetensors weights next to config.json")
    model = family.model_class().from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    return LoadedModel(family, model.eval(), str(path), None)


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
