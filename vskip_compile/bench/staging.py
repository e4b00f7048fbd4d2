"""Where the plans' compiled graphs go, and their life time.

By default each plan is compiled beside the source graph, so it shares the source's
external weights, under a hidden name registered as a temporary file (removed on any
exit, signals included) and removed when the benchmark ends. With ``workdir`` the
compiled graphs are kept there, under ``MODEL.<label>.onnx``, claimed before any work so
they never replace an input or, without ``force``, an existing file; a compiled graph
needs its external weights in its own directory, so the source is staged there once
(:func:`stage_source`) and every plan's graph shares that copy's weights. Graphs given
already compiled (``--compiled``) are used where they are and never removed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..core.errors import VskipError
from ..core.files import Outputs, check_directory, output_directory, register_temp, release_temp
from ..core.plan import Plan


@dataclass
class Staging:
    """The graphs a benchmark times besides the source: one per plan, in order."""

    model: Path
    directory: Path
    keep: bool                       # a workdir: the compiled graphs stay
    targets: list[Path]
    given: list[bool]                # compiled already (--compiled): used as it is


def prepare(model: Path, labels: list[str], prebuilt: list[Path | None], workdir: str | Path | None,
            outputs: Outputs) -> Staging:
    """Check (and create) the directory and claim every graph's path; nothing is compiled."""
    keep = workdir is not None
    directory = Path(workdir) if keep else model.parent
    if keep:
        make_workdir(directory)
    else:
        try:
            check_directory(directory)
        except VskipError:
            raise VskipError(f"{directory}: not writable, and the compiled graphs go beside the source by default; "
                             "pass --workdir DIR") from None
    targets = []
    for label, given in zip(labels, prebuilt):
        if given is not None:
            targets.append(given)
        elif keep:  # claimed now: never over an input (a --compiled graph), never over a file without --force
            targets.append(outputs.claim(directory / f"{model.stem}.{label}.onnx", "compiled graph"))
        else:
            targets.append(directory / f".{model.stem}.bench-{os.getpid()}.{label}.onnx")
    return Staging(model, directory, keep, targets, [g is not None for g in prebuilt])


@contextlib.contextmanager
def compile_plans(staging: Staging, plans: list[tuple[str, Plan, str]], *, force: bool = False,
                    progress: Callable[[str], None] | None = None, causal_blocks: int = 0) -> Iterator[list[Path]]:
    """Compile every plan not given compiled; yields the graphs, one per plan. Hidden
    graphs beside the source are removed on leaving, however it is left."""
    from ..compile import compile_model

    made: list[Path] = []
    try:
        source = stage_source(staging.model, staging.directory, force, progress) if staging.keep else staging.model
        for (label, plan, _), given, output in zip(plans, staging.given, staging.targets):
            if given:
                continue
            if progress:
                progress(f"compiling {label} -> {output}")
            if not staging.keep:
                register_temp(output)  # hidden beside the source: removed on any exit, signals included
                made.append(output)
            if plan is None:  # the routable graph: every plan at run time
                compile_model(source, None, output, force=force, progress=progress, routable=True)
            else:
                compile_model(source, plan, output, force=force, progress=progress, causal_blocks=causal_blocks)
        yield list(staging.targets)
    finally:
        for path in made:
            release_temp(path, remove=True)


def make_workdir(directory: Path) -> None:
    if not output_directory(directory, "--workdir"):
        try:
            directory.mkdir()
        except OSError as exc:
            raise VskipError(f"{directory}: cannot create it: {exc.strerror or exc}") from None


def stage_source(model: Path, directory: Path, force: bool, progress) -> Path:
    """The graph to compile into ``directory`` from.

    A compiled graph needs its external weights in its own directory; compiled beside one
    staged copy of the source, every plan's graph shares that copy's weights instead of
    owning a copy each. The staged graph ``MODEL.bench-source.onnx`` and its weights
    ``MODEL.bench-source.onnx.data`` stay in the workdir with the compiled graphs.
    """
    from ..core.graph_io import claim_weight_copies, read_graph, write_graph

    graph, files = read_graph(model)
    staged = directory / f"{model.stem}.bench-source.onnx"
    with Outputs([model, *files.values()], force=force) as staging:
        copies = claim_weight_copies(staging, model, staged, files)
        if not copies:  # no external weights, or the workdir is the source's own directory
            return model
        staging.claim(staged, "staged source graph")
        write_graph(staging, graph, staged, files, copies, progress)
        staging.commit()
    return staged
