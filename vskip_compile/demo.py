"""The end-to-end demo: export a tiny Qwen2-VL, run it on ONNX Runtime, compare with PyTorch,
then compile it with the shipped example plan, check it against the PyTorch skip reference
and time it against the vanilla graph."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

DEMO_SOURCE = "tiny:qwen2_vl"
DEMO_LAYOUT = [6, "image", 5, "image", 8]  # text, image, text, image, text
DECODE_STEPS = 4
EXAMPLE_PLAN = Path(__file__).parent / "plans" / "example_tiny.json"


def run_demo(workdir: str | None = None, say: Callable[[str], None] = print) -> dict:
    """Returns the measured errors; prints a short report through ``say``."""
    import torch

    from .models.export import export_model
    from .models.inputs import prepare_decoder_inputs, synthetic_prompt
    from .models.loading import load_model
    from .models.wrappers import DecodeStep, PrefillDecoder, embed_tokens, prefill_input_names
    from .bench import run_bench
    from .compile import compile_model
    from .backends import open_session
    from .validate import validate

    with tempfile.TemporaryDirectory(prefix="vskip-demo-") as scratch:
        out_dir = Path(workdir or scratch) / "tiny-qwen2-vl"
        if workdir is not None and not Path(workdir).exists():
            Path(workdir).mkdir(parents=True)  # the one directory the demo creates for the user
        say(f"[1/6] export {DEMO_SOURCE} -> {out_dir}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_model(DEMO_SOURCE, out_dir, force=_earlier_demo(out_dir), progress=lambda m: say(f"      {m}"))
        loaded = load_model(DEMO_SOURCE)
        family = loaded.family

        say("[2/6] prefill on ONNX Runtime vs PyTorch (fp32)")
        prompt = synthetic_prompt(family, loaded.config, DEMO_LAYOUT, seed=123)
        inputs = prepare_decoder_inputs(family, loaded.model, prompt)
        feeds = {k: v.numpy() for k, v in inputs.feeds.items()}
        ort_out = open_session(out_dir / "prefill.onnx").run(feeds)
        with torch.no_grad():
            ref = PrefillDecoder(family, loaded.model)(*(inputs.feeds[n] for n in prefill_input_names(family)))
        names = list(ort_out)
        logits_err = float(np.abs(ort_out["logits"] - ref[0].numpy()).max())
        cache_err = max(float(np.abs(ort_out[n] - r.numpy()).max()) for n, r in zip(names[1:], ref[1:]))
        visual = int(inputs.visual_rows.sum())
        say(f"      {prompt.input_ids.shape[1]} rows ({visual} visual, 2 images); "
            f"logits max |err| {logits_err:.2e}, K/V max |err| {cache_err:.2e}")

        say(f"[3/6] {DECODE_STEPS} greedy decode steps on ONNX Runtime vs PyTorch")
        decode = open_session(out_dir / "decode.onnx")
        step = DecodeStep(family, loaded.model)
        ort_cache = [ort_out[n] for n in names[1:]]
        ref_cache = list(ref[1:])
        ort_token = ref_token = int(ort_out["logits"][0, -1].argmax())
        mask = prompt.attention_mask
        ort_tokens, ref_tokens = [], []
        for i in range(DECODE_STEPS):
            ort_tokens.append(ort_token)
            ref_tokens.append(ref_token)
            mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], dim=1)
            positions = family.decode_position_ids(inputs.feeds["position_ids"], torch.full((1, 1), i))
            feeds = {"inputs_embeds": embed_tokens(family, loaded.model, torch.tensor([[ort_token]])).numpy(),
                     "attention_mask": mask.numpy(),
                     "position_ids": positions.numpy()}
            feeds.update({f"past_key_values.{n[len('present.'):]}": c for n, c in zip(names[1:], ort_cache)})
            out = decode.run(feeds)
            ort_cache = [out[n] for n in names[1:]]
            ort_token = int(out["logits"][0, -1].argmax())
            with torch.no_grad():
                r = step(embed_tokens(family, loaded.model, torch.tensor([[ref_token]])), mask, positions, *ref_cache)
            ref_cache = list(r[1:])
            ref_token = int(r[0][0, -1].argmax())
        say(f"      ONNX Runtime tokens {ort_tokens}; PyTorch tokens {ref_tokens}; "
            f"{'identical' if ort_tokens == ref_tokens else 'DIFFERENT'}")

        say(f"[4/6] compile with {EXAMPLE_PLAN.name} and validate against the PyTorch skip reference")
        compiled = out_dir / "prefill.vskip.onnx"
        report = compile_model(out_dir / "prefill.onnx", EXAMPLE_PLAN, compiled, force=_earlier_demo(out_dir))
        say("      " + report.table.replace("\n", "\n      "))
        for result in report.passes:
            say(f"      {result.counts()}")
        say(f"      nodes {report.nodes_before} -> {report.nodes_after}, compiled in {report.seconds:.2f} s")
        check = validate(compiled)
        say("      " + check.table().replace("\n", "\n      "))

        say("[5/6] speed on ONNX Runtime: vanilla vs compiled, interleaved rounds")
        timing = run_bench(out_dir / "prefill.onnx", [EXAMPLE_PLAN], visual=inputs.visual_rows[0].numpy(),
                           warmup=3, rounds=10)
        plan_timing = timing["plans"][0]
        say(f"      vanilla {timing['vanilla']['median_s'] * 1e3:.2f} ms, compiled "
            f"{plan_timing['median_s'] * 1e3:.2f} ms (medians, {timing['threads']} threads): measured speedup "
            f"{plan_timing['speedup']:.2f}x, ideal {plan_timing['ideal_speedup']:.2f}x from FLOPs")
        say("      (a 4-layer, 64-wide model: fixed per-op costs dominate its time; docs/benchmarks.md "
            "has a Qwen2-0.5B-sized decoder)")

        say("[6/6] answer a prompt with two images: the export's processor, vision graph, compiled prefill, decode")
        answer = _answer(out_dir, compiled, loaded, say)

        ok = (logits_err <= 1e-4 and cache_err <= 1e-4 and ort_tokens == ref_tokens and check.passed
              and answer["matches"])
        say(f"result: {'PASS' if ok else 'FAIL'} (tolerance 1e-4 absolute)")
        return {"logits_err": logits_err, "cache_err": cache_err, "tokens_match": ort_tokens == ref_tokens,
                "compiled_max_err": check.smallest_passing_atol, "speedup": plan_timing["speedup"],
                "ideal_speedup": plan_timing["ideal_speedup"], "answer": answer["text"], "ok": ok}


DEMO_PROMPT = "w5 w6 <|vision_start|><|image_pad|><|vision_end|> w7 w8 <|vision_start|><|image_pad|><|vision_end|> w9"


def _answer(out_dir: Path, compiled: Path, loaded, say) -> dict:
    """``vskip generate``'s runtime on the compiled graph, against transformers' generate
    with the plan applied to its prefill by the PyTorch skip reference."""
    import torch
    from PIL import Image

    from .core.plan import load_plan
    from .models.reference import reference_generate
    from .runtime.generate import Runtime
    from .runtime.processor import load_processor

    runtime = Runtime(out_dir, compiled=compiled)
    processor = load_processor(runtime.directory, runtime.sidecar)
    processor.tokenizer.padding_side = "left"
    rng = np.random.default_rng(7)
    images = [Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)) for shape in ((40, 56, 3), (32, 32, 3))]
    inputs = {k: np.asarray(v) for k, v in dict(processor(text=[DEMO_PROMPT], images=images, return_tensors="np",
                                                          padding=True)).items()}
    result = runtime.generate(inputs, max_new_tokens=12)
    text = processor.tokenizer.decode(result.token_ids[0], skip_special_tokens=True)
    plan, _ = load_plan(EXAMPLE_PLAN)
    expected = reference_generate(loaded.family, loaded.model, {k: torch.from_numpy(v) for k, v in inputs.items()},
                                  12, plan, torch.from_numpy(result.visual_rows)).tolist()[0]
    matches = result.token_ids[0] == expected[:len(result.token_ids[0])]
    t = result.timings
    say(f"      prompt: {DEMO_PROMPT!r} + 2 images ({int(result.visual_rows.sum())} image tokens)")
    say(f"      answer: {text!r}")
    say(f"      vision {t.vision * 1e3:.1f} ms, prefill {t.prefill * 1e3:.1f} ms, {t.steps} decode steps at "
        f"{t.tokens_per_second or 0:.0f} tokens/s")
    say(f"      transformers' generate with the plan: {'identical tokens' if matches else 'DIFFERENT tokens'}")
    return {"text": text, "matches": matches}


def _earlier_demo(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds an earlier demo's export, which a rerun may replace; any
    other files there are refused by the export like every existing output without --force."""
    from .core.errors import VskipError
    from .core.sidecar import read_sidecar

    try:
        sidecar = read_sidecar(out_dir / "prefill.onnx")
    except VskipError:  # an unreadable sidecar is not a demo's: nothing is replaced
        return False
    return sidecar is not None and sidecar.source == DEMO_SOURCE
