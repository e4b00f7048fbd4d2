"""Typed exports (fp16, bf16) of every family and opset, and the compiler on them.

Each export is strictly typed (ONNX type inference in strict mode finds no conflict),
takes and gives its own type, keeps the model's fp32 islands (norm statistics, rotary
tables, softmax), and passes validate's gates against the fp32 PyTorch model, as does
its compiled form under a mixed plan: fp16 on ONNX Runtime CPU, bf16 on onnx's
reference evaluator (ONNX Runtime CPU has no bf16 arithmetic). A wrong plan fails the
same gates, so they can fail. Overflow: a checkpoint whose residual stream leaves the
fp16 range fails validation naming the layer, and its bf16 export passes.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import FAMILIES
from helpers import check_islands, overflowing_checkpoint, strict_types
from vskip_compile.cli import main
from vskip_compile.compile import compile_model
from vskip_compile.core.errors import VskipError
from vskip_compile.core.islands import restore_norm_casts, softmax_islands
from vskip_compile.core.plan import Action, Plan
from vskip_compile.core.sidecar import read_sidecar
from vskip_compile.models.export import export_model
from vskip_compile.validate import validate

HALF = ("float16", "bfloat16")
ELEM = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}
BACKEND = {"float16": "ort-cpu", "bfloat16": "onnx-ref"}
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
MIXED = {0: Action.SKIP_FFN, 1: Action.SKIP_ATTENTION, 2: Action.FREEZE, 3: Action.FREEZE}


# Every family in both half types, each at one opset, alternating, so that every family
# is typed at both opsets and every (opset, type) pair covers three or four families: all
# 28 combinations took six minutes of the suite's twenty.
TYPED_CASES = [(family, opset, dtype) for i, family in enumerate(FAMILIES)
               for dtype, opset in zip(HALF, (20, 23) if i % 2 == 0 else (23, 20))]


@pytest.mark.parametrize("family, opset, dtype", TYPED_CASES)
def test_typed_export_and_its_compiled_graph(family, opset, dtype, exported):
    directory = exported(family, opset, dtype=dtype)
    source = directory / "prefill.onnx"
    assert read_sidecar(source).dtype == dtype
    model = onnx.load(source)
    types = strict_types(model)
    io = [v for v in (*model.graph.input, *model.graph.output) if v.type.tensor_type.elem_type in FLOATS]
    assert io and all(v.type.tensor_type.elem_type == ELEM[dtype] for v in io)
    check_islands(model, types, opset)

    compiled = directory / "mixed.onnx"  # beside its sidecar, which names the reference model
    compile_model(source, Plan.from_layers(4, MIXED), compiled, force=True)
    compiled_model = onnx.load(compiled)
    check_islands(compiled_model, strict_types(compiled_model), opset)
    for graph in (source, compiled):
        report = validate(graph, backend=BACKEND[dtype])
        assert report.passed, report.table()
        assert report.dtype == dtype and report.nonfinite is None and report.reference_nonfinite is None
        assert report.same_dtype and report.reference_drift  # compared with the model in its type too
        assert report.first_failing_layer() is None and "every layer's K/V within the gate" in report.layer_table()


@pytest.mark.parametrize("dtype", HALF)
def test_a_wrong_plan_fails_the_half_gates(dtype, exported, tmp_path):
    """The gates have teeth: the compiled mixed plan against the reference's empty plan."""
    directory = exported("qwen2_vl", 20, dtype=dtype)
    compiled = directory / "mixed-wrong.onnx"
    compile_model(directory / "prefill.onnx", Plan.from_layers(4, MIXED), compiled, force=True)
    plan = tmp_path / "empty.json"
    plan.write_text('{"format": "vskip-plan", "version": 1, "model": {"num_layers": 4}, "layers": {}}')
    report = validate(compiled, plan=plan, backend=BACKEND[dtype])
    assert not report.passed
    assert min(o.cosine for o in report.outputs) < report.gates["min_cosine"]


def test_gates_of_the_other_type_are_refused(exported):
    with pytest.raises(VskipError, match="--atol gates fp32 graphs; this graph is float16"):
        validate(exported("qwen2_vl", 20, dtype="float16") / "prefill.onnx", atol=1e-3)
    with pytest.raises(VskipError, match="--min-cosine and --min-top1 gate fp16/bf16 graphs"):
        validate(exported("qwen2_vl", 20) / "prefill.onnx", min_cosine=0.9)


def test_bf16_on_onnx_runtime_cpu_says_what_to_use(exported, capsys):
    source = exported("qwen2_vl", 20, dtype="bfloat16") / "prefill.onnx"
    assert main(["validate", str(source)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no bfloat16 arithmetic" in err and "--backend onnx-ref" in err


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory):
    return overflowing_checkpoint(tmp_path_factory.mktemp("overflow") / "ckpt")


def test_overflow_in_fp16_names_the_layer_and_suggests_bf16(overflowing, tmp_path, capsys):
    export_model(str(overflowing), tmp_path / "fp16", decode=False, dtype="float16", progress=None)
    graph = tmp_path / "fp16" / "prefill.onnx"
    exact = validate(graph, backend="onnx-ref")  # fp16 rounding per op, as a typed engine computes
    assert not exact.passed
    assert "overflowed in layer 1" in exact.nonfinite and "present.2.key" in exact.nonfinite
    assert "overflowed in layer 1" in exact.reference_nonfinite
    assert exact.first_failing_layer() == 2  # layer 1's output is the stream layer 2's K/V are made from
    assert main(["validate", str(graph), "--backend", "onnx-ref", "--per-layer"]) == 1
    out = capsys.readouterr().out
    assert "export with --dtype bfloat16" in out and "the drift starts at layer 2" in out
    # ONNX Runtime CPU keeps fp16 chains in fp32 and hides the overflow; validate still fails
    hidden = validate(graph)
    assert hidden.nonfinite is None and not hidden.passed and "layer 1" in hidden.reference_nonfinite
    assert "a strictly typed fp16 engine will not" in hidden.table()

    export_model(str(overflowing), tmp_path / "bf16", decode=False, dtype="bfloat16", progress=None)
    report = validate(tmp_path / "bf16" / "prefill.onnx", backend="onnx-ref")
    assert report.passed, report.table()


def _norm_graph(x_type: int, scale_type: int) -> onnx.ModelProto:
    node = helper.make_node("RMSNormalization", ["x", "scale"], ["y"], axis=-1, epsilon=1e-6)
    graph = helper.make_graph(
        [node], "norm", [helper.make_tensor_value_info("x", x_type, [2, 4])], [
            helper.make_tensor_value_info("y", scale_type, [2, 4])],
        [helper.make_tensor("scale", scale_type, [4], [1.0, 2.0, 0.5, 1.5])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])


def test_norm_casts_restore_a_valid_graph_and_leave_matching_ones_alone():
    import onnxruntime as ort

    broken = _norm_graph(TensorProto.FLOAT16, TensorProto.FLOAT)
    with pytest.raises(Exception):
        strict_types(broken)
    assert restore_norm_casts(broken) == 1
    strict_types(broken)
    session = ort.InferenceSession(broken.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[1, 2, 3, 4], [-1, 0.5, 2, 8]], np.float16)
    rms = np.sqrt((x.astype(np.float32) ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x / rms * [1.0, 2.0, 0.5, 1.5], rtol=1e-6)
    fine = _norm_graph(TensorProto.FLOAT16, TensorProto.FLOAT16)
    before = fine.SerializeToString()
    assert restore_norm_casts(fine) == 0 and fine.SerializeToString() == before


def test_softmax_islands_leave_fp32_graphs_alone(exported):
    model = onnx.load(exported("qwen2_vl", 20) / "prefill.onnx")
    before = model.SerializeToString()
    assert softmax_islands(model) == 0 and restore_norm_casts(model) == 0
    assert model.SerializeToString() == before
