"""Train the testbed (``testbed:vqa``): a tiny LLaVA on the synthetic visual QA task.

    python tools/train_testbed.py -o /tmp/vqa --steps 300 --threads 2      # a quick trial

The shipped checkpoint took two runs (docs/testbed.md has the times and accuracies): the
first never learned ``left``, the second, from its checkpoint, did:

    python tools/train_testbed.py                      # writes vskip_compile/testbed/vqa/
    python tools/train_testbed.py --init vskip_compile/testbed/vqa --seed 1 --steps 3000 \
        --mix left,left,left,count,digit,color

The model is LLaVA (the V-Skip paper's family): a 2-layer CLIP vision tower on 48 x 48
images in 8 x 8 patches (36 image tokens), a 2-layer projector and an 8-layer Llama
decoder of hidden size 64, built from ``LlavaConfig`` with seeded random weights. The
processor is the tiny LLaVA one (models/processors.py) with the task's words as its
vocabulary. Training sees only train-split samples (vskip_compile/testbed/tasks.py), one
fresh batch per step in the mix :data:`TRAIN_MIX`, and learns the answer token
(cross-entropy at the last prompt position). Validation and test accuracy per question type are printed at the end, with the
training time; the checkpoint (``save_pretrained`` weights and config plus the processor)
is written into a temporary directory beside the output and renamed into place.

Seeded: the init and every batch come from ``--seed`` (a bit-for-bit rerun was not checked).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

# The order question types come in during training: the two that depend on where an object
# is (color, left) learned slowest in trial runs, so they get twice the samples.
TRAIN_MIX = ("color", "left", "count", "color", "left", "digit")
# 8 decoder layers: enough that choosing which layers to skip is a real choice.
TEXT_LAYERS = 8
VISION_LAYERS = 2


def testbed_config():
    """The testbed's ``LlavaConfig``: the tiny preset's token ids and text dims, deeper."""
    from transformers import LlavaConfig

    from vskip_compile.models.families.tiny import TINY_TEXT
    from vskip_compile.testbed.tasks import IMAGE_SIZE, PATCH_SIZE

    config = LlavaConfig(
        text_config=dict(TINY_TEXT, model_type="llama", num_hidden_layers=TEXT_LAYERS, max_position_embeddings=256),
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128,
                           num_hidden_layers=VISION_LAYERS, num_attention_heads=4, image_size=IMAGE_SIZE,
                           patch_size=PATCH_SIZE, projection_dim=64),
        # The last vision layer: the real default (-2) would leave one of two layers unused.
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_token_index=300,
        tie_word_embeddings=False,
    )
    # transformers' default (0.02) starts hidden-64 layers so small that training sat at the
    # answer prior for hundreds of steps; 0.1 is near 1 / sqrt(hidden).
    config.text_config.initializer_range = 0.1
    return config


def build(seed: int):
    import torch
    from transformers import LlavaForConditionalGeneration

    from vskip_compile.models.processors import tiny_processor
    from vskip_compile.testbed.tasks import VOCABULARY

    config = testbed_config()
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    return model, tiny_processor("llava", config, vocabulary=VOCABULARY)


def load(directory: Path):
    """A checkpoint this script wrote, to train further (``--init``)."""
    from transformers import LlavaForConditionalGeneration

    from vskip_compile.models.processors import load_processor

    model = LlavaForConditionalGeneration.from_pretrained(directory, attn_implementation="sdpa",
                                                          local_files_only=True, use_safetensors=True)
    return model, load_processor(directory)


def train(model, processor, steps: int, batch: int, lr: float, seed: int, log_every: int, progress,
          mix: tuple[str, ...] = TRAIN_MIX) -> float:
    """Train in place; returns the seconds it took."""
    import torch

    from vskip_compile.testbed.accuracy import answer_logits, model_inputs
    from vskip_compile.testbed.tasks import samples

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)

    def schedule(step: int) -> float:  # linear warmup, then cosine to zero
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model.train()
    start = time.perf_counter()
    running = 0.0
    right, seen = Counter(), Counter()
    for step in range(steps):
        # One seed per step: every batch is fresh, and any step can be reproduced alone.
        drawn = samples("train", batch, seed=seed * 1_000_003 + step, types=mix)
        inputs, answers = model_inputs(processor, drawn)
        logits = answer_logits(model, inputs)
        loss = torch.nn.functional.cross_entropy(logits, answers)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        running += loss.item()
        for sample, hit in zip(drawn, (logits.argmax(-1) == answers).tolist()):
            right[sample.question_type] += hit
            seen[sample.question_type] += 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            shares = " ".join(f"{kind} {right[kind] / seen[kind]:.2f}" for kind in seen)
            progress(f"step {step + 1}/{steps}: loss {running / log_every:.3f}, train accuracy {shares}, "
                     f"{time.perf_counter() - start:.0f} s")
            running = 0.0
            right.clear()
            seen.clear()
    model.eval()
    return time.perf_counter() - start


def write_checkpoint(model, processor, output: Path) -> None:
    """``save_pretrained`` of both into a temporary sibling, then renamed into place; an
    older checkpoint there is replaced only once the new one is complete."""
    output = output.resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        # save_pretrained leaves the weights private (0600); the checkpoint ships with the package.
        for item in staging.iterdir():
            os.chmod(item, 0o644)
        os.chmod(staging, 0o755)
        old = None
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}-old-", dir=output.parent))
            os.rename(output, old / output.name)
        os.rename(staging, output)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def main(argv=None) -> int:
    from vskip_compile.testbed import CHECKPOINTS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=CHECKPOINTS["vqa"],
                        help="checkpoint directory to write (default: the packaged testbed:vqa)")
    parser.add_argument("--steps", type=int, default=6500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-samples", type=int, default=1000,
                        help="validation and test samples per question type")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the stated training time is one thread's)")
    parser.add_argument("--log-every", type=int, default=250)
    parser.add_argument("--init", type=Path, metavar="DIR",
                        help="start from this checkpoint (one this script wrote) instead of a seeded random init")
    parser.add_argument("--mix", default=",".join(TRAIN_MIX),
                        help="question types in the order training batches take them, comma-separated "
                             f"(default {','.join(TRAIN_MIX)})")
    args = parser.parse_args(argv)

    import torch

    from vskip_compile.testbed.accuracy import accuracy
    from vskip_compile.testbed.tasks import QUESTION_TYPES, samples

    torch.set_num_threads(args.threads)
    progress = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    model, processor = load(args.init) if args.init else build(args.seed)
    params = sum(p.numel() for p in model.parameters())
    progress(f"testbed: {params / 1e6:.2f} M parameters, {args.steps} steps of {args.batch}, "
             f"{args.threads} thread(s)")
    seconds = train(model, processor, args.steps, args.batch, args.lr, args.seed, args.log_every, progress,
                    tuple(args.mix.split(",")))
    progress(f"training time: {seconds:.0f} s ({seconds / 60:.1f} min)")

    for split in ("validation", "test"):
        # Evaluation seeds differ from the training ones; the split alone keeps them apart.
        scores = accuracy(model, processor, samples(split, args.eval_samples * len(QUESTION_TYPES), seed=args.seed))
        print(f"{split:<10} " + "  ".join(f"{kind} {scores[kind]:.3f}" for kind in QUESTION_TYPES))
    write_checkpoint(model, processor, args.output)
    size = sum(p.stat().st_size for p in args.output.iterdir() if p.is_file())
    progress(f"wrote {args.output} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
