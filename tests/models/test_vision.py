"""The vision graph of every family that has one, against the full model.

The reference is what the full model hands its decoder at the image tokens
(``decoder_image_rows``): the model's own vision tower, projector and merging, run by
transformers. The graph is fed through the host functions only (numpy), on a batch of
two prompts with two images each, so several images and the image axis are covered.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from conftest import FAMILIES, tiny_model
from helpers import assert_close
from vskip_compile.models.inputs import synthetic_prompt
from vskip_compile.models.vision import decoder_image_rows, host_feeds


def _has_vision(family: str) -> bool:
    loaded = tiny_model(family)
    try:
        loaded.family.vision_inputs(loaded.config)
    except NotImplementedError:
        return False
    return True


VISION_FAMILIES = [f for f in FAMILIES if _has_vision(f)]


@pytest.fixture(scope="module")
def vision_graphs(exported):
    """The session's fp32 exports hold the vision graph (traced once per family)."""
    return lambda family: exported(family) / "vision.onnx"


@pytest.mark.parametrize("family", VISION_FAMILIES)
def test_vision_graph_matches_the_full_model(family, vision_graphs):
    loaded = tiny_model(family)
    session = ort.InferenceSession(str(vision_graphs(family)), providers=["CPUExecutionProvider"])
    # Not the trace sample: a different number of images, and other pixels.
    prompt = synthetic_prompt(loaded.family, loaded.config, [3, "image", 2, "image", 1], batch=2, seed=5)
    truth = decoder_image_rows(loaded.family, loaded.model, prompt)
    outputs = session.run(None, host_feeds(loaded.family, loaded.model, prompt.pixels))
    names = [o.name for o in session.get_outputs()]
    assert names == list(loaded.family.vision_outputs)
    for name, value in zip(names, outputs):
        assert np.isfinite(value).all(), name
        assert_close(value, truth[name], what=f"{family} {name}")



def test_every_family_has_a_vision_graph():
    assert VISION_FAMILIES == FAMILIES
