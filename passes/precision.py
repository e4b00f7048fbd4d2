"""Type an fp32 decoder graph for deployment: fp16 or bf16 with explicit fp32 islands.

For graphs that arrive in fp32 (foreign exports, older vskip exports); ``vskip export
--dtype`` traces the model in its type instead. TensorRT 11 builds only strongly typed
networks, so the precision must be in the graph itself.

**Islands** (nodes that compute in fp32), found by structure only:

1. *Norm statistics.* Every Reduce node (ReduceMean, ReduceSum, ReduceSumSquare,
   ReduceL2) with the elementwise chain that feeds it from the normalized tensor x
   (``Pow(x, 2)``, ``Mul(x, x)``, Casts) and the chain after it up to and including the
   first Mul or Div by x (``Add eps``, ``Sqrt``, ``Reciprocal``): squaring a half value
   past 256 would overflow fp16, and the model computes ``x.float()`` there.
   ``RMSNormalization`` (opset 23) keeps its fp32 ``stash_type``.
2. *Rotary tables.* ``Cos`` and ``Sin`` with every float node upstream of them
   (positions times inverse frequencies): angles of thousands of radians lose their
   phase in half precision; transformers computes them in fp32.
3. *Softmax.* ``Softmax`` nodes; the ``Attention`` op gets ``softmax_precision = FLOAT``
   (as :func:`vskip_compile.core.islands.softmax_islands` does for typed exports).
4. *Optionally the LM head* (``lm_head=True``): the MatMul or Gemm the ``logits`` output
   comes from, and what follows it; ``logits`` is then fp32.
5. *Range* (fp16 only): every node that makes or reads a tensor which a reference run of
   the fp32 graph on sample feeds shows beyond fp16's range (``keep_fp32``: the tensors
   :func:`out_of_range_tensors` finds). Producer and consumers both, since a value cast to
   fp16 on its way to a consumer would overflow there.

Everything else computes in the target type: graph inputs and outputs, weights, the K/V
cache. A tensor crossing between an island and the rest gets one Cast per target type;
a weight used on one side only is stored in that side's type. Constants beyond the target
type's range (the -3.4e38 mask fill of fp32 graphs) are clamped to its finite extremes,
as PyTorch's ``finfo(dtype).min`` masks are.

Weights are converted tensor by tensor (:func:`convert_weights`): one tensor in memory
at a time, read from the source's external data and appended to the output's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vskip_compile.core.errors import VskipError
from vskip_compile.core.islands import value_types

TARGETS = {"float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2"}
_CHAIN = {"Pow", "Mul", "Add", "Sqrt", "Reciprocal", "Div", "Cast"}
# Ops whose float inputs may keep any type (they read shapes, test values or convert).
_ANY_INPUT = {"Shape", "Size", "Cast", "IsNaN", "IsInf"}
# Ops with a type in an attribute that this pass does not rewrite: refused, not guessed.
_TYPED_ATTRIBUTES = {"EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                     "Multinomial", "Bernoulli"}
FP16_MAX = float(np.finfo(np.float16).max)


@dataclass
class PrecisionReport:
    dtype: str
    islands: dict[str, int] = field(default_factory=dict)   # rule -> nodes kept in fp32
    casts: int = 0
    clamped: int = 0                                          # constants clamped to the type's range
    weights: int = 0                                          # initializers converted
    converted: set = field(default_factory=set)               # their names

    def lines(self) -> list[str]:
        rules = ", ".join(f"{n} {rule}" for rule, n in self.islands.items())
        return [f"typed to {self.dtype}: {self.weights} weights converted, {self.casts} casts at island borders"
                + (f", {self.clamped} constants clamped to {self.dtype}'s range" if self.clamped else ""),
                f"fp32 islands: {rules or 'none'}"]


class _Graph:
    """Producers and consumers of a graph's tensors, by name. Protobuf may hand out a new
    Python object for the same node on each access, so nodes are the objects of ``nodes``
    and known by their ``id`` only there."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.nodes = list(graph.node)  # one object per node, kept alive: ids below are stable
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.constants = {t.name for t in graph.initializer} | {
            n.output[0] for n in graph.node if n.op_type == "Constant"}

    def variable_inputs(self, node) -> list[str]:
        return [i for i in node.input if i and i not in self.constants]


def find_islands(g: "_Graph", types: dict, lm_head: bool = False, keep_fp32=()) -> dict[str, set[int]]:
    """Rule -> ids of the ``g.nodes`` that compute in fp32 (see the module docstring)."""
    islands: dict[str, set[int]] = {"norm statistics": set(), "rotary tables": set(), "softmax": set()}
    for node in g.nodes:
        if node.op_type in _REDUCE and types.get(node.input[0]) in FLOATS:
            islands["norm statistics"] |= _norm_island(g, node)
        elif node.op_type in ("Cos", "Sin"):
            islands["rotary tables"] |= _upstream_floats(g, node, types)
        elif node.op_type == "Softmax":
            islands["softmax"].add(id(node))
    if lm_head:
        islands["LM head"] = _lm_head(g, g.graph)
    if keep_fp32:  # tensors a reference run found beyond the type: made and used in fp32
        islands["out of range"] = {id(g.producer[t]) for t in keep_fp32 if t in g.producer} | {
            id(n) for t in keep_fp32 for n in g.consumers.get(t, [])}
    return islands


def _norm_island(g: _Graph, reduce) -> set[int]:
    island = {id(reduce)}
    source = reduce.input[0]
    while source in g.producer:  # up: Pow(x, c), Mul(x, x), Cast(x)
        node = g.producer[source]
        inputs = g.variable_inputs(node)
        if node.op_type not in ("Pow", "Mul", "Cast") or len(set(inputs)) != 1:
            break
        island.add(id(node))
        source = inputs[0]
    roots = {source}
    while source in g.producer and g.producer[source].op_type == "Cast":  # x.float() of a Cast
        source = g.producer[source].input[0]
        roots.add(source)
    current = reduce.output[0]
    for _ in range(8):  # down: Add eps, Sqrt, Reciprocal, then Mul/Div by x
        users = g.consumers.get(current, [])
        if len(users) != 1 or users[0].op_type not in _CHAIN:
            break
        node = users[0]
        island.add(id(node))
        if node.op_type in ("Mul", "Div") and roots & set(node.input):
            break
        current = node.output[0]
    return island


def _upstream_floats(g: _Graph, node, types) -> set[int]:
    found, stack = {id(node)}, list(node.input)
    while stack:
        name = stack.pop()
        producer = g.producer.get(name)
        if producer is None or id(producer) in found or types.get(name) not in FLOATS:
            continue
        found.add(id(producer))
        stack.extend(producer.input)
    return found


def _lm_head(g: _Graph, graph: onnx.GraphProto) -> set[int]:
    logits = next((o.name for o in graph.output if o.name == "logits"), None)
    if logits is None:
        raise VskipError("--lm-head-fp32: the graph has no 'logits' output")
    found, name = set(), logits
    while name in g.producer:
        node = g.producer[name]
        found.add(id(node))
        if node.op_type in ("MatMul", "Gemm"):
            return found
        inputs = g.variable_inputs(node)
        if not inputs:
            break
        name = inputs[0]
    raise VskipError("--lm-head-fp32: no MatMul or Gemm found on the path to 'logits'")


def type_graph(model: onnx.ModelProto, dtype: str, lm_head: bool = False, keep_fp32=()) -> PrecisionReport:
    """Retype ``model`` (an fp32 graph; weights may stay external) in place; the weights'
    data are converted by :func:`convert_weights`, which this marks with the new types."""
    if dtype not in TARGETS:
        raise VskipError(f"--dtype {dtype}: choose {', '.join(TARGETS)}")
    graph = model.graph
    types = value_types(graph)
    floats = [i for i in graph.input if i.type.tensor_type.elem_type in FLOATS]
    if any(i.type.tensor_type.elem_type != TensorProto.FLOAT for i in floats):
        raise VskipError(f"the graph's float inputs are already {', '.join(sorted({_name(i.type.tensor_type.elem_type) for i in floats}))}; "
                         "the precision pass types fp32 graphs")
    refused = sorted({n.op_type for n in graph.node if n.op_type in _TYPED_ATTRIBUTES})
    if refused:
        raise VskipError(f"the graph has {', '.join(refused)}, whose output type is an attribute this pass "
                         "does not rewrite")
    half = TARGETS[dtype]
    g = _Graph(graph)
    islands = find_islands(g, types, lm_head, keep_fp32)
    in_island = set().union(*islands.values())
    report = PrecisionReport(dtype, {rule: len(ids) for rule, ids in islands.items() if ids})

    def compute(node) -> int:
        return TensorProto.FLOAT if id(node) in in_island else half

    # Each float tensor's new type: a node's float outputs take its compute type.
    new_type: dict[str, int] = {i.name: half for i in floats}
    for node in g.nodes:
        for out in node.output:
            if types.get(out) in FLOATS or (node.op_type == "Cast" and _cast_to(node) in FLOATS):
                new_type[out] = compute(node)
    initializers = {t.name: t for t in graph.initializer}
    constant_nodes = {n.output[0]: n for n in g.nodes if n.op_type == "Constant"}
    # A float weight or Constant used by one side only is stored in that side's type.
    for name in list(initializers) + list(constant_nodes):
        tensor = initializers[name] if name in initializers else constant_nodes[name].attribute[0].t
        if tensor.data_type not in FLOATS:
            continue
        sides = {compute(n) for n in g.consumers.get(name, []) if n.op_type not in _ANY_INPUT}
        new_type[name] = sides.pop() if len(sides) == 1 else half

    nodes, casts = [], {}
    for node in g.nodes:
        target = compute(node)
        if node.op_type == "Cast" and _cast_to(node) in FLOATS:
            _set_attribute(node, "to", target)
        elif node.op_type == "ConstantOfShape" and new_type.get(node.output[0]) in FLOATS:
            report.clamped += _retype_attribute_tensor(node, "value", target)
        elif node.op_type == "Attention":
            _set_attribute(node, "softmax_precision", TensorProto.FLOAT)
        if node.op_type not in _ANY_INPUT:
            for k, name in enumerate(node.input):
                if name and new_type.get(name, target) != target and name in new_type:
                    key = (name, target)
                    if key not in casts:
                        out = f"{name}_as_{_name(target)}"
                        nodes.append(helper.make_node("Cast", [name], [out], to=target,
                                                      name=f"vskip_precision_cast_{len(casts)}"))
                        casts[key] = out
                        new_type[out] = target
                    node.input[k] = casts[key]
        nodes.append(node)
    report.casts = len(casts)
    del graph.node[:]
    graph.node.extend(nodes)

    for name, node in constant_nodes.items():
        tensor = node.attribute[0].t
        if tensor.data_type in FLOATS and new_type[name] != tensor.data_type:
            report.clamped += _convert_inline(tensor, new_type[name])
    for tensor in graph.initializer:
        if tensor.data_type in FLOATS and new_type[tensor.name] != tensor.data_type:
            report.weights += 1
            report.converted.add(tensor.name)
            if tensor.data_location == TensorProto.EXTERNAL:
                tensor.data_type = new_type[tensor.name]  # its bytes: convert_weights
            else:
                report.clamped += _convert_inline(tensor, new_type[tensor.name])
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.name in new_type and info.type.tensor_type.elem_type in FLOATS:
            info.type.tensor_type.elem_type = new_type[info.name]
    return report


def _cast_to(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


def _set_attribute(node, name: str, value: int) -> None:
    for attribute in node.attribute:
        if attribute.name == name:
            attribute.i = value
            return
    node.attribute.append(helper.make_attribute(name, value))


def _retype_attribute_tensor(node, name: str, target: int) -> int:
    for attribute in node.attribute:
        if attribute.name == name:
            if attribute.t.data_type in FLOATS and attribute.t.data_type != target:
                return _convert_inline(attribute.t, target)
            return 0
    # ConstantOfShape without a value makes fp32 zeros: say the zero's new type
    zero = numpy_helper.from_array(np.zeros(1, _numpy_type(target)), "value")
    node.attribute.append(helper.make_attribute(name, zero))
    return 0


def _convert_inline(tensor: onnx.TensorProto, target: int) -> int:
    """Convert a tensor stored in the graph; returns 1 if a value had to be clamped.
    Unlike weights (:func:`convert_array`), infinities stay infinite here: a constant's
    -inf is a mask's meaning, not a value out of range."""
    values = numpy_helper.to_array(tensor).astype(np.float64)
    limit = _finite_limit(target)
    clamped = bool(np.any(np.abs(values[np.isfinite(values)]) > limit))
    values = np.where(np.isfinite(values), np.clip(values, -limit, limit), values)
    converted = numpy_helper.from_array(values.astype(_numpy_type(target)), tensor.name)
    tensor.CopyFrom(converted)
    return int(clamped)


def convert_array(values: np.ndarray, target: int) -> np.ndarray:
    """fp32 weights in ``target``'s type, clamped to its finite range."""
    limit = _finite_limit(target)
    return np.clip(values, -limit, limit).astype(_numpy_type(target))


def _finite_limit(target: int) -> float:
    """The largest finite magnitude a value converted to ``target`` may keep (bf16 has fp32's range)."""
    return FP16_MAX if target == TensorProto.FLOAT16 else float(np.finfo(np.float32).max)


def _numpy_type(elem_type: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))


def _name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


def infer_types(model: onnx.ModelProto) -> None:
    """Fill in the graph's value_info types where an exporter left them out (shapes only;
    external weights are not read)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name for v in model.graph.value_info}
    for info in inferred.graph.value_info:
        if info.name not in known:
            model.graph.value_info.append(info)


def convert_weights(model: onnx.ModelProto, files: dict, model_path, converted: set[str], location: str,
                    write) -> None:
    """Rewrite every external weight of ``model`` into one new data file, tensor by tensor.

    ``files``: location -> checked path of the source's data files (``read_graph``);
    ``converted``: the initializers :func:`type_graph` retyped (their data are fp32 and
    become the tensor's new type); ``location``: the output's data file name, which
    ``write(chunk) -> offset`` appends to. Only one tensor is in memory at a time.
    """
    from vskip_compile.core.files import external_info

    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        source, offset, length = external_info(tensor, model_path)
        with open(files[source], "rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
        if tensor.name in converted:
            data = convert_array(np.frombuffer(data, dtype=np.float32), tensor.data_type).tobytes()
        start = write(data)
        del tensor.external_data[:]
        for key, value in (("location", location), ("offset", str(start)), ("length", str(len(data)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value


def out_of_range_tensors(model: onnx.ModelProto, model_dir, feeds: dict, limit: float = FP16_MAX) -> list[str]:
    """The float tensors of ``model`` (fp32, value_info filled in; weights may stay in
    ``model_dir``'s external data) whose largest magnitude on ``feeds`` exceeds ``limit``,
    from one ONNX Runtime run with every float tensor as an output."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o.name for o in probe.graph.output}
    for info in model.graph.value_info:
        if info.type.tensor_type.elem_type in FLOATS and info.name not in present:
            probe.graph.output.append(info)
    settings = ort.SessionOptions()
    settings.add_session_config_entry("session.model_external_initializers_file_folder_path", str(model_dir))
    settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor as written
    settings.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), settings, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        values = session.run(names, {i.name: feeds[i.name] for i in session.get_inputs()})
    except KeyError as missing:
        raise VskipError(f"the range check's feeds lack the graph input {missing}") from None
    except Exception as exc:  # ORT's own exception types
        from vskip_compile.core.files import one_line

        raise VskipError(f"the range check could not run the fp32 graph on ONNX Runtime: {one_line(exc)}") from None
    found = []
    for name, value in zip(names, values):
        value = np.asarray(value)
        if value.dtype.kind == "f" and value.size:
            finite = value[np.isfinite(value)]
            if finite.size and float(np.abs(finite).max()) > limit:
                found.append(name)
    return found
