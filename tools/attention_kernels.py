"""Micro-benchmark: the attention core of one decoder layer, written the ways ONNX Runtime
can run it, against PyTorch's SDPA, on this host.

    python tools/attention_kernels.py                   # Qwen2-0.5B: 14 query heads, 2 KV heads, dh 64
    python tools/attention_kernels.py --rows 1088 --queries 64   # also the live text queries only

Each variant is a one-node (or few-node) graph over the same random Q, K, V and causal
mask, run with 2 intra-op threads, 3 warm-up runs then the median of ``--reps`` runs;
all variants are interleaved round by round. Every variant's output is checked against a
NumPy float64 reference (max |err| printed), so a fast wrong variant shows. Variants:

- ``attention23-bool``: ONNX Attention (opset 23) with a boolean [B,1,S,S] mask and K/V
  expanded to every query head (what vskip's opset-23 export holds today);
- ``attention23-float``: the same with an additive float mask;
- ``attention23-gqa``: the same, K/V left at their KV heads (the op groups heads itself);
- ``attention23-causal``: ``is_causal=1`` and no mask (only valid without padding);
- ``decomposed``: MatMul, Add mask, Softmax, MatMul (the opset-20 export);
- ``mha-contrib``: com.microsoft MultiHeadAttention with an additive attention bias;
- ``mha-unidirectional``: the same op, causal by its ``unidirectional`` attribute, no mask;
- ``mha-nomask-noncausal``: the same op with no mask at all (its flash path), which is
  *not* causal attention: its large max |err| says so; it shows the kernel's speed only;
- ``gqa-contrib``: com.microsoft GroupQueryAttention, causal, K/V at their KV heads, no mask;
- ``attention23-blocksN``: causal blocking, what ``passes/causal_blocks.py`` writes: the
  queries cut into N chunks, each an Attention-23 over only the keys up to its end, then
  concatenated (only when every row is a query);
- ``decomposed-blocksN``: the same blocking over the opset-20 decomposition;
- ``torch-sdpa``: torch.nn.functional.scaled_dot_product_attention, boolean mask;
- ``torch-sdpa-causal``: the same with ``is_causal`` and no mask (what transformers runs).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _graphs(B, H, KVH, Q, S, D):
    from onnx import TensorProto, helper

    f, b = TensorProto.FLOAT, TensorProto.BOOL
    q = helper.make_tensor_value_info("q", f, [B, H, Q, D])
    k_full = helper.make_tensor_value_info("k", f, [B, H, S, D])
    v_full = helper.make_tensor_value_info("v", f, [B, H, S, D])
    k_g = helper.make_tensor_value_info("kg", f, [B, KVH, S, D])
    v_g = helper.make_tensor_value_info("vg", f, [B, KVH, S, D])
    bmask = helper.make_tensor_value_info("bmask", b, [B, 1, Q, S])
    fmask = helper.make_tensor_value_info("fmask", f, [B, 1, Q, S])
    out = helper.make_tensor_value_info("out", f, None)
    scale = 1.0 / np.sqrt(D)

    def model(nodes, inputs, opset=23, extra=()):
        graph = helper.make_graph(nodes, "attn", inputs, [out])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra], ir_version=10)

    a23 = lambda k, v, mask, **kw: helper.make_node("Attention", ["q", k, v] + ([mask] if mask else []), ["out"],  # noqa: E731
                                                     scale=scale, **kw)
    graphs = {
        "attention23-bool": (model([a23("k", "v", "bmask")], [q, k_full, v_full, bmask]), ["q", "k", "v", "bmask"]),
        "attention23-float": (model([a23("k", "v", "fmask")], [q, k_full, v_full, fmask]), ["q", "k", "v", "fmask"]),
        "attention23-gqa": (model([a23("kg", "vg", "bmask")], [q, k_g, v_g, bmask]), ["q", "kg", "vg", "bmask"]),
    }
    if Q == S:
        graphs["attention23-causal"] = (model([a23("k", "v", None, is_causal=1)], [q, k_full, v_full]), ["q", "k", "v"])
    decomposed = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Add", ["ss", "fmask"], ["sm"]),
        helper.make_node("Softmax", ["sm"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["out"]),
    ]
    scale_init = helper.make_tensor("scale", f, [], [scale])
    g = helper.make_graph(decomposed, "dec", [q, k_full, v_full, fmask], [out], [scale_init])
    graphs["decomposed"] = (helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)], ir_version=10),
                            ["q", "k", "v", "fmask"])
    # MultiHeadAttention takes [B, S, H*D] query/key/value and a [B, H|1, Q, S] additive bias.
    q3 = helper.make_tensor_value_info("q3", f, [B, Q, H * D])
    k3 = helper.make_tensor_value_info("k3", f, [B, S, H * D])
    v3 = helper.make_tensor_value_info("v3", f, [B, S, H * D])
    mha = helper.make_node("MultiHeadAttention", ["q3", "k3", "v3", "", "", "fmask"], ["out"], domain="com.microsoft",
                           num_heads=H, scale=scale)
    g = helper.make_graph([mha], "mha", [q3, k3, v3, fmask], [out])
    contrib = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    graphs["mha-contrib"] = (helper.make_model(g, opset_imports=contrib, ir_version=10), ["q3", "k3", "v3", "fmask"])
    if Q == S:  # the same op without a mask: causal through its attribute, and not at all
        for name, attrs in (("mha-unidirectional", {"unidirectional": 1}), ("mha-nomask-noncausal", {})):
            node = helper.make_node("MultiHeadAttention", ["q3", "k3", "v3"], ["out"], domain="com.microsoft",
                                    num_heads=H, scale=scale, **attrs)
            g = helper.make_graph([node], "mha", [q3, k3, v3], [out])
            graphs[name] = (helper.make_model(g, opset_imports=contrib, ir_version=10), ["q3", "k3", "v3"])
    if Q == S:  # GroupQueryAttention: causal prefill over the KV heads, no mask (no padding)
        qg = helper.make_tensor_value_info("q3", f, [B, S, H * D])
        kg3 = helper.make_tensor_value_info("kg3", f, [B, S, KVH * D])
        vg3 = helper.make_tensor_value_info("vg3", f, [B, S, KVH * D])
        lens = helper.make_tensor_value_info("seqlens", TensorProto.INT32, [B])
        total = helper.make_tensor_value_info("total", TensorProto.INT32, [])
        gqa = helper.make_node("GroupQueryAttention", ["q3", "kg3", "vg3", "", "", "seqlens", "total"],
                               ["out", "present_k", "present_v"], domain="com.microsoft", num_heads=H,
                               kv_num_heads=KVH, scale=scale)
        g = helper.make_graph([gqa], "gqa", [qg, kg3, vg3, lens, total],
                              [out] + [helper.make_tensor_value_info(n, f, None) for n in ("present_k", "present_v")])
        graphs["gqa-contrib"] = (helper.make_model(g, opset_imports=[helper.make_opsetid("", 20),
                                                                     helper.make_opsetid("com.microsoft", 1)],
                                                   ir_version=10), ["q3", "kg3", "vg3", "seqlens", "total"])
    if Q == S:
        for n in (4, 8, 16, 32):
            graphs[f"attention23-blocks{n}"] = (model(_blocked(n, S, "Attention", scale), [q, k_full, v_full, bmask]),
                                                ["q", "k", "v", "bmask"])
            g = helper.make_graph(_blocked(n, S, "decomposed", scale), "dec", [q, k_full, v_full, fmask], [out],
                                  [scale_init])
            graphs[f"decomposed-blocks{n}"] = (helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)],
                                                                 ir_version=10), ["q", "k", "v", "fmask"])
    return graphs


def _blocked(n, S, kind, scale):
    """Query chunk c of n attends keys [0, end_c): the causal mask is false beyond them."""
    from onnx import helper, numpy_helper

    nodes, parts = [], []
    bounds = [S * c // n for c in range(n + 1)]
    const = lambda name, values: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(  # noqa: E731
        np.array(values, np.int64), name))
    nodes += [const("ax2", [2]), const("ax23", [2, 3]), const("zero", [0])]
    for c in range(n):
        a, b = bounds[c], bounds[c + 1]
        nodes += [const(f"a{c}", [a]), const(f"b{c}", [b]), const(f"ab{c}", [a, 0]), const(f"bb{c}", [b, b])]
        nodes += [helper.make_node("Slice", ["q", f"a{c}", f"b{c}", "ax2"], [f"q{c}"]),
                  helper.make_node("Slice", ["k", "zero", f"b{c}", "ax2"], [f"k{c}"]),
                  helper.make_node("Slice", ["v", "zero", f"b{c}", "ax2"], [f"v{c}"])]
        if kind == "Attention":
            nodes += [helper.make_node("Slice", ["bmask", f"ab{c}", f"bb{c}", "ax23"], [f"m{c}"]),
                      helper.make_node("Attention", [f"q{c}", f"k{c}", f"v{c}", f"m{c}"], [f"o{c}"], scale=scale)]
        else:
            nodes += [helper.make_node("Slice", ["fmask", f"ab{c}", f"bb{c}", "ax23"], [f"m{c}"]),
                      helper.make_node("Transpose", [f"k{c}"], [f"kt{c}"], perm=[0, 1, 3, 2]),
                      helper.make_node("MatMul", [f"q{c}", f"kt{c}"], [f"s{c}"]),
                      helper.make_node("Mul", [f"s{c}", "scale"], [f"ss{c}"]),
                      helper.make_node("Add", [f"ss{c}", f"m{c}"], [f"sm{c}"]),
                      helper.make_node("Softmax", [f"sm{c}"], [f"p{c}"], axis=-1),
                      helper.make_node("MatMul", [f"p{c}", f"v{c}"], [f"o{c}"])]
        parts.append(f"o{c}")
    nodes.append(helper.make_node("Concat", parts, ["out"], axis=2))
    return nodes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1088, help="keys (sequence rows), default 1088")
    parser.add_argument("--queries", type=int, default=None, help="query rows (default: every row)")
    parser.add_argument("--heads", type=int, default=14)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)

    import onnxruntime as ort
    import torch

    B, H, KVH, S, D = 1, args.heads, args.kv_heads, args.rows, args.head_dim
    Q = args.queries or S
    rng = np.random.default_rng(0)
    q = rng.standard_normal((B, H, Q, D), dtype=np.float32)
    kg = rng.standard_normal((B, KVH, S, D), dtype=np.float32)
    vg = rng.standard_normal((B, KVH, S, D), dtype=np.float32)
    k, v = np.repeat(kg, H // KVH, axis=1), np.repeat(vg, H // KVH, axis=1)
    positions = np.arange(S - Q, S)  # the queries are the last Q rows (text after the image)
    bmask = (np.arange(S)[None, :] <= positions[:, None])[None, None]
    fmask = np.where(bmask, 0.0, -np.inf).astype(np.float32)
    to3 = lambda x: x.transpose(0, 2, 1, 3).reshape(B, x.shape[2], -1)  # noqa: E731
    feeds = {"q": q, "k": k, "v": v, "kg": kg, "vg": vg, "bmask": bmask, "fmask": fmask,
             "q3": to3(q), "k3": to3(k), "v3": to3(v), "kg3": to3(kg), "vg3": to3(vg),
             "seqlens": np.array([S - 1], np.int32), "total": np.array(S, np.int32)}
    scores = (q.astype(np.float64) @ k.astype(np.float64).transpose(0, 1, 3, 2)) / np.sqrt(D) + fmask
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    want = (probs / probs.sum(-1, keepdims=True)) @ v.astype(np.float64)

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.log_severity_level = 3
    runs, errors = {}, {}
    for name, (model, names) in _graphs(B, H, KVH, Q, S, D).items():
        try:
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a variant this ONNX Runtime cannot load is reported, not fatal
            print(f"{name}: ONNX Runtime cannot load it: {str(exc).splitlines()[0][:120]}")
            continue
        wanted = {n: feeds[n] for n in names}
        runs[name] = (lambda s=session, w=wanted: s.run(["out"], w)[0])
    torch.set_num_threads(args.threads)
    tq, tk, tv, tm = (torch.from_numpy(x) for x in (q, k, v, bmask))
    runs["torch-sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=tm).numpy()
    if Q == S:  # what transformers runs for a causal prompt without padding
        runs["torch-sdpa-causal"] = lambda: torch.nn.functional.scaled_dot_product_attention(
            tq, tk, tv, is_causal=True).numpy()
    times = {name: [] for name in runs}
    for name, run in runs.items():
        got = run()
        got = got.reshape(B, Q, H, D).transpose(0, 2, 1, 3) if got.ndim == 3 else got
        errors[name] = float(np.abs(got - want).max())
    for round_index in range(3 + args.reps):
        order = list(runs)[round_index % len(runs):] + list(runs)[:round_index % len(runs)]
        for name in order:
            start = time.perf_counter()
            runs[name]()
            if round_index >= 3:
                times[name].append(time.perf_counter() - start)
    print(f"attention core: B={B}, {H} query heads, {KVH} KV heads, head dim {D}, {Q} queries x {S} keys, "
          f"{args.threads} threads, median of {args.reps} interleaved runs")
    for name in runs:
        print(f"  {name:<20} {np.median(times[name]) * 1e3:8.2f} ms   max |err| {errors[name]:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
