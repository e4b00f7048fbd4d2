"""Vision-graph feeds of the towers with fixed-size images (LLaVA's CLIP, Gemma3's SigLIP,
InternVL, SmolVLM/Idefics3)."""

from __future__ import annotations

import numpy as np

from ..core.errors import VskipError
from . import register_vision_feeds


@register_vision_feeds("llava")
def pixels_only(config: dict, model_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tower takes the processor's ``pixel_values`` [images, C, H, W] as they are."""
    return {"pixel_values": model_inputs["pixel_values"]}


# --- Gemma3, InternVL, SmolVLM --------------------------------------------------------
# Their graphs are traced at the tower's own image size (the prompt's token count per
# image follows from it too), so pixels of another rank or size are refused here, in one
# line, rather than failing inside ONNX Runtime.

def _refuse(config: dict, message: str) -> VskipError:
    return VskipError(f"{config.get('model_type', 'model')}: {message}")


def _tower_size(config: dict) -> tuple[int, int, int]:
    """(channels, height, width) of the vision tower's images; SigLIP configs store one
    ``image_size``, InternViT ``[height, width]``."""
    vision = config["vision_config"]
    size = vision["image_size"]
    height, width = (size, size) if isinstance(size, int) else size
    return int(vision.get("num_channels", 3)), int(height), int(width)


def _pixel_values(config: dict, model_inputs: dict[str, np.ndarray], layout: tuple[str, ...]) -> np.ndarray:
    """``model_inputs["pixel_values"]``, checked against ``layout`` (leading axis names)
    followed by the tower's [C, H, W]."""
    pixels = model_inputs.get("pixel_values")
    if pixels is None:
        raise _refuse(config, "no pixel_values among the model inputs")
    pixels = np.asarray(pixels)
    expected = _tower_size(config)
    if pixels.ndim != len(layout) + 3 or tuple(pixels.shape[len(layout):]) != expected:
        wanted = ", ".join((*layout, *map(str, expected)))
        raise _refuse(config, f"pixel_values has shape {tuple(pixels.shape)}; the vision graph takes [{wanted}]")
    return pixels


@register_vision_feeds("gemma3", "internvl")
def fixed_size_pixels(config: dict, model_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``pixel_values`` [images, C, H, W] at the tower's size, passed as they are:
    Gemma3's pan-and-scan crops and InternVL's tiles already are images along axis 0 (the
    processors' ``num_crops`` / ``num_patches`` only shape the prompt)."""
    return {"pixel_values": _pixel_values(config, model_inputs, ("images",))}


@register_vision_feeds("smolvlm")
def smolvlm_feeds(config: dict, model_inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The processor's [batch, images, C, H, W] pixels as the graph's two inputs.

    Flattened row-major to [batch * images, C, H, W] (row 0's images in order, then row
    1's: the order ``masked_scatter`` fills the image tokens in), the all-zero padding
    images of rows with fewer images dropped as ``get_image_features`` drops them, and the
    pixel mask of each image left turned into its patch mask (:func:`patch_attention_mask`).
    The graph computes the patch position ids from that mask itself.
    """
    pixels = _pixel_values(config, model_inputs, ("batch", "images"))
    if pixels.shape[0] * pixels.shape[1] == 0:
        raise _refuse(config, f"pixel_values {tuple(pixels.shape)} holds no images")
    mask = _pixel_mask(config, model_inputs, pixels.shape)
    pixels = pixels.reshape(-1, *pixels.shape[2:])
    keep = real_images(pixels)
    patches = patch_attention_mask(mask.reshape(-1, *mask.shape[2:])[keep], int(config["vision_config"]["patch_size"]))
    return {"pixel_values": pixels[keep], "patch_attention_mask": patches}


def _pixel_mask(config: dict, model_inputs: dict[str, np.ndarray], pixel_shape: tuple[int, ...]) -> np.ndarray:
    """``pixel_attention_mask`` [batch, images, H, W]; all ones where the processor sent
    none (the model's own default)."""
    shape = (*pixel_shape[:2], *pixel_shape[3:])
    mask = model_inputs.get("pixel_attention_mask")
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise _refuse(config, f"pixel_attention_mask has shape {mask.shape}; pixel_values {tuple(pixel_shape)} "
                              f"needs {shape}")
    return mask


def real_images(pixels: np.ndarray) -> np.ndarray:
    """[n] bool: the images that are not all-zero padding. When every image is padding the
    first one is kept, as ``get_image_features`` keeps it."""
    keep = (pixels != 0).reshape(len(pixels), -1).any(axis=1)
    keep[0] |= not keep.any()
    return keep


def patch_attention_mask(pixel_mask: np.ndarray, patch_size: int) -> np.ndarray:
    """[n, H, W] pixel mask -> [n, H // p, W // p] bool: a patch takes part when any of its
    pixels does (``get_image_features``' unfold-and-sum). A last partial row or column of
    pixels is left out, as the stride-p patch convolution leaves it out."""
    count, height, width = pixel_mask.shape
    rows, cols = height // patch_size, width // patch_size
    blocks = pixel_mask[:, :rows * patch_size, :cols * patch_size].reshape(count, rows, patch_size, cols, patch_size)
    return blocks.sum(axis=(2, 4)) > 0
