"""The export's processor: a text prompt and image files to the model's inputs.

An export keeps its checkpoint's processor files (tokenizer, image processor, chat
template), or for a tiny preset an offline one (:mod:`vskip_compile.models.processors`);
the sidecar lists them. transformers loads them from the export directory only
(``local_files_only``, no remote code), and returns numpy arrays.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.errors import VskipError
from ..core.files import input_file, one_line

# Images larger than this are refused before they are decoded (a decompression bomb
# is a small file); far beyond what any vision tower takes.
MAX_IMAGE_PIXELS = 64 * 2**20
MAX_IMAGE_BYTES = 256 * 2**20


def load_processor(directory: Path, sidecar):
    """The processor of the export in ``directory`` (its ``sidecar`` lists the files), or
    None where the export has none."""
    if not sidecar.processor:
        return None
    for name in sidecar.processor:
        input_file(directory / name, "processor file", MAX_IMAGE_BYTES)
    from ..models.processors import load_processor as load

    try:
        return load(str(directory))
    except VskipError:
        raise
    except Exception as exc:  # transformers raises many types for a bad processor file
        raise VskipError(f"{directory}: cannot load the export's processor: {one_line(exc)}") from None


def load_image(path: str):
    """An image file as RGB, refused in one line when missing, unreadable or too large."""
    from PIL import Image

    input_file(path, "image", MAX_IMAGE_BYTES)
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise VskipError(f"{path}: {image.width} x {image.height} pixels is more than vskip reads "
                                 f"({MAX_IMAGE_PIXELS} pixels)")
            return image.convert("RGB")
    except VskipError:
        raise
    except Exception as exc:  # PIL raises many types for a damaged file
        raise VskipError(f"{path}: not a readable image ({one_line(exc)})") from None


def processor_inputs(processor, prompts: list[str], images: list[str]) -> tuple[dict, float]:
    """The model's inputs for ``prompts`` and the image files, and the seconds it took."""
    start = time.perf_counter()
    pictures = [load_image(path) for path in images]
    markers = _image_markers(processor)
    if markers is not None:
        count = sum(prompt.count(markers) for prompt in prompts)
        if count != len(pictures):
            raise VskipError(f"the prompts have {count} image marker(s) {markers!r} but {len(pictures)} --image "
                             "file(s) were given: one marker per image")
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"
    try:
        batch = processor(text=prompts, images=pictures or None, return_tensors="np", padding=True)
    except Exception as exc:  # the processor's own refusal of an image or a prompt
        raise VskipError(f"the processor refused the input: {one_line(exc)}") from None
    return {k: np.asarray(v) for k, v in dict(batch).items()}, time.perf_counter() - start


def _image_markers(processor) -> str | None:
    """The text that stands for one image in a prompt, where the processor says."""
    token = getattr(processor, "image_token", None)
    return token if isinstance(token, str) and token else None
