"""The ``vskip`` command line: one subcommand per job, in the style of Polygraphy's tools.

Every subcommand is a class whose docstring is its help text (with an example), and
every argument has a help line. One vocabulary across subcommands:

- ``--visual-rows RANGES`` is always the visual rows as half-open ranges (``5:21,30:46``);
  ``--rows N`` is the prompt length where no feeds give it (flops, bench, compile --report);
- ``--json PATH`` writes a report as JSON, ``--json -`` prints it to stdout (and nothing else);
- ``--backend NAME`` picks where a graph runs (run, validate, bench);
- ``--force`` lets a command replace its own earlier outputs, never its inputs.

A flag that has no effect in the given combination is an error. Failures are one line:
exit 2 for bad input or usage, 1 for a validation that ran and failed. Heavy imports
(torch, transformers) happen inside the subcommands that need them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

from . import __version__
from .core.errors import VskipError
from .core.files import Terminated, escape, is_disk_full, one_line, signals_raise

# Prompt sizes a FLOPs workload may describe: counts, not allocations, but a bound keeps
# the numbers meaningful and the arithmetic in range.
MAX_WORKLOAD_ROWS = 2**20


class Command:
    """A subcommand: its docstring is its help text."""

    name = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


# --------------------------------------------------------------------------- shared options

def add_json(parser, what: str) -> None:
    parser.add_argument("--json", metavar="PATH", help=f"write {what} as JSON to PATH ('-': print it to stdout "
                                                       "instead of the table)")


def add_causal_blocks(parser, whose: str = "the compiled graph's") -> None:
    parser.add_argument("--causal-blocks", type=int, default=0, metavar="N",
                        help=f"cut {whose} full-query attention cores into N query chunks that skip the keys "
                             "a causal mask hides (2-64; default 0: off; ONNX Runtime CPU speed, see "
                             "docs/benchmarks.md)")


def add_rows(parser, what: str) -> None:
    from .core.visual_rows import DEFAULT_ROWS, DEFAULT_VISUAL_RANGES

    parser.add_argument("--rows", type=int, metavar="N",
                        help=f"rows (tokens) of the {what} prompt (default {DEFAULT_ROWS})")
    parser.add_argument("--visual-rows", metavar="RANGES",
                        help=f"visual rows of the {what} prompt, half-open ranges (default {DEFAULT_VISUAL_RANGES}: "
                             "16 text rows, a 1024-row image, 48 text rows)")


def add_backend(parser, repeat: bool = False) -> None:
    from .backends import DEFAULT, help_text

    if repeat:
        parser.add_argument("--backend", action="append", metavar="NAME",
                            help=f"where to run; repeat to time several side by side (default {DEFAULT}). "
                                 + help_text())
    else:
        parser.add_argument("--backend", default=DEFAULT, metavar="NAME",
                            help=f"where to run (default {DEFAULT}). " + help_text())


def add_target(parser, what: str, required: bool = False) -> None:
    from .trt.support import TARGET_NAMES

    parser.add_argument("--target", required=required, metavar="|".join(TARGET_NAMES),
                        help=f"{what}: trt10 = every TensorRT 10.x from 10.0 (an op a later 10.x minor added is a "
                             "finding naming that minor), trt11 = TensorRT 11.x")


def add_profile(parser, opt: bool) -> None:
    """The shapes a TensorRT profile spans (build; lint checks index ranges at the maxima)."""
    from .trt.profiles import NAMEABLE, ProfileLimits

    d = ProfileLimits()
    parser.add_argument("--max-batch", type=int, metavar="N", help=f"largest batch (default {d.max_batch})")
    parser.add_argument("--max-seq", type=int, metavar="N", help=f"largest prompt, in rows (default {d.max_seq})")
    parser.add_argument("--max-visual-rows", type=int, metavar="N",
                        help=f"most visual rows in a prompt (default {d.max_visual_rows}, at most --max-seq)")
    parser.add_argument("--max-images", type=int, metavar="N",
                        help=f"most images a vision graph takes at once (default {d.max_images})")
    if opt:
        parser.add_argument("--opt-images", type=int, metavar="N",
                            help=f"the images TensorRT tunes a vision graph for (default {d.opt_images})")
        parser.add_argument("--opt-batch", type=int, metavar="N",
                            help=f"the batch TensorRT tunes for (default {d.opt_batch})")
        parser.add_argument("--opt-seq", type=int, metavar="N",
                            help=f"the prompt length TensorRT tunes for (default {d.opt_seq}, at most --max-seq)")
        parser.add_argument("--opt-visual-rows", type=int, metavar="N",
                            help=f"the visual rows of that prompt (default {d.opt_visual_rows}, fewer than "
                                 "--opt-seq; the rest are text)")
    parser.add_argument("--dim", action="append", default=[], metavar="NAME=KIND",
                        help="what a graph's dynamic axis NAME counts, where vskip cannot tell from the name "
                             f"(KIND: {', '.join(NAMEABLE)}); repeat for several")


def profile_limits(args):
    """(ProfileLimits, dim names) from :func:`add_profile`'s flags, checked."""
    from .trt.profiles import ProfileLimits, parse_dim_names

    given = {k: getattr(args, k, None) for k in ("max_batch", "max_seq", "max_visual_rows", "opt_batch", "opt_seq",
                                                  "opt_visual_rows", "max_images", "opt_images")}
    return ProfileLimits.within(**given).check(), parse_dim_names(args.dim)


def add_engines(parser, which: str) -> None:
    parser.add_argument("--engines", action="store_true",
                        help=f"with --backend trt: run the engine `vskip build` wrote beside {which} (GRAPH.engine, "
                             "checked to be built from that graph) instead of building one in memory")


def add_force(parser, what: str) -> None:
    parser.add_argument("--force", action="store_true", help=f"replace {what} if it exists (never an input)")


def workload(args):
    """The visual-row mask of the prompt --rows / --visual-rows describe."""
    from .core.visual_rows import workload as mask

    return mask(args.rows, args.visual_rows, MAX_WORKLOAD_ROWS)


class Report:
    """Where a command's JSON goes: claimed with the command's other outputs, before any work."""

    def __init__(self, path: str | None, inputs: list, force: bool):
        from .core.files import Outputs

        self.path = path
        self.outputs = Outputs([p for p in inputs if p], force=force)
        if path not in (None, "-"):
            self.outputs.claim(path, "JSON report")

    @property
    def to_stdout(self) -> bool:
        return self.path == "-"

    def table(self, text: str) -> None:
        """The human-readable report: on stdout unless the JSON goes there."""
        if not self.to_stdout:
            print(text)

    def emit(self, data: dict, files: dict | None = None) -> None:
        """Write the JSON (to its file or stdout) and ``files`` (path -> bytes, claimed
        beforehand) in one transaction: all of them or none."""
        files = files or {}
        if self.path is not None and self.to_stdout:
            sys.stdout.write(json.dumps(data, indent=2) + "\n")
        elif self.path is not None:
            files = {self.path: (json.dumps(data, indent=2) + "\n").encode(), **files}
        if not files:
            return
        with self.outputs:
            for path, content in files.items():
                self.outputs.write_bytes(path, content)
            self.outputs.commit()
        _progress(f"wrote {', '.join(str(p) for p in files)}")


# --------------------------------------------------------------------------- subcommands

class Export(Command):
    """Export an MLLM's decoder to ONNX: prefill.onnx, decode.onnx and the vskip.json sidecar.

    SOURCE is a transformers checkpoint directory (config.json + safetensors), a tiny
    preset with seeded random weights, tiny:<model_type>, or the packaged trained testbed,
    testbed:vqa (docs/testbed.md).

    Example:
      vskip export tiny:qwen2_vl -o out/q2 --opset 23
    """

    name = "export"

    def add_arguments(self, parser):
        parser.add_argument("source", metavar="SOURCE", help="checkpoint directory, tiny:<model_type> or testbed:vqa")
        parser.add_argument("-o", "--output", required=True, metavar="DIR",
                            help="export directory (created; its parent must exist)")
        parser.add_argument("--opset", type=int, default=20, choices=(20, 23),
                            help="20: decomposed attention (default); 23: Attention + RMSNormalization ops")
        parser.add_argument("--all-logits", action="store_true",
                            help="output logits for every position (default: last position only)")
        parser.add_argument("--prefill-only", action="store_true",
                            help="only prefill.onnx and the sidecar (compiling needs only prefill)")
        parser.add_argument("--no-vision", action="store_true",
                            help="no vision.onnx, embedding table or config.json (what `vskip generate` needs)")
        parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"),
                            help="the type the model is loaded and exported in (default float32); the graph "
                                 "keeps the model's own fp32 upcasts")
        parser.add_argument("--seed", type=int, default=0, help="seed of a tiny preset's random weights")
        add_force(parser, "an existing export in DIR")

    def run(self, args):
        from .models.export import export_model

        export_model(args.source, args.output, opset=args.opset, all_logits=args.all_logits,
                     force=args.force, seed=args.seed, progress=_progress, decode=not args.prefill_only,
                     dtype=args.dtype, vision=not (args.prefill_only or args.no_vision))
        return 0


class Cast(Command):
    """Type an fp32 graph as fp16 or bf16 with explicit fp32 islands (norm statistics,
    rotary tables, softmax; optionally the LM head), for strictly typed engines.

    For graphs that arrive in fp32 (another exporter, an older vskip); `vskip export
    --dtype` traces a model in its type instead. Weights are converted one tensor at a
    time into OUT's own data file. Written beside the source, the typed graph validates
    against the source's vskip.json model.

    Example:
      vskip cast out/q2/prefill.onnx --dtype float16 -o out/q2/prefill.fp16.onnx
    """

    name = "cast"

    def add_arguments(self, parser):
        parser.add_argument("model", metavar="MODEL.onnx", help="an fp32 decoder graph (exported or compiled)")
        parser.add_argument("--dtype", required=True, choices=("float16", "bfloat16"), help="the type to write")
        parser.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="the typed graph")
        parser.add_argument("--lm-head-fp32", action="store_true",
                            help="keep the LM head (and the logits output) in fp32")
        parser.add_argument("--range-check", action="store_true",
                            help="fp16: run the fp32 graph on validate's prompts for the vskip.json model and keep "
                                 "in fp32 what goes beyond fp16's range")
        parser.add_argument("--range-inputs", metavar="FEEDS.npz",
                            help="fp16: the same range check on these feeds (a graph without vskip.json)")
        add_force(parser, "OUT.onnx and its weights")

    def run(self, args):
        from .cast import cast_model

        report = cast_model(args.model, args.dtype, args.output, force=args.force, lm_head=args.lm_head_fp32,
                            progress=_progress, range_check=args.range_check, range_inputs=args.range_inputs)
        print(f"wrote {report.output} ({report.dtype}) in {report.seconds:.1f} s")
        return 0


class Inspect(Command):
    """Find every decoder layer of an ONNX graph by structure and print a table of them.

    Example:
      vskip inspect out/q2/prefill.onnx --json -
    """

    name = "inspect"

    def add_arguments(self, parser):
        parser.add_argument("model", metavar="MODEL.onnx", help="a decoder prefill graph")
        add_json(parser, "the layers found")
        add_force(parser, "the --json file")

    def run(self, args):
        from .core.graph_io import load_graph
        from .passes.locate import format_table, locate_model

        report = Report(args.json, [args.model], args.force)
        structure = locate_model(load_graph(args.model))
        report.table(format_table(structure))
        report.emit({"model": args.model, "layers": [_layer_dict(layer) for layer in structure.layers]})
        return 0


def _layer_dict(layer) -> dict:
    return {"layer": layer.index, "attention": layer.kind, "o_proj": layer.o_proj.name,
            "down_proj": layer.down_proj.name,
            "present_key": layer.present_key.name if layer.present_key is not None else None,
            "present_value": layer.present_value.name if layer.present_value is not None else None,
            "module": layer.module_path}


class Compile(Command):
    """Compile a decoder graph with a skip plan: skip the visual rows' attention / FFN per layer.

    PLAN.json is a vskip plan or an OpSkip policy file. The compiled graph takes the same
    inputs as MODEL.onnx plus the live-row inputs (vskip_text_rows, and vskip_suffix_rows
    for freeze_scope prefix_through_visual); see `vskip run --visual-rows`. Prints the
    layers found and every pass's changes; --report adds FLOPs before and after.

    --routable instead of --plan: one graph for every plan. Each layer i takes its
    attention query rows and its FFN rows as inputs (vskip_layer{i}_attention_rows,
    vskip_layer{i}_ffn_rows), and `vskip run/validate --plan` feed them for a plan at run
    time (no recompile, one TensorRT engine). Not with --report or --causal-blocks.

    Example:
      vskip-compile out/q2/prefill.onnx --plan vskip_compile/plans/example_tiny.json -o out/q2/c.onnx --report
      vskip-compile out/q2/prefill.onnx --routable -o out/q2/routable.onnx
    """

    name = "compile"

    def add_arguments(self, parser):
        parser.add_argument("model", metavar="MODEL.onnx", help="a decoder prefill graph (not compiled)")
        parser.add_argument("--plan", metavar="PLAN.json", help="a vskip plan or an OpSkip policy (or --routable)")
        parser.add_argument("--routable", action="store_true",
                            help="no plan: every layer's rows become inputs, so any plan is fed at run time")
        parser.add_argument("-o", "--output", metavar="OUT.onnx", help="default: MODEL.vskip.onnx beside MODEL "
                                                                       "(MODEL.routable.onnx with --routable)")
        parser.add_argument("--report", action="store_true",
                            help="count FLOPs before and after: print the table and the ideal speedup, write "
                                 "OUT.flops.json and a per-layer plot OUT.flops.png")
        add_rows(parser, "--report")
        add_causal_blocks(parser)
        parser.add_argument("--hidden-states", action="store_true",
                            help="also output every layer's residual stream (hidden_states.{i}), for vskip validate "
                                 "--per-layer; not for deployment (one [B, S, D] output per layer)")
        add_target(parser, "after writing OUT.onnx, lint it for this TensorRT as `vskip lint` does (default profile "
                           "limits), print the findings and exit 1 if there are any; OUT.onnx is written either way")
        add_json(parser, "the compile report (layers, passes, nodes)")
        add_force(parser, "OUT.onnx, its weights and report files")

    def run(self, args):
        from .compile import compile_model

        if args.routable and args.plan is not None:
            raise VskipError("--routable takes no --plan: a routable graph is fed its plan at run time "
                             "(vskip run/validate --plan)")
        if not args.routable and args.plan is None:
            raise VskipError("give --plan PLAN.json, or --routable for one graph that takes any plan at run time")
        if args.routable and args.report:
            raise VskipError("--report counts a plan's FLOPs, and a routable graph has no plan of its own; count "
                             "the plan with vskip flops on its static compile, or drop --report")
        if not args.report and (args.rows, args.visual_rows) != (None, None):
            raise VskipError("--rows and --visual-rows describe the --report workload; add --report")
        visual = workload(args) if args.report else None
        if args.report and args.hidden_states:
            raise VskipError("--report counts FLOPs, and the FLOPs counter cannot tell per-layer hidden-state outputs "
                             "from the LM head; drop --report or --hidden-states")
        if args.report and args.causal_blocks:
            raise VskipError("--report counts FLOPs, and the FLOPs counter does not count causally blocked "
                             "graphs yet; drop --report or --causal-blocks")
        if args.report:
            from .flops.plot import require_matplotlib

            require_matplotlib()  # before compiling: --report writes the plot with the graph
        if args.target is not None:
            from .trt.support import target

            target(args.target)  # an unknown target costs nothing
        report_json = Report(args.json, [args.model, args.plan], args.force)

        def extra_outputs(output: Path) -> list[Path]:
            # Claimed with the graph and its weights in one transaction: --json may not name
            # any of them (written later, it would replace a file this command just wrote).
            files = report_files(output) if args.report else []
            return files + ([Path(args.json)] if args.json not in (None, "-") else [])

        report = compile_model(args.model, args.plan, args.output, force=args.force, progress=_progress,
                               extra_outputs=extra_outputs, causal_blocks=args.causal_blocks, routable=args.routable,
                               hidden_states=args.hidden_states)
        _progress(report.table)
        for result in report.passes:
            _progress(result.counts())
            for change in result.layers:
                _progress(f"  layer {change.index}: {change.label} ({change.nodes_added} nodes added"
                          + (f"; {change.note})" if change.note else ")"))
            for index, why in result.skipped:
                _progress(f"  layer {index}: left as it is ({why})")
        _progress(report.summary())
        data = report.to_dict()
        if args.report:
            sys.stderr.flush()
            data["flops"] = _flops_report(args.model, report.output, visual, report.plan, args.force,
                                          print_table=not report_json.to_stdout)
        findings = _lint_compiled(report.output, args.target, data) if args.target is not None else []
        report_json.emit(data)
        return 1 if findings else 0


def _lint_compiled(path, target_name: str, data: dict) -> list:
    """`vskip-compile --target`: lint the graph just written, print the findings (stderr, with
    the rest of the compile log) and add them to the JSON report."""
    from .trt.lint import lint_graph, report, summary
    from .trt.profiles import ProfileLimits

    limits, notes = ProfileLimits(), []
    findings = lint_graph(path, target_name, limits, notes)
    for line in [f.line() for f in findings] + [f"note: {n}" for n in notes]:
        _progress(line)
    _progress(summary(str(path), findings, target_name)
              + ("; the compiled graph is written all the same" if findings else ""))
    data["lint"] = report(str(path), findings, target_name, limits, notes)
    return findings


def report_files(compiled_path) -> list[Path]:
    """The --report files of a compiled graph: OUT.flops.json and OUT.flops.png, beside it."""
    stem = Path(compiled_path).with_suffix("")
    return [Path(f"{stem}.flops.json"), Path(f"{stem}.flops.png")]


def _flops_report(vanilla_path, compiled_path, visual, plan, force: bool, print_table: bool) -> dict:
    from .core.files import Outputs
    from .core.visual_rows import workload_fields
    from .flops import compare_flops

    # the plan just compiled: no need to read it back from the file
    comparison = compare_flops(vanilla_path, compiled_path, visual, plan, workload=workload_fields(visual))
    if print_table:
        print(comparison.table())
    data = comparison.to_dict()
    json_path, png_path = report_files(compiled_path)
    with Outputs([vanilla_path, compiled_path], force=force) as outputs:
        outputs.write_text(json_path, json.dumps(data, indent=2) + "\n")
        outputs.write_bytes(png_path, comparison.plot_png())
        outputs.commit()
    _progress(f"wrote {json_path} and {png_path}")
    return data


class Flops(Command):
    """Count a decoder graph's FLOPs per layer, operator class and row class (weights not needed).

    With --compare COMPILED, also count the compiled graph, and print the ideal speedup
    FLOPs(MODEL) / FLOPs the compiled graph's plan requires, beside what the compiled graph
    computes. Matrix products only (MatMul, Gemm, Attention); elementwise work is not counted.

    A routable graph (vskip-compile --routable) computes the plan it is fed: --plan P
    counts it under P (what the static compile of P counts).

    Example:
      vskip flops out/q2/prefill.onnx --compare out/q2/c.onnx --rows 1088 --visual-rows 16:1040
      vskip flops out/q2/routable.onnx --plan vskip_compile/plans/example_tiny.json
    """

    name = "flops"

    def add_arguments(self, parser):
        parser.add_argument("model", metavar="MODEL.onnx", help="a decoder prefill graph")
        parser.add_argument("--compare", metavar="COMPILED.onnx", help="a graph vskip compiled from MODEL")
        parser.add_argument("--plan", metavar="PLAN.json", help="the plan a routable MODEL (vskip-compile "
                                                                "--routable) is fed: its FLOPs are that plan's")
        add_rows(parser, "counted")
        add_json(parser, "the counts")
        parser.add_argument("--plot", metavar="OUT.png", help="with --compare: per-layer FLOPs before and after")
        add_force(parser, "the --json and --plot files")

    def run(self, args):
        from .core.visual_rows import workload_fields
        from .flops import compare_flops, count_flops, mask_layout

        if args.plot and not args.compare:
            raise VskipError("--plot draws vanilla against compiled: add --compare COMPILED.onnx")
        if args.plan and args.compare:
            raise VskipError("--plan counts a routable graph fed that plan; --compare counts a static compile "
                             "against its source: give one of them")
        visual = workload(args)
        report = Report(args.json, [args.model, args.compare, args.plan], args.force)
        if args.plot:
            from .flops.plot import require_matplotlib

            require_matplotlib()
            report.outputs.claim(args.plot, "plot")  # before the counting: a bad name costs nothing
        if not args.compare:
            plan = None
            if args.plan:
                from .core.plan import load_plan

                plan, _ = load_plan(args.plan)
            counted = count_flops(args.model, **mask_layout(visual), plan=plan)
            report.table(counted.format_table())
            report.emit({"workload": workload_fields(visual), **counted.to_dict()})
            return 0
        comparison = compare_flops(args.model, args.compare, visual, workload=workload_fields(visual))
        report.table(comparison.table())
        report.emit(comparison.to_dict(), {args.plot: comparison.plot_png()} if args.plot else None)
        return 0


class Validate(Command):
    """Compare a graph (compiled or vanilla) with the PyTorch skip reference under a skip plan.

    The graph runs on --backend; the reference is the model the graph was exported from
    (the vskip.json sidecar beside it) unless --model names one. The plan is --plan, else
    the one a compiled graph records, else the empty plan. Prints per output the absolute
    and relative errors, cosine similarity, top-1 agreement of the logits and NaN/Inf.
    An fp32 graph passes within --atol of the fp32 model; an fp16/bf16 graph when every
    output is finite and within --min-cosine / --min-top1 of the fp32 model (defaults
    measured from how far PyTorch itself drifts in that type: docs/validation.md); the
    table also shows its distance from the model in its own type. Exits 0 on pass, 1
    otherwise.

    Example:
      vskip validate out/q2/c.onnx --json out/validate.json
    """

    name = "validate"

    def add_arguments(self, parser):
        parser.add_argument("graph", metavar="GRAPH.onnx", help="a graph vskip exported or compiled, or an engine "
                                                                "from vskip build (--backend trt)")
        parser.add_argument("--plan", metavar="PLAN.json", help="the plan the reference follows, and a routable "
                                                                "graph is fed (default: the graph's recorded plan, "
                                                                "else none)")
        parser.add_argument("--model", metavar="SOURCE", help="the reference model: checkpoint directory or "
                                                              "tiny:<model_type> (default: the sidecar's source)")
        parser.add_argument("--inputs", metavar="FEEDS.npz", help="feeds to use instead of a generated prompt")
        parser.add_argument("--visual-rows", metavar="RANGES", help="visual rows of --inputs, e.g. 5:21,30:46")
        parser.add_argument("--atol", type=float, help="absolute tolerance of an fp32 graph (default 1e-4)")
        parser.add_argument("--min-cosine", type=float, help="an fp16/bf16 graph's lowest cosine similarity with "
                                                             "the fp32 model (default 0.99998 fp16, 0.998 bf16)")
        parser.add_argument("--min-top1", type=float, help="an fp16/bf16 graph's lowest top-1 agreement of the "
                                                           "logits with the fp32 model (default 0.75)")
        parser.add_argument("--per-layer", action="store_true",
                            help="also print every layer's present K/V and the layer where a drift starts")
        add_backend(parser)
        add_json(parser, "the report")
        add_force(parser, "the --json file")

    def run(self, args):
        from .validate import validate

        report = Report(args.json, [args.graph, args.plan, args.inputs], args.force)
        result = validate(args.graph, args.plan, args.model, args.inputs, args.visual_rows, args.atol,
                          backend=args.backend, min_cosine=args.min_cosine, min_top1=args.min_top1)
        report.table(result.table() + ("\n" + result.layer_table() if args.per_layer else ""))
        report.emit(json.loads(result.to_json()))
        return 0 if result.passed else 1


class Bench(Command):
    """Time a prefill graph against its compiled versions, side by side.

    Each --plan is compiled from MODEL.onnx (an export with its vskip.json sidecar). The
    vanilla graph and every compiled graph run on every --backend in one process, on random
    inputs of --rows rows with images at --visual-rows: warm-up runs, then rounds in which
    every config runs once, in an order that rotates between rounds. Prints per config the
    median and spread and per plan the speedup, the paired (same-round) speedup, the ideal
    speedup from FLOPs and the share of it realized.

    With --e2e, whole generations instead: MODEL is an export's prefill.onnx, --inputs the
    model's inputs (as for `vskip generate`) or --prompt/--image run through the export's
    processor before every generation, and each config generates --max-new-tokens tokens
    (EOS ignored) on the export's vision, prefill and decode graphs, or with transformers'
    generate on --backend torch. Prints each stage's median (processor, vision, prefill,
    first token, decode tokens/s, total) and per plan the first-token speedup against its
    ideal (processor and vision unchanged, prefill cut by the plan's FLOPs).

    Example:
      vskip bench out/q2/prefill.onnx --plan vskip_compile/plans/example_tiny.json --rows 64 --visual-rows 8:40 --backend ort-cpu --backend torch
      vskip bench out/q2/prefill.onnx --e2e --inputs out/inputs.npz --plan vskip_compile/plans/example_tiny.json --max-new-tokens 16
    """

    name = "bench"

    def add_arguments(self, parser):
        from .bench import DEFAULT_ROUNDS, DEFAULT_WARMUP

        parser.add_argument("model", metavar="MODEL.onnx", help="a prefill graph from vskip export (not compiled)")
        parser.add_argument("--plan", action="append", default=[], metavar="PLAN.json",
                            help="a vskip plan or OpSkip policy; repeat for several")
        parser.add_argument("--compiled", action="append", default=[], metavar="COMPILED.onnx",
                            help="a graph vskip already compiled from MODEL (e.g. by another version), timed as "
                                 "it is under the plan it records; repeat for several")
        add_rows(parser, "benchmark")
        add_backend(parser, repeat=True)
        parser.add_argument("--threads", type=int, help="intra-op threads of every backend (default: all cores)")
        parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                            help=f"warm-up runs per config (default {DEFAULT_WARMUP})")
        parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"timed rounds (default {DEFAULT_ROUNDS})")
        parser.add_argument("--workdir", metavar="DIR",
                            help="keep the compiled graphs here (default: beside MODEL, removed afterwards)")
        parser.add_argument("--sidecar", metavar="FILE.json",
                            help="the model's dims (vskip.json fields) when MODEL has no vskip.json beside it")
        add_causal_blocks(parser, "the vanilla graph and every plan's")
        parser.add_argument("--routable", action="store_true",
                            help="also time one routable graph (vskip-compile --routable) fed the empty plan and "
                                 "every --plan, against the vanilla and static graphs")
        add_engines(parser, "every graph in --workdir (from an earlier run, compiled again to the same bytes)")
        add_json(parser, "the full result")
        parser.add_argument("--markdown", metavar="PATH", help="write a section for docs/benchmarks.md ('-': stdout)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
        parser.add_argument("--e2e", action="store_true", help="time whole generations, stage by stage")
        parser.add_argument("--inputs", metavar="MODEL_INPUTS.npz", help="with --e2e: the model's inputs")
        parser.add_argument("--prompt", action="append", metavar="TEXT",
                            help="with --e2e, instead of --inputs: a prompt the export's processor reads before "
                                 "every generation (timed); repeat for a batch")
        parser.add_argument("--image", action="append", default=[], metavar="IMG",
                            help="with --prompt: an image for the prompts' image markers, in order")
        parser.add_argument("--max-new-tokens", type=int, default=32, metavar="N",
                            help="with --e2e: tokens each generation makes (default 32)")
        add_force(parser, "the --json / --markdown files and, in --workdir, compiled graphs")

    def run(self, args):
        from .bench import DEFAULT_BACKENDS, MAX_ROWS, format_table, run_bench, to_markdown
        from .core.visual_rows import workload as mask

        files = {"json": args.json, "markdown": args.markdown}
        if args.json == "-" and args.markdown == "-":
            raise VskipError("--json - and --markdown - would both print to stdout; write one of them to a file")
        if args.e2e:
            return self._e2e(args)
        if args.inputs is not None or args.prompt or args.image:
            raise VskipError("--inputs, --prompt and --image go with --e2e (a prefill benchmark makes random inputs "
                             "of --rows rows)")
        visual = mask(args.rows, args.visual_rows, MAX_ROWS)
        result = run_bench(args.model, args.plan, visual=visual, backends=args.backend or DEFAULT_BACKENDS,
                           threads=args.threads, warmup=args.warmup, rounds=args.rounds, workdir=args.workdir,
                           sidecar=args.sidecar, seed=args.seed, progress=_progress,
                           json_path=None if files["json"] == "-" else files["json"],
                           markdown_path=None if files["markdown"] == "-" else files["markdown"],
                           compiled_graphs=args.compiled, force=args.force, causal_blocks=args.causal_blocks,
                           routable=args.routable, engines=args.engines)
        if "-" in files.values():
            sys.stdout.write(json.dumps(result, indent=2) + "\n" if args.json == "-" else to_markdown(result))
        else:
            print(format_table(result))
        for path in files.values():
            if path not in (None, "-"):
                _progress(f"wrote {path}")
        return 0

    def _e2e(self, args):
        from .bench.e2e import format_e2e, run_e2e

        given = [flag for flag, value in (("--rows", args.rows), ("--visual-rows", args.visual_rows),
                                          ("--compiled", args.compiled), ("--sidecar", args.sidecar),
                                          ("--causal-blocks", args.causal_blocks), ("--markdown", args.markdown),
                                          ("--routable", args.routable), ("--engines", args.engines))
                 if value]
        if given:
            raise VskipError(f"{', '.join(given)} do(es) not apply with --e2e (the prompt comes from --inputs or "
                             "--prompt)")
        report = Report(args.json, [args.model, args.inputs, *args.image, *args.plan], args.force)
        result = run_e2e(args.model, args.plan, args.inputs, prompts=args.prompt or (), images=args.image, backends=args.backend or ("ort-cpu", "torch"),
                         max_new_tokens=args.max_new_tokens, warmup=args.warmup, rounds=args.rounds,
                         threads=args.threads, workdir=args.workdir, force=args.force,
                         progress=None if report.to_stdout else _progress)
        report.table(format_e2e(result))
        report.emit(result)
        return 0


class Run(Command):
    """Run an ONNX graph on a backend: FEEDS.npz holds its inputs by name, OUT.npz gets its outputs.

    For a compiled graph, give the prompt's visual rows with --visual-rows (or its row
    inputs in the feeds). A routable graph (vskip-compile --routable) also takes the plan
    to apply, --plan PLAN.json (or its per-layer rows in the feeds).

    Example:
      vskip run out/q2/c.onnx --inputs out/feeds.npz --visual-rows 5:13,23:31 -o out/outputs.npz
      vskip run out/q2/routable.onnx --plan PLAN.json --inputs out/feeds.npz --visual-rows 5:13,23:31 -o out/o.npz
    """

    name = "run"

    def add_arguments(self, parser):
        parser.add_argument("model", metavar="MODEL.onnx", help="any ONNX graph")
        parser.add_argument("--inputs", required=True, metavar="FEEDS.npz", help="the graph's inputs by name")
        parser.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="where the outputs go, by name")
        parser.add_argument("--visual-rows", metavar="RANGES",
                            help="visual rows of a compiled graph's prompt, as half-open ranges: 5:21,30:46")
        parser.add_argument("--plan", metavar="PLAN.json",
                            help="the plan a routable graph applies (vskip-compile --routable); needs --visual-rows")
        add_backend(parser)
        parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the backend's)")
        add_force(parser, "OUT.npz")

    def run(self, args):
        from .backends import get_backend
        from .core.files import Outputs, check_threads, read_npz
        from .core.plan import load_plan
        from .core.routing import is_routing_input
        from .core.visual_rows import ROW_INPUTS, parse_ranges, row_feeds, sequence_length

        threads = check_threads(args.threads)
        backend = get_backend(args.backend)
        outputs = Outputs([args.model, args.inputs] + ([args.plan] if args.plan else []), force=args.force)
        with outputs:
            outputs.claim(args.output, "outputs file")  # first: a refused output costs nothing
            feeds = read_npz(args.inputs)
            plan = load_plan(args.plan) if args.plan is not None else None
            session = backend.load(Path(args.model), threads=threads, outputs=outputs, progress=_progress)
            wanted = [spec.name for spec in session.inputs if spec.name in ROW_INPUTS]
            routed = [spec.name for spec in session.inputs if is_routing_input(spec.name)]
            if routed:
                _route(args, feeds, plan, routed)
            elif plan is not None:
                raise VskipError(f"{args.model}: not a routable graph; --plan applies only to graphs compiled with "
                                 "vskip-compile --routable (a compiled graph applies its own plan)")
            elif args.visual_rows is not None:
                if not wanted:
                    raise VskipError(f"{args.model}: not a compiled graph; --visual-rows applies only to compiled graphs")
                given = [n for n in wanted if n in feeds]
                if given:
                    raise VskipError(f"the feeds already hold {', '.join(given)}; give the rows once "
                                     "(--visual-rows or the feeds)")
                feeds.update(row_feeds(parse_ranges(args.visual_rows, sequence_length(feeds)), wanted))
            elif wanted and not all(name in feeds for name in wanted):
                raise VskipError(f"{args.model} is compiled: pass --visual-rows (or {', '.join(wanted)} in the feeds)")
            result = session.run(feeds)
            outputs.write_npz(args.output, result)
            outputs.commit()
        _progress(f"wrote {len(result)} outputs to {args.output} ({session.description})")
        return 0


def _route(args, feeds: dict, plan, routed: list[str]) -> None:
    """`vskip run` on a routable graph: the plan's per-layer rows into ``feeds``."""
    from .core.graph_io import load_graph, recorded_routable
    from .core.routing import routing_feeds, routing_layers
    from .core.visual_rows import parse_ranges, sequence_length

    if plan is None:
        if args.visual_rows is not None or not all(name in feeds for name in routed):
            raise VskipError(f"{args.model} is routable: pass --plan PLAN.json with --visual-rows (or its "
                             f"per-layer rows {routed[0]}, ... in the feeds)")
        return
    if args.visual_rows is None:
        raise VskipError("--plan needs --visual-rows: the plan skips work on the prompt's visual rows")
    given = [name for name in routed if name in feeds]
    if given:
        raise VskipError(f"the feeds already hold {given[0]}{' ...' if len(given) > 1 else ''}; give the rows "
                         "once (--plan or the feeds)")
    plan_obj, info = plan
    family = None
    if Path(args.model).suffix == ".onnx":  # an engine (--backend trt) carries no record; its inputs give the layers
        record = recorded_routable(load_graph(args.model, weights_needed=False), args.model)
        family = record["family"] if record else None
    info.check_model(family or info.family or "decoder", routing_layers(routed))
    feeds.update(routing_feeds(plan_obj, parse_ranges(args.visual_rows, sequence_length(feeds)), routed))


class Generate(Command):
    """Generate text from a prompt and images, on an export's graphs (vision, prefill, decode).

    The inputs are either a prompt with images, through the processor the export holds
    (--prompt, --image), or the full model's inputs as another tool made them (--inputs
    MODEL_INPUTS.npz, under transformers' names: input_ids, attention_mask, pixel_values,
    image_grid_thw, ...). --plan compiles the export's prefill with a plan for this run;
    --compiled takes one compiled earlier. Greedy unless --temperature > 0. Tokens stream
    to the terminal for a single prompt; --profile prints the time of each stage.

    The visual rows are exactly the image-token rows, or with --span everything from the
    first to the last image token (OpSkip's convention for Qwen2.5-VL). A batch shares one
    set of visual rows under a plan: its prompts must have their images at the same rows.

    With a routable prefill (vskip-compile --routable) as --compiled, the plan is applied
    at run time: --plan PLAN.json, or per task: --plan-for count=count.json --plan-for
    color=color.json --task count picks the plan of this request's task (V-Skip's per-task
    routing); neither: vanilla.

    Example:
      vskip generate out/q2 --inputs out/inputs.npz --plan vskip_compile/plans/example_tiny.json --json out/gen.json
    """

    name = "generate"

    def add_arguments(self, parser):
        parser.add_argument("export", metavar="EXPORT_DIR", help="a directory `vskip export` wrote")
        parser.add_argument("--inputs", metavar="MODEL_INPUTS.npz",
                            help="the full model's inputs by transformers' argument names")
        parser.add_argument("--prompt", action="append", metavar="TEXT",
                            help="a prompt (repeat for a batch); needs the export's processor")
        parser.add_argument("--image", action="append", default=[], metavar="IMG",
                            help="an image file, in the order of the prompts' image markers; repeat for several")
        parser.add_argument("--plan", metavar="PLAN.json",
                            help="compile the prefill with this plan for the run; with a routable --compiled, the "
                                 "plan it applies")
        parser.add_argument("--compiled", metavar="GRAPH.onnx",
                            help="a prefill graph compiled from this export (routable: give --plan or --plan-for)")
        parser.add_argument("--plan-for", action="append", default=[], metavar="TASK=PLAN.json",
                            help="with a routable --compiled: the plan for requests labelled TASK; repeat per task")
        parser.add_argument("--task", metavar="TASK", help="this request's task label, choosing its --plan-for plan")
        parser.add_argument("--span", action="store_true",
                            help="visual rows span from the first to the last image token (default: exactly the "
                                 "image tokens)")
        parser.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="at most N new tokens "
                            "per prompt (default 32)")
        parser.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
        parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1)")
        parser.add_argument("--seed", type=int, default=0, help="the sampling seed (default 0)")
        parser.add_argument("--profile", action="store_true", help="print the time of each stage")
        add_backend(parser)
        add_engines(parser, "the export's graphs and --compiled (vision, prefill, decode)")
        parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the backend's)")
        add_json(parser, "the tokens, text and timings")
        add_force(parser, "the --json file")

    def run(self, args):
        from .runtime.cli import generate_command

        return generate_command(args, _progress)


class Eval(Command):
    """Accuracy per question type on the testbed's task; with a plan, its retention and FLOPs cut.

    SOURCE is a checkpoint (testbed:vqa, or a directory with its processor files), run in
    PyTorch with a plan through the skip reference; or an export directory, whose graphs run
    through vskip generate's runtime on --backend (--plan compiles the prefill for the run,
    --compiled takes one compiled earlier). Each answer is the greedy first new token.
    Retention = accuracy with the plan / vanilla accuracy; the FLOPs cut is the plan's at
    the evaluated samples' token mix. The samples are the task's --split (default test).
    --plan-for TYPE=PLAN.json, one per question type, routes each sample to its type's plan
    (per-task routing; on an export through a routable --compiled prefill).

    Example:
      vskip eval testbed:vqa --plan PLAN.json --samples 50 --json out/eval.json
    """

    name = "eval"

    def add_arguments(self, parser):
        from .evaluate import DEFAULT_BATCH, DEFAULT_SAMPLES

        parser.add_argument("source", metavar="SOURCE", help="testbed:vqa, a checkpoint directory or an export directory")
        parser.add_argument("--plan", metavar="PLAN.json", help="a vskip plan or OpSkip policy to score")
        parser.add_argument("--compiled", metavar="GRAPH.onnx",
                            help="with an export: a prefill compiled from it (routable: fed --plan / --plan-for)")
        parser.add_argument("--plan-for", action="append", default=[], metavar="TYPE=PLAN.json",
                            help="a plan per question type (per-task routing); repeat for every type")
        parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, metavar="N",
                            help=f"samples per question type (default {DEFAULT_SAMPLES})")
        parser.add_argument("--type", action="append", dest="types", metavar="TYPE",
                            help="score only this question type; repeat for several (default: every type)")
        parser.add_argument("--split", default="test", choices=("train", "validation", "test"),
                            help="which split's samples (default test)")
        parser.add_argument("--seed", type=int, default=0, help="the samples' seed (default 0)")
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, metavar="B",
                            help=f"prompts per batch (default {DEFAULT_BATCH})")
        parser.add_argument("--backend", default=None,
                            help="torch for a checkpoint (default); an ONNX backend for an export (default ort-cpu)")
        parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the backend's)")
        add_json(parser, "the scores and every answer")
        add_force(parser, "the --json file")

    def run(self, args):
        from .core.files import check_threads
        from .evaluate import evaluate

        from .runtime.cli import task_plans

        routes = task_plans(args.plan_for)
        report = Report(args.json, [args.plan, args.compiled, *routes.values(), *_source_files(args.source)],
                        args.force)
        result = evaluate(args.source, plan=args.plan, compiled=args.compiled, plan_for=routes, backend=args.backend,
                          samples_per_type=args.samples, split=args.split, seed=args.seed, question_types=args.types,
                          batch_size=args.batch_size, threads=check_threads(args.threads),
                          progress=None if report.to_stdout else _progress)
        report.table(result.table())
        report.emit(result.to_dict())
        return 0


def _source_files(source: str) -> list[Path]:
    """The files of a checkpoint or export directory SOURCE reads: no output may replace
    one of them, --force or not (a tiny preset has none)."""
    from .models.loading import checkpoint_directory

    directory = checkpoint_directory(source)
    if directory is None or not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if p.is_file()]


class Calibrate(Command):
    """Choose a plan for a task from a few samples: how much skipping each layer's visual
    operators changes the answer (V-Skip's Visual Information Gain, a KL divergence).

    --method vskip scores skipping visual attention at each layer alone and skips it in
    the --layers N layers of lowest gain, or in as many as keep --retention R of vanilla
    accuracy on the calibration samples. --method operators scores the three options
    (skip visual attention, skip visual FFN, freeze) at each layer and adds them in order
    of gain per FLOP saved, each rechecked on the calibration samples against --retention,
    until the plan cuts --flops-cut of the prefill's FLOPs. MODEL is a checkpoint; the
    samples are --samples of the testbed task's validation split, of question type --task
    (all: every type, one shared plan), or the model's own samples: --data FILE.npz, each
    the full model's inputs (as vskip generate --inputs takes them) plus answer_ids, the
    token each prompt's answer starts with. Prints the per-layer gain table and the time
    taken; --heatmap writes it as a PNG (layers x options).

    Example:
      vskip calibrate testbed:vqa --task count --samples 20 --method vskip --retention 0.99 -o out/count.json
      vskip calibrate CHECKPOINT --data calib.npz --method operators --flops-cut 0.3 --retention 0.99 -o plan.json
    """

    name = "calibrate"

    def add_arguments(self, parser):
        from .calibrate import DEFAULT_SAMPLES, METHODS
        from .evaluate import DEFAULT_BATCH

        parser.add_argument("model", metavar="MODEL", help="a checkpoint directory, or testbed:vqa")
        parser.add_argument("--task", help="a question type of the testbed task, or all")
        parser.add_argument("--data", action="append", default=[], metavar="FILE.npz",
                            help="instead of --task: the model's own samples, one batch per file (its inputs under "
                                 "transformers' names and answer_ids); repeat for several")
        parser.add_argument("--samples", type=int, metavar="N",
                            help=f"with --task: calibration samples (default {DEFAULT_SAMPLES}, as V-Skip)")
        parser.add_argument("--method", default="vskip", choices=METHODS, help="vskip (default) or operators")
        parser.add_argument("--layers", type=int, metavar="N", help="vskip: skip visual attention in N layers")
        parser.add_argument("--retention", type=float, metavar="R",
                            help="the share of vanilla accuracy the plan must keep on the samples, e.g. 0.99")
        parser.add_argument("--flops-cut", type=float, metavar="C", help="operators: the FLOPs cut to reach, e.g. 0.3")
        parser.add_argument("--seed", type=int, help="with --task: the samples' seed (default 0)")
        parser.add_argument("--batch-size", type=int, metavar="B",
                            help=f"with --task: prompts per batch (default {DEFAULT_BATCH})")
        parser.add_argument("-o", "--output", required=True, metavar="PLAN.json", help="where the plan goes")
        parser.add_argument("--heatmap", metavar="PNG", help="write the gains as a heatmap (needs matplotlib)")
        add_json(parser, "the gains, the choice and its steps")
        add_force(parser, "the plan, --heatmap and --json files")

    def run(self, args):
        from .calibrate import DEFAULT_SAMPLES, calibrate_checkpoint, calibrate_data, heatmap_png
        from .core.plan import to_json

        if (args.task is None) == (not args.data):
            raise VskipError("give the samples either as --task TYPE (the testbed task) or as --data FILE.npz (the "
                             "model's own)")
        if args.data:
            given = [flag for flag, value in (("--samples", args.samples), ("--seed", args.seed),
                                              ("--batch-size", args.batch_size)) if value is not None]
            if given:
                raise VskipError(f"{', '.join(given)} go(es) with --task; with --data the files are the samples")
        if args.method == "operators" and args.layers is not None:
            raise VskipError("--layers goes with --method vskip; --method operators takes --flops-cut")
        if args.method == "vskip" and args.flops_cut is not None:
            raise VskipError("--flops-cut goes with --method operators; --method vskip takes --layers or --retention")
        if args.heatmap:
            from .flops.plot import require_matplotlib

            require_matplotlib()
        report = Report(args.json, [*_source_files(args.model), *args.data], args.force)
        report.outputs.claim(args.output, "plan")
        if args.heatmap:
            report.outputs.claim(args.heatmap, "heatmap")
        choice = {"layers": args.layers, "retention": args.retention} if args.method == "vskip" else {
            "target_cut": args.flops_cut, "retention": args.retention}
        say = None if report.to_stdout else _progress
        if args.data:
            result, what = calibrate_data(args.model, args.data, args.method, progress=say, **choice)
            on = f"--data ({result.samples} samples in {len(args.data)} files)"
        else:
            samples = DEFAULT_SAMPLES if args.samples is None else args.samples
            result, what = calibrate_checkpoint(args.model, args.task, samples, args.method,
                                                seed=0 if args.seed is None else args.seed,
                                                batch_size=args.batch_size, progress=say, **choice)
            on = f"--task {args.task} on {samples} validation samples"
        report.table(result.table())
        description = (f"vskip calibrate --method {args.method} {on}: accuracy {result.accuracy:.3f} of vanilla "
                       f"{result.vanilla_accuracy:.3f} on them, FLOPs cut {result.flops_cut:.1%}")
        files = {args.output: to_json(result.plan, family=what["family"], description=description).encode()}
        if args.heatmap:
            files[args.heatmap] = heatmap_png(result, f"{what['model']}, {'--data' if args.data else 'task ' + args.task}"
                                                      f": {args.method}")
        report.emit({**what, **result.to_dict()}, files)
        return 0


class Lint(Command):
    """Check a graph for TensorRT statically (no TensorRT or GPU needed): will the parser take it?

    Ops, attributes and types against the target's operator table (onnx-tensorrt), ops of
    other domains, data-dependent shapes (NonZero: boolean-mask indexing), Attention with
    past/present I/O, Reduce ops with run-time axes, INT64 indices beyond INT32 at the
    max shapes of the profile `vskip build` would use, external-data paths. Prints one
    line per finding (node, module path, problem, fix) and a summary. Exits 0 when clean,
    1 with findings, 2 on bad input.

    Example:
      vskip lint out/q2/c.onnx --target trt11 --max-seq 8192 --json out/lint.json
    """

    name = "lint"

    def add_arguments(self, parser):
        parser.add_argument("graph", metavar="GRAPH.onnx", help="any ONNX graph (exported, compiled or foreign)")
        add_target(parser, "the TensorRT to check for", required=True)
        add_profile(parser, opt=False)
        add_json(parser, "the findings")
        add_force(parser, "the --json file")

    def run(self, args):
        from .trt.lint import lint_graph, report, summary
        from .trt.support import target

        target(args.target)
        limits, dims = profile_limits(args)
        out = Report(args.json, [args.graph], args.force)
        notes: list[str] = []
        findings = lint_graph(args.graph, args.target, limits, notes, dims)
        out.table("\n".join([f.line() for f in findings] + [f"note: {n}" for n in notes]
                            + [summary(args.graph, findings, args.target)]))
        out.emit(report(args.graph, findings, args.target, limits, notes))
        return 1 if findings else 0


class Demo(Command):
    """Run the demo: export a tiny Qwen2-VL, check it on ONNX Runtime against PyTorch, compile, validate, time it.

    Example:
      vskip demo --workdir out/demo
    """

    name = "demo"

    def add_arguments(self, parser):
        parser.add_argument("--workdir", metavar="DIR", help="keep the exported files here (default: a temp dir)")

    def run(self, args):
        from .demo import run_demo

        return 0 if run_demo(args.workdir)["ok"] else 1


class Build(Command):
    """Build a TensorRT engine from a vskip graph (exported or compiled): ENGINE and ENGINE.json.

    The engine is strongly typed (its precision is the graph's), parsed from the file so
    external weights load, with one optimization profile for every dynamic input: batch
    and sequence axes, Qwen3-VL's DeepStack visual rows, a compiled graph's row inputs
    (1 to --max-seq rows); a decode graph's cache (one new token on a context of up to
    --max-seq rows); a vision graph's images (--max-images) or image tokens
    (--max-visual-rows). --print-profiles shows that profile and exits, without TensorRT.
    Building needs TensorRT and an NVIDIA GPU (pip install 'vskip[trt]'); run the engine
    with --backend trt (run, validate, bench).

    Example:
      vskip build out/q2/prefill.onnx --print-profiles --max-seq 2048
      vskip build out/q2/compiled.onnx -o out/q2/compiled.engine --max-seq 2048 --timing-cache out/trt.cache
      vskip build out/q2/decode.onnx --max-seq 2048 --timing-cache out/trt.cache
    """

    name = "build"

    def add_arguments(self, parser):
        parser.add_argument("graph", metavar="GRAPH.onnx", help="a graph vskip exported (prefill, decode, vision) "
                                                                "or compiled")
        parser.add_argument("-o", "--output", metavar="ENGINE", help="the engine (default: GRAPH.engine beside "
                                                                     "GRAPH); its sidecar is ENGINE.json")
        add_profile(parser, opt=True)
        parser.add_argument("--timing-cache", metavar="PATH",
                            help="TensorRT's tactic timing cache: read if it exists, then replaced by this build's "
                                 "(faster rebuilds)")
        parser.add_argument("--print-profiles", action="store_true",
                            help="print the optimization profile and exit (no TensorRT needed; nothing written)")
        add_force(parser, "ENGINE and ENGINE.json")

    def run(self, args):
        from .trt.build import build_engine, plan_build

        limits, dims = profile_limits(args)
        if args.print_profiles:
            unused = [flag for flag, value in (("-o", args.output), ("--timing-cache", args.timing_cache),
                                               ("--force", args.force)) if value]
            if unused:
                raise VskipError(f"--print-profiles writes nothing; drop {', '.join(unused)}")
            print(plan_build(args.graph, limits, dims).table())
            return 0
        report = build_engine(args.graph, args.output, limits, args.timing_cache, progress=_progress,
                              force=args.force, dim_names=dims)
        print(f"{report.engine}: TensorRT engine, {report.engine_bytes / 2**20:.1f} MiB, built in "
              f"{report.seconds.get('build', 0):.1f} s; sidecar {report.sidecar}")
        return 0


COMMANDS = [Demo(), Export(), Cast(), Inspect(), Compile(), Validate(), Flops(), Bench(), Run(), Generate(), Eval(),
            Calibrate(), Build(), Lint()]


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vskip", description="vskip: skip work on visual tokens in multimodal LLM decoders.")
    parser.add_argument("--version", action="version", version=f"vskip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        doc = inspect.cleandoc(command.__doc__)  # dedented: every help line starts at the margin
        sp = sub.add_parser(command.name, help=doc.splitlines()[0], description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(sp)
        sp.set_defaults(handler=command)
    return parser




def main(argv: list[str] | None = None, prog: str = "vskip") -> int:
    """Run one subcommand. Every failure is one line on stderr, control characters
    escaped: exit 2 for bad input (and for an internal error, which names --debug),
    130 / 143 for SIGINT / SIGTERM. ``--debug`` keeps tracebacks."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    parser.prog = prog
    args = parser.parse_args(argv)
    name = prog if prog != "vskip" else f"vskip {args.command}"
    with signals_raise():
        try:
            return args.handler.run(args)
        except VskipError as exc:
            if debug:
                raise
            print(f"{name}: error: {escape(exc)}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print(f"{name}: interrupted; nothing was written", file=sys.stderr)
            return 130
        except Terminated:
            print(f"{name}: terminated; nothing was written", file=sys.stderr)
            return 143
        except Exception as exc:  # noqa: BLE001 - one line for the user; --debug shows the rest
            if debug:
                raise
            if is_disk_full(exc):
                print(f"{name}: error: no space left on the device ({one_line(exc)}); nothing was written",
                      file=sys.stderr)
                return 2
            print(f"{name}: error: {type(exc).__name__}: {one_line(exc)} (an internal error: rerun with "
                  "--debug for the traceback and report it)", file=sys.stderr)
            return 2


def compile_main(argv: list[str] | None = None) -> int:
    """``vskip-compile ...`` is ``vskip compile ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:
        print(f"vskip-compile {__version__}")
        return 0
    return main(["compile", *argv], prog="vskip-compile")


if __name__ == "__main__":
    sys.exit(main())
