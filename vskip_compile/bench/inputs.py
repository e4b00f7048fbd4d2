"""What a benchmark is given, read and checked: the model's sidecar, the plans, and the
plans that given compiled graphs record.

Every reader is the core's: the sidecar through :mod:`vskip_compile.core.sidecar`, plan
files through :func:`vskip_compile.core.plan.load_plan`, a compiled graph's plan through
:func:`vskip_compile.core.graph_io.recorded_plan`.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import VskipError
from ..core.plan import Plan, load_plan
from ..core.sidecar import DIM_FIELDS, Sidecar, load_sidecar_file, read_sidecar, sidecar_path
from .timing import VANILLA


def model_sidecar(model: Path, sidecar: Sidecar | str | Path | None) -> Sidecar:
    """The model's sidecar, with every dimension the FLOPs formula needs: ``sidecar`` (a
    :class:`Sidecar` or a JSON file) or the vskip.json beside the graph."""
    if sidecar is None:
        found = read_sidecar(model)
        if found is None:
            raise VskipError(f"{model}: no vskip.json beside it; export the model with `vskip export`, or pass "
                             f"--sidecar FILE.json with its {', '.join(DIM_FIELDS)}")
        return found.require(DIM_FIELDS)
    if isinstance(sidecar, Sidecar):
        return sidecar.require(DIM_FIELDS, "give every one of them")
    return load_sidecar_file(sidecar).require(DIM_FIELDS, "add them to the file")


def sidecar_files(model: Path, sidecar: Sidecar | str | Path | None) -> list[Path]:
    """The sidecar file a benchmark reads, as an input no output may replace."""
    if isinstance(sidecar, Sidecar):
        return []
    return [Path(sidecar) if sidecar is not None else sidecar_path(model)]


def is_compiled(model: Path) -> bool:
    from ..core.graph_io import load_graph, recorded_plan

    return recorded_plan(load_graph(model, weights_needed=False), model) is not None


class Recorded:
    """The plan a given compiled graph records, labelled by the graph's file name."""

    def __init__(self, path: Path, plan: Plan):
        self.path, self.plan = path, plan


def recorded(path: Path, num_layers: int) -> Recorded:
    from ..core.graph_io import load_graph, recorded_plan

    plan = recorded_plan(load_graph(path, weights_needed=False), path)
    if plan is None:
        raise VskipError(f"{path}: not compiled by vskip (it records no plan); pass its plan with --plan instead")
    if plan.num_layers != num_layers:
        raise VskipError(f"{path}: its plan has {plan.num_layers} layers but the model has {num_layers}")
    return Recorded(path, plan)


def load_plans(plans: list, sidecar: Sidecar) -> list[tuple[str, Plan, str]]:
    """(unique label, Plan, source) per plan (a file, a :class:`Plan` or a
    :class:`Recorded`); labels are file stems, numbered on clashes."""
    loaded, used = [], {VANILLA}
    for index, item in enumerate(plans):
        if isinstance(item, Recorded):
            plan, label, source = item.plan, item.path.stem, str(item.path)
        elif isinstance(item, Plan):
            plan, label, source = item, f"plan{index}", "<plan>"
            if plan.num_layers != sidecar.num_layers:
                raise VskipError(f"plan {index} has {plan.num_layers} layers but the model has {sidecar.num_layers}")
        else:
            plan, info = load_plan(item)
            # A sidecar given by hand may lack the family: then only the layer count is checked.
            info.check_model(sidecar.family or info.family or "decoder", sidecar.num_layers)
            label, source = Path(item).stem, str(item)
        unique, number = label, 2
        while unique in used:
            unique, number = f"{label}-{number}", number + 1
        used.add(unique)
        loaded.append((unique, plan, source))
    return loaded
