"""Micro-benchmark: ONNX Runtime MatMul throughput vs rows, with weights that cannot stay cached.

    python tools/matmul_weights.py            # rows 64, 256, 1088; 2 threads
    python tools/matmul_weights.py --kv       # one K+V product vs separate K and V products
    python tools/matmul_weights.py --across-layers 21 --rows 1088
                                              # K/V of 21 layers from one input: 42 products vs one

A chain of ``pairs`` x (896x4864, 4864x896) products, each with its own weights (17.4 MB
apiece, 139 MB for 4 pairs), so every product streams its weights from memory as a
decoder layer does. Frozen layers leave few text rows per weight byte; this measures
what that costs per FLOP (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def chain_throughput(rows: int, pairs: int = 4, reps: int = 20, threads: int = 2, hidden: int = 896,
                     ffn: int = 4864) -> tuple[float, float]:
    """(milliseconds per MatMul, GFLOP/s) medians over ``reps`` runs after 3 warm-up runs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, previous = [], [], "x"
    for i in range(pairs):
        for name, shape in ((f"up{i}", (hidden, ffn)), (f"down{i}", (ffn, hidden))):
            weights.append(numpy_helper.from_array((rng.random(shape, np.float32) - 0.5) * 0.03, name))
            nodes.append(helper.make_node("MatMul", [previous, name], [f"{name}_out"]))
            previous = f"{name}_out"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, hidden])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, [1, rows, hidden])], weights)
    median = _median_run_s(graph, rng.random((1, rows, hidden), np.float32), reps, threads, warmup=3)
    flops = 2 * pairs * 2 * rows * hidden * ffn
    return median * 1e3 / (2 * pairs), flops / median / 1e9


def single_product_ms(rows: int, k: int, n: int, reps: int = 200, threads: int = 2) -> float:
    """Median milliseconds of one [1,rows,k] x [k,n] MatMul (weights stay cached)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.random((k, n), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "one",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows, n])], [weight])
    return _median_run_s(graph, rng.random((1, rows, k), np.float32), reps, threads, warmup=10) * 1e3


def across_layers_ms(rows: int, layers: int, reps: int = 15, threads: int = 2, hidden: int = 896,
                     width: int = 128) -> tuple[float, float]:
    """(separate, fused) median milliseconds: the K and V products of ``layers`` layers over
    one shared input (what a frozen run's all-row K/V are), as 2 x layers MatMuls or as one
    MatMul over the concatenated weights (output left whole, no Split)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    blocks = [(rng.random((hidden, width), np.float32) - 0.5) * 0.03 for _ in range(2 * layers)]
    source = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows, hidden])]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, rows, width]) for i in range(len(blocks))]
    separate = helper.make_graph([helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]) for i in range(len(blocks))],
                                 "separate", source, outputs,
                                 [numpy_helper.from_array(w, f"w{i}") for i, w in enumerate(blocks)])
    fused = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "fused", source,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows, width * len(blocks)])],
                              [numpy_helper.from_array(np.concatenate(blocks, axis=1), "w")])
    x = rng.random((1, rows, hidden), np.float32)
    return tuple(_median_run_s(g, x, reps, threads, warmup=3) * 1e3 for g in (separate, fused))


def _median_run_s(graph, x: np.ndarray, reps: int, threads: int, warmup: int) -> float:
    """Median seconds of one run of ``graph`` (input "x") on ONNX Runtime CPU after warm-up."""
    import onnxruntime as ort
    from onnx import helper

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        session.run(None, {"x": x})
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 256, 1088])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kv", action="store_true",
                        help="time K and V projections (896x128 each) against one fused 896x256 product")
    parser.add_argument("--across-layers", type=int, metavar="L",
                        help="time the K/V products (896x128) of L layers over one input: 2L MatMuls vs one")
    args = parser.parse_args(argv)
    if args.across_layers:
        for rows in args.rows:
            separate, fused = across_layers_ms(rows, args.across_layers, threads=args.threads)
            print(f"rows {rows:5d}: {2 * args.across_layers} K/V products {separate:.2f} ms, "
                  f"one fused product {fused:.2f} ms")
        return 0
    if args.kv:
        for rows in args.rows:
            one = single_product_ms(rows, 896, 128, threads=args.threads)
            fused = single_product_ms(rows, 896, 256, threads=args.threads)
            print(f"rows {rows:5d}: K or V 896x128 {one:.3f} ms (x2 = {2 * one:.3f}), fused 896x256 {fused:.3f} ms")
        return 0
    for rows in args.rows:
        ms, gflops = chain_throughput(rows, threads=args.threads)
        print(f"rows {rows:5d}: {ms:6.3f} ms per MatMul, {gflops:6.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
