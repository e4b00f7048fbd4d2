"""Comparison helpers with explicit tolerances."""

from __future__ import annotations

import numpy as np
import torch

FP32_ATOL = 1e-4


def as_numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_close(actual, expected, atol=FP32_ATOL, what=""):
    actual, expected = as_numpy(actual), as_numpy(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))) if actual.size else 0.0
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:g}"


def assert_cache_close(actual, expected, attention_mask, atol=FP32_ATOL, what=""):
    """K/V [B, H, S, D] compared on real (unpadded) rows; padded rows are never attended."""
    actual, expected, mask = as_numpy(actual), as_numpy(expected), as_numpy(attention_mask).astype(bool)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    keep = mask[:, None, :, None]
    err = float(np.max(np.abs(np.where(keep, actual - expected, 0.0))))
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:g}"


def feeds_numpy(feeds: dict) -> dict:
    return {k: as_numpy(v) for k, v in feeds.items()}
