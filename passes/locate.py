"""Locate: find every decoder layer of a prefill graph by structure.

A pre-norm decoder layer, whichever exporter wrote it, is two residual Adds on one stream::

    h ─┬───────────────────────────────────────────────────┐
       └─ norm ─ q/k/v proj ─ [q/k norm, RoPE] ─ core ─ o_proj ─ [post-norm | bias] ─ Add ─ mid
                              K, V ─► present.{i}.key / present.{i}.value       (graph outputs)
    mid ─┬─────────────────────────────────────────┐
         └─ norm ─ MLP ─ down_proj ─ [post-norm | bias] ─ Add ─ h'   (the next layer's h)

    core:  scores MatMul(q, K^T) ─ [scale, mask Add/Where] ─ Softmax ─ [NaN guard] ─ MatMul(·, V)
           (decomposed attention, opset <= 22)  |  one ONNX ``Attention`` node (opset 23)

The walk starts at a float graph input (``inputs_embeds``) or at an embedding Gather, and
follows the stream from layer to layer: a residual Add is an Add with the stream on one
side and, on the other, a branch that ends (through optional norm / bias ops) in a MatMul
whose weight is a 2-D constant. The attention Add's branch leads back from o_proj's input
to an attention core whose query derives from h; the FFN Add's branch derives from mid
and holds no attention. No-op Cast/Identity nodes (legacy exports) are looked through.

Between layers (Qwen3-VL's DeepStack ``h[mask] += e``) the stream may pass through a few
ops that keep it: an Add or Mul, a ScatterND/ScatterElements into it, or a Where that
takes it as a data operand, none of them fed by a projection. Each exporter writes the
update its own way::

    vskip (export patch):   h + Gather(table, CumSum(mask))                       Add
    legacy TorchScript:     ScatterND(h, NonZero(mask), GatherND(h, ..) + e)      ScatterND
    transformers exporter:  f = Reshape(h, [-1])                                  flat masked write
                            f' = Where(mask_flat, Gather(flat(GatherND(h, ..) + e), CumSum ..), f)
                            h' = Reshape(f', [B, S, D])

so the stream may also leave its layout through a Reshape, but a layer starts only
where a later Reshape gives it back the shape of the tensor that entered the first
one (equal inferred shapes, or a target shape read from that tensor by Shape): a
flattened tensor is never a layer input. The NonZero/GatherND these exporters emit stay
in the graph as they are; the rewrite adds none and reads nothing from them.

This pass changes nothing. It returns a :class:`DecoderStructure` (one :class:`LayerMatch`
per layer, in order) for the passes that do, and :func:`format_table` renders it. The
structural questions (what is a projection, an attention core, a cache output) are
``passes/graph_queries.py``, shared with the FLOPs counter; this module is the layer
matcher built on them.

Requires: a pre-norm decoder (Llama/Qwen/Gemma-style) with self-attention; weights as
initializers or Constant nodes (values are never read, only ranks, so external data may
be left unloaded). Names decide nothing: node names and ``pkg.torch.onnx.name_scopes``
only decorate messages and the ``module_path`` column.

Does not handle (raises :class:`LocateError`): MoE FFNs (no 2-D down_proj), parallel
attention+MLP blocks, cross-attention layers, ONNX Runtime contrib fusions
(GroupQueryAttention, SkipSimplifiedLayerNormalization, ...), quantized MatMulNBits
weights, ONNX functions / If / Loop subgraphs around layers.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from vskip_compile.core.errors import VskipError

from .graph_queries import AttentionCore, GraphQueries, import_graph, producer


class LocateError(VskipError):
    """The decoder layers could not be found; the message says what was expected where."""


# The stream between layers (DeepStack); the op families inside a layer are graph_queries'.
GAP_OPS = {"Add", "Mul", "Where", "ScatterND", "ScatterElements"}  # between layers (DeepStack)
GAP_RESHAPE = "Reshape"                                      # a flat masked write, undone later
MAX_GAP = 4         # nodes between one layer's output and the next layer's input


@dataclass
class LayerMatch:
    index: int
    input: gs.Variable        # h: the stream entering the layer
    attn_add: gs.Node         # mid = h + attn_branch
    attn_residual: gs.Tensor  # attn_add's stream operand (h, or a no-op Cast of it)
    attn_branch: gs.Tensor    # attn_add's other operand
    o_proj: gs.Node           # MatMul (or Gemm) with a 2-D constant weight
    attention: AttentionCore
    ffn_add: gs.Node          # output = mid + ffn_branch
    ffn_residual: gs.Tensor
    ffn_branch: gs.Tensor
    down_proj: gs.Node
    output: gs.Variable       # ffn_add's output: the next layer's input, or what follows the last
    present_key: gs.Variable | None
    present_value: gs.Variable | None
    module_path: str | None = None

    @property
    def kind(self) -> str:
        return self.attention.kind

    @property
    def mid(self) -> gs.Variable:
        return self.attn_add.outputs[0]


@dataclass
class DecoderStructure:
    graph: gs.Graph
    source: gs.Variable             # graph input (or embedding Gather output) the stream starts at
    layers: list[LayerMatch]
    final_output: gs.Variable       # the last layer's output: the final norm's input
    scopes: dict[str, str] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.layers)


# --------------------------------------------------------------------------- public API

def locate_model(model: onnx.ModelProto, require_cache: bool = True) -> DecoderStructure:
    """Import ``model`` (external data may stay unloaded) and locate its layers, with module paths."""
    return locate_layers(import_graph(model), scopes=node_scopes(model), require_cache=require_cache)


def locate_layers(graph: gs.Graph, scopes: dict[str, str] | None = None,
                  require_cache: bool = True) -> DecoderStructure:
    """Find every decoder layer of ``graph`` in order; raise LocateError if the graph is not one.

    ``scopes`` maps node names to module paths (see :func:`node_scopes`) for messages only.
    With ``require_cache`` every layer must write its K and V to graph outputs (a prefill
    or decode graph); pass False for a decoder exported without a KV cache.
    """
    view = LayerMatcher(graph, scopes or {})
    seeds = view.seeds()
    if not seeds:
        raise LocateError("not a decoder graph: it has no float graph input (inputs_embeds) and no embedding "
                          "Gather from a 2-D constant table, so there is no residual stream to start from")
    walks = [view.walk(seed) for seed in seeds]
    best = max(len(w.layers) for w in walks)
    if best == 0:
        cores = view.all_cores()
        what = (f"layer 0: the graph has {len(cores)} attention core(s) (first: {view.where(cores[0])}), but"
                if cores else "not a decoder graph: it has no attention core, and")
        raise LocateError(
            f"{what} from {', '.join(view.name(s) for s in seeds)} no residual Add was found whose other operand "
            "comes from an attention block (o_proj: a MatMul with a 2-D constant weight). A decoder's stream starts "
            "at a float input (inputs_embeds) or an embedding Gather; a vision encoder is not a decoder. "
            + view.reasons_text(walks))
    longest = [w for w in walks if len(w.layers) == best]
    if len({id(w.layers[0].attn_add) for w in longest}) > 1:
        raise LocateError("ambiguous residual stream: graph inputs "
                          f"{', '.join(view.name(w.seed) for w in longest)} each start a chain of {best} layers")
    walk = longest[0]
    view.check_complete(walk)
    if require_cache:
        for layer in walk.layers:
            for what, tensor, core_side in (("key", layer.present_key, layer.attention.key),
                                            ("value", layer.present_value, layer.attention.value)):
                if tensor is None:
                    raise LocateError(
                        f"layer {layer.index}: the {what} entering the attention core ({view.name(core_side)}) does "
                        f"not reach a graph output, so no present.{layer.index}.{what} cache output was found "
                        "(a vision encoder or a graph without KV cache?). To locate a decoder exported without a "
                        "KV cache, pass require_cache=False.")
    return DecoderStructure(graph, walk.seed, walk.layers, walk.layers[-1].output, dict(view.scopes))


def node_scopes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> innermost module path, from dynamo's ``pkg.torch.onnx.name_scopes`` metadata.

    onnx-graphsurgeon drops node metadata on import, so read it from the ModelProto. Legacy
    exports keep the path in the node name instead; :func:`locate_layers` reads that itself.
    """
    scopes = {}
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    path = ast.literal_eval(prop.value)
                except (ValueError, SyntaxError):
                    continue
                if isinstance(path, list) and len(path) >= 2 and path[-2]:
                    scopes[node.name] = str(path[-2])
    return scopes


def format_table(structure: DecoderStructure) -> str:
    """One row per layer: attention kind, projection weights, cache outputs, module path."""
    view = GraphQueries(structure.graph, structure.scopes)
    header = ("layer", "attention", "o_proj", "down_proj", "present key", "present value", "module")
    rows = [header]
    for layer in structure.layers:
        rows.append((
            str(layer.index), layer.kind,
            _shape_text(view.weight_shape(layer.o_proj.inputs[1])),
            _shape_text(view.weight_shape(layer.down_proj.inputs[1])),
            layer.present_key.name if layer.present_key is not None else "-",
            layer.present_value.name if layer.present_value is not None else "-",
            layer.module_path or "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{len(structure.layers)} layers; stream starts at {structure.source.name!r}, "
                 f"final norm input {structure.final_output.name!r}")
    return "\n".join(lines)


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape) if shape else "-"


def _fully_known(shape) -> bool:
    """Every dimension a size or a named symbol (the same name means the same size)."""
    return shape is not None and all(isinstance(d, str) and d != "" or isinstance(d, (int, np.integer)) and d >= 0
                                     for d in shape)


# --------------------------------------------------------------------------- the walk

@dataclass
class _Walk:
    seed: gs.Variable
    layers: list[LayerMatch]
    stop: gs.Variable | None = None                          # the stream tensor where the walk ended
    reasons: list[str] = field(default_factory=list)         # why nothing matched there


class LayerMatcher(GraphQueries):
    """The layer matcher: residual Adds, attention and FFN branches, the walk from layer to
    layer along the stream, all asked of the graph through :class:`GraphQueries`."""

    def residual_adds(self, stream) -> list[tuple[gs.Node, gs.Tensor, gs.Tensor, set[int]]]:
        """(Add, stream operand, other operand, alias ids) for each Add consuming the stream."""
        names = self.aliases(stream)
        ids = {id(t) for t in names}
        adds, seen = [], set()
        for alias in names:
            for node in alias.outputs:
                if node.op != "Add" or id(node) in seen:
                    continue
                seen.add(id(node))
                others = [t for t in node.inputs if id(t) not in ids]
                if len(others) == 1:
                    adds.append((node, alias, others[0], ids))
        return adds

    def match_attention(self, index: int, stream) -> tuple[tuple | None, list[str]]:
        found, reasons = [], []
        for add, residual, branch, ids in self.residual_adds(stream):
            proj, why = self.branch_projection(branch)
            if proj is None:
                reasons.append(f"{self.where(add)}: {why}")
                continue
            core, why = self.find_core(proj.inputs[0])
            if core is None:
                reasons.append(f"{self.where(add)}: {why}")
                continue
            for role in ("query", "key", "value"):
                if not self.derives(getattr(core, role), ids)[0]:
                    reasons.append(f"{self.where(add)}: the attention {role} {self.name(getattr(core, role))} "
                                   f"is not computed from the stream {self.name(stream)} (cross-attention?)")
                    break
            else:
                found.append((add, residual, branch, proj, core))
        if len(found) > 1:
            raise LocateError(f"layer {index}: the stream {self.name(stream)} feeds {len(found)} residual Adds with "
                              f"attention branches ({', '.join(self.where(f[0]) for f in found)}); expected one")
        return (found[0] if found else None), reasons

    def match_ffn(self, index: int, mid) -> tuple:
        found, reasons = [], []
        for add, residual, branch, ids in self.residual_adds(mid):
            proj, why = self.branch_projection(branch)
            if proj is None:
                reasons.append(f"{self.where(add)}: {why}")
                continue
            derived, visited = self.derives(proj.inputs[0], ids)
            attention = [n for n in visited if n.op in ("Softmax", "Attention")]
            if not derived:
                reasons.append(f"{self.where(add)}: {self.where(proj)} is not computed from the stream "
                               f"{self.name(mid)}")
            elif attention:
                reasons.append(f"{self.where(add)}: its branch holds {self.where(attention[0])}, not an FFN")
            else:
                found.append((add, residual, branch, proj))
        if len(found) != 1:
            what = "no" if not found else f"{len(found)}"
            raise LocateError(
                f"layer {index}: {what} FFN residual Add after the attention Add (whose output is "
                f"{self.name(mid)}); expected exactly one Add(mid, down_proj(...)) with down_proj a MatMul with a "
                f"2-D constant weight computed from mid" + (": " + "; ".join(reasons) if reasons else ""))
        return found[0]

    def match_layer(self, index: int, stream) -> tuple[LayerMatch | None, list[str]]:
        attention, reasons = self.match_attention(index, stream)
        if attention is None:
            return None, reasons
        attn_add, attn_residual, attn_branch, o_proj, core = attention
        ffn_add, ffn_residual, ffn_branch, down_proj = self.match_ffn(index, attn_add.outputs[0])
        layer = LayerMatch(
            index=index, input=stream, attn_add=attn_add, attn_residual=attn_residual, attn_branch=attn_branch,
            o_proj=o_proj, attention=core, ffn_add=ffn_add, ffn_residual=ffn_residual, ffn_branch=ffn_branch,
            down_proj=down_proj, output=ffn_add.outputs[0],
            present_key=self.cache_output(core.key), present_value=self.cache_output(core.value),
            module_path=self.module_path(o_proj, down_proj),
        )
        if layer.present_key is not None and layer.present_key is layer.present_value:
            raise LocateError(f"layer {index}: key and value both lead to graph output {self.name(layer.present_key)}")
        return layer, []

    def next_layer(self, index: int, start) -> tuple[LayerMatch | None, list[str]]:
        """The layer whose input is ``start`` or a few stream-preserving ops after it (DeepStack adds).

        A queued tensor carries ``left``: None while it has the stream's layout, else the
        tensor whose layout a gap Reshape left, which a later Reshape must give back before
        a layer may start there (module docstring).
        """
        queue, seen, first_reasons = deque([(start, 0, None)]), {id(start)}, None
        reshaped = []  # (tensor that was reshaped, where the walk lost it) when nothing matched
        while queue:
            tensor, depth, left = queue.popleft()
            if left is None:
                layer, reasons = self.match_layer(index, tensor)
                if layer is not None:
                    return layer, []
                if first_reasons is None:
                    first_reasons = reasons
            followed = False
            for alias in self.aliases(tensor) if depth < MAX_GAP else []:
                for node in alias.outputs:
                    if node.op == GAP_RESHAPE and node.inputs[0] is alias:
                        origin = alias if left is None else left
                        after = None if self._restores(node, origin) else origin
                    elif node.op in GAP_OPS and self._keeps_stream(node, alias):
                        after = left
                    else:
                        continue
                    followed = True
                    for out in node.outputs:
                        if id(out) not in seen:
                            seen.add(id(out))
                            queue.append((out, depth + 1, after))
            if left is not None and not followed:
                reshaped.append((left, tensor))
        reasons = list(first_reasons or [])
        for left, lost in reshaped[:1]:
            reasons.append(
                f"a Reshape after {self.name(left)} takes the stream out of its shape "
                f"{_shape_text(left.shape)} and no Reshape within {MAX_GAP} nodes gives it back (the walk ends at "
                f"{self.name(lost)}, shape {_shape_text(lost.shape)}), so no layer may "
                "start there; a flat masked write must end in a Reshape whose inferred shape equals the stream's "
                "or whose target is Shape(stream)")
        return None, reasons

    def _restores(self, reshape: gs.Node, original) -> bool:
        """Whether ``reshape`` gives ``original``'s shape back: a target read from ``original``
        (or a no-op alias of it) by a whole-tensor Shape, or equal inferred shapes with no
        unknown dimension."""
        target = producer(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
        if target is not None and target.op == "Shape" and not target.attrs.get("start") \
                and target.attrs.get("end") is None and any(target.inputs[0] is a for a in self.aliases(original)):
            return True
        got, want = reshape.outputs[0].shape, original.shape
        return _fully_known(got) and _fully_known(want) and [str(d) for d in got] == [str(d) for d in want]

    def _keeps_stream(self, node: gs.Node, stream) -> bool:
        """Between layers the stream may be scattered into or added to, but never by a projection."""
        if node.op == "Mul":
            return len(self.variable_operands(node)) == 1
        if node.op == "Add":
            return all(self.branch_projection(t)[0] is None for t in node.inputs if t is not stream)
        if node.op in ("ScatterND", "ScatterElements"):
            return node.inputs[0] is stream
        if node.op == "Where":
            # the stream is a value kept where the condition says so, never the condition
            data = node.inputs[1:]
            return any(t is stream for t in data) and \
                all(self.branch_projection(t)[0] is None for t in data if t is not stream)
        return True

    def seeds(self) -> list:
        """Where a stream may start: float graph inputs, and embedding Gathers from a 2-D table."""
        seeds = []
        for tensor in self.graph.inputs:
            try:
                kind = np.dtype(tensor.dtype).kind if tensor.dtype is not None else "f"
            except TypeError:
                kind = "f"  # bfloat16 and other non-numpy float types
            if kind not in "biu":
                seeds.append(tensor)
        for node in self.graph.nodes:
            if node.op == "Gather" and len(node.inputs) == 2 and not self.is_const(node.inputs[1]):
                shape = self.weight_shape(node.inputs[0])
                if shape is not None and len(shape) == 2:
                    seeds.append(node.outputs[0])
        return seeds

    def walk(self, seed) -> _Walk:
        walk = _Walk(seed, [])
        stream = seed
        claimed: dict[int, int] = {}
        while True:
            layer, reasons = self.next_layer(len(walk.layers), stream)
            if layer is None:
                walk.stop, walk.reasons = stream, reasons
                return walk
            for tensor in (layer.present_key, layer.present_value):
                if tensor is not None:
                    if id(tensor) in claimed:
                        raise LocateError(f"layers {claimed[id(tensor)]} and {layer.index} both lead to graph "
                                          f"output {self.name(tensor)}")
                    claimed[id(tensor)] = layer.index
            walk.layers.append(layer)
            stream = layer.output

    def reasons_text(self, walks: list[_Walk]) -> str:
        lines = [f"{self.name(w.stop)}: {r}" for w in walks for r in w.reasons[:4]]
        return ("Candidates rejected: " + "; ".join(lines)) if lines else ""

    def check_complete(self, walk: _Walk) -> None:
        """Every attention core in the graph must belong to a located layer, or the spine broke."""
        located = {id(n) for layer in walk.layers for n in layer.attention.nodes}
        left = [n for n in self.all_cores() if id(n) not in located]
        if not left:
            return
        n = len(walk.layers)
        detail = "; ".join(walk.reasons[:4]) or "it has no Add consumer whose other operand is an attention branch"
        raise LocateError(
            f"layer {n}: the residual stream breaks after layer {n - 1} (at {self.name(walk.stop)}), yet the graph "
            f"has {len(left)} more attention core(s) (first: {self.where(left[0])}). Expected Add(h, o_proj(...)) "
            f"with o_proj a MatMul with a 2-D constant weight fed by the attention core: {detail}")
