"""Locate: every decoder layer is found by structure, on every exporter, and non-decoders are refused.

Expectations come from the model config (layer count, projection shapes), the exporters'
output naming conventions (present.{i}.key), and PyTorch: the located layer outputs,
read from the graph on ONNX Runtime, equal each decoder layer's output in PyTorch.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from onnx import TensorProto, helper

from conftest import FAMILIES, tiny_model
from foreign_exports import legacy_export, transformers_export
from helpers import assert_close, feeds_numpy
from vskip_compile.core.errors import VskipError
from vskip_compile.models.family import get_family
from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt
from vskip_compile.models.wrappers import PrefillDecoder, prefill_input_names
from vskip_compile.passes.locate import LocateError, format_table, locate_layers, locate_model, node_scopes

OPSETS = [20, 23]


def _text_config(family: str):
    return get_family(family).tiny_config().get_text_config()


def _weight_shape(node: gs.Node) -> tuple:
    """The 2-D constant behind a projection's weight input (possibly through a Transpose)."""
    weight = node.inputs[1]
    while not isinstance(weight, gs.Constant):
        weight = weight.inputs[0].inputs[0]
    return tuple(weight.shape)


def _check_layers(structure, family: str, cache_names):
    tc = _text_config(family)
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    assert len(structure.layers) == tc.num_hidden_layers
    for i, layer in enumerate(structure.layers):
        assert layer.index == i
        assert (layer.present_key.name, layer.present_value.name) == cache_names(i)
        assert sorted(_weight_shape(layer.o_proj)) == sorted((tc.num_attention_heads * head_dim, tc.hidden_size))
        assert sorted(_weight_shape(layer.down_proj)) == sorted((tc.intermediate_size, tc.hidden_size))
        assert any(t is layer.attn_branch for t in layer.attn_add.inputs)
        assert any(t is layer.ffn_branch for t in layer.ffn_add.inputs)
        assert layer.ffn_residual is layer.mid or layer.ffn_residual.inputs[0].inputs[0] is layer.mid
    assert structure.final_output is structure.layers[-1].output


def _present(i):
    return f"present.{i}.key", f"present.{i}.value"


def _prompt_inputs(family: str):
    loaded = tiny_model(family)
    prompt = synthetic_prompt(loaded.family, loaded.config, [3, "image", 4], batch=1, seed=5)
    return loaded, prepare_decoder_inputs(loaded.family, loaded.model, prompt)


def _torch_layer_outputs(loaded, feeds) -> list[torch.Tensor]:
    """Each decoder layer's output, from forward hooks on the PyTorch layers."""
    captured = {}
    layers = loaded.family.decoder_layers(loaded.model)

    def hook(index):
        def record(module, args, out):
            captured[index] = out[0] if isinstance(out, tuple) else out
        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            PrefillDecoder(loaded.family, loaded.model)(*(feeds[n] for n in prefill_input_names(loaded.family)))
    finally:
        for handle in handles:
            handle.remove()
    return [captured[i] for i in range(len(layers))]


def _run_with_outputs(model: onnx.ModelProto, names: list[str], feeds: dict) -> dict:
    """Run ``model`` on ORT (its optimizer off) with ``names`` added as graph outputs."""
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    values = session.run(names, {k: v for k, v in feeds_numpy(feeds).items() if k in wanted})
    return dict(zip(names, values))


def _check_layer_outputs_match_pytorch(model: onnx.ModelProto, structure, family: str):
    loaded, inputs = _prompt_inputs(family)
    expected = _torch_layer_outputs(loaded, inputs.feeds)
    got = _run_with_outputs(model, [layer.output.name for layer in structure.layers], inputs.feeds)
    for layer, want in zip(structure.layers, expected):
        assert_close(got[layer.output.name], want, what=f"{family} layer {layer.index} output")


# ----------------------------------------------------------------------------------- exports

@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("family", FAMILIES)
def test_locates_every_layer_of_export(family, opset, exported):
    model = onnx.load(exported(family, opset) / "prefill.onnx", load_external_data=False)
    structure = locate_model(model)
    _check_layers(structure, family, _present)
    for i, layer in enumerate(structure.layers):
        core = layer.attention
        assert core.kind == ("softmax" if opset < 23 else "attention_op")
        ops = [n.op for n in core.nodes]
        assert ops == ["Attention"] if opset >= 23 else (ops[0] == "MatMul" and ops[-1] == "MatMul"
                                                          and ops.count("Softmax") == 1)
        assert core.masks, "every export feeds a causal/padding mask into the core"
        assert core.output in [t for n in core.nodes for t in n.outputs]
        assert layer.module_path and layer.module_path.endswith(f"layers.{i}")
        if i:  # the stream flows from one layer into the next (through a DeepStack add for Qwen3-VL)
            assert _reaches(structure.layers[i - 1].output, layer.input, max_nodes=4)
    assert structure.source.name == "inputs_embeds"


def _reaches(start, target, max_nodes):
    frontier = [start]
    for _ in range(max_nodes + 1):
        if any(t is target for t in frontier):
            return True
        frontier = [out for t in frontier for node in t.outputs for out in node.outputs]
    return False


@pytest.mark.parametrize("opset", OPSETS)
@pytest.mark.parametrize("family", FAMILIES)
def test_located_outputs_are_layer_outputs(family, opset, exported):
    """Numerically: the tensor located as layer i's output is decoder layer i's output in PyTorch."""
    model = onnx.load(exported(family, opset) / "prefill.onnx")
    _check_layer_outputs_match_pytorch(model, locate_model(model), family)


def test_external_data_left_unloaded(exported, tmp_path):
    model = onnx.load(exported("qwen2_vl", 20) / "prefill.onnx")
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)
    lazy = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    assert any(init.data_location == TensorProto.EXTERNAL for init in lazy.graph.initializer)
    _check_layers(locate_model(lazy), "qwen2_vl", _present)


def test_decode_graph(exported):
    """The decode step starts from its inputs_embeds (the runtime's embedding table gives
    them) and concatenates the past into present.*."""
    structure = locate_model(onnx.load(exported("qwen2_vl", 20) / "decode.onnx", load_external_data=False))
    _check_layers(structure, "qwen2_vl", _present)
    assert structure.source.name == "inputs_embeds" and not structure.source.inputs


def test_leaves_graph_unchanged_and_repeats(exported):
    model = onnx.load(exported("qwen2_vl", 23) / "prefill.onnx", load_external_data=False)
    graph = gs.import_onnx(model)
    before = gs.export_onnx(graph).SerializeToString()
    first, second = locate_layers(graph), locate_layers(graph)
    assert gs.export_onnx(graph).SerializeToString() == before
    assert [(a.attn_add, a.ffn_add, a.o_proj, a.down_proj) for a in first.layers] == \
           [(b.attn_add, b.ffn_add, b.o_proj, b.down_proj) for b in second.layers]


def test_format_table(exported):
    structure = locate_model(onnx.load(exported("qwen2_vl", 20) / "prefill.onnx", load_external_data=False))
    table = format_table(structure)
    lines = table.splitlines()
    tc = _text_config("qwen2_vl")
    assert lines[0].split()[:4] == ["layer", "attention", "o_proj", "down_proj"]
    body = lines[2:2 + tc.num_hidden_layers]
    for i, line in enumerate(body):
        cells = line.split()
        assert cells[0] == str(i) and cells[1] == "softmax"
        assert list(_present(i)) == cells[4:6]
        assert cells[-1].endswith(f"layers.{i}")


# ------------------------------------------------------------------------- other exporters

def test_legacy_torchscript_export(tmp_path):
    _, inputs = _prompt_inputs("qwen2_vl")
    model = onnx.load(legacy_export(tmp_path / "legacy.onnx", inputs.feeds))
    structure = locate_model(model)
    _check_layers(structure, "qwen2_vl", _present)
    assert any(n.op == "Cast" for n in gs.import_onnx(model).nodes), "legacy exports carry no-op Casts"
    for i, layer in enumerate(structure.layers):
        assert layer.kind == "softmax"
        assert layer.module_path.endswith(f"layers.{i}")  # from legacy node names, display only
    _check_layer_outputs_match_pytorch(model, structure, "qwen2_vl")


@pytest.mark.parametrize("opset", OPSETS)
def test_transformers_exporter(opset, tmp_path):
    """transformers' own OnnxExporter on the tiny Qwen2-VL language model (weights in external data)."""
    _, inputs = _prompt_inputs("qwen2_vl")
    path = transformers_export(tmp_path, inputs.feeds, opset)
    model = onnx.load(path, load_external_data=False)
    structure = locate_model(model)
    _check_layers(structure, "qwen2_vl",
                  lambda i: (f"past_key_values.layers.{i}.keys", f"past_key_values.layers.{i}.values"))
    assert {layer.kind for layer in structure.layers} == {"softmax" if opset < 23 else "attention_op"}
    _check_layer_outputs_match_pytorch(onnx.load(path), structure, "qwen2_vl")


# -------------------------------------------------------------------------------- refusals

def _const(name, *shape, seed=0):
    return helper.make_tensor(name, TensorProto.FLOAT, shape,
                              np.random.default_rng(seed).standard_normal(shape).astype(np.float32).ravel())


def _cnn() -> onnx.ModelProto:
    """conv -> relu -> conv, a residual Add, pooling and a classifier."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["x", "c2"], ["res"]),
        helper.make_node("GlobalAveragePool", ["res"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [_const("w1", 4, 4, 3, 3), _const("w2", 4, 4, 3, 3, seed=1), _const("fc", 4, 10, seed=2)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _block(x: str, y: str, prefix: str = "", seed: int = 0) -> tuple[list, list]:
    """Nodes and initializers of one pre-norm transformer block (single head, width 8) from
    ``x`` to ``y``; its own tensors' names start with ``prefix``."""
    d = 8
    p = lambda name: prefix + name  # noqa: E731
    nodes = [
        helper.make_node("LayerNormalization", [x, p("g1"), p("b1")], [p("n1")], axis=-1),
        helper.make_node("MatMul", [p("n1"), p("wq")], [p("q")]),
        helper.make_node("MatMul", [p("n1"), p("wk")], [p("k")]),
        helper.make_node("MatMul", [p("n1"), p("wv")], [p("v")]),
        helper.make_node("Transpose", [p("k")], [p("kt")], perm=[0, 2, 1]),
        helper.make_node("MatMul", [p("q"), p("kt")], [p("scores")]),
        helper.make_node("Mul", [p("scores"), p("scale")], [p("scaled")]),
        helper.make_node("Softmax", [p("scaled")], [p("probs")], axis=-1),
        helper.make_node("MatMul", [p("probs"), p("v")], [p("ctx")]),
        helper.make_node("MatMul", [p("ctx"), p("wo")], [p("attn")]),
        helper.make_node("Add", [x, p("attn")], [p("mid")]),
        helper.make_node("LayerNormalization", [p("mid"), p("g2"), p("b2")], [p("n2")], axis=-1),
        helper.make_node("MatMul", [p("n2"), p("w1")], [p("f1")]),
        helper.make_node("Gelu", [p("f1")], [p("g")]),
        helper.make_node("MatMul", [p("g"), p("w2")], [p("f2")]),
        helper.make_node("Add", [p("mid"), p("f2")], [y]),
    ]
    inits = [_const(p(n), d, d, seed=seed + i) for i, n in enumerate(["wq", "wk", "wv", "wo"])]
    inits += [_const(p("w1"), d, 2 * d, seed=seed + 5), _const(p("w2"), 2 * d, d, seed=seed + 6),
              _const(p("scale"), 1, seed=seed + 7)]
    inits += [_const(p(n), d, seed=seed + 8 + i) for i, n in enumerate(["g1", "b1", "g2", "b2"])]
    return nodes, inits


def _encoder_block() -> onnx.ModelProto:
    """One pre-norm transformer block (single head) without any KV output: a vision-encoder layer."""
    nodes, inits = _block("x", "y")
    graph = helper.make_graph(
        nodes, "encoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _blocks_with_flat_write(restore: str) -> onnx.ModelProto:
    """Two blocks with a DeepStack-like update between them, written the way transformers'
    exporter writes ``h[mask] += e``: flatten h, Where(mask, update, flat), reshape back.

    ``restore`` is how the last Reshape gets its target: "shape_of" (Shape(h)), "inferred"
    (a constant, the output's inferred shape [1, n, 8] equal to h's), or the near miss
    "other" (a constant giving [1, n, 2, 4]: a head split, not the stream).
    """
    first, first_inits = _block("x", "h", "l0_")
    second, second_inits = _block("h2", "y", "l1_", seed=20)
    flat = helper.make_tensor("flat", TensorProto.INT64, [1], [-1])
    targets = {"inferred": [1, -1, 8], "other": [1, -1, 2, 4]}
    gap = [helper.make_node("Reshape", ["h", "flat"], ["h_flat"]),
           helper.make_node("Where", ["mask_flat", "update_flat", "h_flat"], ["h_flat2"])]
    inits = first_inits + second_inits + [flat]
    if restore == "shape_of":
        gap += [helper.make_node("Shape", ["h"], ["h_shape"]),
                helper.make_node("Reshape", ["h_flat2", "h_shape"], ["h2"])]
    else:
        inits.append(helper.make_tensor("target", TensorProto.INT64, [len(targets[restore])], targets[restore]))
        gap.append(helper.make_node("Reshape", ["h_flat2", "target"], ["h2"]))
    shapes = [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "n", 8])]
    if restore != "shape_of":
        shapes.append(helper.make_tensor_value_info(
            "h2", TensorProto.FLOAT, [1, "n", 8] if restore == "inferred" else [1, "n", 2, 4]))
    graph = helper.make_graph(
        first + gap + second, "two_blocks",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n", 8]),
         helper.make_tensor_value_info("mask_flat", TensorProto.BOOL, ["n8"]),
         helper.make_tensor_value_info("update_flat", TensorProto.FLOAT, ["n8"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n", 8])], inits, value_info=shapes)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_refuses_cnn():
    with pytest.raises(LocateError, match="not a decoder graph: it has no attention core") as info:
        locate_model(_cnn())
    assert isinstance(info.value, VskipError)


def test_refuses_vision_encoder():
    """The tiny LLaVA's CLIP vision tower: attention layers, but pixels -> Conv patch embedding, no decoder."""
    tower = tiny_model("llava").model.model.vision_tower

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tower = tower

        def forward(self, pixel_values):
            return self.tower(pixel_values=pixel_values).last_hidden_state

    size = tower.config.image_size
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Encoder(), (torch.randn(1, 3, size, size),), dynamo=True, verbose=False,
                                    input_names=["pixel_values"], opset_version=20)
    with pytest.raises(LocateError, match=r"^layer 0: the graph has \d+ attention core.*vision encoder"):
        locate_model(program.model_proto)


def test_encoder_block_needs_cache_outputs():
    """A transformer block with no KV output is refused as a decoder, yet located on request."""
    with pytest.raises(LocateError, match=r"layer 0: .*does not reach a graph output.*require_cache=False"):
        locate_model(_encoder_block())
    structure = locate_model(_encoder_block(), require_cache=False)
    assert len(structure.layers) == 1
    layer = structure.layers[0]
    assert (layer.attn_add.outputs[0].name, layer.output.name) == ("mid", "y")  # names known: built above
    assert (layer.attention.query.name, layer.attention.value.name) == ("q", "v")
    assert layer.present_key is None and layer.attention.masks == []


@pytest.mark.parametrize("restore", ["shape_of", "inferred"])
def test_follows_the_stream_through_a_flat_masked_write(restore):
    """The second block's input is the Reshape that undoes the flattening, not the flat tensor."""
    structure = locate_model(_blocks_with_flat_write(restore), require_cache=False)
    assert [layer.input.name for layer in structure.layers] == ["x", "h2"]
    assert structure.layers[0].output.name == "h"


def test_refuses_a_flat_write_that_does_not_restore_the_stream():
    """The near miss: after the masked write the last Reshape splits heads ([1, n, 2, 4]), so
    the tensor reaching the second block is not the stream and the walk says why it stopped."""
    with pytest.raises(LocateError, match=r"^layer 1: the residual stream breaks after layer 0 \(at 'h'\).*"
                                          r"takes the stream out of its shape 1xnx8 .*shape 1xnx2x4"):
        locate_model(_blocks_with_flat_write("other"), require_cache=False)


def _scoped_node(model: onnx.ModelProto, op: str, scope_suffix: str) -> onnx.NodeProto:
    """The one node of ``op`` whose module scope ends with ``scope_suffix`` (test-side lookup)."""
    scopes = node_scopes(model)
    found = [n for n in model.graph.node if n.op_type == op and scopes.get(n.name, "").endswith(scope_suffix)]
    assert len(found) == 1, (op, scope_suffix, [n.name for n in found])
    return found[0]


def _o_proj_weight_as_input(model: onnx.ModelProto, layer: int) -> onnx.ModelProto:
    """The near miss: layer ``layer``'s o_proj weight becomes a graph input (no longer a constant)."""
    o_proj = _scoped_node(model, "MatMul", f"layers.{layer}.self_attn.o_proj")
    weight = next(i for i in model.graph.initializer if i.name == o_proj.input[1])
    model.graph.input.append(helper.make_tensor_value_info("free_weight", TensorProto.FLOAT, list(weight.dims)))
    o_proj.input[1] = "free_weight"
    return model


def test_refuses_o_proj_without_constant_weight(exported):
    """Layer 2's o_proj weight becomes a graph input: no longer a projection, so the spine breaks there."""
    model = _o_proj_weight_as_input(onnx.load(exported("qwen2_vl", 20) / "prefill.onnx", load_external_data=False), 2)
    with pytest.raises(LocateError, match=r"^layer 2: .*2-D"):
        locate_model(model)


def test_refuses_first_layer_without_projection(exported):
    model = _o_proj_weight_as_input(onnx.load(exported("qwen2_vl", 23) / "prefill.onnx", load_external_data=False), 0)
    layers = _text_config("qwen2_vl").num_hidden_layers
    with pytest.raises(LocateError, match=rf"^layer 0: the graph has {layers} attention core\(s\).*2-D"):
        locate_model(model)


def test_refuses_missing_residual_add(exported):
    """Layer 2's attention residual Add is removed (o_proj feeds what the Add fed)."""
    model = onnx.load(exported("qwen2_vl", 23) / "prefill.onnx", load_external_data=False)
    o_proj = _scoped_node(model, "MatMul", "layers.2.self_attn.o_proj")
    add = next(n for n in model.graph.node if n.op_type == "Add" and o_proj.output[0] in n.input)
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name == add.output[0]:
                node.input[k] = o_proj.output[0]
    model.graph.node.remove(add)
    with pytest.raises(LocateError, match=r"^layer 2: the residual stream breaks after layer 1"):
        locate_model(model)


def test_refuses_graph_without_float_input():
    graph = helper.make_graph([helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT)], "g",
                              [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(LocateError, match="no float graph input"):
        locate_model(helper.make_model(graph))
