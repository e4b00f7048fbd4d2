"""What calibration costs per sample on a real-sized model: `vskip calibrate`'s scoring
(vskip_compile/calibrate.py) on one prompt of a checkpoint, timed.

    python tools/make_checkpoint.py -o /tmp/q05                  # the Qwen2-0.5B-sized Qwen2-VL
    vskip export /tmp/q05 -o /tmp/q05-onnx --opset 23
    python tools/e2e_inputs.py /tmp/q05-onnx -o /tmp/q05-inputs.npz
    python tools/calibration_cost.py /tmp/q05 /tmp/q05-inputs.npz

The checkpoint has random weights and no task, so its answer is taken to be its own
greedy token (accuracy 1 by construction); the cost does not depend on the weights. The
V-Skip method runs 1 + L + (the chosen plan) forwards per batch, the operator method
1 + 3L + one recheck per candidate tried + 1: this measures the first and states the
second from the measured time per forward.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("inputs", help="the model's inputs for one prompt (.npz, transformers' names)")
    parser.add_argument("--layers", type=int, default=12, help="N for --method vskip (default 12)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    from vskip_compile.calibrate import CalibrationSet, calibrate
    from vskip_compile.core.files import read_npz
    from vskip_compile.models.export import describe
    from vskip_compile.models.loading import load_model

    torch.set_num_threads(args.threads)
    loaded = load_model(args.checkpoint)
    inputs = {k: torch.from_numpy(np.asarray(v)) for k, v in read_npz(args.inputs).items()}
    # What the family's processor adds beside the ids (Qwen-VL: mm_token_type_ids for M-RoPE).
    extras = loaded.family.model_kwargs(inputs["input_ids"], inputs["attention_mask"], loaded.config)
    inputs.update({k: v for k, v in extras.items() if k not in inputs})
    visual = inputs["input_ids"] == loaded.family.image_token_id(loaded.config)
    with torch.no_grad():
        answer = loaded.model(**inputs, logits_to_keep=1).logits[:, -1].argmax(-1)
    samples = CalibrationSet([(inputs, visual, answer)], [v.numpy() for v in visual])
    dims = describe(loaded, 20, False, decode=False).dims()
    start = time.perf_counter()
    result = calibrate(loaded.family, loaded.model, dims, samples, "vskip", layers=args.layers,
                       progress=lambda m: print(m, file=sys.stderr))
    seconds = time.perf_counter() - start
    layers = result.plan.num_layers
    per_forward = seconds / result.forwards
    report = {"checkpoint": args.checkpoint, "rows": int(visual.shape[1]), "visual_rows": int(visual.sum()),
              "layers": layers, "threads": args.threads, "vskip_seconds_per_sample": seconds,
              "vskip_forwards": result.forwards, "seconds_per_forward": per_forward,
              "operators_forwards_at_least": 2 + 3 * layers,
              "operators_seconds_per_sample_at_least": per_forward * (2 + 3 * layers),
              "command": "python tools/calibration_cost.py " + " ".join(sys.argv[1:])}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
