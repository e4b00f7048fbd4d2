"""Comparison helpers with explicit tolerances."""

from __future__ import annotations

import numpy as np
import torch

FP32_ATOL = 1e-4


def as_numpy(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_close(actual, expected, atol=FP32_ATOL, what=""):
    actual, expected = as_numpy(actual), as_numpy(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)))) if actual.size else 0.0
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:g}"


def assert_cache_close(actual, expected, attention_mask, atol=FP32_ATOL, what=""):
    """K/V [B, H, S, D] compared on real (unpadded) rows; padded rows are never attended."""
    actual, expected, mask = as_numpy(actual), as_numpy(expected), as_numpy(attention_mask).astype(bool)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    keep = mask[:, None, :, None]
    err = float(np.max(np.abs(np.where(keep, actual - expected, 0.0))))
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:g}"


def feeds_numpy(feeds: dict) -> dict:
    return {k: as_numpy(v) for k, v in feeds.items()}


def strict_types(model) -> dict[str, int]:
    """Every tensor's element type after ONNX's strict type inference (raises on a conflict)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    types = {t.name: t.data_type for t in inferred.graph.initializer}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    for node in inferred.graph.node:
        if node.op_type == "Constant":
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def check_islands(model, types: dict[str, int], opset: int) -> None:
    """Norm statistics, rotary tables and softmax computed in fp32 (a typed graph's islands)."""
    from onnx import TensorProto

    nodes = model.graph.node
    if opset == 20:
        means = [n for n in nodes if n.op_type == "ReduceMean"]
        assert means and all(types[n.input[0]] == TensorProto.FLOAT for n in means)
        softmax = [n for n in nodes if n.op_type == "Softmax"]
        assert softmax and all(types[n.input[0]] == TensorProto.FLOAT for n in softmax)
    else:
        # RMSNormalization computes its statistics in stash_type (default fp32) whatever X is
        norms = [n for n in nodes if n.op_type == "RMSNormalization"]
        assert norms and all(types[n.input[0]] == TensorProto.FLOAT or next(
            (a.i for a in n.attribute if a.name == "stash_type"), TensorProto.FLOAT) == TensorProto.FLOAT
            for n in norms)
        attention = [n for n in nodes if n.op_type == "Attention"]
        assert attention and all(
            any(a.name == "softmax_precision" and a.i == TensorProto.FLOAT for a in n.attribute) for n in attention)
    trig = [n for n in nodes if n.op_type in ("Cos", "Sin")]
    assert trig and all(types[n.input[0]] == TensorProto.FLOAT for n in trig)




def overflowing_checkpoint(directory):
    """A tiny Qwen2-VL checkpoint whose layer-1 FFN writes ~1e5 into the residual stream:
    beyond fp16's 65504, with every weight inside it. The shared tiny model is left as it was."""
    from conftest import tiny_model

    loaded = tiny_model("qwen2_vl")
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    mlp = loaded.family.decoder_layers(loaded.model)[1].mlp
    try:
        with torch.no_grad():
            mlp.gate_proj.weight.mul_(100)
            mlp.up_proj.weight.mul_(100)
            mlp.down_proj.weight.mul_(1000)
        loaded.model.save_pretrained(directory)
    finally:
        loaded.model.load_state_dict(state)
    return directory
