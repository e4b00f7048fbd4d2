"""vskip lint: every rule fires on a small graph built for it and stays quiet on its near
miss; vskip's compiled graphs are clean for trt11 (and for trt10 at opset 20) on every
family, opset and plan shape; the CLI's exit codes, one-line errors and JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import FAMILIES
from vskip_compile.cli import compile_main, main
from vskip_compile.compile import compile_model
from vskip_compile.core.errors import VskipError
from vskip_compile.core.plan import Action, FreezeScope, Plan
from vskip_compile.trt.lint import Finding, lint_graph
from vskip_compile.trt.profiles import ProfileLimits

F, I64, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
PLAN_FILE = Path(__file__).resolve().parents[2] / "vskip_compile" / "plans" / "example_tiny.json"


def graph(nodes, inputs, outputs, initializers=(), opset=20, functions=(), domains=()):
    """A model from helper pieces; inputs/outputs as (name, type, shape)."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                          [helper.make_tensor_value_info(*o) for o in outputs], list(initializers))
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(g, opset_imports=imports, functions=list(functions), ir_version=10)


def rules(model, target="trt11", **kw) -> list[str]:
    return [f.rule for f in lint_graph(model, target, **kw)]


def ints(name, values):
    return numpy_helper.from_array(np.asarray(values, dtype=np.int64), name)


# ----------------------------------------------------------------------------- op support

def test_unsupported_op_and_its_near_miss():
    det = graph([helper.make_node("Det", ["x"], ["y"], name="det")], [("x", F, [2, 3, 3])], [("y", F, [2])])
    found = lint_graph(det, "trt11")
    assert [(f.rule, f.node, f.op_type) for f in found] == [("op-unsupported", "det", "Det")]
    assert "marks it unsupported" in found[0].message and found[0].fix
    abs_ = graph([helper.make_node("Abs", ["x"], ["y"])], [("x", F, [2])], [("y", F, [2])])
    assert rules(abs_, "trt10") == rules(abs_, "trt11") == []


def test_op_the_table_does_not_list_and_trt11_additions():
    swish = graph([helper.make_node("Swish", ["x"], ["y"])], [("x", F, [2])], [("y", F, [2])], opset=24)
    found = lint_graph(swish, "trt10")
    assert [f.rule for f in found] == ["op-unsupported"] and "does not list it" in found[0].message
    assert rules(swish, "trt11") == []  # TensorRT 11.0's parser added Swish


def test_ops_that_need_a_later_minor_name_it():
    rms = graph([helper.make_node("RMSNormalization", ["x", "w"], ["y"], name="rms")],
                [("x", F, [1, 4, 8])], [("y", F, [1, 4, 8])], [numpy_helper.from_array(np.ones(8, np.float32), "w")],
                opset=23)
    found = lint_graph(rms, "trt10")
    assert [f.rule for f in found] == ["op-version"]
    assert "needs TensorRT >= 10.15" in found[0].message and "--opset 20" in found[0].fix
    assert rules(rms, "trt11") == []
    attention = graph([helper.make_node("Attention", ["q", "k", "v"], ["o"])],
                      [(n, F, [1, 2, 4, 8]) for n in "qkv"], [("o", F, [1, 2, 4, 8])], opset=23)
    found = lint_graph(attention, "trt10")
    assert [f.rule for f in found] == ["op-version"] and ">= 10.14" in found[0].message
    assert rules(attention, "trt11") == []


def test_custom_domain_is_a_finding_but_a_local_function_is_not():
    fused = graph([helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain="com.microsoft")],
                  [("a", F, [2, 2]), ("b", F, [2, 2])], [("y", F, [2, 2])], domains=["com.microsoft"])
    found = lint_graph(fused, "trt11")
    assert [f.rule for f in found] == ["op-domain"] and "com.microsoft" in found[0].message
    body = [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Det", ["t"], ["y"], name="inner_det")]
    function = helper.make_function("local", "Block", ["x"], ["y"], body, [helper.make_opsetid("", 20)])
    call = graph([helper.make_node("Block", ["x"], ["y"], domain="local")], [("x", F, [2, 3, 3])], [("y", F, [2])],
                 functions=[function], domains=["local"])
    found = lint_graph(call, "trt11")  # the call is fine; the function body is linted like the graph
    assert [(f.rule, f.node) for f in found] == [("op-unsupported", "inner_det")]


def test_subgraph_nodes_are_linted():
    then = helper.make_graph([helper.make_node("Det", ["x"], ["y1"], name="then_det")], "then", [],
                             [helper.make_tensor_value_info("y1", F, [2])])
    other = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y2"], keepdims=0)], "else", [],
                              [helper.make_tensor_value_info("y2", F, None)])
    model = graph([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                  [("c", B, []), ("x", F, [2, 3, 3])], [("y", F, None)])
    assert [(f.rule, f.node) for f in lint_graph(model, "trt11")] == [("op-unsupported", "then_det")]


# ----------------------------------------------------------------------------- attention

def _attention(inputs, outputs, q_shape=(1, 2, 4, 8)):
    names = {"q": list(q_shape), "k": [1, 2, 4, 8], "v": [1, 2, 4, 8], "mask": [1, 1, 4, 4],
             "past_key": [1, 2, 3, 8], "past_value": [1, 2, 3, 8]}
    shapes = {"o": [1, 4, 16] if len(q_shape) == 3 else [1, 2, 4, 8], "present_key": [1, 2, 7, 8],
              "present_value": [1, 2, 7, 8]}
    attrs = {"q_num_heads": 2, "kv_num_heads": 2} if len(q_shape) == 3 else {}
    node = helper.make_node("Attention", inputs, outputs, name="attn", **attrs)
    return graph([node], [(n, F, names[n]) for n in inputs if n], [(n, F, shapes[n]) for n in outputs if n],
                 opset=23)


def test_attention_with_past_and_present_is_a_finding():
    model = _attention(["q", "k", "v", "", "past_key", "past_value"], ["o", "present_key", "present_value"])
    found = lint_graph(model, "trt11")
    assert [f.rule for f in found] == ["attention-cache"] * 4
    assert [f.message.split()[3] for f in found] == ["past_key", "past_value", "present_key", "present_value"]
    assert "outside the Attention node" in found[0].fix
    assert rules(_attention(["q", "k", "v", "mask"], ["o"]), "trt11") == []  # near miss: no cache I/O


def test_attention_needs_4d_inputs():
    found = lint_graph(_attention(["q", "k", "v"], ["o"], q_shape=(1, 4, 16)), "trt11")
    assert [(f.rule, "Q" in f.message) for f in found] == [("op-rank", True)]


def test_attention_default_attributes_are_fine_and_others_are_not():
    q = [("q", F, [1, 2, 4, 8]), ("k", F, [1, 2, 4, 8]), ("v", F, [1, 2, 4, 8])]
    plain = helper.make_node("Attention", ["q", "k", "v"], ["o"], softcap=0.0, qk_matmul_output_mode=0)
    assert rules(graph([plain], q, [("o", F, [1, 2, 4, 8])], opset=23)) == []
    capped = helper.make_node("Attention", ["q", "k", "v"], ["o"], softcap=30.0)
    found = lint_graph(graph([capped], q, [("o", F, [1, 2, 4, 8])], opset=23), "trt11")
    assert [f.rule for f in found] == ["op-attribute"] and "softcap" in found[0].message


# ----------------------------------------------------------------------------- attributes and types

def _scatter(**attrs):
    node = helper.make_node("ScatterND", ["x", "idx", "u"], ["y"], name="scatter", **attrs)
    return graph([node], [("x", F, [4, 3]), ("idx", I64, [2, 1]), ("u", F, [2, 3])], [("y", F, [4, 3])], opset=18)


def test_scatternd_reduction():
    found = lint_graph(_scatter(reduction="add"), "trt11")
    assert [f.rule for f in found] == ["op-attribute"] and "'add'" in found[0].message
    assert rules(_scatter(reduction="none"), "trt11") == []
    found = lint_graph(_scatter(reduction="none"), "trt10")  # 10.0-10.8 refuse the attribute at all
    assert [f.rule for f in found] == ["op-attribute"] and "10.9" in found[0].message
    assert "drop the attribute" in found[0].fix
    assert rules(_scatter(), "trt10") == rules(_scatter(), "trt11") == []


def test_dtype_the_table_does_not_list():
    eq = graph([helper.make_node("Equal", ["a", "b"], ["y"], name="eq")], [("a", B, [3]), ("b", B, [3])],
               [("y", B, [3])])
    found = lint_graph(eq, "trt11")
    assert [f.rule for f in found] == ["dtype"] and "BOOL" in found[0].message
    near = graph([helper.make_node("Equal", ["a", "b"], ["y"])], [("a", I64, [3]), ("b", I64, [3])], [("y", B, [3])])
    assert rules(near, "trt11") == []


def test_integer_pow_needs_a_later_10x():
    powi = graph([helper.make_node("Pow", ["a", "b"], ["y"])], [("a", I64, [3]), ("b", I64, [3])], [("y", I64, [3])])
    found = lint_graph(powi, "trt10")
    assert {f.rule for f in found} == {"op-version"} and any("10.12" in f.message for f in found)
    assert rules(powi, "trt11") == []
    powf = graph([helper.make_node("Pow", ["a", "b"], ["y"])], [("a", F, [3]), ("b", F, [])], [("y", F, [3])])
    assert rules(powf, "trt10") == []


def test_build_time_constant_inputs():
    cumsum = graph([helper.make_node("CumSum", ["x", "axis"], ["y"], name="cs")],
                   [("x", F, [2, 3]), ("axis", I64, [])], [("y", F, [2, 3])])
    found = lint_graph(cumsum, "trt11")
    assert [f.rule for f in found] == ["constant-input"] and "a graph input" in found[0].message
    assert rules(graph([helper.make_node("CumSum", ["x", "axis"], ["y"])], [("x", F, [2, 3])], [("y", F, [2, 3])],
                       [ints("axis", 1)])) == []
    # Slice with run-time axes: TensorRT 10.3 lifted it
    slice_ = graph([helper.make_node("Slice", ["x", "s", "e", "axes"], ["y"])],
                   [("x", F, [4, 4]), ("axes", I64, [1])], [("y", F, None)], [ints("s", [0]), ints("e", [2])])
    found = lint_graph(slice_, "trt10")
    assert [f.rule for f in found] == ["constant-input"] and "10.3" in found[0].fix
    assert rules(slice_, "trt11") == []


# ----------------------------------------------------------------------------- reduce axes

def _reduce(axes_from: str, noop: int = 0):
    nodes, inits, inputs = [], [], [("x", F, [2, 3])]
    if axes_from == "input":
        inputs.append(("axes", I64, [1]))
    elif axes_from == "initializer":
        inits.append(ints("axes", [1]))
    elif axes_from == "constant":
        nodes.append(helper.make_node("Constant", [], ["axes"], value=ints("c", [1])))
    elif axes_from == "computed":
        inits.append(ints("one", [1]))
        nodes.append(helper.make_node("Identity", ["one"], ["axes"]))
    ins = ["x"] + (["axes"] if axes_from != "none" else [])
    nodes.append(helper.make_node("ReduceSum", ins, ["y"], name="sum", keepdims=1, noop_with_empty_axes=noop))
    return graph(nodes, inputs, [("y", F, None)], inits)


def test_reduce_axes_must_be_constant():
    found = lint_graph(_reduce("input"), "trt11")
    assert [f.rule for f in found] == ["reduce-axes"] and "identity" not in found[0].message
    found = lint_graph(_reduce("input", noop=1), "trt10")
    assert [f.rule for f in found] == ["reduce-axes"] and "noop_with_empty_axes=1" in found[0].message
    assert [f.rule for f in lint_graph(_reduce("computed"), "trt11")] == ["reduce-axes"]  # Identity: not a constant
    for near in ("initializer", "constant", "none"):
        assert rules(_reduce(near), "trt10") == rules(_reduce(near, noop=1), "trt11") == [], near


# ----------------------------------------------------------------------------- data-dependent shapes

def test_boolean_mask_indexing_is_a_data_dependent_shape():
    nodes = [helper.make_node("NonZero", ["mask"], ["nz"], name="nonzero"),
             helper.make_node("Transpose", ["nz"], ["idx"], perm=[1, 0]),
             helper.make_node("GatherND", ["x", "idx"], ["y"])]
    model = graph(nodes, [("x", F, [2, 5, 4]), ("mask", B, [2, 5])], [("y", F, None)])
    found = lint_graph(model, "trt11")
    assert [(f.rule, f.node) for f in found] == [("data-dependent-shape", "nonzero")]
    assert "x[mask]" in found[0].message and "host" in found[0].fix
    compress = graph([helper.make_node("Compress", ["x", "c"], ["y"], axis=0)], [("x", F, [4]), ("c", B, [4])],
                     [("y", F, None)])
    assert rules(compress, "trt10") == ["data-dependent-shape"]
    near = graph([helper.make_node("GatherND", ["x", "idx"], ["y"])], [("x", F, [2, 5, 4]), ("idx", I64, [3, 2])],
                 [("y", F, None)])  # host-made indices: the compiled graphs' way
    assert rules(near, "trt11") == []


# ----------------------------------------------------------------------------- INT64 indices

def test_constant_indices_outside_int32():
    far = graph([helper.make_node("Gather", ["x", "idx"], ["y"], name="g")], [("x", F, [8, 4])], [("y", F, None)],
                [ints("idx", [1, 3_000_000_000])])
    found = lint_graph(far, "trt11")
    assert [f.rule for f in found] == ["int64-index"] and "3000000000" in found[0].message
    near = graph([helper.make_node("Gather", ["x", "idx"], ["y"])], [("x", F, [8, 4])], [("y", F, None)],
                 [ints("idx", [1, 7])])
    assert rules(near, "trt11") == []


def _flat_gather(data_type=F):
    """Gather from a [batch, sequence, 4096] input flattened to 1-D: flattened indexing."""
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["f"]),
             helper.make_node("Gather", ["f", "idx"], ["y"], name="flat_gather", axis=0)]
    return graph(nodes, [("x", data_type, ["batch", "sequence", 4096]), ("idx", I64, ["n"])], [("y", data_type, None)],
                 [ints("flat", [-1])])


def test_an_indexed_axis_beyond_int32_at_the_max_shape():
    notes = []
    assert lint_graph(_flat_gather(), "trt11", ProfileLimits(), notes) == []  # 4096 x 4096 elements
    assert any("idx[0]" in n for n in notes)  # 'n' counts nothing the profile bounds: said, not guessed
    big = ProfileLimits.within(max_seq=2**20)  # 2^20 x 4096 = 2^32 elements along the flat axis
    found = lint_graph(_flat_gather(), "trt11", big)
    assert [(f.rule, f.node) for f in found] == [("int64-index", "flat_gather")]
    assert "4294967296" in found[0].message and "sequence 1048576" in found[0].message
    assert lint_graph(_flat_gather(I64), "trt11", big) == []  # INT64 data keeps INT64 indices


# ----------------------------------------------------------------------------- external data

def _save_external(tmp_path, location: str, make_file: bool = True) -> Path:
    weight = np.arange(64, dtype=np.float32).reshape(8, 8)
    model = graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [("x", F, [1, 8])], [("y", F, [1, 8])],
                  [numpy_helper.from_array(weight, "w")])
    tensor = model.graph.initializer[0]
    data = weight.tobytes()
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    path = tmp_path / "model" / "g.onnx"
    path.parent.mkdir(exist_ok=True)
    if make_file:
        target = Path(location) if Path(location).is_absolute() else path.parent / location
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    path.write_bytes(model.SerializeToString())
    return path


def test_external_data_paths(tmp_path):
    assert lint_graph(_save_external(tmp_path, "g.onnx.data"), "trt11") == []  # near miss: beside the graph
    for location, words in (("../outside.data", "'..'"), (str(tmp_path / "abs.data"), "absolute"),
                            ("missing.data", "no such file")):
        found = lint_graph(_save_external(tmp_path, location, make_file=location != "missing.data"), "trt11")
        assert [f.rule for f in found] == ["external-data"], location
        assert words in found[0].message and found[0].node == "w" and "relative" in found[0].fix


def test_not_onnx_and_missing_files_are_errors(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(VskipError, match="not an ONNX model"):
        lint_graph(junk, "trt11")
    with pytest.raises(VskipError, match="no such file"):
        lint_graph(tmp_path / "absent.onnx", "trt11")
    with pytest.raises(VskipError, match="unknown TensorRT target"):
        lint_graph(_reduce("none"), "trt9")


# ----------------------------------------------------------------------------- module paths

def test_module_path_from_dynamo_metadata_and_legacy_names():
    dynamo = helper.make_node("Det", ["x"], ["a"], name="node_det_3")
    entry = dynamo.metadata_props.add()
    entry.key = "pkg.torch.onnx.name_scopes"
    entry.value = repr(["", "model.language_model", "model.language_model.layers.3",
                        "model.language_model.layers.3.self_attn", "det_3"])
    legacy = helper.make_node("Det", ["x"], ["b"], name="/model/layers.0/self_attn/Det")
    own = helper.make_node("Det", ["x"], ["c"], name="vskip/det_9")  # vskip's passes write no module path
    model = graph([dynamo, legacy, own], [("x", F, [2, 3, 3])], [(n, F, [2]) for n in "abc"])
    found = lint_graph(model, "trt11")
    assert [f.module for f in found] == ["model.language_model.layers.3.self_attn", "model.layers.0.self_attn", None]
    assert "(model.language_model.layers.3.self_attn)" in found[0].line()


# ----------------------------------------------------------------------------- vskip's own graphs

def _plans(num_layers: int, family: str):
    mixed = {1: Action.SKIP_ATTENTION, 2: Action.SKIP_FFN, 3: Action.FREEZE}
    plans = {"empty": Plan.empty(num_layers),
             "skip-attn": Plan((Action.SKIP_ATTENTION,) * num_layers),
             "skip-ffn": Plan((Action.SKIP_FFN,) * num_layers),
             "freeze": Plan((Action.FREEZE,) * num_layers),
             "freeze-prefix": Plan((Action.FREEZE,) * num_layers, FreezeScope.PREFIX_THROUGH_VISUAL),
             # the shipped example plan (made for tiny:qwen2_vl; the same layers elsewhere)
             "mixed": PLAN_FILE if family == "qwen2_vl" else Plan.from_layers(num_layers, mixed)}
    return plans


# Plan shapes for the half-precision graphs: a typed graph differs from the fp32 one only
# by its casts, which every plan shape compiles alike; these two exercise every action and
# both row inputs (all six shapes and causal blocks run on every fp32 graph).
TYPED_PLANS = ("mixed", "freeze-prefix")


def _check_vskip_graphs(directory: Path, opset: int, tmp_path: Path, blocks: bool = True, typed: bool = False):
    source = directory / "prefill.onnx"
    num_layers = json.loads((directory / "vskip.json").read_text())["num_layers"]
    graphs = {"source": source}
    for label, plan in _plans(num_layers, json.loads((directory / "vskip.json").read_text())["family"]).items():
        if typed and label not in TYPED_PLANS:
            continue
        graphs[label] = tmp_path / f"{label}.onnx"
        compile_model(source, plan, graphs[label])
    if blocks and not typed:
        graphs["mixed, causal blocks"] = tmp_path / "blocked.onnx"
        compile_model(source, _plans(num_layers, "")["mixed"], graphs["mixed, causal blocks"], causal_blocks=2)
    for label, path in graphs.items():
        found = lint_graph(path, "trt11")
        assert found == [], f"{label}: " + "; ".join(f.line() for f in found)
        found = lint_graph(path, "trt10")
        if opset == 20:
            assert found == [], f"{label}: " + "; ".join(f.line() for f in found)
        else:  # true statements with a fix: Attention needs 10.14, RMSNormalization and RotaryEmbedding 10.15
            assert found and all(f.rule == "op-version" and f.op_type in OPSET23_OPS and "--opset 20" in f.fix
                                 for f in found), f"{label}: " + "; ".join(f.line() for f in found)


OPSET23_OPS = ("Attention", "RMSNormalization", "RotaryEmbedding")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("opset", [20, 23])
@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_graphs_are_clean(family, opset, dtype, exported, tmp_path):
    """Every family x opset x dtype, vanilla and compiled under every plan shape (fp32) or
    the two of :data:`TYPED_PLANS` (fp16, bf16). Qwen3-VL's export once had two findings,
    fixed in the exporter: an INT64 CumSum (DeepStack row count, now counted in fp32) and
    M-RoPE ScatterNDs with reduction='none' (dropped)."""
    directory = exported(family, opset, dtype=dtype)
    if dtype != "float32":  # all 28 typed exports pass ONNX's strict type inference
        from helpers import strict_types

        strict_types(onnx.load(directory / "prefill.onnx"))
    _check_vskip_graphs(directory, opset, tmp_path, typed=dtype != "float32")


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_and_vision_graphs_are_clean(family, exported):
    """The export's other graphs (opset 20, fp32) for both targets, every axis bounded (the
    decode graph's by role, the vision graph's by name). Their opset-23 vision graphs are
    checked in tests/models/test_vision_qwen_host.py, where the Qwen towers' 2-D mask was
    a trt11 finding, now fixed."""
    directory = exported(family, 20, decode=True)
    for graph in ("decode.onnx", "vision.onnx"):
        for target in ("trt10", "trt11"):
            notes = []
            assert lint_graph(directory / graph, target, notes=notes) == [], (graph, target)
            assert not [n for n in notes if "count nothing the profile bounds" in n], (graph, notes)


# ----------------------------------------------------------------------------- CLI

def _one_line(capsys, argv, expect):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err


def test_cli_exit_codes_json_and_errors(exported, tmp_path, capsys):
    source = exported("qwen2_vl", 23) / "prefill.onnx"
    assert main(["lint", str(source), "--target", "trt11"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"{source}: clean for trt11 (TensorRT 11.x, strongly typed)"
    assert all(line.startswith("note: ") for line in out[:-1])  # what was not checked, said
    report = tmp_path / "lint.json"
    assert main(["lint", str(source), "--target", "trt10", "--json", str(report)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    data = json.loads(report.read_text())
    assert not data["clean"] and data["target"] == "trt10"
    assert len(data["findings"]) == len(lines) - 1 - len(data["notes"])
    assert lines[-1].startswith(f"{source}: {len(data['findings'])} findings for trt10")
    first = data["findings"][0]
    assert set(first) == {"rule", "node", "op_type", "module", "message", "fix"} and first["module"]
    assert main(["lint", str(source), "--target", "trt10", "--json", "-"]) == 1
    assert json.loads(capsys.readouterr().out)["findings"] == data["findings"]
    assert main(["lint", str(source), "--target", "trt11", "--max-seq", "2048", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["limits"]["max_seq"] == 2048
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a graph")
    _one_line(capsys, ["lint", str(junk), "--target", "trt11"], "not an ONNX model")
    _one_line(capsys, ["lint", str(tmp_path / "absent.onnx"), "--target", "trt11"], "no such file")
    _one_line(capsys, ["lint", str(source), "--target", "trt9"], "unknown TensorRT target 'trt9'")
    _one_line(capsys, ["lint", str(source), "--target", "trt11", "--max-visual-rows", "9000"], "--max-seq")


def test_cli_findings_name_node_module_and_fix(tmp_path, capsys):
    path = tmp_path / "det.onnx"
    node = helper.make_node("Det", ["x"], ["y"], name="/model/layers.1/mlp/Det")
    onnx.save(graph([node], [("x", F, [2, 3, 3])], [("y", F, [2])]), path)
    assert main(["lint", str(path), "--target", "trt11"]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("[op-unsupported] Det '/model/layers.1/mlp/Det' (model.layers.1.mlp): ") and "Fix: " in first


def test_compile_with_target_lints_what_it_wrote(exported, tmp_path, capsys):
    source = str(exported("qwen2_vl", 23) / "prefill.onnx")
    clean, flagged, report = tmp_path / "c11.onnx", tmp_path / "c10.onnx", tmp_path / "c10.json"
    assert compile_main([source, "--plan", str(PLAN_FILE), "-o", str(clean), "--target", "trt11"]) == 0
    assert "clean for trt11" in capsys.readouterr().err
    assert compile_main([source, "--plan", str(PLAN_FILE), "-o", str(flagged), "--target", "trt10",
                         "--json", str(report)]) == 1
    err = capsys.readouterr().err
    assert "[op-version] Attention" in err and "written all the same" in err
    assert flagged.exists() and onnx.load(flagged, load_external_data=False).graph.node  # still written
    assert json.loads(report.read_text())["lint"]["findings"]
    _one_line(capsys, ["compile", source, "--plan", str(PLAN_FILE), "-o", str(tmp_path / "x.onnx"),
                       "--target", "trt12"], "unknown TensorRT target")
    assert not (tmp_path / "x.onnx").exists()


def test_finding_is_a_small_record():
    finding = Finding("reduce-axes", "n", "ReduceSum", None, "axes at run time", "make axes a constant")
    assert finding.to_dict()["rule"] == "reduce-axes"
    assert finding.line() == "[reduce-axes] ReduceSum 'n': axes at run time. Fix: make axes a constant"
