"""Helpers for the tiny presets: seeded random weights the exporter cannot merge."""

from __future__ import annotations

import torch


def perturb_constant_parameters(model: torch.nn.Module, generator: torch.Generator) -> int:
    """Add noise to every parameter whose entries are all equal; returns how many.

    Fresh norms are all ones and fresh biases all zeros, so the dynamo exporter would merge
    them into one initializer shared by every layer; real checkpoints never look like that.
    """
    count = 0
    with torch.no_grad():
        for param in model.parameters():
            flat = param.detach().reshape(-1)
            if flat.numel() and bool((flat == flat[0]).all()):
                param.add_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
                count += 1
    return count
