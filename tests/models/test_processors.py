"""The tiny presets' offline processors (vskip_compile.models.processors) drive the full model.

Each family's processor takes words ``w<id>`` and its image marker, e.g.

* LLaVA, SmolVLM: ``"w5 w6 <image> w7\\nw8 <image> w9"``
* Qwen2-VL, Qwen2.5-VL, Qwen3-VL: ``"w5 w6 <|vision_start|><|image_pad|><|vision_end|> w7 ..."``
* InternVL: ``"w5 w6 <IMG_CONTEXT> w7 ..."``; Gemma3: ``"w5 w6 <start_of_image> w7 ..."``

and expands each marker to the image's tokens (``image_marker`` gives the text). The number
of image tokens comes from transformers' processor and image processor, the features from
the model's vision tower: the full model checks they agree, and so does each test here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from conftest import FAMILIES, tiny_model
from vskip_compile.core.errors import VskipError
from vskip_compile.models.inputs import prepare_decoder_inputs, prompt_from_processor
from vskip_compile.models.processors import (TEXT_IDS, image_marker, load_processor, save_tiny_processor,
                                             tiny_processor)

# Different sizes and aspect ratios, so tiling and dynamic resizing give different token
# counts where the family has them (Qwen-VL grids, SmolVLM and InternVL tiles).
_SHAPES = ((40, 56), (20, 60), (30, 30))


def _pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for h, w in _SHAPES]


def _texts(family: str) -> list[str]:
    marker = image_marker(family)
    return [f"w5 w6 {marker} w7\nw8 {marker} w9", f"w10 {marker} w11 w12 w13 w14"]


def _images() -> list[list[Image.Image]]:
    """Row 0 has two images of different sizes, row 1 one more (nested: one list per row)."""
    first, second, third = _pictures()
    return [[first, second], [third]]


_processors: dict = {}


def _processor(family: str):
    if family not in _processors:
        _processors[family] = tiny_processor(family, tiny_model(family).config)
    return _processors[family]


def _image_tokens(loaded, input_ids: torch.Tensor) -> int:
    return int((input_ids == loaded.family.image_token_id(loaded.config)).sum())


def _feature_rows(loaded, pixels: dict) -> int:
    """Rows the vision tower (and projector) produces for ``pixels``, all images together."""
    with torch.no_grad():
        features = loaded.model.model.get_image_features(**pixels, return_dict=True).pooler_output
    parts = [features] if torch.is_tensor(features) else list(features)
    return sum(part.reshape(-1, part.shape[-1]).shape[0] for part in parts)


def _same(a, b, what: str):
    assert a.keys() == b.keys(), what
    for key in a:
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), f"{what}: {key} differs"


@pytest.mark.parametrize("family", FAMILIES)
def test_two_images_drive_the_full_model(family):
    loaded = tiny_model(family)
    first, second, _ = _pictures()
    prompt = prompt_from_processor(_processor(family), _texts(family)[0], [first, second])
    tokens = _image_tokens(loaded, prompt.input_ids)
    assert tokens > 0
    assert tokens == _feature_rows(loaded, prompt.pixels), "image tokens vs vision tower rows"
    inputs = prepare_decoder_inputs(loaded.family, loaded.model, prompt)  # raises on a count mismatch
    assert inputs.visual_rows.sum() == tokens
    assert torch.isfinite(inputs.full_logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_is_left_padded_and_keeps_each_row(family):
    loaded = tiny_model(family)
    processor = _processor(family)
    texts, images = _texts(family), _images()
    prompt = prompt_from_processor(processor, texts, images)
    mask = prompt.attention_mask
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any(), "rows are left-padded"
    assert _image_tokens(loaded, prompt.input_ids) == _feature_rows(loaded, prompt.pixels)
    for row, (text, row_images) in enumerate(zip(texts, images)):
        alone = prompt_from_processor(processor, text, row_images)
        assert torch.equal(prompt.input_ids[row][mask[row].bool()], alone.input_ids[0]), f"row {row}"
    prepare_decoder_inputs(loaded.family, loaded.model, prompt)


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_processor_reloads_offline_and_gives_the_same_inputs(family, tmp_path):
    config = tiny_model(family).config
    files = save_tiny_processor(family, config, tmp_path)
    assert {f.name for f in files} >= {"processor_config.json", "tokenizer.json", "tokenizer_config.json",
                                       "chat_template.jinja"}
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(files), "nothing else is left"
    reloaded = AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    assert type(reloaded) is type(_processor(family))
    assert type(reloaded.image_processor) is type(_processor(family).image_processor)
    kwargs = dict(text=_texts(family), images=_images(), return_tensors="pt", padding=True)
    for processor in (_processor(family), reloaded):
        processor.tokenizer.padding_side = "left"
    _same(dict(reloaded(**kwargs)), dict(_processor(family)(**kwargs)), f"{family} reloaded")
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "w5 w6"}]}]
    assert (reloaded.apply_chat_template(conversation, add_generation_prompt=True)
            == _processor(family).apply_chat_template(conversation, add_generation_prompt=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_template_places_the_image_marker(family):
    processor = _processor(family)
    picture = _pictures()[0]
    conversation = [{"role": "user", "content": [{"type": "image", "image": picture},
                                                 {"type": "text", "text": "w5 w6"}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert text.count(image_marker(family)) == 1
    assert processor.tokenizer.unk_token_id not in processor.tokenizer(text)["input_ids"], "every word is known"
    processor.tokenizer.padding_side = "left"
    encoded = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                            return_dict=True, return_tensors="pt")
    _same(dict(encoded), dict(processor(text=text, images=[picture], return_tensors="pt")), f"{family} chat")


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_covers_the_tiny_vocabulary(family):
    config = tiny_model(family).config
    tokenizer = _processor(family).tokenizer
    text = config.get_text_config()
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (
        text.pad_token_id, text.bos_token_id, text.eos_token_id)
    tokens = tokenizer.convert_ids_to_tokens(list(range(TEXT_IDS)))
    assert None not in tokens and tokenizer.convert_tokens_to_ids(tokens) == list(range(TEXT_IDS))
    assert max(tokenizer.get_vocab().values()) < text.vocab_size
    special = set(tokenizer.convert_tokens_to_ids(tokenizer.all_special_tokens))
    family_ids = tiny_model(family).family.special_token_ids(config)
    assert family_ids <= special, f"config ids without a special token: {family_ids - special}"


def test_load_processor_refuses_a_bare_tokenizer(tmp_path):
    config = tiny_model("qwen2_vl").config
    save_tiny_processor("qwen2_vl", config, tmp_path / "full")
    assert type(load_processor(tmp_path / "full")).__name__ == "ImageOnlyQwen2VLProcessor"
    _processor("qwen2_vl").tokenizer.save_pretrained(tmp_path / "text")
    with pytest.raises(VskipError, match="no multimodal processor"):
        load_processor(tmp_path / "text")


def test_unknown_family_is_one_line_error():
    with pytest.raises(VskipError, match="no tiny processor for 'bert'") as error:
        tiny_processor("bert", None)
    assert "\n" not in str(error.value)
