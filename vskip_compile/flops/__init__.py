"""FLOPs of a decoder prefill graph, vanilla or compiled, counted from the graph's shapes.

One module per job (docs/flops.md describes the accounting):

- ``count``: :func:`count_flops`, the matrix products of one prefill for one prompt
  layout (a weight-less copy of the graph, its input dims fixed, shapes inferred), and
  :func:`mask_layout`, that layout for a visual-row mask;
- ``attribute``: which decoder layer and role each counted node has, on the graph
  queries the compiler's locator uses (``vskip_compile.passes.graph_queries``);
- ``report``: :class:`FlopsReport` (per layer :class:`LayerFlops`, per node
  :class:`NodeFlops`), its table and JSON, :func:`ideal_speedup`;
- ``plan``: :func:`plan_flops`, what a skip plan requires, from the vanilla count;
- ``analytic``: :func:`analytic_flops`, the DESIGN.md section 6 formula from dims alone;
- ``compare``: :func:`compare_flops` and :class:`FlopsComparison`, vanilla against
  compiled, shared by ``vskip flops --compare`` and ``vskip-compile --report``;
- ``plot``: :func:`plot_png` and :func:`save_plot`.
"""

from .analytic import analytic_flops
from .compare import FlopsComparison, compare_flops, format_comparison
from .count import count_flops, mask_layout
from .plan import plan_flops
from .plot import plot_png, save_plot
from .report import FlopsError, FlopsReport, LayerFlops, NodeFlops, ideal_speedup

__all__ = ["FlopsComparison", "FlopsError", "FlopsReport", "LayerFlops", "NodeFlops", "analytic_flops",
           "compare_flops", "count_flops", "format_comparison", "ideal_speedup", "mask_layout", "plan_flops",
           "plot_png", "save_plot"]
