"""The per-layer FLOPs plot: vanilla against compiled (or required), stacked by operator class."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..core.errors import VskipError
from ..core.files import Outputs
from .report import FlopsReport, _check_same_layout, units


def save_plot(vanilla: FlopsReport, compiled: FlopsReport, path: str | Path, force: bool = False) -> Path:
    """Write :func:`plot_png` to ``path`` through the guarded outputs (never over an input)."""
    with Outputs([p for p in (vanilla.source, compiled.source) if p], force=force) as outputs:
        outputs.write_bytes(path, plot_png(vanilla, compiled))
        outputs.commit()
    return Path(path)


def require_matplotlib() -> None:
    """Refuse in one line, before any work, where the plot cannot be drawn."""
    import importlib.util

    try:
        found = importlib.util.find_spec("matplotlib") is not None
    except (ImportError, ValueError):  # a broken or stubbed install
        found = False
    if not found:
        raise VskipError("the FLOPs plot needs matplotlib: pip install 'vskip[plot]'")


def plot_png(vanilla: FlopsReport, compiled: FlopsReport) -> bytes:
    """PNG: per layer, a vanilla and a compiled bar, each stacked by operator class."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_same_layout(vanilla, compiled)
    # Figure + Agg canvas directly: no pyplot, so no global backend state is touched.
    fig = Figure(figsize=(max(6.0, 0.32 * len(vanilla.layers) + 2), 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    scale, unit = units(max(layer.total for layer in vanilla.layers) if vanilla.layers else vanilla.total)
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
    total_scale, total_unit = units(vanilla.total)
    saved = 1 - compiled.total / vanilla.total
    ax.set_title(f"prefill FLOPs, {vanilla.visual_rows} visual + {vanilla.sequence_length - vanilla.visual_rows} "
                 f"text rows: {vanilla.total / total_scale:.3f} -> {compiled.total / total_scale:.3f} "
                 f"{total_unit} (-{saved:.1%})", fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
