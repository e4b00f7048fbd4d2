"""Export time and peak memory at depth: a tiny preset with more layers, or a checkpoint.

    python tools/export_depth.py --family qwen3_vl --layers 36 --workdir /tmp/depth
    python tools/export_depth.py --checkpoint /tmp/ckpt --dtype float16 --workdir /tmp/depth

Writes the deep tiny checkpoint (seeded random weights, norms perturbed like the presets)
into --workdir, then runs ``vskip export`` on it in a child process and prints the
export's own stage times, the wall time and the child's peak RSS (``getrusage``).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path


def deep_checkpoint(family: str, layers: int, directory: Path) -> Path:
    import torch

    from vskip_compile.models.family import get_family
    from vskip_compile.models.families.tiny import perturb_constant_parameters

    spec = get_family(family)
    config = spec.tiny_config()
    text = config.get_text_config()
    text.num_hidden_layers = layers
    if getattr(text, "layer_types", None):  # Gemma3's sliding/full pattern, repeated to the new depth
        text.layer_types = (list(text.layer_types) * layers)[:layers]
    torch.manual_seed(0)
    model = spec.model_class()._from_config(config, attn_implementation="sdpa")
    perturb_constant_parameters(model, torch.Generator().manual_seed(0))
    path = directory / f"{family}-{layers}-ckpt"
    model.save_pretrained(path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="qwen3_vl")
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--checkpoint", help="export this checkpoint instead of a deep tiny preset")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--opset", type=int, default=20)
    parser.add_argument("--prefill-only", action="store_true")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    source = Path(args.checkpoint) if args.checkpoint else deep_checkpoint(args.family, args.layers, workdir)
    out = workdir / f"export-{source.name}-{args.dtype}-{args.opset}"
    command = [sys.executable, "-m", "vskip_compile.cli", "export", str(source), "-o", str(out), "--dtype",
               args.dtype, "--opset", str(args.opset), "--force"] + (["--prefill-only"] if args.prefill_only else [])
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    print(f"wall {wall:.1f} s, peak RSS {peak:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
