"""Measurement: ONNX Runtime's offline transformer fusions on a prefill graph.

    python tools/ort_fusions.py GRAPH.onnx --heads 14 --hidden 896 [--rounds 6] [--warmup 2]

Runs ``onnxruntime.transformers.optimizer.optimize_model`` (``model_type="gpt2"``, ONNX
Runtime's own graph optimizer left off) on GRAPH, writes the fused graph and its weights
into a temporary directory, prints which fusions it made, then times the two graphs in
one session each (2 threads, denormals flushed as vskip's ort-cpu does), interleaved
round by round, on ``vskip bench``'s random feeds, and prints the medians and the largest
output difference. The fused copy is removed at the end. A measurement tool: nothing here
is a test, and vskip does not apply these fusions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graph", type=Path)
    parser.add_argument("--heads", type=int, required=True)
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)

    import onnxruntime as ort
    from onnxruntime.transformers import optimizer

    from vskip_compile.backends import open_session
    from vskip_compile.bench.inputs import model_sidecar
    from vskip_compile.bench.workload import config_feeds, default_visual, synthesize_feeds

    visual = default_visual()
    specs = open_session(args.graph).inputs
    base, _ = synthesize_feeds(specs, visual, model_sidecar(args.graph, None).hidden_size, seed=0)
    feeds = config_feeds(specs, base, visual, str(args.graph))
    with tempfile.TemporaryDirectory(prefix="vskip-fusions-", dir=args.graph.parent) as scratch:
        fused_path = Path(scratch) / "fused.onnx"
        fused = optimizer.optimize_model(str(args.graph), model_type="gpt2", num_heads=args.heads,
                                         hidden_size=args.hidden, opt_level=0, use_gpu=False)
        print("fusions:", {k: v for k, v in fused.get_fused_operator_statistics().items() if v})
        fused.save_model_to_file(str(fused_path), use_external_data_format=True, all_tensors_to_one_file=True)
        del fused

        def session(path):
            settings = ort.SessionOptions()
            settings.intra_op_num_threads = 2
            settings.log_severity_level = 3
            settings.add_session_config_entry("session.set_denormal_as_zero", "1")
            return ort.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])

        sessions = {"as given": session(args.graph), "fused": session(fused_path)}
        outputs = {name: s.run(None, feeds) for name, s in sessions.items()}
        diff = max(float(np.abs(a - b).max()) for a, b in zip(*outputs.values()))
        times = {name: [] for name in sessions}
        for index in range(args.warmup + args.rounds):
            for name in (list(sessions) if index % 2 else list(sessions)[::-1]):
                start = time.perf_counter()
                sessions[name].run(None, feeds)
                if index >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        for name, values in times.items():
            print(f"  {name:<9} median {np.median(values):.3f} s  p25-p75 {np.percentile(values, 25):.3f}-"
                  f"{np.percentile(values, 75):.3f} s")
        print(f"  max |diff| over every output: {diff:.1e}")
        del sessions
    return 0


if __name__ == "__main__":
    sys.exit(main())
