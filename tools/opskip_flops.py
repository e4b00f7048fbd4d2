"""Reproduce OpSkip's FLOPs figure for Qwen3-VL-8B (preset 20: -33.7% TFLOPs) from graphs.

    python tools/opskip_flops.py export -o /tmp/q3vl8b      # 36-layer prefill graph, weights absent
    python tools/opskip_flops.py curve -o /tmp/q3vl8b       # counts, analytic cross-check, curve, plot

``export`` builds Qwen3-VL-8B's decoder (36 layers, hidden 4096, 32 heads, 8 KV heads,
head dim 128, FFN 12288, vocab 151936, 3 DeepStack layers) without its weights: the model
is created on the meta device, every 2-D weight becomes a zero-strided tensor (its shape,
no memory), it is exported like ``vskip export`` does (same wrapper, dynamic shapes,
family patches, opset 20), and each large initializer is written as a reference into a
sparse data file (right size, no bytes on disk). ``vskip_compile.compile.compile_model``
then compiles it with ``vskip_compile/plans/opskip_qwen3vl8b_preset20.json``.

``curve`` counts both graphs with ``vskip_compile.flops.count_flops`` at several prompt
layouts, checks every count against the DESIGN.md section 6 formula with the skip
semantics of section 2 (``vskip_compile.flops.analytic_flops``, the one copy of it that
``vskip bench`` uses too), prints the FLOPs reduction as a function of the visual/text mix,
finds the mixes that give OpSkip's 33.7% (also if attention products were counted causally,
as FlashAttention-style kernels compute them), and writes ``flops_curve.json`` and
``flops_preset20.png`` into the output directory.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "vskip_compile" / "plans" / "opskip_qwen3vl8b_preset20.json"
PUBLISHED = 0.337  # OpSkip: -33.7% TFLOPs for Qwen3-VL-8B, preset 20

# Qwen3-VL-8B-Instruct's text model (config.json of the released checkpoint).
TEXT = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
            num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
            rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": [24, 20, 20],
                             "mrope_interleaved": True})
DEEPSTACK_LAYERS = 3  # the 8B vision tower feeds DeepStack features after decoder layers 0, 1, 2


def build_config():
    from transformers import Qwen3VLConfig

    # Only the decoder is exported; the vision tower is tiny, with the 8B's output width
    # and number of DeepStack features, since the decoder's inputs depend on those.
    return Qwen3VLConfig(
        text_config=TEXT,
        vision_config=dict(depth=DEEPSTACK_LAYERS, hidden_size=32, intermediate_size=64, num_heads=2,
                           out_hidden_size=TEXT["hidden_size"], patch_size=4, spatial_merge_size=2,
                           temporal_patch_size=2, num_position_embeddings=16,
                           deepstack_visual_indexes=list(range(DEEPSTACK_LAYERS))),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=False,
    )


def shape_only_model(family, config):
    """The model with every parameter of more than 1-D a zero-strided tensor of its shape.

    Norm weights and other 1-D parameters get distinct random values: the exporter merges
    identical small initializers (DESIGN.md section 5), which no real checkpoint has.
    """
    import torch

    with torch.device("meta"):
        model = family.model_class()._from_config(config, attn_implementation="sdpa")
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if param.dim() > 1:
                value = torch.zeros((), dtype=torch.float32).expand(param.shape)
            else:
                value = 1 + 0.1 * torch.randn(param.shape, generator=generator)
            module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None and buffer.is_meta:
                module._buffers[name] = torch.zeros(buffer.shape, dtype=buffer.dtype)
    # RoPE's inverse frequencies are computed at construction: rebuild them on the CPU.
    text = family.text_model(model)
    rotary = type(text.rotary_emb)(config=text.config)
    text.rotary_emb = rotary
    return model.eval()


def trace_feeds(family, hidden: int):
    """Decoder feeds of the tiny Qwen3-VL's trace prompt, widened to ``hidden``: the real
    positions and visual mask, zero embeddings (values do not change the graph)."""
    import torch

    from vskip_compile.models.export import _trace_prompt
    from vskip_compile.models.inputs import prepare_decoder_inputs
    from vskip_compile.models.loading import load_model
    from vskip_compile.models.wrappers import prefill_input_names

    tiny = load_model("tiny:qwen3_vl")
    feeds = prepare_decoder_inputs(tiny.family, tiny.model, _trace_prompt(tiny)).feeds
    batch, seq, _ = feeds["inputs_embeds"].shape
    visual = int(feeds["visual_pos_masks"].sum())
    feeds["inputs_embeds"] = torch.zeros(batch, seq, hidden)
    feeds["deepstack_visual_embeds"] = torch.zeros(DEEPSTACK_LAYERS, visual, hidden)
    return tuple(feeds[name] for name in prefill_input_names(family)), tiny


def export(out: Path) -> Path:
    import onnx_ir as ir
    import torch

    from vskip_compile.models.export import _prefill_dynamic_shapes, describe
    from vskip_compile.core.sidecar import SIDECAR
    from vskip_compile.models.family import get_family
    from vskip_compile.models.loading import LoadedModel
    from vskip_compile.models.wrappers import PrefillDecoder, output_names, prefill_input_names

    out.mkdir(parents=True, exist_ok=True)
    family = get_family("qwen3_vl")
    start = time.perf_counter()
    model = shape_only_model(family, build_config())
    args, _ = trace_feeds(family, TEXT["hidden_size"])
    loaded = LoadedModel(family, model, "Qwen3-VL-8B dimensions, weights absent", None)
    chatter = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(chatter), torch.no_grad(), \
            family.export_patches(model):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            PrefillDecoder(family, model), args, dynamo=True, input_names=prefill_input_names(family),
            output_names=output_names(TEXT["num_hidden_layers"]), dynamic_shapes=_prefill_dynamic_shapes(loaded),
            opset_version=20, verbose=False)
    print(f"traced in {time.perf_counter() - start:.0f} s")
    # Large initializers become references into a sparse file: their bytes are never made.
    data = "weights.absent"
    offset = 0
    for value in program.model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or tensor.size <= 4096:
            continue
        length = int(tensor.size * tensor.dtype.itemsize)  # itemsize is a float (4-bit types)
        value.const_value = ir.ExternalTensor(data, offset, length, tensor.dtype, shape=tensor.shape,
                                              name=value.name, base_dir=str(out))
        offset += length
    ir.save(program.model, out / "prefill.onnx")
    with open(out / data, "wb") as handle:
        handle.truncate(offset)  # sparse: compile_model checks the file covers every reference
    (out / SIDECAR).write_text(describe(loaded, 20, False, decode=False).to_json())  # prefill only
    print(f"wrote {out / 'prefill.onnx'} ({offset / 2**30:.1f} GiB of weights referenced, none written)")

    from vskip_compile.compile import compile_model

    report = compile_model(out / "prefill.onnx", PLAN, out / "preset20.onnx", force=True)
    print(report.summary())
    return out / "preset20.onnx"


# ----------------------------------------------------------------------- analytic cross-check

def layout(visual: int, text: int):
    """The visual-row mask of the prompts here: [visual][text] (OpSkip's freeze scope is "visual")."""
    import numpy as np

    return np.r_[np.ones(visual, dtype=bool), np.zeros(text, dtype=bool)]


def curve(out: Path) -> None:
    from vskip_compile.core.plan import Plan, load_plan
    from vskip_compile.flops import analytic_flops, count_flops, ideal_speedup, plan_flops, save_plot

    plan, _ = load_plan(PLAN)
    actions, vanilla_plan = [a.value for a in plan.actions], Plan.empty(plan.num_layers)
    vanilla_path, compiled_path = out / "prefill.onnx", out / "preset20.onnx"
    # Inside a run of freeze layers the compiled graph recomputes the live rows' K/V in every
    # layer after the run's first (passes/skip_visual.py): work beyond the plan's.
    run_followers = sum(1 for i in range(1, len(actions)) if actions[i] == actions[i - 1] == "freeze")
    d, dkv = TEXT["hidden_size"], TEXT["num_key_value_heads"] * TEXT["head_dim"]
    # Graph counts at a few layouts; each must equal the analytic formula exactly.
    points = []
    for visual, text in ((1116, 100), (1024, 64), (1024, 100), (1296, 80), (1480, 50), (788, 64), (645, 50)):
        S = visual + text  # layout: [visual][text]
        t0 = time.perf_counter()
        vanilla = count_flops(vanilla_path, S, visual)
        compiled = count_flops(compiled_path, S, visual)
        required = plan_flops(vanilla, plan)
        seconds = time.perf_counter() - t0
        for report, which in ((vanilla, vanilla_plan), (required, plan)):
            expected = analytic_flops(TEXT, which, layout(visual, text))
            if report.total - report.other != expected:
                raise SystemExit(f"graph count {report.total} != analytic {expected} at V={visual}, T={text}")
        recomputed = run_followers * 2 * (2 * text * d * dkv)
        if compiled.total - required.total != recomputed:
            raise SystemExit(f"the compiled graph computes {compiled.total - required.total} FLOPs beyond the plan, "
                             f"expected {recomputed} (live-row K/V in frozen runs)")
        saved = 1 - required.total / vanilla.total
        points.append({"visual": visual, "text": text, "vanilla_tflops": vanilla.total / 1e12,
                       "preset20_tflops": required.total / 1e12, "compiled_tflops": compiled.total / 1e12,
                       "reduction": saved, "ideal_speedup": ideal_speedup(vanilla, required),
                       "other_flops": vanilla.other})
        print(f"V={visual:5d} T={text:4d}: {vanilla.total / 1e12:7.3f} -> {required.total / 1e12:7.3f} TFLOPs "
              f"(-{saved:.2%}, {ideal_speedup(vanilla, required):.3f}x)  graph == formula; compiled graph "
              f"+{recomputed / required.total:.3%} (live-row K/V in frozen runs)  [{seconds:.0f} s]")
        if (visual, text) == (1116, 100):
            save_plot(vanilla, required, out / "flops_preset20.png")
            (out / "vanilla_1116v_100t.json").write_text(vanilla.to_json())
            (out / "preset20_1116v_100t.json").write_text(required.to_json())
            (out / "preset20_compiled_1116v_100t.json").write_text(compiled.to_json())
            print(required.format_table())

    # The reduction over the mix, from the formula the graph counts were just checked against.
    def reduction(V, T, causal=False):
        mask = layout(V, T)
        return 1 - analytic_flops(TEXT, plan, mask, causal) / analytic_flops(TEXT, vanilla_plan, mask, causal)

    grid = {T: {V: reduction(V, T) for V in range(256, 2049, 128)} for T in (32, 50, 64, 100, 150, 200)}
    print("\nreduction (graph work) by visual rows V (columns) and text rows T (rows):")
    print("   T \\ V " + "".join(f"{V:>7d}" for V in grid[64]))
    for T, row in grid.items():
        print(f"{T:>8d} " + "".join(f"{r:>7.1%}" for r in row.values()))
    matches = {}
    for causal in (False, True):
        for T in (50, 64, 100):
            best = min(range(64, 4097), key=lambda V: abs(reduction(V, T, causal) - PUBLISHED))
            matches[f"{'causal' if causal else 'graph'}/T={T}"] = {"visual": best,
                                                                   "reduction": reduction(best, T, causal)}
            print(f"{'causal products' if causal else 'graph work'}: T={T}: V={best} gives "
                  f"-{reduction(best, T, causal):.2%} (published -{PUBLISHED:.1%})")
    (out / "flops_curve.json").write_text(json.dumps(
        {"plan": str(PLAN.relative_to(ROOT)), "dims": TEXT, "graph_points": points,
         "grid": {str(T): {str(V): r for V, r in row.items()} for T, row in grid.items()},
         "published_reduction": PUBLISHED, "matches": matches}, indent=2))
    print(f"wrote {out / 'flops_curve.json'} and {out / 'flops_preset20.png'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("export", "curve"))
    parser.add_argument("-o", "--output", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.command == "export":
        export(args.output)
    else:
        curve(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
