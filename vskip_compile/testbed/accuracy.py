"""The testbed's answers in PyTorch: model inputs for samples, greedy answers, accuracy.

Training (tools/train_testbed.py) and the tests build their batches here, so the model is
scored on exactly the inputs it was trained on: the processor's, left-padded, with
positions counted over the attention mask (what ``vskip generate``'s host positions and
transformers' ``generate`` use for padded prompts).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from .tasks import Sample, prompt


def model_inputs(processor, batch: list[Sample]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The model's inputs for ``batch`` and its answers' token ids."""
    tokenizer = processor.tokenizer
    tokenizer.padding_side = "left"  # the answer is then the last position of every row
    inputs = dict(processor(text=[prompt(s.question, processor.image_token) for s in batch],
                            images=[s.image for s in batch], return_tensors="pt", padding=True))
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    answers = torch.tensor(tokenizer.convert_tokens_to_ids([s.answer for s in batch]))
    return inputs, answers


def answer_logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The next-token logits after each prompt, [batch, vocab]."""
    return model(**inputs, logits_to_keep=1).logits[:, -1]


@torch.no_grad()
def greedy_answers(model, processor, samples: list[Sample], batch_size: int = 64) -> list[int]:
    """The greedy first generated token of each sample."""
    out: list[int] = []
    for start in range(0, len(samples), batch_size):
        inputs, _ = model_inputs(processor, samples[start:start + batch_size])
        out.extend(answer_logits(model, inputs).argmax(-1).tolist())
    return out


def accuracy(model, processor, samples: list[Sample], batch_size: int = 64) -> dict[str, float]:
    """Per question type, the share of samples whose greedy first token is the answer."""
    predicted = greedy_answers(model, processor, samples, batch_size)
    answers = processor.tokenizer.convert_tokens_to_ids([s.answer for s in samples])
    right, total = defaultdict(int), defaultdict(int)
    for sample, guess, answer in zip(samples, predicted, answers):
        total[sample.question_type] += 1
        right[sample.question_type] += int(guess == answer)
    return {kind: right[kind] / total[kind] for kind in total}
