"""Offline processors for the tiny presets: text with image markers plus real images in,
model inputs out, through each family's own transformers processor.

Nothing comes from the hub. Every family gets the same kind of tokenizer (a word-level
``tokenizers`` model wrapped in transformers' fast tokenizer) over the tiny vocabulary:

* ids below 256 are ordinary words ``w<id>`` (``w17`` is id 17), except the config's pad,
  BOS and EOS ids (``<pad>``, ``<bos>``, ``<eos>``) and one ``<unk>`` for any other word
  (a given vocabulary replaces the ``w<id>`` words: the trained testbed's real words);
* 256 is a newline (words are split on spaces, newlines are tokens of their own), 257-260
  the chat role words ``system``, ``user``, ``assistant``, ``model``;
* from 300 on, the family's special tokens at the ids its tiny config uses, then the
  ones the config does not name (chat turn markers, tile tokens) at the next free ids.

and its own PIL image processor (torchvision is not installed, so no "fast" image
processor and no video processor exist here), sized to the tiny vision tower.

What stands for one image in a prompt (``processor(text=..., images=...)`` expands it),
and the tokens one image becomes:

=============  ==============================================  =================================
family         image marker in the text                        image tokens per image
=============  ==============================================  =================================
llava          ``<image>``                                     16 (16 x 16 pixels, 4 x 4 patches)
qwen2_vl,      ``<|vision_start|><|image_pad|><|vision_end|>``  (h / 8) * (w / 8) after resizing
qwen2_5_vl,                                                    to multiples of 8 pixels, 4 to 64
qwen3_vl                                                       per image (``<|image_pad|>`` rows)
smolvlm        ``<image>``                                     16 per frame: 2 x 1, 1 x 2 or 2 x 2
                                                               tiles plus a global frame
internvl       ``<IMG_CONTEXT>``                               9 per tile: 1 to 4 tiles, plus a
                                                               thumbnail when there are several
gemma3         ``<start_of_image>``                            16 (every image squashed to 32 x 32)
=============  ==============================================  =================================

A prompt is words and markers, e.g. ``"w5 w6 <image> w7\\nw8 <image> w9"`` for LLaVA, or
what ``processor.apply_chat_template`` renders from a conversation whose content items are
``{"type": "image"}`` / ``{"type": "text", "text": ...}``: one minimal template for all
families, ``<turn start>role\\ncontent<turn end>\\n`` per message with each family's turn
markers (``<|im_start|>`` / ``<|im_end|>`` for Qwen and InternVL, ``<start_of_turn>`` /
``<end_of_turn>`` and role ``model`` for Gemma3, ``<|im_start|>`` / ``<end_of_utterance>``
for SmolVLM, none for LLaVA).

Image splitting: SmolVLM splits (its processor's default): the image is scaled so its long
side is two tower sizes (64 pixels), cut into tower-size (32 x 32) tiles with
``<row_r_col_c>`` tokens, plus the whole image as a global frame. InternVL tiles too (its
processor's default ``crop_to_patches``): 1 to 4 tower-size (24 x 24) tiles on the grid
closest to the image's aspect ratio, plus a thumbnail when there are several. Both models
take any number of tower-size frames (SmolVLM per batch row, padded with all-zero frames
the model drops; InternVL as more images along axis 0), and every real frame is full size,
so its pixel mask is all ones. Gemma3's pan-and-scan stays off (its processor's default).

The Qwen-VL and InternVL processor classes cannot be used as they are: they take a video
processor, which needs torchvision, and transformers refuses even ``None`` for it. They are
wrapped in ``ImageOnly*`` subclasses whose constructor has no video processor, registered
with ``AutoProcessor`` when this module is imported, so ``AutoProcessor.from_pretrained``
loads a saved one back once this module is imported (without torchvision no transformers
class could load it at all). SmolVLM's own processor also needs the ``num2words`` package
(for video prompts) and a video processor; it gets ``Idefics3Processor``, which writes the
same image prompt (``<fake_token_around_image>`` ``<row_r_col_c>`` / ``<global-img>``
``<image>`` * 16 ...) and needs neither.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vskip_compile.core.errors import VskipError

#: Ids below this are ordinary text (tiny.py: special ids start at 300, synthetic text < 256).
TEXT_IDS = 256
_NEWLINE_ID = 256
_ROLE_WORDS = ("system", "user", "assistant", "model")
_FIRST_SPECIAL_ID = 300

# SmolVLM's long image side in tower sizes: at most 2 x 2 tiles (+ a global frame) keeps
# tiny prompts short while still splitting every image.
_SMOLVLM_TILES_PER_SIDE = 2
# InternVL's tile budget per image; with more than one tile a thumbnail is added.
_INTERNVL_MAX_TILES = 4
# Qwen-VL resizing bounds, in merged tokens per image: the real processors keep at least
# 2 x 2 tokens (min_pixels 56 * 56 at factor 28); 64 at most keeps tiny prompts short.
_QWEN_MIN_TOKENS, _QWEN_MAX_TOKENS = 4, 64


@dataclass(frozen=True)
class _Spec:
    """What one family's processor is made of, as data; :func:`tiny_processor` builds it."""

    #: the processor class: a transformers name or one of the ``ImageOnly*`` classes here.
    processor: str
    image_processor: Callable[[object], object]
    #: tokenizer attribute -> (token text, id from the config or None to allocate one).
    named_tokens: Callable[[object], dict[str, tuple[str, int | None]]]
    #: the text that stands for one image in a prompt.
    marker: str
    #: turn start, turn end and the assistant's role word for the chat template.
    turns: tuple[str, str, str]
    #: special tokens besides the named ones and the turn markers (allocated ids).
    extra_tokens: tuple[str, ...] = ()
    #: prepend BOS to every text, as the family's real tokenizer does.
    add_bos: bool = False
    processor_kwargs: Callable[[object], dict] = field(default=lambda config: {})


def _image_only(base: type) -> type:
    """``base`` (a processor taking a video processor) without one.

    Its constructor lists the sub-processors transformers saves and loads, so dropping
    ``video_processor`` from it is what lets the processor exist without torchvision; the
    base class's video code is never reached because no video processor is set.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        base.__init__(self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                      chat_template=chat_template, **kwargs)

    return type(f"ImageOnly{base.__name__}", (base,), {"__init__": __init__, "__module__": __name__,
                                                        "__doc__": f"{base.__name__} for images only."})


def _image_only_internvl() -> type:
    from transformers import InternVLProcessor

    # transformers saves and reloads only the constructor's named arguments, so
    # image_seq_length must stay one of them.
    def __init__(self, image_processor=None, tokenizer=None, image_seq_length: int = 256, chat_template=None,
                 **kwargs):
        InternVLProcessor.__init__(self, image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                                   image_seq_length=image_seq_length, chat_template=chat_template, **kwargs)

    return type("ImageOnlyInternVLProcessor", (InternVLProcessor,),
                {"__init__": __init__, "__module__": __name__, "__doc__": "InternVLProcessor for images only."})


def _register_image_only() -> dict[str, type]:
    import transformers
    from transformers import AutoProcessor

    classes = [_image_only(getattr(transformers, name))
               for name in ("Qwen2VLProcessor", "Qwen2_5_VLProcessor", "Qwen3VLProcessor")]
    classes.append(_image_only_internvl())
    for cls in classes:
        # AutoProcessor finds a saved processor_class by name among registered classes; a
        # string key keeps the real families' config -> processor mapping untouched.
        AutoProcessor.register(f"vskip-tiny:{cls.__name__}", cls, exist_ok=True)
    return {cls.__name__: cls for cls in classes}


_IMAGE_ONLY = _register_image_only()


# --- per-family parts -------------------------------------------------------------------

def _llava_images(config):
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    size = config.vision_config.image_size
    return LlavaImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def _qwen_images(config):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    vision = config.vision_config
    factor = vision.patch_size * vision.spatial_merge_size  # pixels per merged token side
    return Qwen2VLImageProcessorPil(
        patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
        temporal_patch_size=vision.temporal_patch_size,
        size={"shortest_edge": _QWEN_MIN_TOKENS * factor ** 2, "longest_edge": _QWEN_MAX_TOKENS * factor ** 2})


def _smolvlm_images(config):
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil

    size = config.vision_config.image_size
    return SmolVLMImageProcessorPil(size={"longest_edge": _SMOLVLM_TILES_PER_SIDE * size},
                                    max_image_size={"longest_edge": size}, do_image_splitting=True)


def _internvl_images(config):
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    height, width = config.vision_config.image_size
    return GotOcr2ImageProcessorPil(size={"height": height, "width": width}, crop_to_patches=True, min_patches=1,
                                    max_patches=_INTERNVL_MAX_TILES)


def _gemma3_images(config):
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    size = config.vision_config.image_size
    return Gemma3ImageProcessorPil(size={"height": size, "width": size})


def _qwen_tokens(config):
    return {"image_token": ("<|image_pad|>", config.image_token_id),
            "video_token": ("<|video_pad|>", config.video_token_id),
            "vision_start_token": ("<|vision_start|>", config.vision_start_token_id),
            "vision_end_token": ("<|vision_end|>", config.vision_end_token_id)}


def _internvl_tokens(config):
    # InternVLConfig carries only the context id; the tiny preset fixes the wrappers' ids.
    from .families.internvl import _TINY_END_IMAGE_ID, _TINY_START_IMAGE_ID

    return {"context_image_token": ("<IMG_CONTEXT>", config.image_token_id),
            "start_image_token": ("<img>", _TINY_START_IMAGE_ID),
            "end_image_token": ("</img>", _TINY_END_IMAGE_ID),
            "video_token": ("<video>", None)}


# Qwen's ChatML turns, which InternVL's Qwen2 text model shares.
_IM_TURNS = ("<|im_start|>", "<|im_end|>", "assistant")


def _qwen(name: str) -> _Spec:
    return _Spec(processor=f"ImageOnly{name}", image_processor=_qwen_images,
                 named_tokens=_qwen_tokens, marker="<|vision_start|><|image_pad|><|vision_end|>", turns=_IM_TURNS)


def _smolvlm_kwargs(config):
    from .families.smolvlm import image_seq_len

    return {"image_seq_len": image_seq_len(config)}


_SPECS: dict[str, _Spec] = {
    "llava": _Spec(
        processor="LlavaProcessor", image_processor=_llava_images,
        named_tokens=lambda config: {"image_token": ("<image>", config.image_token_index)},
        marker="<image>", turns=("", "", "assistant"), add_bos=True,
        # CLIP's class token counts as one more feature, which the "default" strategy drops.
        processor_kwargs=lambda config: {"patch_size": config.vision_config.patch_size,
                                         "vision_feature_select_strategy": config.vision_feature_select_strategy,
                                         "num_additional_image_tokens": 1}),
    "qwen2_vl": _qwen("Qwen2VLProcessor"),
    "qwen2_5_vl": _qwen("Qwen2_5_VLProcessor"),
    "qwen3_vl": _qwen("Qwen3VLProcessor"),
    "smolvlm": _Spec(
        processor="Idefics3Processor", image_processor=_smolvlm_images,
        named_tokens=lambda config: {"image_token": ("<image>", config.image_token_id),
                                     "fake_image_token": ("<fake_token_around_image>", config.fake_image_token_id),
                                     "global_image_token": ("<global-img>", config.global_image_token_id)},
        marker="<image>", turns=("<|im_start|>", "<end_of_utterance>", "assistant"),
        extra_tokens=tuple(f"<row_{r}_col_{c}>" for r in range(1, _SMOLVLM_TILES_PER_SIDE + 1)
                           for c in range(1, _SMOLVLM_TILES_PER_SIDE + 1)),
        processor_kwargs=_smolvlm_kwargs),
    "internvl": _Spec(
        processor="ImageOnlyInternVLProcessor", image_processor=_internvl_images,
        named_tokens=_internvl_tokens, marker="<IMG_CONTEXT>", turns=_IM_TURNS,
        processor_kwargs=lambda config: {"image_seq_length": config.image_seq_length}),
    "gemma3": _Spec(
        processor="Gemma3Processor", image_processor=_gemma3_images,
        named_tokens=lambda config: {"boi_token": ("<start_of_image>", config.boi_token_id),
                                     "eoi_token": ("<end_of_image>", config.eoi_token_id),
                                     "image_token": ("<image_soft_token>", config.image_token_id)},
        marker="<start_of_image>", turns=("<start_of_turn>", "<end_of_turn>", "model"), add_bos=True,
        processor_kwargs=lambda config: {"image_seq_length": config.mm_tokens_per_image}),
}


def _spec(model_type: str) -> _Spec:
    if model_type not in _SPECS:
        raise VskipError(f"no tiny processor for '{model_type}': there is one for {', '.join(sorted(_SPECS))}")
    return _SPECS[model_type]


def image_marker(model_type: str) -> str:
    """The text that stands for one image in a prompt for ``model_type``'s processor."""
    return _spec(model_type).marker


# --- shared construction ----------------------------------------------------------------

def _tokenizer(config, named: dict[str, tuple[str, int | None]], extra: list[str], add_bos: bool,
               vocabulary: tuple[str, ...] | None = None):
    """The word-level tokenizer described in the module docstring; ``vocabulary`` (words
    without spaces or newlines) replaces the ``w<id>`` words, taking the free ids below
    256 in order."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    text = config.get_text_config()
    named = {"pad_token": ("<pad>", text.pad_token_id), "bos_token": ("<bos>", text.bos_token_id),
             "eos_token": ("<eos>", text.eos_token_id), **named}
    special = {token: i for token, i in named.values() if i is not None}
    unk_id = min(set(range(TEXT_IDS)) - set(special.values()))
    named["unk_token"] = ("<unk>", unk_id)
    special["<unk>"] = unk_id
    for token in [t for t, i in named.values() if i is None] + extra:
        if token not in special:
            free = [i for i in range(_FIRST_SPECIAL_ID, text.vocab_size) if i not in special.values()]
            if not free:
                raise VskipError(f"tiny processor: the tiny vocabulary ({text.vocab_size}) has no id left for {token}")
            special[token] = free[0]
    free = [i for i in range(TEXT_IDS) if i not in special.values()]
    if vocabulary is None:
        words = {f"w{i}": i for i in free}
    else:
        clash = sorted(set(vocabulary) & (set(special) | {"\n", *_ROLE_WORDS}))
        if len(set(vocabulary)) != len(vocabulary) or clash or len(vocabulary) > len(free):
            raise VskipError(f"tiny processor: a vocabulary needs at most {len(free)} distinct words besides the "
                             f"special and role words{f' (it has {clash[0]!r})' if clash else ''}")
        words = dict(zip(vocabulary, free))
    words.update({"\n": _NEWLINE_ID, **{word: _NEWLINE_ID + 1 + n for n, word in enumerate(_ROLE_WORDS)}})
    ids = list(special.values()) + list(words.values())
    shared = sorted({i for i in ids if ids.count(i) > 1})
    if shared:
        raise VskipError(f"tiny processor: the tiny config gives ids {shared} to more than one token")

    backend = Tokenizer(models.WordLevel({**words, **special}, unk_token="<unk>"))
    # Spaces separate words; newlines are tokens of their own (chat templates and Gemma3's
    # image wrapper use them). Special tokens are split out before either.
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(" ", "removed"),
                                                     pre_tokenizers.Split("\n", "isolated")])
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                               special_tokens=[("<bos>", text.bos_token_id)])
    # Named keywords (image_token=..., boi_token=...) become tokenizer attributes with *_id
    # twins, which the processors read and tokenizer_config.json keeps.
    return PreTrainedTokenizerFast(tokenizer_object=backend, **{name: t for name, (t, _) in named.items()})


def _chat_template(marker: str, turns: tuple[str, str, str]) -> str:
    """One Jinja template for every family: ``<start>role\\ncontent<end>\\n`` per message."""
    start, end, assistant = turns
    # Newlines as expressions: transformers renders templates with trim_blocks, which would
    # drop a literal newline right after a block tag.
    newline = "{{ '\\n' }}"
    role = "{{ '" + assistant + "' if message.role == 'assistant' else message.role }}"
    return (
        "{% for message in messages %}" + start + role + newline +
        "{% if message.content is string %}{{ message.content }}{% else %}"
        "{% for item in message.content %}{% if not loop.first %} {% endif %}"
        "{% if item.type == 'image' %}" + marker + "{% elif item.type == 'text' %}{{ item.text }}{% endif %}"
        "{% endfor %}{% endif %}" + end + newline + "{% endfor %}"
        "{% if add_generation_prompt %}" + start + assistant + newline + "{% endif %}"
    )


def tiny_processor(model_type: str, config, vocabulary: tuple[str, ...] | None = None):
    """An offline ``transformers.ProcessorMixin`` for the tiny preset ``model_type`` with
    ``config`` (its ``Family.tiny_config()``, or any config of that family with the tiny
    token ids); see the module docstring for its tokens, image markers, tiling and chat
    template. ``vocabulary`` gives the ordinary words instead of ``w<id>`` (the trained
    testbed's words)."""
    import transformers

    spec = _spec(model_type)
    turn_markers = [t for t in spec.turns[:2] if t]
    tokenizer = _tokenizer(config, spec.named_tokens(config), turn_markers + list(spec.extra_tokens), spec.add_bos,
                           vocabulary)
    cls = _IMAGE_ONLY.get(spec.processor) or getattr(transformers, spec.processor)
    return cls(image_processor=spec.image_processor(config), tokenizer=tokenizer,
                            chat_template=_chat_template(spec.marker, spec.turns), **spec.processor_kwargs(config))


def save_tiny_processor(model_type: str, config, directory, vocabulary: tuple[str, ...] | None = None) -> list[Path]:
    """Save :func:`tiny_processor` into ``directory``; returns the files written there.

    ``AutoProcessor.from_pretrained(directory, local_files_only=True)`` loads it back once
    this module is imported (the image-only Qwen-VL and InternVL classes register then);
    :func:`load_processor` does both.
    """
    processor = tiny_processor(model_type, config, vocabulary)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    # save_pretrained reports only processor_config.json, not the tokenizer and chat
    # template files it writes beside it: saving into an empty folder first tells them
    # all, and inside ``directory`` the moves are renames.
    with tempfile.TemporaryDirectory(dir=directory, prefix=".processor-") as staging:
        processor.save_pretrained(staging)
        for path in sorted(Path(staging).rglob("*")):
            if path.is_file():
                target = directory / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                written.append(target)
    return written


def load_processor(directory):
    """``AutoProcessor.from_pretrained(directory)`` offline, with the ``ImageOnly*`` classes
    registered, refusing anything less than a processor.

    AutoProcessor quietly falls back to a bare tokenizer when it cannot resolve the saved
    processor class (an ``ImageOnly*`` one before this module is imported, or a real one
    whose video processor needs torchvision); a prompt with images would then fail far
    from the cause.
    """
    from transformers import AutoProcessor, ProcessorMixin

    processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
    if not isinstance(processor, ProcessorMixin):
        raise VskipError(f"{directory}: no multimodal processor loads from there (only a {type(processor).__name__})")
    return processor
