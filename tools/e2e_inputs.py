"""Write a Qwen-VL export's model inputs for one image, for `vskip generate` / `vskip bench --e2e`.

    python tools/e2e_inputs.py /tmp/q05-onnx -o /tmp/q05-inputs.npz --grid 1 64 64

The prompt is ``--text-before`` text tokens, ``<|vision_start|>``, the image's tokens
(t * h * w / merge^2 of them: 1024 for a 1 x 64 x 64 patch grid), ``<|vision_end|>`` and
``--text-after`` text tokens (ids below 1000 and below every special id): the benchmark layout of docs/benchmarks.md (16 + 1024 + 48
rows with the defaults, and the two markers). Token ids and pixels are seeded random
values; the arrays are what a Qwen-VL processor returns (``input_ids``,
``attention_mask``, ``pixel_values`` [patches, C * T * P * P], ``image_grid_thw``).
``--answer-id`` adds ``answer_ids``, which makes the file a `vskip calibrate --data` sample
(the format: docs/calibration.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="a vskip export of a Qwen-VL model (its config.json is read)")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--grid", type=int, nargs=3, default=(1, 64, 64), metavar=("T", "H", "W"),
                        help="the image's patch grid (default 1 64 64: 1024 image tokens)")
    parser.add_argument("--text-before", type=int, default=15)
    parser.add_argument("--text-after", type=int, default=47)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--answer-id", type=int, metavar="TOKEN",
                        help="also write answer_ids (the answer's first token): a `vskip calibrate --data` file")
    args = parser.parse_args(argv)

    config = json.loads((Path(args.export) / "config.json").read_text())
    vision = config["vision_config"]
    t, h, w = args.grid
    merge = vision["spatial_merge_size"]
    channels = vision.get("in_channels", vision.get("in_chans", 3))
    patch_dim = channels * vision["temporal_patch_size"] * vision["patch_size"] ** 2
    rng = np.random.default_rng(args.seed)
    vocab = (config.get("text_config") or config).get("vocab_size", 1000)
    special = [config[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
               if isinstance(config.get(k), int)]
    upper = min(1000, vocab, *special)  # ordinary text ids, below every special one
    text = lambda n: rng.integers(0, upper, n).tolist()  # noqa: E731
    ids = (text(args.text_before) + [config["vision_start_token_id"]]
           + [config["image_token_id"]] * (t * h * w // merge ** 2) + [config["vision_end_token_id"]]
           + text(args.text_after))
    answers = {} if args.answer_id is None else {"answer_ids": np.array([args.answer_id], dtype=np.int64)}
    np.savez(args.output, input_ids=np.array([ids], dtype=np.int64), attention_mask=np.ones((1, len(ids)), np.int64),
             pixel_values=rng.standard_normal((t * h * w, patch_dim)).astype(np.float32),
             image_grid_thw=np.array([[t, h, w]], dtype=np.int64), **answers)
    print(f"wrote {args.output}: {len(ids)} tokens, {t * h * w // merge ** 2} of them image tokens", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
