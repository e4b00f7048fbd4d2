"""Host-side preparation of decoder inputs.

The decoder graphs take what the full model would hand its text model: merged input
embeddings, the attention mask, position ids and the family's extras. Rather than
re-implementing each family's merging, M-RoPE and mask logic, we run the full model once
and capture the keyword arguments its text model receives; those tensors are the
graph's feeds, and the full model's logits come for free as a check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .family import Family, ImagePrompt


@dataclass
class Prompt:
    """Token ids, padding mask, pixels and other model kwargs (modality ids) of a batch."""

    input_ids: torch.Tensor       # [B, S]
    attention_mask: torch.Tensor  # [B, S], 0 on left padding
    pixels: dict
    model_kwargs: dict

    def prefix(self, family: Family, config, length: int) -> "Prompt":
        """The first ``length`` tokens (all images must lie inside them)."""
        ids, mask = self.input_ids[:, :length], self.attention_mask[:, :length]
        return Prompt(ids, mask, self.pixels, family.model_kwargs(ids, mask, config))


@dataclass
class DecoderInputs:
    feeds: dict[str, torch.Tensor]  # prefill graph inputs, by name
    visual_rows: torch.Tensor       # [B, S] bool: exactly the image-token rows
    input_ids: torch.Tensor
    full_logits: torch.Tensor       # the full model's logits at every position


def synthetic_prompt(family: Family, config, layout: Sequence[int | str], batch: int = 1,
                     left_pad: Sequence[int] | None = None, seed: int = 0) -> Prompt:
    """A prompt for the tiny presets: ``layout`` lists text runs (ints) and "image" items.

    Every row has the same layout with its own random text tokens and pixels; row b is
    left-padded with ``left_pad[b]`` masked tokens, and rows padded less than the most
    get that many extra text tokens in front, so the rows really differ in padding.
    """
    generator = torch.Generator().manual_seed(seed)
    left_pad = list(left_pad or [0] * batch)
    if len(left_pad) != batch:
        raise ValueError("left_pad needs one entry per batch row")
    text_config = config.get_text_config()
    special = family.special_token_ids(config)
    allowed = torch.tensor([i for i in range(min(text_config.vocab_size, 256)) if i not in special])
    rows, images = [], []
    for b in range(batch):
        lead = max(left_pad) - left_pad[b]
        ids = allowed[torch.randint(len(allowed), (lead,), generator=generator)].tolist()
        row_images = []
        for item in layout:
            if item == "image":
                prompt: ImagePrompt = family.image_prompt(config, generator)
                ids += prompt.token_ids
                row_images.append(prompt)
            else:
                ids += allowed[torch.randint(len(allowed), (int(item),), generator=generator)].tolist()
        rows.append(ids)
        images.append(row_images)
    length = len(rows[0]) + left_pad[0]
    pad_id = getattr(text_config, "pad_token_id", None) or 0
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    for b, ids in enumerate(rows):
        start = length - len(ids)
        input_ids[b, start:] = torch.tensor(ids)
        attention_mask[b, start:] = 1
    return Prompt(input_ids, attention_mask, family.stack_pixels(images),
                  family.model_kwargs(input_ids, attention_mask, config))


def prompt_from_processor(processor, text: str | list[str], images: list | None = None) -> Prompt:
    """A prompt for a real checkpoint: its processor expands the image placeholders in
    ``text`` to the right number of image tokens and turns ``images`` into pixels.

    Rows are left-padded, as decoder prefill expects. Everything the processor returns
    besides ids and mask goes to the model: pixel tensors (``pixel_*``, ``image_*``) and
    modality ids such as ``mm_token_type_ids`` / ``token_type_ids``.
    """
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"
    batch = dict(processor(text=text, images=images, return_tensors="pt", padding=True))
    input_ids, attention_mask = batch.pop("input_ids"), batch.pop("attention_mask")
    pixels = {k: v for k, v in batch.items() if k.startswith(("pixel_", "image_"))}
    rest = {k: v for k, v in batch.items() if k not in pixels}
    return Prompt(input_ids, attention_mask, pixels, rest)


@torch.no_grad()
def prepare_decoder_inputs(family: Family, model: torch.nn.Module, prompt: Prompt) -> DecoderInputs:
    """Run the full model on ``prompt`` and return the prefill graph's feeds."""
    captured: dict = {}

    def capture(module, args, kwargs):
        captured.update(kwargs)

    position_ids = family.host_position_ids(prompt.input_ids, prompt.attention_mask)
    extra = {} if position_ids is None else {"position_ids": position_ids}
    handle = family.text_model(model).register_forward_pre_hook(capture, with_kwargs=True)
    try:
        output = model(input_ids=prompt.input_ids, attention_mask=prompt.attention_mask, use_cache=False,
                       **prompt.pixels, **prompt.model_kwargs, **extra)
    finally:
        handle.remove()
    feeds = {
        "inputs_embeds": captured["inputs_embeds"].detach().clone(),
        "attention_mask": prompt.attention_mask.clone(),
        "position_ids": captured["position_ids"].detach().clone(),
    }
    feeds.update({k: v.detach().clone() for k, v in family.capture_extras(captured).items()})
    visual = prompt.input_ids == family.image_token_id(model.config)
    return DecoderInputs(feeds, visual, prompt.input_ids, output.logits.detach())
