"""Imports every family's host vision module, so each registers its feeds."""

from . import vision_fixed, vision_qwen  # noqa: F401
