"""``vskip lint``: will TensorRT's ONNX parser take this graph? A static check, no TensorRT needed.

:func:`lint_graph` walks every node (subgraphs and model-local functions included) against
the target's operator table (:mod:`vskip_compile.trt.support`) and returns one
:class:`Finding` per problem, each naming the node, its module path where the graph has one
(dynamo's ``pkg.torch.onnx.name_scopes`` metadata, or a legacy export's node name: both
only decorate the message) and the fix. The rules, by id:

``op-domain``            a node outside the default ONNX domain that is no model-local
                         function: the parser imports it only as a TensorRT plugin of that name.
``op-unsupported``       an op the table marks N or does not list.
``op-version``           an op (or an op's input type) that needs a later minor than the
                         target's oldest release: "needs TensorRT >= 10.15".
``op-input`` / ``op-output``  an optional input or output the table says is unsupported.
``attention-cache``      ``Attention`` with ``past_key``/``past_value`` inputs or
                         ``present_key``/``present_value`` outputs (none supported).
``op-attribute``         an attribute value the table excludes (ScatterND ``reduction``, ...).
``op-rank``              an input that must be 4-D and is not (Attention's Q, K, V, mask).
``dtype``                a tensor type the table does not list for the op.
``constant-input``       an input the parser needs at build time (CumSum axis, OneHot depth,
                         Slice/Squeeze/Unsqueeze axes before the minor that lifted it) fed at
                         run time. A constant is an initializer or a Constant node's output.
``reduce-axes``          a Reduce* op whose ``axes`` input is not a constant. Absent or
                         constant axes are fine, ``noop_with_empty_axes`` included: only a
                         run-time axes tensor (which could even be empty and turn the op
                         into an identity) is a finding.
``data-dependent-shape`` NonZero, Compress, Unique: output shapes that depend on values,
                         as boolean-mask indexing ``x[mask]`` (NonZero + GatherND) exports.
``int64-index``          Gather/Scatter indices that do not fit INT32 (onnx-tensorrt casts
                         INT64 indices to INT32): a constant index outside INT32, or an
                         indexed axis longer than 2^31-1 elements at the profile's max shape
                         (:class:`~vskip_compile.trt.profiles.ProfileLimits`). Gather,
                         GatherElements and GatherND of INT64 data keep INT64 indices and are
                         not checked (onnx-tensorrt 10.1 importers).
``external-data``        a weight reference TensorRT's parser (which reads external data
                         relative to the graph's directory and refuses ``..``) cannot load:
                         vskip's one set of external-data checks (``core/files``), each
                         failure a finding instead of an error.

Max shapes: each dynamic input axis gets the max of its kind in the profile ``vskip build``
derives (:mod:`vskip_compile.trt.profiles`: the axis names vskip's exporter and compiler
write, ``dim_names`` for others), and ONNX's shape inference (with data propagation)
carries them through the graph. An axis no kind covers, a dim inference leaves unknown
and a GatherND/ScatterND whose index depth is unknown are not checked; :func:`lint_graph`
says so in ``notes`` for the axes. Node names decide nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..core.errors import VskipError
from ..core.files import MAX_GRAPH_BYTES, escape, external_data, external_tensors, read_bytes
from ..core.graph_io import load_graph
from ..core.shapes import shape_table
from . import support
from .profiles import DIM_NAMES, ProfileLimits, axis_kind, is_decode_graph

DEFAULT_DOMAINS = ("", "ai.onnx")
DATA_DEPENDENT = {
    "NonZero": "its output length is the number of non-zero values",
    "Compress": "its output length is the number of true values in the condition",
    "Unique": "its output length is the number of distinct values",
}
INDEX_OPS = ("Gather", "GatherElements", "GatherND", "Scatter", "ScatterElements", "ScatterND")
CACHE_SLOTS = ("past_key", "past_value", "present_key", "present_value")

_TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8", onnx.TensorProto.INT8: "INT8", onnx.TensorProto.DOUBLE: "DOUBLE",
    onnx.TensorProto.FLOAT8E4M3FN: "FP8", onnx.TensorProto.INT4: "INT4", onnx.TensorProto.FLOAT4E2M1: "FP4",
}


@dataclass(frozen=True)
class Finding:
    """One problem: which rule, where (node name, op type, module path) and what to do."""

    rule: str
    node: str | None
    op_type: str | None
    module: str | None
    message: str
    fix: str

    def where(self) -> str:
        parts = [self.op_type or "tensor"]
        if self.node:
            parts.append(repr(escape(self.node)))
        if self.module:
            parts.append(f"({escape(self.module)})")
        return " ".join(parts) if (self.op_type or self.node) else "graph"

    def line(self) -> str:
        return f"[{self.rule}] {self.where()}: {self.message}. Fix: {self.fix}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def lint_graph(path_or_model, target: str = "trt11", limits: ProfileLimits | None = None,
               notes: list[str] | None = None, dim_names: dict[str, str] | None = None) -> list[Finding]:
    """The findings for graph ``path_or_model`` (a path, or a ModelProto: then external data
    is not checked) under ``target`` ("trt10" or "trt11") at the max shapes of ``limits``
    (``dim_names``: what other dynamic axes count, as ``vskip build --dim``); [] when clean.

    Unreadable input (no such file, not ONNX) raises :class:`VskipError`; an external-data
    reference TensorRT could not load is a finding. ``notes`` collects what was not checked.
    """
    tgt = support.target(target)
    limits = (limits or ProfileLimits()).check()
    notes = [] if notes is None else notes
    if isinstance(path_or_model, onnx.ModelProto):
        model, findings = path_or_model, []
        if any(True for _ in external_tensors(model)):
            notes.append("external data not checked: the graph was given without its file path")
    else:
        model, findings = _read(Path(path_or_model))
    return findings + _Lint(model, tgt, limits, notes, dim_names or {}).run()


# ------------------------------------------------------------------------------ reading

def _read(path: Path) -> tuple[onnx.ModelProto, list[Finding]]:
    """The graph (without its weights) and the external-data findings.

    The one guarded reader, :func:`~vskip_compile.core.graph_io.load_graph`, checks every
    external reference; when it refuses the graph, the graph is read once more without
    them and each reference is checked alone, so every bad one becomes a finding. A file
    that is not an ONNX graph stays an error.
    """
    try:
        return load_graph(path), []
    except VskipError as refused:
        try:
            model = onnx.load_model_from_string(read_bytes(path, "ONNX model", MAX_GRAPH_BYTES))
        except Exception:  # not ONNX, unreadable: load_graph's own message says which
            raise refused from None
        findings = external_findings(model, path)
        if not findings:
            raise refused from None
        return model, findings


def external_findings(model: onnx.ModelProto, path: Path) -> list[Finding]:
    """One finding per distinct external-data problem, from :func:`core.files.external_data`
    run on each external tensor alone."""
    problems: dict[str, list[str]] = {}
    for tensor in external_tensors(model):
        probe = onnx.ModelProto()
        probe.graph.initializer.append(tensor)
        try:
            external_data(probe, path)
        except VskipError as exc:
            text = str(exc)
            text = text[len(f"{path}: "):] if text.startswith(f"{path}: ") else text
            problems.setdefault(text, []).append(tensor.name)
    findings = []
    for text, names in problems.items():
        more = f" ({len(names)} tensors)" if len(names) > 1 else ""
        findings.append(Finding(
            "external-data", names[0], None, None, text + more,
            "keep the weights in a file inside the graph's directory, referenced by a relative location "
            "without '..' (onnx.save_model(..., save_as_external_data=True, location='NAME.data')); TensorRT's "
            "parser reads external data relative to the graph's file"))
    return findings


# ------------------------------------------------------------------------------ the walk

class _Scope:
    """One graph body (the main graph, a subgraph or a function): producers and constants."""

    def __init__(self, graph_nodes, initializers=(), outer: "_Scope | None" = None, params=()):
        self.nodes = list(graph_nodes)
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.values: dict[str, onnx.TensorProto | None] = dict(outer.values) if outer else {}
        for tensor in initializers:
            self.values[tensor.name] = tensor
        for name in params:  # a function's inputs: the caller may pass constants (value unknown here)
            self.values[name] = None
        for node in self.nodes:
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
                value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR),
                             None)
                self.values[node.output[0]] = value

    def is_constant(self, name: str) -> bool:
        return name in self.values

    def constant_array(self, name: str) -> np.ndarray | None:
        tensor = self.values.get(name)
        if tensor is None or tensor.data_location == onnx.TensorProto.EXTERNAL:
            return None
        try:
            return onnx.numpy_helper.to_array(tensor)
        except Exception:  # an odd type: the value stays unknown
            return None

    def made_by(self, name: str) -> str:
        node = self.producer.get(name)
        return f"made by {node.op_type} {escape(node.name)!r}" if node is not None else "a graph input"


class _Lint:
    def __init__(self, model: onnx.ModelProto, tgt: support.Target, limits: ProfileLimits, notes: list[str],
                 dim_names: dict[str, str]):
        from ..passes.locate import node_scopes  # module paths: one reader of the exporter's metadata

        self.model, self.tgt, self.limits, self.notes = model, tgt, limits, notes
        self.scopes = node_scopes(model)
        self.functions = {(f.domain, f.name) for f in model.functions}
        self.types: dict[str, int] = {}
        self.shapes: dict[str, tuple] = {}      # at the max shape; None for an unknown dim
        self.findings: list[Finding] = []
        self.unsized: list[str] = []            # index nodes whose indexed dims stay unknown
        self._infer(dim_names)

    # ---- tensor facts
    def _infer(self, dim_names: dict[str, str]) -> None:
        g = self.model.graph
        for info in list(g.value_info) + list(g.input) + list(g.output):
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                self.types[info.name] = info.type.tensor_type.elem_type
        for tensor in g.initializer:
            self.types[tensor.name] = tensor.data_type
            self.shapes[tensor.name] = tuple(tensor.dims)
        fixed, unbounded = _at_max_shape(self.model, self.limits, dim_names)
        if unbounded:
            self.notes.append(f"input axes {', '.join(unbounded)} count nothing the profile bounds (name them with "
                              "--dim NAME=KIND): tensors sized by them are not checked for INT32 index range")
        try:
            # Without data propagation: at max-shape dims it allocates per element (std::bad_alloc
            # for a Gather from a 2^32-element tensor, onnx 1.23), so computed Reshape targets stay
            # unknown and their tensors unchecked (said in the notes).
            inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=False).graph
        except Exception as exc:  # inference errors come in many kinds
            self.notes.append(f"INT32 index range at the max shape not checked: ONNX shape inference failed: "
                              f"{type(exc).__name__}: {exc}")
            return
        for info in list(inferred.value_info) + list(inferred.output) + list(inferred.input):
            if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
                self.types.setdefault(info.name, info.type.tensor_type.elem_type)
        self.shapes.update(shape_table(list(inferred.value_info) + list(inferred.input) + list(inferred.output)))

    def type_name(self, name: str) -> str | None:
        code = self.types.get(name)
        return None if code is None else _TYPE_NAMES.get(code, onnx.TensorProto.DataType.Name(code))

    def module(self, node: onnx.NodeProto) -> str | None:
        if node.name and node.name in self.scopes:
            return self.scopes[node.name]
        if node.name.startswith("/"):  # legacy TorchScript names: /model/layers.0/self_attn/o_proj/MatMul
            return ".".join(p for p in node.name.split("/")[:-1] if p) or None
        return None

    def add(self, rule: str, node: onnx.NodeProto, message: str, fix: str) -> None:
        self.findings.append(Finding(rule, node.name or None, node.op_type, self.module(node), message, fix))

    # ---- driver
    def run(self) -> list[Finding]:
        main = _Scope(self.model.graph.node, self.model.graph.initializer)
        self._walk(main, top=True)
        for function in self.model.functions:
            self._walk(_Scope(function.node, params=function.input))
        if self.unsized:
            self.notes.append(f"{len(self.unsized)} Gather/Scatter node(s) (e.g. {escape(self.unsized[0])!r}) index "
                              "a tensor whose size at the max shape ONNX shape inference leaves unknown: not checked "
                              "for INT32 index range")
        return self.findings

    def _walk(self, scope: _Scope, top: bool = False) -> None:
        for node in scope.nodes:
            for rule in (self.rule_op, self.rule_data_dependent, self.rule_reduce_axes, self.rule_int64_index):
                rule(node, scope, top)
            for attr in node.attribute:
                subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else \
                    list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []
                for sub in subgraphs:
                    self._walk(_Scope(sub.node, sub.initializer, outer=scope))

    # ---- rules
    def rule_op(self, node, scope: _Scope, top: bool) -> None:
        """op-domain, op-unsupported, op-version, op-input/-output, attention-cache,
        op-attribute, op-rank, dtype, constant-input."""
        if node.domain not in DEFAULT_DOMAINS:
            if (node.domain, node.op_type) not in self.functions:
                self.add("op-domain", node,
                         f"domain {escape(node.domain)!r} is not the default ONNX domain; TensorRT's parser imports "
                         f"such a node only as a registered TensorRT plugin named {node.op_type!r}",
                         "re-export without contrib ops or fusions (standard ONNX ops only), or register a TensorRT "
                         f"plugin named {node.op_type!r}")
            return
        if node.op_type in DATA_DEPENDENT:
            return  # rule_data_dependent speaks for these
        op = support.op_for(node.op_type, self.tgt)
        if op is None or not op.supported:
            state = "marks it unsupported" if op is not None else "does not list it"
            self.add("op-unsupported", node, f"TensorRT's ONNX operator table {state} ({self.tgt.describe})",
                     f"replace {node.op_type} with ops the table supports before building, or register a TensorRT "
                     f"plugin named {node.op_type!r}")
            return
        if op.since > self.tgt.floor:
            needs = support.version_text(op.since)
            self.add("op-version", node, f"{node.op_type} needs TensorRT >= {needs} (target {self.tgt.name}: "
                                         f"{self.tgt.describe})",
                     op.fix or f"build with TensorRT >= {needs}")
        self._io(node, op)
        self._attributes(node, op)
        self._ranks(node, op)
        self._dtypes(node, op)
        self._constant_inputs(node, op, scope)

    def _io(self, node, op: support.Op) -> None:
        for slots, names, kind in ((op.inputs_unsupported, node.input, "input"),
                                   (op.outputs_unsupported, node.output, "output")):
            for index, slot in slots:
                if index < len(names) and names[index]:
                    if node.op_type == "Attention" and slot in CACHE_SLOTS:
                        self.add("attention-cache", node,
                                 f"Attention with a {slot} {kind}: TensorRT's Attention takes no past_key/past_value "
                                 "inputs and gives no present_key/present_value outputs",
                                 "concatenate the past and new K/V outside the Attention node (a Concat that also "
                                 "feeds the present output) and give Attention the full K and V, or export with "
                                 "--opset 20 (decomposed attention)")
                    else:
                        self.add(f"op-{kind}", node, f"{node.op_type}'s {slot} {kind} is not supported by TensorRT",
                                 f"leave the optional {slot} {kind} empty, or compute it with other ops")

    def _attributes(self, node, op: support.Op) -> None:
        given = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for rule in op.attrs:
            if rule.name not in given:
                continue
            value = given[rule.name]
            value = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            if rule.absent_before is not None and self.tgt.floor < rule.absent_before:
                needs = support.version_text(rule.absent_before)
                first = f"drop the attribute ({rule.default!r} is its default)" if value == rule.default else \
                    f"rewrite the node without {rule.name}"
                self.add("op-attribute", node, f"{node.op_type} with a {rule.name!r} attribute ({value!r}): TensorRT "
                                               f"before {needs} refuses the attribute whatever its value",
                         f"{first}, or build with TensorRT >= {needs}")
                continue
            if rule.all_ones:
                bad = any(v != 1 for v in value)
                allowed = "empty or all ones"
            elif not rule.allowed:
                bad, allowed = True, "absent"
            else:
                bad = value not in rule.allowed
                allowed = " or ".join(repr(v) for v in rule.allowed)
            if bad:
                self.add("op-attribute", node, f"{node.op_type} attribute {rule.name}={value!r}: TensorRT supports "
                                               f"{allowed} only",
                         f"rewrite the node with {rule.name} {allowed}, or replace the op")

    def _ranks(self, node, op: support.Op) -> None:
        for index, slot in op.rank4_inputs:
            if index < len(node.input) and node.input[index]:
                shape = self.shapes.get(node.input[index])
                if shape is not None and len(shape) != 4:
                    self.add("op-rank", node, f"{node.op_type} input {slot} is {len(shape)}-D; TensorRT needs it 4-D",
                             f"reshape {slot} to 4-D before the node (heads as the second dim)")

    def _dtypes(self, node, op: support.Op) -> None:
        kind, index = support.TYPED_BY.get(node.op_type, ("in", 0))
        names = node.output if kind == "out" else node.input
        checks = [(names[index] if index < len(names) else "", "", op.types, op.type_since)]
        checks += [(node.input[t.index] if t.index < len(node.input) else "", f" input {t.name}", t.types, t.since)
                   for t in op.input_types]
        for tensor, what, types, since in checks:
            name = self.type_name(tensor) if tensor else None
            if name is None or name in support.NOT_CHECKED_TYPES:
                continue
            if name not in types:
                self.add("dtype", node, f"{node.op_type}{what} is {name}; TensorRT's table lists "
                                        f"{', '.join(sorted(types))} only",
                         f"Cast to one of {', '.join(sorted(types))} around the node")
                continue
            needs = dict(since).get(name)
            if needs is not None and needs > self.tgt.floor:
                text = support.version_text(needs)
                self.add("op-version", node, f"{node.op_type}{what} of type {name} needs TensorRT >= {text}",
                         f"Cast{what} to a floating type, or build with TensorRT >= {text}")

    def _constant_inputs(self, node, op: support.Op, scope: _Scope) -> None:
        if node.op_type.startswith("Reduce"):
            return  # rule_reduce_axes
        for need in op.const_inputs:
            if need.until is not None and self.tgt.floor >= need.until:
                continue
            if need.index < len(node.input) and node.input[need.index]:
                tensor = node.input[need.index]
                if not scope.is_constant(tensor):
                    later = f", or build with TensorRT >= {support.version_text(need.until)}" if need.until else ""
                    before = f"before {support.version_text(need.until)} " if need.until else ""
                    self.add("constant-input", node,
                             f"{node.op_type} input {need.name} ({escape(tensor)!r}, {scope.made_by(tensor)}) is "
                             f"computed at run time; TensorRT {before}needs it at build time",
                             f"make {need.name} an initializer or a Constant node{later}")

    def rule_data_dependent(self, node, scope: _Scope, top: bool) -> None:
        if node.domain not in DEFAULT_DOMAINS or node.op_type not in DATA_DEPENDENT:
            return
        pattern = ""
        consumers = [n for n in scope.nodes if any(o and o in n.input for o in node.output)]
        seen = consumers + [n for c in consumers if c.op_type == "Transpose"
                            for n in scope.nodes if any(o in n.input for o in c.output if o)]
        if any(n.op_type in ("GatherND", "ScatterND") for n in seen):
            pattern = "; with the GatherND/ScatterND it feeds this is boolean-mask indexing x[mask]"
        self.add("data-dependent-shape", node,
                 f"{DATA_DEPENDENT[node.op_type]}: a data-dependent shape, which TensorRT builds only with "
                 f"data-dependent-shape handling and no optimization profile can bound{pattern}",
                 "compute the indices on the host and feed them as an int32/int64 input (as vskip's compiled graphs "
                 "take vskip_text_rows), then Gather/ScatterND by them")

    def rule_reduce_axes(self, node, scope: _Scope, top: bool) -> None:
        if node.domain not in DEFAULT_DOMAINS or not node.op_type.startswith("Reduce"):
            return
        op = support.op_for(node.op_type, self.tgt)
        if op is None or not op.const_inputs:
            return
        index = op.const_inputs[0].index
        if index >= len(node.input) or not node.input[index]:
            return  # no axes input: reduce over all axes, or (noop_with_empty_axes=1) none: both static
        axes = node.input[index]
        if scope.is_constant(axes):
            return
        noop = next((a.i for a in node.attribute if a.name == "noop_with_empty_axes"), 0)
        extra = ("; with noop_with_empty_axes=1 an empty run-time axes would even make it an identity"
                 if noop else "")
        self.add("reduce-axes", node,
                 f"{node.op_type} axes ({escape(axes)!r}, {scope.made_by(axes)}) are computed at run time; TensorRT "
                 f"needs reduce axes as a build-time constant (initializer or Constant){extra}",
                 "make axes an initializer or a Constant node (the exporter writes one when the reduced dims are "
                 "known when tracing)")

    def rule_int64_index(self, node, scope: _Scope, top: bool) -> None:
        if node.domain not in DEFAULT_DOMAINS or node.op_type not in INDEX_OPS or len(node.input) < 2:
            return
        data, indices = node.input[0], node.input[1]
        if node.op_type.startswith("Gather") and self.type_name(data) == "INT64":
            return  # INT64 data keeps INT64 indices
        cast = "TensorRT casts INT64 indices to INT32"
        values = scope.constant_array(indices)
        if values is not None and values.dtype == np.int64 and values.size:
            low, high = int(values.min()), int(values.max())
            if high > support.INT32_MAX or low < -support.INT32_MAX - 1:
                worst = high if high > support.INT32_MAX else low
                self.add("int64-index", node, f"constant indices {escape(indices)!r} hold {worst}, outside INT32; "
                                              f"{cast}, so it would wrap",
                         "split the indexed tensor so every index fits INT32 (|index| < 2^31)")
                return
        if not top:
            return
        shape = self.shapes.get(data)
        axes = self._indexed_axes(node, len(shape)) if shape is not None else []
        if not axes or any(not 0 <= a < len(shape) or shape[a] is None for a in axes):
            self.unsized.append(node.name or node.op_type)
        for axis in axes:
            size = shape[axis] if 0 <= axis < len(shape) else None
            if size is not None and size > support.INT32_MAX:
                lim = self.limits
                self.add("int64-index", node,
                         f"indexes axis {axis} of {escape(data)!r}, {size} long at the profile's max shape (batch "
                         f"{lim.max_batch}, sequence {lim.max_seq}, visual rows {lim.max_visual_rows}): indices up to "
                         f"{size - 1} do not fit INT32 ({cast})",
                         "split the tensor along that axis (or index it in chunks) so no indexed axis exceeds 2^31-1 "
                         "elements, or lower the profile's max shape")
                return

    def _indexed_axes(self, node, rank: int) -> list[int]:
        if node.op_type in ("GatherND", "ScatterND"):
            batch = next((a.i for a in node.attribute if a.name == "batch_dims"), 0)
            depth = (self.shapes.get(node.input[1]) or (None,))[-1]
            return [] if depth is None else list(range(batch, min(batch + depth, rank)))
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        return [axis + rank if axis < 0 else axis]


def _at_max_shape(model: onnx.ModelProto, limits: ProfileLimits,
                  dim_names: dict[str, str]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` (weights stay where they are) whose dynamic input axes are fixed
    at their kind's max in the profile (:mod:`~vskip_compile.trt.profiles`), and the axes
    no kind covers."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    del fixed.graph.value_info[:]  # symbolic shapes would only compete with the inferred ones
    known, largest = {**DIM_NAMES, **dim_names}, {k: r[2] for k, r in limits.ranges().items()}
    initializers = {t.name for t in fixed.graph.initializer}
    decode = is_decode_graph(i.name for i in fixed.graph.input if i.name not in initializers)
    unbounded = []
    for info in fixed.graph.input:
        if info.name in initializers or not info.type.tensor_type.HasField("shape"):
            continue
        for axis, dim in enumerate(info.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                continue
            kind = axis_kind(info.name, axis, len(info.type.tensor_type.shape.dim), dim.dim_param, known, decode)
            if kind is None:
                unbounded.append(f"{escape(info.name)}[{axis}]" + (f" ({escape(dim.dim_param)})" if dim.dim_param else ""))
                continue
            dim.Clear()
            dim.dim_value = largest[kind]
    return fixed, unbounded


def summary(path: str, findings: list[Finding], tgt_name: str) -> str:
    tgt = support.target(tgt_name)
    if not findings:
        return f"{path}: clean for {tgt.name} ({tgt.describe})"
    rules = sorted({f.rule for f in findings})
    return (f"{path}: {len(findings)} finding{'s' if len(findings) != 1 else ''} for {tgt.name} "
            f"({tgt.describe}): {', '.join(rules)}")


def report(path: str, findings: list[Finding], tgt_name: str, limits: ProfileLimits, notes: list[str]) -> dict:
    """The JSON form of a lint run."""
    return {"graph": str(path), "target": tgt_name, "target_describes": support.target(tgt_name).describe,
            "limits": limits.to_dict(), "clean": not findings,
            "findings": [f.to_dict() for f in findings], "notes": list(notes)}
