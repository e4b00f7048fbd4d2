"""The compile pipeline: graph file + plan -> compiled graph file.

    load (graph only; external weights stay on disk) -> refuse recompiles -> read the plan
    -> locate layers by structure -> run the passes (passes/pipeline.py) -> write atomically

Weights in external data are never read or loaded. A compiled graph owns its weights:
written beside its source (the default) it references the source's data files, which it
may share; written to another directory it gets a byte copy named after itself,
``OUT.onnx.data`` (:func:`vskip_compile.core.graph_io.weights_name`), so any number of compiled graphs can live in one
directory and ``--force`` only ever replaces files that belong to OUT. Every output is
claimed before any work (:class:`vskip_compile.core.files.Outputs`) and published by rename
at the end. The compiled model records its plan in ``metadata_props`` so a second
compile is refused.

``routable=True`` (``vskip-compile --routable``) takes no plan: every layer's attention and
FFN rows become graph inputs (passes/routable.py), and the graph records that it is
routable and its layer count instead of a plan; the host feeds a plan at run time
(:func:`vskip_compile.core.routing.routing_feeds`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx

from .core.errors import VskipError
from .core.files import MAX_GRAPH_BYTES, Outputs, input_file
from .core.graph_io import (check_opset, claim_weight_copies, read_graph, record_compilation, record_routable,
                            vskip_compiled, write_graph)
from .core.plan import Action, Plan, PlanInfo, load_plan
from .core.routing import routing_inputs
from .core.shapes import with_shapes
from .core.sidecar import read_sidecar, sidecar_path
from .core.visual_rows import row_inputs as plan_row_inputs



@dataclass
class CompileReport:
    source: str
    output: str
    layers_found: int
    plan: Plan                          # the plan compiled, freeze scope included
    row_inputs: list[str]
    nodes_before: int
    nodes_after: int
    passes: list = field(default_factory=list)     # one passes.pipeline.PassReport per pass, in order
    seconds: float = 0.0
    external_data: list[str] = field(default_factory=list)
    table: str = ""
    routable: bool = False              # rows are inputs per layer; ``plan`` is then the empty plan

    @property
    def actions(self) -> list[Action]:
        return list(self.plan.actions)

    def pass_report(self, name: str):
        """The report of the pass called ``name`` (a KeyError names the passes that ran)."""
        for report in self.passes:
            if report.name == name:
                return report
        raise KeyError(f"no pass {name!r} ran; the passes were {', '.join(p.name for p in self.passes)}")

    def summary(self) -> str:
        if self.routable:
            return (f"compiled {self.source} -> {self.output}: {self.layers_found} layers, routable (each takes "
                    f"its attention and FFN rows as inputs: any plan at run time); nodes {self.nodes_before} -> "
                    f"{self.nodes_after}; {len(self.row_inputs)} row inputs; {self.seconds:.2f} s")
        counts = {a: self.actions.count(a) for a in Action if self.actions.count(a)}
        actions = ", ".join(f"{a.value} x{n}" for a, n in counts.items())
        return (f"compiled {self.source} -> {self.output}: {self.layers_found} layers ({actions}); "
                f"nodes {self.nodes_before} -> {self.nodes_after}; row inputs {', '.join(self.row_inputs)}; "
                f"{self.seconds:.2f} s")

    def to_dict(self) -> dict:
        return {"source": self.source, "output": self.output, "layers": self.layers_found, "routable": self.routable,
                "plan": None if self.routable else [a.value for a in self.plan.actions],
                "freeze_scope": None if self.routable else self.plan.freeze_scope.value,
                "row_inputs": self.row_inputs, "nodes_before": self.nodes_before, "nodes_after": self.nodes_after,
                "passes": [p.to_dict() for p in self.passes], "seconds": self.seconds,
                "external_data": self.external_data}


def default_output(model_path: str | Path, routable: bool = False) -> Path:
    path = Path(model_path)
    return path.with_name(f"{path.stem}.{'routable' if routable else 'vskip'}.onnx")


def compile_model(model_path: str | Path, plan: str | Path | Plan | None, output: str | Path | None = None,
                  force: bool = False, progress: Callable[[str], None] | None = None,
                  extra_outputs: Callable[[Path], list[Path]] | None = None,
                  causal_blocks: int = 0, routable: bool = False, hidden_states: bool = False) -> CompileReport:
    """Compile ``model_path`` with ``plan`` (a plan file or a Plan) into ``output``.

    ``causal_blocks`` >= 2 also cuts full-query attention cores into that many causal
    query chunks (:mod:`passes.causal_blocks`; 0: off). ``routable``: no plan (``plan``
    None), every layer's rows become inputs (see the module docstring); refused with
    ``causal_blocks``. ``hidden_states``: also expose every layer's output as the graph
    output ``hidden_states.{i}`` (:mod:`passes.hidden_states`, for ``validate --per-layer``).
    ``extra_outputs(output)`` names further files the caller will write for this output
    (the --report files): they are claimed, so refused, before any work is done.
    """
    from .passes.graph_queries import export_graph, import_graph
    from .passes.locate import format_table, locate_layers, node_scopes
    from .passes.pipeline import default_passes, routable_passes, run_passes

    start = time.perf_counter()
    if routable and plan is not None:
        raise VskipError("a routable graph takes its plan at run time; compile it without a plan")
    if not routable and plan is None:
        raise VskipError("give a plan to compile with, or compile a routable graph (--routable)")
    if routable and causal_blocks:
        # The blocks cut all-row queries by position; a routable layer's queries are a runtime
        # row set, so no core can be proven to keep a causal chunk structure.
        raise VskipError("--causal-blocks does not apply to a routable graph, whose attention queries are "
                         "runtime rows; drop --causal-blocks (or compile the plan statically)")
    if routable and hidden_states:
        raise VskipError("--hidden-states applies to a static compile (its taps are checked against the reference "
                         "under a plan); compile a routable graph without it")
    passes = routable_passes() if routable else default_passes(causal_blocks, hidden_states)  # before any I/O
    model_path = input_file(model_path, "ONNX model", MAX_GRAPH_BYTES)
    output = Path(output) if output else default_output(model_path, routable)
    outputs = Outputs([model_path] + ([] if plan is None or isinstance(plan, Plan) else [plan]), force=force)
    with outputs:
        model, data_files = read_graph(model_path)
        for path in data_files.values():
            outputs.add_input(path)
        sidecar = read_sidecar(model_path)
        if sidecar is not None:
            outputs.add_input(sidecar_path(model_path))
        outputs.claim(output, "compiled graph")
        copies = claim_weight_copies(outputs, model_path, output, data_files)
        for extra in (extra_outputs(output) if extra_outputs else []):
            outputs.claim(extra, "report")
        if vskip_compiled(model, model_path):
            raise VskipError(f"{model_path}: already compiled by vskip; compile the original graph instead")
        check_opset(model, model_path)
        if plan is None:
            plan_obj, info = None, None
        elif isinstance(plan, Plan):
            plan_obj, info = plan, PlanInfo("<plan>", "vskip-plan", None, plan.num_layers)
        else:
            plan_obj, info = load_plan(plan)
        family = (sidecar.family if sidecar else None) or (info.family if info else None)
        if info and sidecar and sidecar.num_layers:  # before the graph is walked: a plan for another model costs nothing
            info.check_model(family or "decoder", sidecar.num_layers)

        graph = import_graph(with_shapes(model))
        structure = locate_layers(graph, scopes=node_scopes(model))
        if info:
            info.check_model(family or "decoder", len(structure.layers))
        else:
            plan_obj = Plan.empty(len(structure.layers))  # what the passes are given; RouteRows ignores it
        if progress:
            progress(f"found {len(structure.layers)} decoder layers "
                     f"({structure.layers[0].attention.kind if structure.layers else '-'} attention)")
        nodes_before = len(graph.nodes)
        table = format_table(structure)
        reports = run_passes(structure, plan_obj, passes)
        row_inputs = routing_inputs(len(structure.layers)) if routable else plan_row_inputs(plan_obj)
        if any(report.changed for report in reports):
            compiled = export_graph(graph)
            _copy_model_fields(model, compiled)
        else:
            # No pass changed anything (the empty plan at opset 23): the source graph itself,
            # node for node and in its own order: identical numbers and the same execution
            # plan, so it cannot be slower.
            compiled = model
        # Every compiled graph takes its plan's row inputs, used or not (the empty plan's too).
        present = {i.name for i in compiled.graph.input}
        compiled.graph.input.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64,
                                                                       [f"{name}_count"])
                                    for name in row_inputs if name not in present)
        if routable:
            record_routable(compiled, len(structure.layers), family)
        else:
            blocked = any(r.name == "causal_blocks" and r.changed for r in reports)
            record_compilation(compiled, plan_obj, family, row_inputs, causal_blocks if blocked else 0)
        write_graph(outputs, compiled, output, data_files, copies, progress)
        outputs.commit()
    return CompileReport(
        source=str(model_path), output=str(output), layers_found=len(structure.layers), plan=plan_obj,
        row_inputs=row_inputs, nodes_before=nodes_before, nodes_after=len(compiled.graph.node), passes=reports,
        seconds=time.perf_counter() - start, external_data=[str(p) for p in copies.values()], table=table,
        routable=routable,
    )


def _copy_model_fields(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    target.ir_version = source.ir_version
    target.producer_name = source.producer_name
    target.producer_version = source.producer_version
    del target.metadata_props[:]
    target.metadata_props.extend(source.metadata_props)
    existing = {o.domain for o in target.opset_import}
    target.opset_import.extend(o for o in source.opset_import if o.domain not in existing)
