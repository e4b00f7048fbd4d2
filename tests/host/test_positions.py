"""The host's positions and decoder extras against what transformers computes.

The reference is what the full model hands its text model (captured by
``prepare_decoder_inputs``): M-RoPE positions from the model's ``get_rope_index``,
Gemma3's masks from ``create_masks_for_vision_model``. Prompts are left-padded by
different amounts, with two images and text between them.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_model
from vskip_compile.core.errors import VskipError
from vskip_compile.host.decoder import gemma3_masks
from vskip_compile.host.positions import decode_positions, mrope_positions, text_positions
from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt

LAYOUT = [3, "image", 12, "image", 2]


def _captured(family: str):
    loaded = tiny_model(family)
    prompt = synthetic_prompt(loaded.family, loaded.config, LAYOUT, batch=2, left_pad=[0, 3], seed=3)
    return loaded, prompt, prepare_decoder_inputs(loaded.family, loaded.model, prompt).feeds


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_mrope_positions_equal_get_rope_index(family):
    loaded, prompt, feeds = _captured(family)
    positions = mrope_positions(prompt.input_ids.numpy(), prompt.attention_mask.numpy(),
                                loaded.config.image_token_id, prompt.pixels["image_grid_thw"].numpy(),
                                loaded.config.vision_config.spatial_merge_size)
    np.testing.assert_array_equal(positions, feeds["position_ids"].numpy())


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_text_positions_equal_the_models(family):
    _, prompt, feeds = _captured(family)
    np.testing.assert_array_equal(text_positions(prompt.attention_mask.numpy()), feeds["position_ids"].numpy())


def test_gemma3_masks_equal_the_models():
    loaded, prompt, feeds = _captured("gemma3")
    masks = gemma3_masks(prompt.input_ids.numpy() == loaded.config.image_token_id, prompt.attention_mask.numpy(),
                         loaded.config.text_config.sliding_window)
    for name, value in masks.items():
        np.testing.assert_array_equal(value, feeds[name].numpy(), err_msg=name)


def test_mrope_refuses_grids_that_do_not_fit_the_prompt():
    ids = np.array([[5, 9, 9, 9, 9, 6]])
    mask = np.ones_like(ids)
    with pytest.raises(VskipError, match="needs 2 image tokens, the prompt has a run of 4"):
        mrope_positions(ids, mask, 9, np.array([[1, 2, 4]]), 2)
    with pytest.raises(VskipError, match="more images than image_grid_thw has grids"):
        mrope_positions(ids, mask, 9, None, 2)
    with pytest.raises(VskipError, match="more grids than the prompts have images"):
        mrope_positions(ids, mask, 9, np.array([[1, 4, 4], [1, 4, 4]]), 2)
    with pytest.raises(VskipError, match="does not divide by the spatial merge size"):
        mrope_positions(ids, mask, 9, np.array([[1, 3, 4]]), 2)


def test_decode_positions_continue_after_the_largest():
    prefill = np.array([[[0, 1, 2, 2, 3]], [[0, 1, 1, 2, 3]], [[0, 1, 2, 1, 5]]])  # [3, 1, 5]
    np.testing.assert_array_equal(decode_positions(prefill, 2, done=1), np.full((3, 1, 2), [7, 8]))
    np.testing.assert_array_equal(decode_positions(np.array([[0, 0, 1, 2]]), 1), [[3]])
