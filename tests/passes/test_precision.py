"""The precision pass (``vskip cast``): fp32 graphs typed as fp16 / bf16 with fp32 islands.

Every family, fp16 at opset 20 and bf16 at opset 23 (both dtypes and both opsets, each
family once): the typed graph passes ONNX's strict type inference, keeps the islands the
module docstring states, and it and its compiled form pass validate's gates against the
fp32 PyTorch model. Weights in external data are converted tensor by tensor into the
output's own data file; bad inputs are one line and write nothing.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from conftest import FAMILIES
from helpers import check_islands, overflowing_checkpoint, strict_types
from vskip_compile.cast import cast_model
from vskip_compile.cli import main
from vskip_compile.compile import compile_model
from vskip_compile.core.errors import VskipError
from vskip_compile.core.plan import Action, Plan
from vskip_compile.models.export import export_model
from vskip_compile.validate import validate

CASES = [(family, 20, "float16") for family in FAMILIES] + [(family, 23, "bfloat16") for family in FAMILIES]
BACKEND = {"float16": "ort-cpu", "bfloat16": "onnx-ref"}
ELEM = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}
MIXED = Plan.from_layers(4, {0: Action.SKIP_FFN, 1: Action.SKIP_ATTENTION, 2: Action.FREEZE, 3: Action.FREEZE})


@pytest.mark.parametrize("family, opset, dtype", CASES)
def test_cast_graphs_are_typed_keep_their_islands_and_validate(family, opset, dtype, exported):
    directory = exported(family, opset)
    typed = directory / f"prefill.cast-{dtype}.onnx"  # beside the sidecar: validate finds the model
    cast_model(directory / "prefill.onnx", dtype, typed, force=True)
    model = onnx.load(typed)
    check_islands(model, strict_types(model), opset)
    floats = [v for v in (*model.graph.input, *model.graph.output)
              if v.type.tensor_type.elem_type in (TensorProto.FLOAT, *ELEM.values())]
    assert floats and all(v.type.tensor_type.elem_type == ELEM[dtype] for v in floats)
    assert all(t.data_type != TensorProto.FLOAT for t in model.graph.initializer if t.dims and t.data_type in
               (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
               and not t.name.endswith("inv_freq"))  # weights are typed; rotary frequencies stay fp32
    compiled = directory / f"prefill.cast-{dtype}.mixed.onnx"
    compile_model(typed, MIXED, compiled, force=True)
    report = validate(compiled, backend=BACKEND[dtype])
    assert report.passed, report.table()


def test_the_lm_head_can_stay_fp32(exported, tmp_path):
    directory = exported("qwen2_vl", 20)
    typed = directory / "prefill.cast-head.onnx"
    cast_model(directory / "prefill.onnx", "float16", typed, force=True, lm_head=True)
    model = onnx.load(typed)
    strict_types(model)
    logits = next(o for o in model.graph.output if o.name == "logits")
    assert logits.type.tensor_type.elem_type == TensorProto.FLOAT
    assert all(o.type.tensor_type.elem_type == TensorProto.FLOAT16 for o in model.graph.output if o.name != "logits")


def test_external_weights_are_converted_into_the_outputs_own_file(exported, tmp_path):
    directory = tmp_path / "external"
    directory.mkdir()
    source = exported("qwen2_vl", 20)
    shutil.copy(source / "vskip.json", directory)
    model = onnx.load(source / "prefill.onnx")
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT}
    onnx.save_model(model, str(directory / "prefill.onnx"), save_as_external_data=True, location="weights.bin",
                    size_threshold=0)
    cast_model(directory / "prefill.onnx", "float16", directory / "typed.onnx")
    assert (directory / "typed.onnx.data").exists() and (directory / "weights.bin").exists()
    typed = onnx.load(str(directory / "typed.onnx"))  # loads the new data file
    after = {t.name: numpy_helper.to_array(t) for t in typed.graph.initializer}
    converted = [n for n in before if after[n].dtype == np.float16]
    assert converted
    half = np.finfo(np.float16)
    for name in converted:  # rounded to fp16; the mask fill (-3.4e38) clamped to fp16's finite range
        np.testing.assert_array_equal(after[name], np.clip(before[name], half.min, half.max).astype(np.float16))
    report = validate(directory / "typed.onnx")
    assert report.passed, report.table()


def test_refusals_are_one_line_and_write_nothing(exported, tmp_path, capsys):
    source = exported("qwen2_vl", 20) / "prefill.onnx"
    typed = exported("qwen2_vl", 20, dtype="float16") / "prefill.onnx"
    with pytest.raises(VskipError, match="already float16; the precision pass types fp32 graphs"):
        cast_model(typed, "float16", tmp_path / "again.onnx")
    with pytest.raises(VskipError, match="would overwrite the command's own input"):
        cast_model(source, "float16", source, force=True)
    (tmp_path / "taken.onnx").write_text("x")
    assert main(["cast", str(source), "--dtype", "float16", "-o", str(tmp_path / "taken.onnx")]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "taken.onnx").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"]


def test_the_range_check_keeps_overflowing_tensors_in_fp32(tmp_path, capsys):
    """A stream beyond fp16's range: the plain fp16 cast overflows (exact fp16 rounding on
    onnx-ref); with --range-check the tensors the fp32 run shows beyond 65504 stay fp32 and
    the graph passes, though PyTorch's own fp16 model overflows on the same feeds."""
    checkpoint = overflowing_checkpoint(tmp_path / "ckpt")
    export_model(str(checkpoint), tmp_path / "fp32", decode=False, progress=None)
    source = tmp_path / "fp32" / "prefill.onnx"
    cast_model(source, "float16", tmp_path / "fp32" / "plain.onnx")
    plain = validate(tmp_path / "fp32" / "plain.onnx", backend="onnx-ref")
    assert not plain.passed and "overflowed in layer 1" in plain.nonfinite
    assert main(["cast", str(source), "--dtype", "float16", "-o", str(tmp_path / "fp32" / "ranged.onnx"),
                 "--range-check"]) == 0
    assert "tensors beyond fp16's range on the sample feeds" in capsys.readouterr().err
    ranged = validate(tmp_path / "fp32" / "ranged.onnx", backend="onnx-ref")
    assert ranged.passed and ranged.nonfinite is None and ranged.range_islands > 0, ranged.table()
    assert ranged.reference_nonfinite and "judged by its own outputs" in ranged.table()
    strict_types(onnx.load(tmp_path / "fp32" / "ranged.onnx"))
    with pytest.raises(VskipError, match="the range check is for float16"):
        cast_model(source, "bfloat16", tmp_path / "b.onnx", range_check=True)
