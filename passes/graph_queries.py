"""Graph queries: the structural questions the layer matcher and the FLOPs counter ask.

One read-only view of an onnx-graphsurgeon graph answers them, so the compiler's locator
(``passes/locate.py``) and the FLOPs counter (``vskip_compile/flops/attribute.py``) never
disagree about what a projection or an attention core is:

- constants and weights: :meth:`GraphQueries.is_const`, :meth:`~GraphQueries.weight_shape`,
  :meth:`~GraphQueries.is_projection` (a MatMul or Gemm whose input 1 is a 2-D constant);
- searches along the data flow: :meth:`~GraphQueries.aliases` (through no-op casts),
  :meth:`~GraphQueries.derives`, :meth:`~GraphQueries.pick_data_operand`,
  :meth:`~GraphQueries.branch_projection`, :meth:`~GraphQueries.nearest_projections`,
  :meth:`~GraphQueries.reaches_output`;
- the attention core (DESIGN.md section 4)::

      scores MatMul(q, K^T) ─ [scale, mask Add/Where] ─ Softmax ─ [NaN guard] ─ MatMul(·, V)
      (decomposed attention, opset <= 22)  |  one ONNX ``Attention`` node (opset 23)

  :meth:`~GraphQueries.all_cores`, :meth:`~GraphQueries.find_core` (back from o_proj's
  input), :meth:`~GraphQueries.softmax_before`, :meth:`~GraphQueries.pv_after`,
  :meth:`~GraphQueries.softmax_core`, :meth:`~GraphQueries.attention_op_core`;
- the KV cache output a core's K or V is written to: :meth:`~GraphQueries.cache_output`;
- naming, for messages only: :meth:`~GraphQueries.where`, :meth:`~GraphQueries.scope`,
  :meth:`~GraphQueries.module_path`.

Names decide nothing: node names and ``pkg.torch.onnx.name_scopes`` only decorate
messages. Every search is bounded (the ``MAX_*`` limits below). The graph is never changed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.numpy_helper
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

# Op families the searches look through. Each search is a short loop over one of these sets.
NOOP = {"Cast", "Identity"}                                   # structurally transparent
NORMS = {"RMSNormalization", "LayerNormalization", "SimplifiedLayerNormalization"}  # data = input 0
ELEMENTWISE = {"Add", "Sub", "Mul", "Div"}
HEAD_MERGE = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"} | NOOP   # core -> o_proj
KV_PATH = {"Reshape", "Transpose", "Expand", "Unsqueeze", "Squeeze", "Tile"} | NOOP  # present -> core
PROBS = {"Dropout", "Where"} | NOOP                           # Softmax -> PV MatMul (NaN guard)
WEIGHT_PATH = {"Transpose", "DequantizeLinear"} | NOOP        # initializer -> MatMul input 1

MAX_TAIL = 16       # nodes between a projection and its residual Add (post-norm, bias, casts)
MAX_HEAD_MERGE = 12  # nodes between the core output and o_proj
MAX_SCORES = 10     # nodes between the scores MatMul and the Softmax
MAX_VISIT = 50_000  # nodes one derivation search may visit
MAX_PROBS = 4       # nodes between the Softmax and the PV MatMul (NaN guard, casts)


@dataclass
class AttentionCore:
    """The S x S part of a layer: everything else in the layer is row-wise."""

    kind: str                 # "softmax" (decomposed) or "attention_op" (ONNX Attention)
    query: gs.Variable        # input 0 of the scores MatMul / of Attention
    key: gs.Variable          # input 1 of the scores MatMul (K^T, GQA-expanded) / of Attention
    value: gs.Variable        # input 1 of the PV MatMul / input 2 of Attention
    masks: list[gs.Tensor]    # additive or boolean masks entering the core
    output: gs.Variable       # the PV MatMul's / Attention's output
    nodes: list[gs.Node]      # scores MatMul ... PV MatMul, or [Attention], in graph order


def producer(tensor) -> gs.Node | None:
    """The node that computes ``tensor``; None for graph inputs and constants."""
    return tensor.inputs[0] if isinstance(tensor, gs.Variable) and tensor.inputs else None


def given(tensor) -> bool:
    """False for the empty name gs gives an omitted optional input."""
    return tensor is not None and bool(tensor.name)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``gs.import_onnx`` without graphsurgeon's warning that NumPy lacks bfloat16: the
    constants keep their ONNX type, which is all vskip needs of them."""
    with G_LOGGER.suppress(G_LOGGER.ERROR):
        return gs.import_onnx(model)


def export_graph(graph: gs.Graph) -> onnx.ModelProto:
    """``gs.export_onnx``, as quiet as :func:`import_graph`."""
    with G_LOGGER.suppress(G_LOGGER.ERROR):
        return gs.export_onnx(graph)


def const_values(tensor) -> np.ndarray | None:
    """The values of an initializer or of a Constant node's output; None for anything else."""
    if isinstance(tensor, gs.Constant):
        return _read(tensor)
    node = producer(tensor)
    if node is not None and node.op == "Constant" and "value" in node.attrs:
        return _read(node.attrs["value"])
    return None


def _read(constant: gs.Constant) -> np.ndarray:
    """A constant's values, leaving the constant as it was. graphsurgeon's ``values`` loads a
    lazy tensor into the constant and, for a type NumPy lacks (bfloat16), warns that the
    weights may change type on export; onnx reads bfloat16 through ml_dtypes unchanged."""
    lazy = getattr(constant, "_values", None)
    if isinstance(lazy, gs.ir.tensor.LazyValues):
        return onnx.numpy_helper.to_array(lazy.tensor)
    return np.asarray(constant.values)


def const_ints(tensor) -> list[int] | None:
    """:func:`const_values` as a flat list of ints (shapes, axes, indices); None for none."""
    values = const_values(tensor) if tensor is not None else None
    return None if values is None else [int(v) for v in values.reshape(-1)]


class GraphQueries:
    """A read-only view of ``graph`` with the structural questions of the module docstring.

    ``scopes`` maps node names to module paths (``locate.node_scopes``), for messages only.
    """

    def __init__(self, graph: gs.Graph, scopes: dict[str, str] | None = None):
        self.graph = graph
        self.scopes = {} if scopes is None else scopes
        self.outputs = {id(t) for t in graph.outputs}
        self.order = {id(n): i for i, n in enumerate(graph.nodes)}
        self._const: dict[int, bool] = {}

    # ---- naming (messages only)
    def scope(self, node: gs.Node) -> str | None:
        if node.name in self.scopes:
            return self.scopes[node.name]
        if "/" in (node.name or ""):  # legacy TorchScript names: /model/layers.0/self_attn/o_proj/MatMul
            parts = [p for p in node.name.split("/") if p][:-1]
            return ".".join(parts) or None
        return None

    def where(self, node: gs.Node) -> str:
        scope = self.scope(node)
        return node.op + (f" {node.name!r}" if node.name else "") + (f" ({scope})" if scope else "")

    @staticmethod
    def name(tensor) -> str:
        return repr(tensor.name)

    def module_path(self, *nodes: gs.Node) -> str | None:
        paths = [s.split(".") for s in (self.scope(n) for n in nodes) if s]
        if not paths:
            return None
        common = []
        for parts in zip(*paths):
            if len(set(parts)) != 1:
                break
            common.append(parts[0])
        if len(paths) == 1:
            common = common[:-1]  # the projection's own module: report its parent block
        return ".".join(common) or None

    # ---- constants and weights
    def is_const(self, tensor, depth: int = 0) -> bool:
        """True for initializers, Constant outputs and anything computed only from them."""
        if isinstance(tensor, gs.Constant):
            return True
        key = id(tensor)
        if key not in self._const:
            node = producer(tensor)
            if node is None or depth > 48:
                result = False
            elif node.op == "Constant":
                result = True
            else:
                result = bool(node.inputs) and all(self.is_const(t, depth + 1) for t in node.inputs if given(t))
            self._const[key] = result
        return self._const[key]

    def weight_shape(self, tensor) -> tuple | None:
        """The shape of the constant behind a MatMul weight input, looking through Transpose/Cast."""
        for _ in range(4):
            if isinstance(tensor, gs.Constant):
                return tuple(tensor.shape)
            node = producer(tensor)
            if node is None:
                return None
            if node.op == "Constant":
                value = node.attrs.get("value")
                return tuple(value.shape) if hasattr(value, "shape") else None
            if node.op not in WEIGHT_PATH:
                return None
            tensor = node.inputs[0]
        return None

    def is_projection(self, node: gs.Node) -> bool:
        """A MatMul (or Gemm) whose weight, input 1, is a 2-D constant and whose input 0 is not."""
        if node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2:
            return False
        shape = self.weight_shape(node.inputs[1])
        return shape is not None and len(shape) == 2 and not self.is_const(node.inputs[0])

    def variable_operands(self, node: gs.Node) -> list:
        return [t for t in node.inputs if given(t) and not self.is_const(t)]

    # ---- graph searches
    def aliases(self, tensor) -> list:
        """``tensor`` and everything that is it through no-op Cast/Identity consumers."""
        found, queue = [tensor], [tensor]
        while queue:
            for node in queue.pop().outputs:
                if node.op in NOOP:
                    found.append(node.outputs[0])
                    queue.append(node.outputs[0])
        return found

    def derives(self, tensor, targets: set[int], limit: int = MAX_VISIT) -> tuple[bool, list[gs.Node]]:
        """Whether ``tensor`` is computed from one of ``targets`` (ids), visiting at most ``limit``
        nodes; also the nodes visited, none past the targets."""
        if id(tensor) in targets:
            return True, []
        seen, visited, queue, found = {id(tensor)}, [], deque([tensor]), False
        while queue and len(visited) < limit:
            node = producer(queue.popleft())
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            visited.append(node)
            for inp in node.inputs:
                if id(inp) in targets:
                    found = True
                elif given(inp) and id(inp) not in seen and not isinstance(inp, gs.Constant):
                    seen.add(id(inp))
                    queue.append(inp)
        return found, visited

    def pick_data_operand(self, node: gs.Node):
        """The operand an elementwise op carries forward: the only non-constant one, or, for
        x * rsqrt(mean(x^2)) and x - mean(x), the one the other is computed from."""
        operands = self.variable_operands(node)
        if len(operands) == 1:
            return operands[0]
        if len(operands) == 2:
            for a, b in (operands, operands[::-1]):
                if self.derives(b, {id(a)}, limit=8)[0]:
                    return a
        return None

    def branch_projection(self, tensor) -> tuple[gs.Node | None, str]:
        """Walk back from a residual Add's branch operand to its projection MatMul."""
        for _ in range(MAX_TAIL):
            node = producer(tensor)
            if node is None:
                return None, f"its operand {self.name(tensor)} is a graph input or constant"
            if self.is_projection(node):
                return node, ""
            if node.op in ("MatMul", "Gemm"):
                return None, f"its operand comes from {self.where(node)}, whose weight is not a 2-D constant"
            if node.op in NOOP or node.op in NORMS or node.op == "Reshape":
                tensor = node.inputs[0]
            elif node.op in ELEMENTWISE:
                tensor = self.pick_data_operand(node)
            else:
                tensor = None
            if tensor is None:
                return None, f"its operand leads back to {self.where(node)}, not to a MatMul with a 2-D weight"
        return None, f"no MatMul with a 2-D weight within {MAX_TAIL} nodes of it"

    def nearest_projections(self, tensor, backward: bool) -> list[gs.Node]:
        """The projections first met walking from ``tensor`` through non-projection nodes:
        towards the graph inputs (variable operands only) or, with ``backward`` False, the outputs."""
        found, seen, queue = [], set(), deque([tensor])
        while queue:
            current = queue.popleft()
            nodes = ([current.inputs[0]] if current.inputs else []) if backward else list(current.outputs)
            for node in nodes:
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if self.is_projection(node):
                    found.append(node)
                elif backward:
                    queue.extend(t for t in node.inputs if t is not None and t.name and not isinstance(t, gs.Constant))
                else:
                    queue.extend(node.outputs)
        return found

    def reaches_output(self, node: gs.Node) -> bool:
        """Whether ``node``'s output reaches a graph output with no other projection on the way."""
        seen, queue = set(), deque(node.outputs)
        while queue:
            tensor = queue.popleft()
            if id(tensor) in self.outputs:
                return True
            for consumer in tensor.outputs:
                if id(consumer) not in seen and not self.is_projection(consumer):
                    seen.add(id(consumer))
                    queue.extend(consumer.outputs)
        return False

    # ---- attention core
    def softmax_before(self, tensor) -> gs.Node | None:
        """The Softmax behind a PV MatMul's probability input (through a NaN guard, casts)."""
        for _ in range(6):
            node = producer(tensor)
            if node is None:
                return None
            if node.op == "Softmax":
                return node
            if node.op not in PROBS:
                return None
            if node.op == "Where":
                data = [t for t in node.inputs[1:] if not self.is_const(t)]
                if len(data) != 1:
                    return None
                tensor = data[0]
            else:
                tensor = node.inputs[0]
        return None

    def find_core(self, tensor) -> tuple[AttentionCore | None, str]:
        """Walk back from o_proj's input through head-merging reshapes to the attention core."""
        for _ in range(MAX_HEAD_MERGE):
            node = producer(tensor)
            if node is None:
                return None, f"o_proj's input leads back to graph input {self.name(tensor)}"
            if node.op == "Attention" and node.outputs[0] is tensor:
                return self.attention_op_core(node), ""
            if node.op == "MatMul" and not self.is_projection(node):
                softmax = self.softmax_before(node.inputs[0])
                if softmax is None:
                    return None, f"{self.where(node)} before o_proj does not take its input 0 from a Softmax"
                return self.softmax_core(node, softmax)
            if node.op in HEAD_MERGE:
                tensor = node.inputs[0]
            elif node.op == "Where" or node.op in ("Mul", "Div"):
                data = self.variable_operands(node) if node.op != "Where" else \
                    [t for t in node.inputs[1:] if not self.is_const(t)]
                if len(data) != 1:
                    return None, f"walking back from o_proj's input reached {self.where(node)}, not an attention core"
                tensor = data[0]
            else:
                return None, (f"walking back from o_proj's input reached {self.where(node)} before any Softmax "
                              "or Attention node")
        return None, f"no Softmax or Attention within {MAX_HEAD_MERGE} nodes of o_proj's input"

    @staticmethod
    def attention_op_core(node: gs.Node) -> AttentionCore:
        masks = [node.inputs[3]] if len(node.inputs) > 3 and given(node.inputs[3]) else []
        return AttentionCore("attention_op", node.inputs[0], node.inputs[1], node.inputs[2], masks,
                             node.outputs[0], [node])

    def softmax_core(self, pv: gs.Node, softmax: gs.Node) -> tuple[AttentionCore | None, str]:
        scores, queue, seen = None, deque([(softmax.inputs[0], 0)]), set()
        while queue and scores is None:  # nearest MatMul of two variables behind the Softmax
            tensor, depth = queue.popleft()
            node = producer(tensor)
            if node is None or id(node) in seen or depth >= MAX_SCORES:
                continue
            seen.add(id(node))
            if node.op == "MatMul" and len(self.variable_operands(node)) == 2:
                scores = node
                break
            queue.extend((t, depth + 1) for t in self.variable_operands(node))
        if scores is None:
            return None, f"no scores MatMul (Q x K^T) within {MAX_SCORES} nodes before {self.where(softmax)}"
        # The core is every node on a path scores -> ... -> PV.
        ahead, queue = {id(scores)}, deque([scores])
        while queue:
            for out in queue.popleft().outputs:
                for node in out.outputs:
                    if id(node) not in ahead and node is not pv and len(ahead) < 4 * MAX_SCORES:
                        ahead.add(id(node))
                        queue.append(node)
        _, behind = self.derives(pv.inputs[0], {id(t) for t in scores.outputs})
        nodes = [scores] + [n for n in behind if id(n) in ahead and n is not scores] + [pv]
        nodes.sort(key=lambda n: self.order.get(id(n), 0))
        produced = {id(t) for n in nodes for t in n.outputs}
        masks = []
        for node in nodes:
            if node is scores or node is pv:
                continue
            for tensor in node.inputs:
                if given(tensor) and not self.is_const(tensor) and id(tensor) not in produced \
                        and all(tensor is not m for m in masks):
                    masks.append(tensor)
        return AttentionCore("softmax", scores.inputs[0], scores.inputs[1], pv.inputs[1], masks,
                             pv.outputs[0], nodes), ""

    def all_cores(self) -> list[gs.Node]:
        """Every Attention node and every Softmax that feeds a PV MatMul: one per layer."""
        cores = []
        for node in self.graph.nodes:
            if node.op == "Attention":
                cores.append(node)
            elif node.op == "Softmax" and self.pv_after(node) is not None:
                cores.append(node)
        return cores

    def pv_after(self, softmax: gs.Node) -> gs.Node | None:
        """The probabilities x V MatMul a Softmax feeds (through a NaN guard, casts), or None."""
        queue = [(softmax.outputs[0], 0)]
        while queue:
            tensor, depth = queue.pop()
            for node in tensor.outputs:
                if node.op == "MatMul" and node.inputs[0] is tensor and not self.is_projection(node):
                    return node
                if node.op in PROBS and depth < MAX_PROBS:
                    queue.append((node.outputs[0], depth + 1))
        return None

    # ---- KV cache outputs
    def cache_output(self, tensor) -> gs.Variable | None:
        """Walk back from a K/V tensor entering the core to the graph output it is written to."""
        for _ in range(MAX_HEAD_MERGE):
            found = self._output_near(tensor)
            if found is not None:
                return found
            node = producer(tensor)
            if node is None:
                return None
            if node.op in KV_PATH or (node.op == "Concat" and len(node.inputs) == 1):
                tensor = node.inputs[0]
            elif node.op in ("Mul", "Div") and len(self.variable_operands(node)) == 1:
                tensor = self.variable_operands(node)[0]
            else:
                return None
        return None

    def _output_near(self, tensor) -> gs.Variable | None:
        """``tensor`` if it is a graph output, else one written from it by Identity/Cast/Slice/Concat."""
        queue = [(tensor, 0)]
        while queue:
            current, depth = queue.pop(0)
            if id(current) in self.outputs:
                return current
            if depth < 2:
                for node in current.outputs:
                    if node.op in NOOP or node.op == "Concat" or (node.op == "Slice" and node.inputs[0] is current):
                        queue.append((node.outputs[0], depth + 1))
        return None

