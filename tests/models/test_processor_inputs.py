"""Host inputs from a checkpoint's processor (text with image placeholders + real images).

The processor is built offline: a word-level tokenizer that knows the tiny LLaVA's image
token and transformers' own CLIP image processor (its PIL backend: no torchvision here)
at the tiny vision tower's size. The number of image tokens per image then comes from
transformers' LlavaProcessor, not from vskip.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlavaProcessor, PreTrainedTokenizerFast
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from conftest import tiny_model
from helpers import assert_close
from vskip_compile.models.inputs import prepare_decoder_inputs, prompt_from_processor
from vskip_compile.models.wrappers import PrefillDecoder, prefill_input_names
from vskip_compile.core.visual_rows import visual_rows_from_ids


def _processor(config) -> LlavaProcessor:
    vocab = {"[PAD]": 0, "[BOS]": 1, "[EOS]": 2, **{chr(ord("a") + i): 3 + i for i in range(26)},
             "<image>": config.image_token_index}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[PAD]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", additional_special_tokens=["<image>"])
    size = config.vision_config.image_size
    images = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    # CLIP adds a class token, which the "default" strategy drops again (as LLaVA-1.5 ships it)
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=config.vision_config.patch_size,
                          vision_feature_select_strategy=config.vision_feature_select_strategy,
                          num_additional_image_tokens=1)


def test_processor_prompt_drives_the_decoder():
    loaded = tiny_model("llava")
    config = loaded.config
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)) for shape in ((40, 56, 3), (30, 30, 3))]
    text = ["a b <image> c d <image> e", "f <image> g <image> h i j k"]
    prompt = prompt_from_processor(_processor(config), text, pictures + pictures)
    per_image = (config.vision_config.image_size // config.vision_config.patch_size) ** 2  # "default" strategy
    assert int((prompt.input_ids == config.image_token_index).sum()) == 4 * per_image
    assert (prompt.attention_mask[:, -1] == 1).all() and (prompt.attention_mask[0, 0] == 0), "rows are left-padded"
    inputs = prepare_decoder_inputs(loaded.family, loaded.model, prompt)
    with torch.no_grad():
        logits = PrefillDecoder(loaded.family, loaded.model, all_logits=True)(
            *(inputs.feeds[n] for n in prefill_input_names(loaded.family)))[0]
    valid = prompt.attention_mask.bool()
    assert_close(logits[valid], inputs.full_logits[valid], what="decoder vs full model")
    first_row = visual_rows_from_ids(prompt.input_ids[:1].numpy(), config.image_token_index)
    assert int(first_row.sum()) == 2 * per_image
