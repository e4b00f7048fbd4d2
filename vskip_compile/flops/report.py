"""What a FLOPs count is: per node, per layer and per graph, with its table and JSON.

A :class:`FlopsReport` holds one prompt layout (S rows = prefix text, V visual, suffix
text; batch B) and the matrix-product FLOPs counted for it, per decoder layer
(:class:`LayerFlops`, by role) and per node (:class:`NodeFlops`). Two reports compare
only when they count the same layout (:func:`ideal_speedup`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..core.errors import VskipError


class FlopsError(VskipError):
    """The graph could not be counted; the message says which node and why."""


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

    def to_dict(self, nodes: bool = False) -> dict:
        """Everything below as a JSON-ready dict (``nodes`` adds each counted node)."""
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
        return data

    def to_json(self, nodes: bool = False) -> str:
        return json.dumps(self.to_dict(nodes), indent=2)

    def format_table(self) -> str:
        """One row per layer, then the totals, in the unit that suits the total (GFLOPs, ...)."""
        scale, unit = units(self.total)
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


def units(flops: int) -> tuple[float, str]:
    """(scale, unit) to print ``flops`` in: TFLOPs, GFLOPs, MFLOPs, kFLOPs or FLOPs."""
    for scale, unit in ((1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs"), (1e3, "kFLOPs")):
        if flops >= scale:
            return scale, unit
    return 1.0, "FLOPs"


def ideal_speedup(vanilla: FlopsReport, plan: FlopsReport) -> float:
    """FLOPs(vanilla) / FLOPs(plan), for two reports of the same prompt layout."""
    _check_same_layout(vanilla, plan)
    return vanilla.total / plan.total


def _check_same_layout(a: FlopsReport, b: FlopsReport) -> None:
    keys = ("sequence_length", "visual_rows", "prefix_rows", "suffix_rows", "batch")
    if any(getattr(a, k) != getattr(b, k) for k in keys):
        raise FlopsError("the two reports count different prompt layouts: "
                         + ", ".join(f"{k} {getattr(a, k)} vs {getattr(b, k)}" for k in keys
                                     if getattr(a, k) != getattr(b, k)))
