"""The trained testbed (vskip_compile.testbed): its task generator and its packaged checkpoint.

The generator must be deterministic with disjoint splits and one-token answers; the
checkpoint must load as ``testbed:vqa`` with its processor, offline, and still answer the
test split at least 90% right on every question type (the issue's bar, on a fixed subset).
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from vskip_compile.core.errors import VskipError
from vskip_compile.testbed import CHECKPOINTS, VQA, resolve
from vskip_compile.testbed.tasks import QUESTION_TYPES, SPLITS, VOCABULARY, prompt, samples, split_of

# 16 test samples per question type: the per-type bar of 0.9 allows one wrong answer.
PER_TYPE = 16


def _pixels(sample) -> bytes:
    return np.asarray(sample.image).tobytes()


def test_the_generator_is_deterministic():
    first, again = samples("test", 24, seed=3), samples("test", 24, seed=3)
    assert [s.key for s in first] == [s.key for s in again]
    assert [_pixels(s) for s in first] == [_pixels(s) for s in again]
    assert [s.key for s in samples("test", 8, seed=3)] == [s.key for s in first[:8]]  # a prefix
    assert [s.key for s in samples("test", 24, seed=4)] != [s.key for s in first]
    assert [s.question_type for s in first[:4]] == list(QUESTION_TYPES)


def test_splits_are_disjoint():
    drawn = {split: samples(split, 200, seed=0) for split in SPLITS}
    for split, items in drawn.items():
        assert all(split_of(s.key) == split for s in items)
    keys = {split: {s.key for s in items} for split, items in drawn.items()}
    for a, b in [("train", "validation"), ("train", "test"), ("validation", "test")]:
        assert not keys[a] & keys[b], (a, b)
    # The key decides the split on its own: the same candidates drawn under another split's
    # name are all refused, so two seeds cannot bring one sample into two splits.
    assert not {s.key for s in samples("train", 400, seed=1)} & (keys["validation"] | keys["test"])
    # The shares are about 80 / 10 / 10.
    shares = Counter(split_of(f"key {i}") for i in range(5000))
    assert 0.75 < shares["train"] / 5000 < 0.85 and 0.07 < shares["test"] / 5000 < 0.13


def test_question_types_have_varied_answers():
    items = samples("validation", 400, seed=0)
    for kind in QUESTION_TYPES:
        answers = Counter(s.answer for s in items if s.question_type == kind)
        # No answer so common that always giving it would pass the 0.9 bar.
        assert len(answers) >= 2 and max(answers.values()) < 0.6 * sum(answers.values()), (kind, answers)


def test_unknown_split_or_type_is_one_line():
    with pytest.raises(VskipError, match="unknown split"):
        samples("dev", 4)
    with pytest.raises(VskipError, match="unknown question type"):
        samples("test", 4, types=("shape",))
    with pytest.raises(VskipError, match="unknown testbed"):
        resolve("testbed:nope")


def test_tasks_import_without_torch():
    code = ("import sys, vskip_compile.testbed, vskip_compile.testbed.tasks; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture(scope="module")
def processor():
    from vskip_compile.models.processors import load_processor

    return load_processor(resolve(VQA))


def test_the_processor_loads_offline(processor, monkeypatch):
    from transformers import LlavaProcessor

    from vskip_compile.models.processors import load_processor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_processor(CHECKPOINTS["vqa"])
    assert isinstance(loaded, LlavaProcessor)
    sample = samples("test", 1)[0]
    ids = loaded(text=[prompt(sample.question)], images=[sample.image], return_tensors="np")["input_ids"][0]
    image_tokens = int((ids == loaded.tokenizer.convert_tokens_to_ids(loaded.image_token)).sum())
    assert image_tokens == 36
    assert 8 <= len(ids) - image_tokens <= 20  # text rows


def test_every_answer_and_prompt_word_is_one_known_token(processor):
    tokenizer = processor.tokenizer
    unk = tokenizer.unk_token_id
    for word in VOCABULARY:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != unk, word
    items = samples("validation", 200, seed=0)
    answer_ids = {tokenizer.convert_tokens_to_ids(s.answer) for s in items}
    assert unk not in answer_ids and len(answer_ids) == len({s.answer for s in items})
    for sample in items[:len(QUESTION_TYPES)]:
        ids = tokenizer(prompt(sample.question))["input_ids"]
        assert unk not in ids, sample.question


def test_the_packaged_checkpoint_answers_the_test_split(processor):
    from vskip_compile.models.loading import load_model
    from vskip_compile.testbed.accuracy import accuracy

    loaded = load_model(VQA)
    assert loaded.source == VQA  # an export records the name, not this install's path
    assert loaded.family.model_type == "llava" and loaded.text_config.num_hidden_layers == 8
    scores = accuracy(loaded.model, processor, samples("test", PER_TYPE * len(QUESTION_TYPES), seed=0))
    assert set(scores) == set(QUESTION_TYPES)
    assert all(score >= 0.9 for score in scores.values()), scores


def test_exports_copy_the_testbed_processor():
    from vskip_compile.models.export import processor_files

    files = processor_files(VQA)
    assert {"tokenizer.json", "processor_config.json"} <= set(files)
    assert all((CHECKPOINTS["vqa"] / name).is_file() for name in files)


def test_a_vocabulary_with_repeated_or_reserved_words_is_refused():
    from vskip_compile.models.families.llava import Llava
    from vskip_compile.models.processors import tiny_processor

    config = Llava().tiny_config()
    for words in (("red", "red"), ("red", "<image>"), ("assistant",)):
        with pytest.raises(VskipError, match="distinct words"):
            tiny_processor("llava", config, vocabulary=words)
