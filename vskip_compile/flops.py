"""FLOPs of a decoder prefill graph, vanilla or compiled, counted from the graph's shapes.

What is counted: the matrix products, i.e. every ``MatMul``, ``Gemm`` and ONNX
``Attention`` node, at 2 FLOPs per multiply-add, with the shapes the graph really has for
one prompt layout::

    rows:  [ prefix text ][ visual block (V rows) ][ suffix text ]     S rows in all

Elementwise ops, norms, Softmax, RoPE arithmetic, Gather/Scatter are not counted (they are
O(S x d), against O(S x d^2) for the products). Attention products are counted as the
graph computes them: the full S x S scores and probabilities (masked entries included,
since a causal mask removes no work from a MatMul); after skipping, n_q x S.

How the rows are known. The graph's symbolic input dims are fixed (batch B, sequence S,
and, for a compiled graph, the row inputs ``vskip_text_rows`` = S - V rows and
``vskip_suffix_rows`` = the suffix), then shapes are inferred (ONNX shape inference with
data propagation; ONNX Runtime's symbolic shape inference for what that leaves unknown),
so every count is exact for that layout. Weights are never read: only initializer dims.

How nodes are attributed. The attention cores (Softmax cores or ``Attention`` ops, found
with the same structural rules as ``passes/locate.py``) are numbered along the data flow:
a tensor's *level* is the number of cores upstream of it, so layer i's q/k/v projections
and layer i-1's o_proj/FFN read level-i tensors. A projection (a MatMul with a 2-D
constant weight) is q, k or v of core i when it is the nearest projection behind that
core's query, key or value input; o_proj when it is the nearest one after the core's
output; otherwise FFN of the layer whose o_proj precedes it, except after the last layer,
where a projection whose output reaches a graph output without another projection in
between is the LM head. For graphs ``locate_layers`` can read (vanilla exports) the result
is cross-checked against it; compiled graphs, where the residual Adds act on gathered
rows, rely on the level walk alone.

Row classes. A node's FLOPs are proportional to its query rows r (per batch row). r = S:
the V visual rows' share is V/S of the FLOPs; r = the live text rows or the suffix: all
text. Anything else is refused. Attention products are attributed by query row.

Does not handle (raises ``FlopsError``): Einsum/Conv/quantized or contrib matrix ops,
matrix ops inside If/Loop/Scan subgraphs, shapes that stay unknown after inference (pass
``dims``), exports that output intermediate hidden states (their FFN projections would look
like an LM head).
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .errors import VskipError
from .shapes import ort_symbolic_shapes
from .visual_rows import SUFFIX_ROWS, TEXT_ROWS

COUNTED = {"MatMul", "Gemm", "Attention"}
# Matrix ops we cannot count from shapes alone, or whose semantics we do not model.
REFUSED = {"Einsum", "Conv", "ConvTranspose", "MatMulInteger", "QLinearMatMul", "QLinearConv",
           "MatMulNBits", "GroupQueryAttention", "MultiHeadAttention", "PackedAttention", "FusedMatMul"}
# A weight larger than this is never copied for shape inference (its dims are enough).
_SMALL_INITIALIZER = 4096
_ABSENT = "vskip-flops-weights-not-read"
# vskip's exporter names Qwen3-VL's DeepStack visual axis so (models/export.py).
_VISUAL_DIM = "visual_rows"
PRODUCT_ROLES = ("qk", "pv")


class FlopsError(VskipError):
    """The graph could not be counted; the message says which node and why."""


# --------------------------------------------------------------------------- report

@dataclass
class NodeFlops:
    node: str
    op: str
    layer: int | None      # None: outside the decoder layers
    role: str              # q k v qkv o | qk pv | ffn | head | other
    flops: int
    rows: int              # query rows per batch row that the node computes
    visual: int            # the visual rows' share of ``flops``


@dataclass
class LayerFlops:
    layer: int
    q: int = 0
    k: int = 0
    v: int = 0
    qkv: int = 0           # fused q/k/v projections, if a graph has them
    o: int = 0
    qk: int = 0            # scores: Q x K^T
    pv: int = 0            # probabilities x V
    ffn: int = 0
    visual: int = 0
    text: int = 0

    @property
    def attn_proj(self) -> int:
        return self.q + self.k + self.v + self.qkv + self.o

    @property
    def attn_product(self) -> int:
        return self.qk + self.pv

    @property
    def total(self) -> int:
        return self.attn_proj + self.attn_product + self.ffn


@dataclass
class FlopsReport:
    sequence_length: int
    visual_rows: int
    prefix_rows: int
    suffix_rows: int
    batch: int
    layers: list[LayerFlops]
    head: int = 0          # projections after the last layer (LM head)
    other: int = 0         # matrix products outside the layers (e.g. RoPE's inv_freq x positions)
    plan: list[str] | None = None   # the plan a compiled graph records, per layer
    source: str | None = None
    nodes: list[NodeFlops] = field(default_factory=list, repr=False)

    @property
    def layer_total(self) -> int:
        return sum(layer.total for layer in self.layers)

    @property
    def total(self) -> int:
        return self.layer_total + self.head + self.other

    @property
    def visual(self) -> int:
        return sum(layer.visual for layer in self.layers)

    @property
    def text(self) -> int:
        return sum(layer.text for layer in self.layers)

    def by_class(self) -> dict[str, int]:
        return {"attn_proj": sum(x.attn_proj for x in self.layers),
                "attn_product": sum(x.attn_product for x in self.layers),
                "ffn": sum(x.ffn for x in self.layers), "head": self.head, "other": self.other}

    def to_json(self, nodes: bool = False) -> str:
        data = {
            "sequence_length": self.sequence_length, "visual_rows": self.visual_rows,
            "prefix_rows": self.prefix_rows, "suffix_rows": self.suffix_rows, "batch": self.batch,
            "source": self.source, "plan": self.plan,
            "total": self.total, "layer_total": self.layer_total, "visual": self.visual, "text": self.text,
            "by_class": self.by_class(),
            "layers": [{**asdict(x), "attn_proj": x.attn_proj, "attn_product": x.attn_product, "total": x.total}
                       for x in self.layers],
        }
        if nodes:
            data["nodes"] = [asdict(n) for n in self.nodes]
        return json.dumps(data, indent=2)

    def format_table(self) -> str:
        """One row per layer, then the totals, in the unit that suits the total (GFLOPs, ...)."""
        scale, unit = _unit(self.total)
        header = ("layer", "action", "attn_proj", "attn_product", "ffn", "visual", "text", "total")
        rows = [header]
        for x in self.layers:
            action = self.plan[x.layer] if self.plan and x.layer < len(self.plan) else "-"
            rows.append((str(x.layer), action, *(f"{v / scale:.3f}" for v in
                                                 (x.attn_proj, x.attn_product, x.ffn, x.visual, x.text, x.total))))
        c = self.by_class()
        rows.append(("all", "", *(f"{v / scale:.3f}" for v in (c["attn_proj"], c["attn_product"], c["ffn"],
                                                                self.visual, self.text, self.layer_total))))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = ["  ".join(cell.rjust(w) if i > 1 else cell.ljust(w) for i, (cell, w) in
                           enumerate(zip(row, widths))).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.insert(len(lines) - 1, lines[1])
        lines.append(f"{unit} (multiply-add = 2), batch {self.batch}, {self.sequence_length} rows = "
                     f"{self.prefix_rows} text + {self.visual_rows} visual + {self.suffix_rows} text; "
                     f"layers {self.layer_total / scale:.3f} + LM head {self.head / scale:.3f} + other "
                     f"{self.other / scale:.3f} = {self.total / scale:.3f} {unit}")
        return "\n".join(lines)


def _unit(flops: int) -> tuple[float, str]:
    for scale, unit in ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs")):
        if flops >= scale:
            return scale, unit
    return 1.0, "FLOPs"


def ideal_speedup(vanilla: FlopsReport, plan: FlopsReport) -> float:
    """FLOPs(vanilla) / FLOPs(plan), for two reports of the same prompt layout."""
    _check_same_layout(vanilla, plan)
    return vanilla.total / plan.total


def plan_flops(vanilla: FlopsReport, plan) -> FlopsReport:
    """The FLOPs ``plan`` requires, from the count of the vanilla graph.

    Per layer, K/V projections keep every row; q/o projections and the attention products
    keep the attention-live rows, the FFN the FFN-live rows (the text rows, or for freeze
    layers with scope ``prefix_through_visual`` the suffix). Every vanilla count of these
    classes is proportional to its query rows, so the scaling is exact.

    This, not the count of a compiled graph, is the ideal speedup's denominator: a compiled
    graph may compute some rows twice (inside a run of freeze layers the live rows' K/V are
    recomputed, see passes/skip_visual.py), and that is overhead the measured time pays.
    """
    from .plan import Action, FreezeScope

    if vanilla.plan and any(a != Action.FULL.value for a in vanilla.plan):
        raise FlopsError("plan_flops needs the count of the vanilla graph, not of a compiled one")
    if plan.num_layers != len(vanilla.layers):
        raise FlopsError(f"the plan has {plan.num_layers} layers but the graph has {len(vanilla.layers)}")
    S, V = vanilla.sequence_length, vanilla.visual_rows
    layers = []
    for x, action in zip(vanilla.layers, plan.actions):
        live = (vanilla.suffix_rows if action is Action.FREEZE and plan.freeze_scope is FreezeScope.PREFIX_THROUGH_VISUAL
                else S - V)
        if x.qkv and action.skips_attention:
            raise FlopsError(f"layer {x.layer}: fused q/k/v projections: the query share cannot be separated")
        attn = (lambda f: f * live // S) if action.skips_attention else (lambda f: f)  # noqa: E731
        ffn = x.ffn * live // S if action.skips_ffn else x.ffn
        y = LayerFlops(x.layer, q=attn(x.q), k=x.k, v=x.v, qkv=x.qkv, o=attn(x.o), qk=attn(x.qk), pv=attn(x.pv),
                       ffn=ffn)
        whole = [x.k, x.v, x.qkv] + ([] if action.skips_attention else [x.q, x.o, x.qk, x.pv]) \
            + ([] if action.skips_ffn else [x.ffn])
        y.visual = sum(f * V // S for f in whole)
        y.text = y.total - y.visual
        layers.append(y)
    return FlopsReport(S, V, vanilla.prefix_rows, vanilla.suffix_rows, vanilla.batch, layers, head=vanilla.head,
                       other=vanilla.other, plan=[a.value for a in plan.actions], source=vanilla.source)


def format_comparison(vanilla: FlopsReport, compiled: FlopsReport, required: FlopsReport | None = None) -> str:
    """Per layer: FLOPs before and after, and the saving; then the totals.

    With ``required`` (``plan_flops`` of the compiled graph's plan), the ideal speedup is
    vanilla / required, and the compiled graph's extra work, if any, is shown beside it.
    """
    _check_same_layout(vanilla, compiled)
    if len(vanilla.layers) != len(compiled.layers):
        raise FlopsError(f"the graphs have {len(vanilla.layers)} and {len(compiled.layers)} layers")
    scale, unit = _unit(vanilla.total)
    lines = [f"{'layer':>5}  {'action':<22}  {'vanilla':>10}  {'compiled':>10}  {'saved':>7}"]
    for a, b in zip(vanilla.layers, compiled.layers):
        action = compiled.plan[b.layer] if compiled.plan else "-"
        lines.append(f"{a.layer:>5}  {action:<22}  {a.total / scale:>10.3f}  {b.total / scale:>10.3f}  "
                     f"{1 - b.total / a.total:>7.1%}")
    saved = 1 - compiled.total / vanilla.total
    line = f"total {unit} {vanilla.total / scale:.3f} -> {compiled.total / scale:.3f}: -{saved:.1%}"
    if required is None:
        lines.append(f"{line}, ideal speedup {ideal_speedup(vanilla, compiled):.3f}x")
    else:
        extra = compiled.total - required.total
        lines.append(f"{line}; the plan requires {required.total / scale:.3f} {unit}: ideal speedup "
                     f"{ideal_speedup(vanilla, required):.3f}x (the compiled graph computes "
                     f"{extra / scale:+.3f} {unit}, {extra / required.total:+.2%}, beyond it)")
    return "\n".join(lines)


def recorded_plan(model: onnx.ModelProto | str | Path):
    """The plan a compiled graph records, or None (vanilla graph, or an unreadable record)."""
    from .compile import compiled_plan
    from .plan import load_plan

    source = "graph"
    if not isinstance(model, onnx.ModelProto):
        from .compile import load_graph

        source, model = model, load_graph(model, weights_needed=False)
    recorded = compiled_plan(model, source)
    if recorded is None:
        return None
    try:
        return load_plan(recorded)[0]
    except VskipError:
        return None


def _check_same_layout(a: FlopsReport, b: FlopsReport) -> None:
    keys = ("sequence_length", "visual_rows", "prefix_rows", "suffix_rows", "batch")
    if any(getattr(a, k) != getattr(b, k) for k in keys):
        raise FlopsError("the two reports count different prompt layouts: "
                         + ", ".join(f"{k} {getattr(a, k)} vs {getattr(b, k)}" for k in keys
                                     if getattr(a, k) != getattr(b, k)))


def save_plot(vanilla: FlopsReport, compiled: FlopsReport, path: str | Path, force: bool = False) -> Path:
    """Write :func:`plot_png` to ``path`` through the guarded outputs (never over an input)."""
    from .files import Outputs

    with Outputs([p for p in (vanilla.source, compiled.source) if p], force=force) as outputs:
        outputs.write_bytes(path, plot_png(vanilla, compiled))
        outputs.commit()
    return Path(path)


def plot_png(vanilla: FlopsReport, compiled: FlopsReport) -> bytes:
    """PNG: per layer, a vanilla and a compiled bar, each stacked by operator class."""
    import io

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise VskipError("save_plot needs matplotlib: pip install 'vskip[plot]'") from None
    _check_same_layout(vanilla, compiled)
    # Figure + Agg canvas directly: no pyplot, so no global backend state is touched.
    fig = Figure(figsize=(max(6.0, 0.32 * len(vanilla.layers) + 2), 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    scale, unit = _unit(max(layer.total for layer in vanilla.layers) if vanilla.layers else vanilla.total)
    x = np.arange(len(vanilla.layers))
    width = 0.4
    colors = {"attn_proj": "#4C72B0", "attn_product": "#DD8452", "ffn": "#55A868"}
    for offset, report, alpha, label in ((-width / 2, vanilla, 1.0, "vanilla"),
                                         (width / 2, compiled, 0.5, "compiled")):
        bottom = np.zeros(len(report.layers))
        for cls, color in colors.items():
            values = np.array([getattr(layer, cls) for layer in report.layers]) / scale
            ax.bar(x + offset, values, width, bottom=bottom, color=color, alpha=alpha,
                   label=f"{cls} ({label})", edgecolor="white", linewidth=0.3)
            bottom += values
    ax.set_xticks(x, [str(layer.layer) for layer in vanilla.layers], fontsize=7)
    ax.set_xlabel("decoder layer (left bar vanilla, right bar compiled)")
    ax.set_ylabel(unit)
    total_scale, total_unit = _unit(vanilla.total)
    saved = 1 - compiled.total / vanilla.total
    ax.set_title(f"prefill FLOPs, {vanilla.visual_rows} visual + {vanilla.sequence_length - vanilla.visual_rows} "
                 f"text rows: {vanilla.total / total_scale:.3f} -> {compiled.total / total_scale:.3f} "
                 f"{total_unit} (-{saved:.1%})", fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# --------------------------------------------------------------------------- counting

def count_flops(model: onnx.ModelProto | str | Path, sequence_length: int, visual_rows: int, batch: int = 1,
                suffix_rows: int | None = None, dims: dict[str, int] | None = None) -> FlopsReport:
    """Count the matrix-product FLOPs of one prefill of ``model``.

    The prompt is ``sequence_length`` rows: a text prefix, one contiguous block of
    ``visual_rows`` visual rows, and ``suffix_rows`` text rows after it (default: every
    text row, i.e. no prefix). Only ``freeze`` layers with freeze scope
    ``prefix_through_visual`` depend on where the block sits. ``dims`` fixes any other
    symbolic input dim by name. ``model`` may be a path (weights are not loaded) or a
    ModelProto with or without its weights.
    """
    S, V, B = int(sequence_length), int(visual_rows), int(batch)
    if S < 1 or B < 1:
        raise FlopsError(f"sequence_length ({S}) and batch ({B}) must be positive")
    if not 0 <= V < S:
        raise FlopsError(f"visual_rows must be in [0, sequence_length): got {V} of {S} (at least one text row)")
    U = S - V if suffix_rows is None else int(suffix_rows)
    if not 0 <= U <= S - V:
        raise FlopsError(f"suffix_rows must be in [0, {S - V}] (the text rows): got {U}")
    source = None
    if not isinstance(model, onnx.ModelProto):
        from .compile import load_graph

        source = str(model)
        model = load_graph(source, weights_needed=False)
    stripped = _shapes_only(model)
    _fix_input_dims(stripped, B, S, V, U, dims or {})
    graph = gs.import_onnx(stripped)
    graph.toposort()
    _refuse_unknown_matrix_ops(stripped.graph)
    shapes = _Shapes(stripped, graph)

    from .passes.locate import StructureView  # the compiler's own structural rules (projection, core)

    view = StructureView(graph, {})
    roles = _attribute(view, graph)
    _cross_check(graph, roles)
    live = {S - V, U}  # row counts of the row subsets a compiled graph computes on
    layers = [LayerFlops(i) for i in range(1 + max((r[0] for r in roles.values() if r[0] is not None),
                                                     default=-1))]
    report = FlopsReport(S, V, S - V - U, U, B, layers, plan=_recorded_plan(model), source=source)
    for node in graph.nodes:
        if node.op not in COUNTED:
            continue
        layer, role = roles.get(id(node), (None, "other"))
        for part_role, flops, rows in _node_flops(node, shapes, B, role):
            if rows == S:
                visual = flops * V // S  # flops is a multiple of S: exact
            elif rows in live:
                visual = 0
            elif layer is None:
                visual = 0  # outside the layers (LM head on the last row): not split by row class
            else:
                raise FlopsError(f"{_where(node)} (layer {layer}, {part_role}) computes {rows} rows per batch row: "
                                 f"neither the sequence ({S}) nor a live row subset ({sorted(live)})")
            report.nodes.append(NodeFlops(node.name, node.op, layer, part_role, flops, rows, visual))
            if layer is None:
                if part_role == "head":
                    report.head += flops
                else:
                    report.other += flops
                continue
            entry = layers[layer]
            setattr(entry, part_role, getattr(entry, part_role) + flops)
            entry.visual += visual
            entry.text += flops - visual
    return report


def _where(node: gs.Node) -> str:
    return f"{node.op} node {node.name!r}"


def _recorded_plan(model: onnx.ModelProto) -> list[str] | None:
    plan = recorded_plan(model)  # a label only: an unreadable record does not stop the count
    return None if plan is None else [a.value for a in plan.actions]


# ---- the graph copy that shape inference works on

def _shapes_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large weights are dims only (never read, never copied).

    Small external tensors (shape constants, should an exporter put them there) were read
    into the graph by :func:`vskip_compile.compile.load_graph`: shape inference needs them.
    """
    copy = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(copy, name, getattr(model, name))
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    copy.metadata_props.extend(model.metadata_props)
    g, src = copy.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.sparse_initializer.extend(src.sparse_initializer)
    for tensor in src.initializer:
        small = int(np.prod(tensor.dims)) <= _SMALL_INITIALIZER
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            g.initializer.append(tensor)  # small constants were read in by load_graph
            continue
        if small:
            g.initializer.append(tensor)
            continue
        # The dims are all shape inference and the walks need; the data stays behind.
        absent = g.initializer.add()
        absent.name, absent.data_type = tensor.name, tensor.data_type
        absent.dims.extend(tensor.dims)
        absent.data_location = onnx.TensorProto.EXTERNAL
        entry = absent.external_data.add()
        entry.key, entry.value = "location", _ABSENT
    return copy


def _fix_input_dims(model: onnx.ModelProto, B: int, S: int, V: int, U: int, dims: dict[str, int]) -> None:
    """Replace every symbolic graph-input dim by its value for this layout."""
    values = {_VISUAL_DIM: V, **{k: int(v) for k, v in dims.items()}}
    inputs = [i for i in model.graph.input if i.type.HasField("tensor_type")]
    # Batch and sequence: axes 0 and 1 of the stream input, a [batch, sequence, hidden] float
    # input (inputs_embeds; DeepStack's [3, visual_rows, hidden] has a fixed axis 0) or, failing
    # that, the first rank-2 integer input (input_ids).
    stream = next((i for i in inputs if _rank(i) == 3 and _is_float(i) and not _fixed(i, 0)), None) or \
        next((i for i in inputs if _rank(i) == 3 and _is_float(i)), None) or \
        next((i for i in inputs if _rank(i) == 2 and not _is_float(i)), None)
    if stream is None:
        raise FlopsError("no stream input found: expected a [batch, sequence, hidden] float input "
                         "(inputs_embeds) or a [batch, sequence] integer input (input_ids)")
    for axis, value, what in ((0, B, "batch"), (1, S, "sequence_length")):
        dim = stream.type.tensor_type.shape.dim[axis]
        if dim.HasField("dim_value"):
            if dim.dim_value != value:
                raise FlopsError(f"input {stream.name!r} has a fixed {what} of {dim.dim_value}, not {value}")
        elif dim.dim_param:
            values.setdefault(dim.dim_param, value)
    row_counts = {TEXT_ROWS: S - V, SUFFIX_ROWS: U}
    unknown = set()
    for tensor in inputs:
        for axis, dim in enumerate(tensor.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                continue
            if tensor.name in row_counts and axis == 0:
                value = row_counts[tensor.name]
            elif dim.dim_param in values:
                value = values[dim.dim_param]
            else:
                unknown.add(f"{tensor.name}[{axis}] ({dim.dim_param or 'unnamed'})")
                continue
            dim.Clear()
            dim.dim_value = value
    if unknown:
        raise FlopsError(f"cannot tell the size of input dims {', '.join(sorted(unknown))}. "
                         "To fix this, pass dims={'<dim name>': size}.")
    del model.graph.value_info[:]  # stale symbolic shapes would only compete with the inferred ones


def _rank(value_info) -> int:
    return len(value_info.type.tensor_type.shape.dim)


def _fixed(value_info, axis: int) -> bool:
    return value_info.type.tensor_type.shape.dim[axis].HasField("dim_value")


def _is_float(value_info) -> bool:
    return value_info.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                     onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def _refuse_unknown_matrix_ops(graph: onnx.GraphProto) -> None:
    def scan(g: onnx.GraphProto, nested: bool):
        for node in g.node:
            if node.op_type in REFUSED or (node.domain not in ("", "ai.onnx") and node.op_type == "Attention"):
                raise FlopsError(f"{node.op_type} node {node.name!r} ({node.domain or 'ai.onnx'}): this matrix "
                                 "op is not counted; export without fusions or quantization")
            if nested and node.op_type in COUNTED:
                raise FlopsError(f"{node.op_type} node {node.name!r} is inside a subgraph (If/Loop/Scan), whose "
                                 "trip count is unknown from shapes")
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    scan(sub, True)
    scan(graph, False)


class _Shapes:
    """Concrete tensor shapes: ONNX shape inference, then ORT's symbolic one for the rest."""

    def __init__(self, model: onnx.ModelProto, graph: gs.Graph):
        self.model = model
        self.known: dict[str, tuple] = {}
        self._ort_done = False
        self._merge(_infer_onnx(model))
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant):
                self.known[tensor.name] = tuple(int(d) for d in tensor.shape)

    def _merge(self, shapes: dict[str, tuple]) -> None:
        for name, shape in shapes.items():
            old = self.known.get(name)
            if old is None or (None in old and len(old) == len(shape)):
                self.known[name] = shape if old is None else tuple(a if a is not None else b
                                                                     for a, b in zip(old, shape))

    def get(self, tensor: gs.Tensor, node: gs.Node) -> tuple[int, ...]:
        shape = self.known.get(tensor.name)
        if (shape is None or None in shape) and not self._ort_done:
            self._ort_done = True
            self._merge(_infer_ort(self.model))
            shape = self.known.get(tensor.name)
        if shape is None or None in shape:
            raise FlopsError(f"{_where(node)}: the shape of its input {tensor.name!r} is unknown after shape "
                             f"inference ({shape}); fix the remaining symbolic input dims with dims={{...}}")
        return shape


def _shape_map(model: onnx.ModelProto) -> dict[str, tuple]:
    out = {}
    g = model.graph
    for info in list(g.value_info) + list(g.input) + list(g.output):
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            continue
        out[info.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                               for d in info.type.tensor_type.shape.dim)
    return out


def _infer_onnx(model: onnx.ModelProto) -> dict[str, tuple]:
    try:
        return _shape_map(onnx.shape_inference.infer_shapes(model, data_prop=True))
    except Exception as exc:  # inference errors are many kinds; the count then relies on ORT's
        raise FlopsError(f"ONNX shape inference failed: {type(exc).__name__}: {exc}") from None


def _infer_ort(model: onnx.ModelProto) -> dict[str, tuple]:
    """ORT's symbolic inference folds Range/Shape chains (causal masks) that ONNX's leaves open."""
    infos = ort_symbolic_shapes(model, auto_merge=False)
    if infos is None:
        return {}
    holder = onnx.ModelProto()
    holder.graph.value_info.extend(infos)
    return _shape_map(holder)


# ---- FLOPs of one node

def _matmul_flops(a: tuple, b: tuple) -> int:
    """2 * (broadcast batch) * M * K * N for numpy-style MatMul shapes."""
    a = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if a[-1] != b[-2]:
        raise FlopsError(f"MatMul shapes {a} x {b} do not agree")
    batch = np.broadcast_shapes(a[:-2], b[:-2])
    return 2 * int(np.prod(batch, dtype=np.int64)) * a[-2] * a[-1] * b[-1]


def _node_flops(node: gs.Node, shapes: _Shapes, B: int, role: str) -> list[tuple[str, int, int]]:
    """[(role, FLOPs, query rows per batch row)] for one counted node."""
    if node.op == "Attention":
        return _attention_flops(node, shapes)
    a, b = shapes.get(node.inputs[0], node), shapes.get(node.inputs[1], node)
    if node.op == "Gemm":
        a = a[::-1] if node.attrs.get("transA", 0) else a
        b = b[::-1] if node.attrs.get("transB", 0) else b
    flops = _matmul_flops(a, b)
    if role in PRODUCT_ROLES:
        rows = a[-2]  # [B, H, queries, .]
    else:
        rows = int(np.prod(a[:-1], dtype=np.int64)) // B  # [B, rows, d] or [B*rows, d]
    return [(role, flops, rows)]


def _attention_flops(node: gs.Node, shapes: _Shapes) -> list[tuple[str, int, int]]:
    """ONNX Attention (opset 23): Q [B,Hq,Sq,dh] or [B,Sq,Hq*dh]; K, V likewise with Hkv; past
    K/V (inputs 4, 5) prepend their rows. Every head scores every key: 2*B*Hq*Sq*Skv*(dh + dv)."""
    q, k, v = (shapes.get(t, node) for t in node.inputs[:3])
    past = node.inputs[4] if len(node.inputs) > 4 and node.inputs[4].name else None
    if len(q) == 4:
        batch, heads, queries, dh = q
        keys, dv = k[2], v[3]
        past_rows = shapes.get(past, node)[2] if past is not None else 0
    else:
        heads, kv_heads = int(node.attrs.get("q_num_heads", 0)), int(node.attrs.get("kv_num_heads", 0))
        if not heads or not kv_heads:
            raise FlopsError(f"{_where(node)}: 3-D inputs without q_num_heads/kv_num_heads")
        batch, queries, dh = q[0], q[1], q[2] // heads
        keys, dv = k[1], v[2] // kv_heads
        past_rows = shapes.get(past, node)[2] if past is not None else 0
    keys += past_rows
    scale = 2 * batch * heads * queries * keys
    return [("qk", scale * dh, queries), ("pv", scale * dv, queries)]


# ---- which layer and role each counted node has

def _attribute(view, graph: gs.Graph) -> dict[int, tuple[int | None, str]]:
    """id(node) -> (layer or None, role) for every counted node; see the module docstring."""
    cores = _cores(view, graph)
    level = _levels(graph, cores)
    roles: dict[int, tuple[int | None, str]] = {}
    for i, core in enumerate(cores):
        if core.kind == "attention_op":
            roles[id(core.nodes[0])] = (i, "attention")
        else:
            roles[id(core.nodes[0])] = (i, "qk")
            roles[id(core.nodes[-1])] = (i, "pv")
        found = {}
        for role, tensor in (("q", core.query), ("k", core.key), ("v", core.value)):
            for proj in _nearest_projections(view, tensor, backward=True):
                found[id(proj)] = "qkv" if id(proj) in found and found[id(proj)] != role else role
        for node_id, role in found.items():
            roles[node_id] = (i, role)
        missing = {"q", "k", "v"} - {r for r in found.values()}
        if missing and "qkv" not in found.values():
            raise FlopsError(f"layer {i}: no {'/'.join(sorted(missing))} projection (a MatMul with a 2-D constant "
                             f"weight) found behind the attention core {_where(core.nodes[0])}")
        o_proj = _nearest_projections(view, core.output, backward=False)
        if len(o_proj) != 1:
            raise FlopsError(f"layer {i}: expected one o_proj after the attention core {_where(core.nodes[-1])}, "
                             f"found {len(o_proj)}")
        roles[id(o_proj[0])] = (i, "o")
    last = len(cores)
    for node in graph.nodes:
        if node.op not in COUNTED or id(node) in roles:
            continue
        if not view.is_projection(node):
            roles[id(node)] = (None, "other")
            continue
        lvl = max(level.get(id(t), 0) for t in node.inputs if t is not None)
        if lvl == 0:
            roles[id(node)] = (None, "other")  # before the first layer
        elif lvl == last and _reaches_output(view, graph, node):
            roles[id(node)] = (None, "head")
        else:
            roles[id(node)] = (lvl - 1, "ffn")
    return roles


def _cores(view, graph: gs.Graph) -> list:
    cores = []
    for node in view.all_cores():
        if node.op == "Attention":
            cores.append(view.attention_op_core(node))
            continue
        pv = _pv_after(view, node)
        core, why = view.softmax_core(pv, node)
        if core is None:
            raise FlopsError(f"{_where(node)}: {why}")
        cores.append(core)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    cores.sort(key=lambda c: order[id(c.nodes[0])])
    return cores


def _pv_after(view, softmax: gs.Node) -> gs.Node:
    from .passes.locate import PROBS

    queue = [softmax.outputs[0]]
    while queue:
        tensor = queue.pop()
        for node in tensor.outputs:
            if node.op == "MatMul" and node.inputs[0] is tensor and not view.is_projection(node):
                return node
            if node.op in PROBS:
                queue.append(node.outputs[0])
    raise FlopsError(f"{_where(softmax)} feeds no probabilities x V MatMul")


def _levels(graph: gs.Graph, cores: list) -> dict[int, int]:
    """id(tensor) -> number of attention cores upstream of it (graph in topological order)."""
    ends = {id(core.nodes[-1]) for core in cores}
    level: dict[int, int] = {}
    for node in graph.nodes:
        inp = max((level.get(id(t), 0) for t in node.inputs if t is not None), default=0)
        out = inp + 1 if id(node) in ends else inp
        for tensor in node.outputs:
            level[id(tensor)] = out
    seen = [max(level.get(id(t), 0) for t in (c.query, c.key, c.value)) for c in cores]
    if seen != list(range(len(cores))):
        raise FlopsError(f"the attention cores do not form one chain along the stream (levels {seen}); "
                         "parallel attention blocks are not handled")
    return level


def _nearest_projections(view, tensor: gs.Tensor, backward: bool) -> list[gs.Node]:
    """The projections first met walking from ``tensor`` through non-projection nodes."""
    found, seen, queue = [], set(), deque([tensor])
    while queue:
        current = queue.popleft()
        nodes = ([current.inputs[0]] if current.inputs else []) if backward else list(current.outputs)
        for node in nodes:
            if id(node) in seen:
                continue
            seen.add(id(node))
            if view.is_projection(node):
                found.append(node)
            elif backward:
                queue.extend(t for t in node.inputs if t is not None and t.name and not isinstance(t, gs.Constant))
            else:
                queue.extend(node.outputs)
    return found


def _reaches_output(view, graph: gs.Graph, node: gs.Node) -> bool:
    """Whether ``node``'s output reaches a graph output with no other projection on the way."""
    outputs = {id(t) for t in graph.outputs}
    seen, queue = set(), deque(node.outputs)
    while queue:
        tensor = queue.popleft()
        if id(tensor) in outputs:
            return True
        for consumer in tensor.outputs:
            if id(consumer) not in seen and not view.is_projection(consumer):
                seen.add(id(consumer))
                queue.extend(consumer.outputs)
    return False


def _cross_check(graph: gs.Graph, roles: dict[int, tuple[int | None, str]]) -> None:
    """Where the compiler's locator reads the graph (vanilla exports), it must agree."""
    from .passes.locate import LocateError, locate_layers

    try:
        structure = locate_layers(graph, require_cache=False)
    except LocateError:
        return  # compiled graphs: the row Gathers hide the residual Adds from the locator
    for layer in structure.layers:
        expected = [(layer.o_proj, "o"), (layer.down_proj, "ffn")]
        expected += [(n, roles.get(id(n), (None, ""))[1]) for n in layer.attention.nodes if n.op in COUNTED]
        for node, role in expected:
            if roles.get(id(node)) != (layer.index, role):
                raise FlopsError(f"internal: {_where(node)} is layer {layer.index} {role} for the locator but "
                                 f"{roles.get(id(node))} for the FLOPs walk")
