"""The fp32 islands of typed (fp16 / bf16) graphs: what a half graph must keep in fp32.

A model in half precision still computes some things in fp32, and a strictly typed
engine (TensorRT 11 has no other kind) computes exactly what the graph's types say. So
the islands must be in the graph:

- **Norm statistics.** RMS norms square and average in fp32 (``x.float()``); the export
  traces that. At opset 23 onnxscript's ``RmsNormFusion`` turns a Gemma-style norm
  (fp32 ``1 + weight``) into ``RMSNormalization(x, scale)`` with ``x`` still half and
  ``scale`` fp32, a graph ONNX's type rules reject (X and scale share one type) and ONNX
  Runtime will not load. The fused node's output is already fp32, so casting ``x`` to the
  scale's type restores what the model computes (:func:`restore_norm_casts`). Norms
  whose weight is applied in the model's type (Qwen, Llama) fuse with matching types.
- **Rotary tables.** transformers computes cos/sin in fp32 and casts the result; traced.
- **Softmax.** PyTorch's SDPA accumulates attention in fp32 for half inputs; the exported
  graph's softmax would run in half. :func:`softmax_islands` puts it in fp32: the
  Attention op (opset 23) gets ``softmax_precision = FLOAT``; a decomposed softmax
  (opset 20) is wrapped in Casts to fp32 and back.

Each function rewrites the graph's protobuf in place (weights are never loaded) and
returns how many nodes it changed, so a graph that needs nothing is left byte for byte.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

HALF = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


def value_types(graph: onnx.GraphProto) -> dict[str, int]:
    """Every tensor's element type the graph declares (inputs, outputs, value_info,
    initializers, Constant nodes)."""
    known = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.tensor_type.elem_type:
            known[info.name] = info.type.tensor_type.elem_type
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            known[node.output[0]] = node.attribute[0].t.data_type
    return known


def restore_norm_casts(model: onnx.ModelProto) -> int:
    """Cast every RMSNormalization input whose type differs from its scale's to the scale's."""
    graph = model.graph
    types = value_types(graph)
    nodes, fixed = [], 0
    for node in graph.node:
        if node.op_type == "RMSNormalization" and len(node.input) >= 2:
            x, scale = types.get(node.input[0]), types.get(node.input[1])
            if x is not None and scale is not None and x != scale:
                nodes.append(_cast(node.input[0], scale, f"vskip_norm_cast_{fixed}"))
                node.input[0] = nodes[-1].output[0]
                fixed += 1
        nodes.append(node)
    _replace_nodes(graph, nodes, fixed)
    return fixed


def softmax_islands(model: onnx.ModelProto) -> int:
    """Compute every half-precision softmax in fp32 (see the module docstring)."""
    graph = model.graph
    types = value_types(graph)
    nodes, changed = [], 0
    for node in graph.node:
        if node.op_type == "Attention" and node.domain in ("", "ai.onnx") and types.get(node.input[0]) in HALF:
            precision = next((a for a in node.attribute if a.name == "softmax_precision"), None)
            if precision is None or precision.i != TensorProto.FLOAT:
                if precision is not None:
                    node.attribute.remove(precision)
                node.attribute.append(helper.make_attribute("softmax_precision", TensorProto.FLOAT))
                changed += 1
        elif node.op_type == "Softmax" and node.domain in ("", "ai.onnx") and types.get(node.input[0]) in HALF:
            half = types[node.input[0]]
            nodes.append(_cast(node.input[0], TensorProto.FLOAT, f"vskip_softmax_in_{changed}"))
            node.input[0] = nodes[-1].output[0]
            result = node.output[0]
            node.output[0] = f"{result}_fp32"
            nodes.append(node)
            nodes.append(helper.make_node("Cast", [node.output[0]], [result], to=half,
                                          name=f"vskip_softmax_out_{changed}"))
            _declare(graph, node.output[0], TensorProto.FLOAT, result)
            changed += 1
            continue
        nodes.append(node)
    _replace_nodes(graph, nodes, changed)
    return changed


def _cast(name: str, to: int, node_name: str) -> onnx.NodeProto:
    return helper.make_node("Cast", [name], [f"{name}_{TensorProto.DataType.Name(to).lower()}_{node_name}"],
                            to=to, name=node_name)


def _declare(graph: onnx.GraphProto, name: str, elem_type: int, like: str) -> None:
    """A value_info for a new tensor, with the shape of ``like`` where the graph gives one."""
    shaped = next((v for v in graph.value_info if v.name == like), None)
    info = graph.value_info.add()
    if shaped is not None:
        info.CopyFrom(shaped)
    info.name = name
    info.type.tensor_type.elem_type = elem_type


def _replace_nodes(graph: onnx.GraphProto, nodes: list, changed: int) -> None:
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
