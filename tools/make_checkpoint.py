"""Write a random-weight checkpoint directory at a real model's decoder size.

    python tools/make_checkpoint.py -o /tmp/qwen2vl-0.5b            # Qwen2-0.5B-sized decoder
    vskip export /tmp/qwen2vl-0.5b -o /tmp/qwen2vl-0.5b-onnx
    python tools/make_checkpoint.py -o /tmp/qwen2vl-0.5b-bf16 --dtype bfloat16   # stored as released
    python tools/make_checkpoint.py -o /tmp/qwen2vl-7b --preset qwen2-7b --dtype bfloat16   # 15 GB, 15 GiB RSS

The decoder has the dimensions of Qwen2-0.5B (24 layers, hidden 896, 14 heads, 2 KV
heads, FFN 4864, vocab 151936) inside a Qwen2-VL with a tiny vision tower: the workload
DESIGN.md section 6 and the benchmarks use. Weights are seeded random values; nothing is
downloaded. The directory is what ``save_pretrained`` writes (config.json + safetensors),
so it exercises the same path as a real checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import time

PRESETS = {
    # name: text config overrides (Qwen2 family dimensions)
    "qwen2-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, vocab_size=151936, rope_scaling={"type": "mrope",
                                                                               "mrope_section": [8, 12, 12]}),  # sums to head_dim / 2 = 32
    "qwen2-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, rope_scaling={"type": "mrope",
                                                                               "mrope_section": [16, 24, 24]}),  # head_dim 128
    # Qwen2-VL-7B's decoder: 7.6 B parameters, its LM head not tied to the embedding table.
    "qwen2-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False,
                     rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),  # head_dim 128
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="qwen2-0.5b")
    parser.add_argument("--layers", type=int, help="override the layer count (for quicker experiments)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32",
                        help="the type the weights are stored in (released Qwen2-VL checkpoints are bfloat16)")
    args = parser.parse_args(argv)

    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from vskip_compile.models.families.tiny import perturb_constant_parameters

    text = {"tie_word_embeddings": True, **PRESETS[args.preset], "max_position_embeddings": 32768,
            "bos_token_id": 151643, "eos_token_id": 151645}
    if args.layers:
        text["num_hidden_layers"] = args.layers
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=1, embed_dim=64, hidden_size=text["hidden_size"], num_heads=2, mlp_ratio=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=text["tie_word_embeddings"],
    )
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    # Built in the stored type: a 7B model in fp32 would need 30 GB before any conversion.
    torch.set_default_dtype(getattr(torch, args.dtype))
    model = Qwen2VLForConditionalGeneration(config).eval()
    perturb_constant_parameters(model, torch.Generator().manual_seed(args.seed))
    model.save_pretrained(args.output)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.output}: {params / 1e6:.0f} M parameters in {time.perf_counter() - start:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
