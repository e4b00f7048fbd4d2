"""Helpers for the tiny presets: seeded random weights the exporter cannot merge."""

from __future__ import annotations

import torch

#: The text decoder every tiny preset shares: 4 layers, hidden 64, GQA with 4 query and 2 KV
#: heads, vocab 320 (special ids at 300 and up stay clear of synthetic text ids below 256).
#: Families override what their architecture needs (head_dim, RoPE, token ids).
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=320, max_position_embeddings=1024,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0)


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
