"""Shape inference for graphs whose weights stay on disk.

The rewrite and the FLOPs counter need every tensor's shape. Dynamo exports carry them;
the legacy exporter writes few. ONNX Runtime's symbolic inference follows Shape -> Concat
-> Reshape arithmetic and names dimensions after the graph inputs, but it reads the
values of every initializer, so it runs on a copy where weights stored outside the file
become typed graph inputs; only the inferred shapes come back to the real model.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile

import onnx


def weights_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose external initializers are graph inputs of the same type."""
    light = copy.deepcopy(model)
    kept, moved = [], []
    for tensor in light.graph.initializer:
        (moved if tensor.data_location == onnx.TensorProto.EXTERNAL else kept).append(tensor)
    del light.graph.initializer[:]
    light.graph.initializer.extend(kept)
    light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in moved)
    return light


def ort_symbolic_shapes(model: onnx.ModelProto, auto_merge: bool = True) -> list[onnx.ValueInfoProto] | None:
    """Value infos from ONNX Runtime's symbolic inference, or None where it cannot run.

    It is not used on graphs with the ONNX ``Attention`` op, which it would read as
    ONNX Runtime's contrib op of the same name and give wrong shapes.
    """
    if any(node.op_type == "Attention" and node.domain in ("", "ai.onnx") for node in model.graph.node):
        return None
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        with _scratch_cwd():
            inferred = SymbolicShapeInference.infer_shapes(weights_as_inputs(model), auto_merge=auto_merge,
                                                           guess_output_rank=False)
    except Exception:  # unsupported ops and the like: callers fall back or report unknown shapes
        return None
    return None if inferred is None else list(inferred.graph.value_info)


@contextlib.contextmanager
def _scratch_cwd():
    """Run inside a private empty directory, removed afterwards.

    When its inference stays incomplete, ONNX Runtime's SymbolicShapeInference saves
    ``sym_shape_infer_temp.onnx`` (plus a data file) into the current directory: a write
    vskip never asked for, over whatever the user keeps under that name.
    """
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix=".vskip-shapes-") as scratch:
        os.chdir(scratch)
        try:
            yield
        finally:
            os.chdir(previous)


def onnx_shapes(model: onnx.ModelProto) -> list[onnx.ValueInfoProto] | None:
    """Value infos from ONNX's own inference (reads initializer dims only), or None."""
    try:
        return list(onnx.shape_inference.infer_shapes(model, data_prop=True).graph.value_info)
    except Exception:  # inference errors come in many kinds; the caller reports what stays unknown
        return None


def shapes_complete(model: onnx.ModelProto) -> bool:
    known = {v.name for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)
             if v.type.tensor_type.HasField("shape")}
    known |= {t.name for t in model.graph.initializer}
    return all(o in known for node in model.graph.node for o in node.output if o)


def with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with inferred shapes where it had none (ORT symbolic first, then ONNX)."""
    if shapes_complete(model):
        return model
    infos = ort_symbolic_shapes(model) or onnx_shapes(model)
    if not infos:
        return model
    existing = {v.name for v in model.graph.value_info}
    model.graph.value_info.extend(v for v in infos if v.name not in existing)  # shapes only: the graph is unchanged
    return model
