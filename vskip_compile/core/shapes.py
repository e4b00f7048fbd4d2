"""Shape inference for graphs whose weights stay on disk: the one home of both inferences.

The rewrite and the FLOPs counter need every tensor's shape. Dynamo exports carry them;
the legacy exporter writes few. Two inferences exist, and everything here is built on
the two runners :func:`onnx_shapes` and :func:`ort_symbolic_shapes`:

- ONNX's own (``onnx.shape_inference`` with data propagation) reads initializer dims only;
- ONNX Runtime's symbolic inference follows Shape -> Concat -> Reshape arithmetic (causal
  mask chains) that ONNX's leaves open and names dimensions after the graph inputs, but it
  reads the values of every initializer, so it runs on a copy where weights stored outside
  the file become typed graph inputs; only the inferred shapes come back.

Two entry points: :func:`with_shapes` (compile) adds value infos to a graph that lacks
some, ONNX Runtime's first; :class:`InferredShapes` (the FLOPs counter) is a name -> dims
table of a graph whose input dims are fixed, ONNX's first and ONNX Runtime's only for the
tensors that leaves unknown.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile

import onnx

from .errors import VskipError


class ShapeInferenceError(VskipError):
    """ONNX's shape inference refused the graph; the message says why."""


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


def onnx_inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` after ONNX's own inference with data propagation (reads initializer dims only).

    Raises :class:`ShapeInferenceError` where the inference fails.
    """
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # inference errors come in many kinds
        raise ShapeInferenceError(f"ONNX shape inference failed: {type(exc).__name__}: {exc}") from None


def onnx_shapes(model: onnx.ModelProto) -> list[onnx.ValueInfoProto] | None:
    """Value infos from ONNX's own inference (reads initializer dims only), or None."""
    try:
        return list(onnx_inferred(model).graph.value_info)
    except ShapeInferenceError:  # the caller reports what stays unknown
        return None


def shape_table(infos) -> dict[str, tuple[int | None, ...]]:
    """Tensor name -> dims of the value infos ``infos`` that have a shape; a symbolic or
    unknown dim is None."""
    out = {}
    for info in infos:
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            continue
        out[info.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                               for d in info.type.tensor_type.shape.dim)
    return out


class InferredShapes:
    """Concrete tensor shapes of ``model``: ONNX's inference with data propagation, then, the
    first time a tensor is asked for whose shape that left unknown, ONNX Runtime's symbolic
    inference (without merging conflicting dims) for the rest.

    ``exact`` (name -> dims, e.g. the initializers') replaces what ONNX inferred for those
    names. A later inference only fills dims that are still unknown, never replaces one.
    Raises :class:`ShapeInferenceError` when ONNX's inference fails.
    """

    def __init__(self, model: onnx.ModelProto, exact: dict[str, tuple[int, ...]] | None = None):
        self.model = model
        self.known: dict[str, tuple] = {}
        self._ort_done = False
        g = onnx_inferred(model).graph
        self._merge(shape_table(list(g.value_info) + list(g.input) + list(g.output)))
        self.known.update(exact or {})

    def _merge(self, shapes: dict[str, tuple]) -> None:
        for name, shape in shapes.items():
            old = self.known.get(name)
            if old is None or (None in old and len(old) == len(shape)):
                self.known[name] = shape if old is None else tuple(a if a is not None else b
                                                                     for a, b in zip(old, shape))

    def get(self, name: str) -> tuple | None:
        """The dims of tensor ``name``, None where a dim (or the whole shape) stays unknown."""
        shape = self.known.get(name)
        if (shape is None or None in shape) and not self._ort_done:
            self._ort_done = True
            self._merge(shape_table(ort_symbolic_shapes(self.model, auto_merge=False) or []))
            shape = self.known.get(name)
        return shape


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
