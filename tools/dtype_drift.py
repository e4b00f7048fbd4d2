"""How far the PyTorch model in fp16 / bf16 is from itself in fp32: the measurement behind
``vskip validate``'s half-precision gates (vskip_compile/validate.py, DEFAULT_GATES).

    python tools/dtype_drift.py [--families qwen2_vl llava ...] [--prompts 4] [--batch 8]
    python tools/dtype_drift.py --model /tmp/ckpt --prompts 1 --batch 2

For every model (the tiny presets by default, or a checkpoint directory) and dtype, runs
``--prompts`` synthetic prompts of ``--batch`` rows (validate's layout) through the decoder
in fp32 and in the dtype, with the same feeds, and reports per output class the lowest
cosine similarity and the largest absolute error, and the logits' top-1 agreement, using
validate's own metrics. No ONNX graph is involved: this is the type's own drift.
"""

from __future__ import annotations

import argparse
import json
import sys


def drift(source: str, dtype: str, prompts: int, batch: int) -> dict:
    import numpy as np
    import torch

    from vskip_compile.backends.torch_reference import to_numpy, to_torch
    from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt
    from vskip_compile.models.loading import load_model
    from vskip_compile.models.wrappers import PrefillDecoder, prefill_input_names
    from vskip_compile.validate import DEFAULT_LAYOUT, cosine, top1_agreement

    full, half = load_model(source, dtype="float32"), load_model(source, dtype=dtype)
    names = prefill_input_names(full.family)
    worst: dict[str, dict] = {}
    agree = []
    for p in range(prompts):
        prompt = synthetic_prompt(half.family, half.config, DEFAULT_LAYOUT, batch=batch, seed=100 + p)
        feeds = prepare_decoder_inputs(half.family, half.model, prompt).feeds
        outputs = {}
        for loaded in (full, half):
            model_dtype = next(loaded.model.parameters()).dtype
            args = [to_torch(to_numpy(feeds[n]), model_dtype) for n in names]
            with torch.no_grad():
                outputs[loaded is half] = [to_numpy(v).astype(np.float64)
                                           for v in PrefillDecoder(loaded.family, loaded.model, False)(*args)]
        for i, (want, got) in enumerate(zip(outputs[False], outputs[True])):
            kind = "logits" if i == 0 else ("keys" if i % 2 else "values")
            entry = worst.setdefault(kind, {"lowest_cosine": 1.0, "max_abs": 0.0, "nonfinite": 0})
            entry["nonfinite"] += int((~np.isfinite(got)).sum())
            entry["lowest_cosine"] = min(entry["lowest_cosine"], cosine(got, want))
            entry["max_abs"] = max(entry["max_abs"], float(np.abs(got - want).max()))
            if i == 0:
                agree.append(top1_agreement(got, want))
    return {"model": source, "dtype": dtype, "prompts": prompts, "batch": batch,
            "top1_agreement": float(np.mean(agree)), "lowest_top1_per_prompt": float(min(agree)), **worst}


def main(argv=None) -> int:
    from vskip_compile.models.family import families

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=sorted(families()), help="tiny presets to measure")
    parser.add_argument("--model", help="a checkpoint directory instead of the tiny presets")
    parser.add_argument("--dtypes", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    sources = [args.model] if args.model else [f"tiny:{f}" for f in args.families]
    rows = []
    print(f"{'model':<18} {'dtype':<9} {'top-1':>6} {'min/prompt':>10} {'cos logits':>11} {'cos keys':>11} "
          f"{'cos values':>11} {'abs logits':>10} {'non-finite':>10}")
    for source in sources:
        for dtype in args.dtypes:
            row = drift(source, dtype, args.prompts, args.batch)
            rows.append(row)
            nonfinite = sum(row[k]["nonfinite"] for k in ("logits", "keys", "values"))
            print(f"{source:<18} {dtype:<9} {row['top1_agreement']:6.1%} {row['lowest_top1_per_prompt']:10.1%} "
                  f"{row['logits']['lowest_cosine']:11.7f} {row['keys']['lowest_cosine']:11.7f} "
                  f"{row['values']['lowest_cosine']:11.7f} {row['logits']['max_abs']:10.2e} {nonfinite:10d}",
                  flush=True)
    for dtype in args.dtypes:
        mine = [r for r in rows if r["dtype"] == dtype]
        lowest = min(r[k]["lowest_cosine"] for r in mine for k in ("logits", "keys", "values"))
        print(f"{dtype}: lowest cosine {lowest:.7f}, lowest top-1 per prompt "
              f"{min(r['lowest_top1_per_prompt'] for r in mine):.1%} over {len(mine)} models")
    if args.json:
        with open(args.json, "x") as handle:  # a measurement, never written over
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
