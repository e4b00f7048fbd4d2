"""The ``vskip`` command line: one subcommand per job.

User errors (VskipError) print one line and exit 2; nothing else is caught, so bugs keep
their tracebacks. Heavy imports (torch, transformers) happen inside the subcommands that
need them, so ``vskip --help`` and graph-only commands start fast.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

from . import __version__
from .errors import VskipError
from .files import Terminated, one_line, escape, is_disk_full, signals_raise
from .plan import Action


class Command:
    """A subcommand: its docstring is its help text."""

    name = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


class Export(Command):
    """Export an MLLM's decoder to ONNX: prefill.onnx, decode.onnx and the vskip.json sidecar.

    SOURCE is a transformers checkpoint directory (config.json + safetensors) or a tiny
    preset with seeded random weights, tiny:<model_type>.
    """

    name = "export"

    def add_arguments(self, parser):
        parser.add_argument("source", metavar="SOURCE", help="checkpoint directory or tiny:<model_type>")
        parser.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
        parser.add_argument("--opset", type=int, default=20, choices=(20, 23),
                            help="20: decomposed attention (default); 23: Attention + RMSNormalization ops")
        parser.add_argument("--all-logits", action="store_true",
                            help="output logits for every position (default: last position only)")
        parser.add_argument("--prefill-only", action="store_true", help="skip decode.onnx (compiling needs only prefill)")
        parser.add_argument("--seed", type=int, default=0, help="seed of a tiny preset's random weights")
        parser.add_argument("--force", action="store_true", help="overwrite an existing export in DIR")

    def run(self, args):
        from .models.export import export_model

        export_model(args.source, args.output, opset=args.opset, all_logits=args.all_logits,
                     force=args.force, seed=args.seed, progress=_progress, decode=not args.prefill_only)
        return 0


class Run(Command):
    """Run an ONNX graph on ONNX Runtime CPU.

    FEEDS.npz holds the graph's inputs by name; OUT.npz receives its outputs by name.
    """

    name = "run"

    def add_arguments(self, parser):
        parser.add_argument("model", metavar="MODEL.onnx")
        parser.add_argument("--inputs", required=True, metavar="FEEDS.npz")
        parser.add_argument("-o", "--output", required=True, metavar="OUT.npz")
        parser.add_argument("--visual-rows", metavar="RANGES",
                            help="visual rows of a compiled graph's prompt, as half-open ranges: 5:21,30:46")
        parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
        parser.add_argument("--force", action="store_true", help="overwrite OUT.npz if it exists")

    def run(self, args):
        from .files import Outputs, check_threads, read_npz
        from .runner import make_session, run_session
        from .visual_rows import ROW_INPUTS, parse_ranges, row_feeds, sequence_length

        threads = check_threads(args.threads)
        outputs = Outputs([args.model, args.inputs], force=args.force)
        with outputs:
            outputs.claim(args.output, "outputs file")  # first: a refused output costs nothing
            feeds = read_npz(args.inputs)
            session = make_session(args.model, threads, outputs=outputs)
            wanted = [i.name for i in session.get_inputs() if i.name in ROW_INPUTS]
            if args.visual_rows is not None:
                if not wanted:
                    raise VskipError(f"{args.model}: not a compiled graph; --visual-rows applies only to compiled graphs")
                given = [n for n in wanted if n in feeds]
                if given:
                    raise VskipError(f"the feeds already hold {', '.join(given)}; give the rows once "
                                     "(--visual-rows or the feeds)")
                feeds.update(row_feeds(parse_ranges(args.visual_rows, sequence_length(feeds)), wanted))
            elif wanted and not all(name in feeds for name in wanted):
                raise VskipError(f"{args.model} is compiled: pass --visual-rows (or {', '.join(wanted)} in the feeds)")
            result = run_session(session, feeds)
            outputs.write_npz(args.output, result)
            outputs.commit()
        _progress(f"wrote {len(result)} outputs to {args.output}")
        return 0


class Compile(Command):
    """Compile a decoder graph with a skip plan: vskip-compile MODEL.onnx --plan PLAN.json [-o OUT.onnx].

    PLAN.json is a vskip plan or an OpSkip policy file. The compiled graph takes the same
    inputs as MODEL.onnx plus the live-row inputs (vskip_text_rows, and vskip_suffix_rows
    for freeze_scope prefix_through_visual); see `vskip run --visual-rows`.
    """

    name = "compile"

    def add_arguments(self, parser):
        parser.add_argument("model", metavar="MODEL.onnx")
        parser.add_argument("--plan", required=True, metavar="PLAN.json")
        parser.add_argument("-o", "--output", metavar="OUT.onnx", help="default: MODEL.vskip.onnx beside MODEL")
        parser.add_argument("--force", action="store_true", help="overwrite OUT.onnx if it exists")
        parser.add_argument("--report", action="store_true",
                            help="count FLOPs before and after: print the table and the ideal speedup, write "
                                 "OUT.flops.json and a per-layer plot OUT.flops.png")
        parser.add_argument("--visual-rows", type=int, default=None, metavar="N",
                            help="visual rows of the --report workload (default 1024)")
        parser.add_argument("--text-rows", type=int, default=None, metavar="M",
                            help="text rows of the --report workload, after the visual block (default 64)")

    def run(self, args):
        from .compile import compile_model

        if not args.report and (args.visual_rows, args.text_rows) != (None, None):
            raise VskipError("--visual-rows and --text-rows describe the --report workload; add --report")
        args.visual_rows = 1024 if args.visual_rows is None else args.visual_rows
        args.text_rows = 64 if args.text_rows is None else args.text_rows
        if args.report:
            check_workload(args.visual_rows, args.text_rows)
        report = compile_model(args.model, args.plan, args.output, force=args.force, progress=_progress,
                               extra_outputs=report_files if args.report else None)
        _progress(report.table)
        for index, action in enumerate(report.actions):
            if action is not Action.FULL:
                note = report.notes.get(index)
                _progress(f"layer {index}: {action.value} ({report.nodes_added_per_layer.get(index, 0)} nodes added"
                          + (f"; {note})" if note else ")"))
        _progress(report.summary())
        if args.report:
            sys.stderr.flush()
            _flops_report(args.model, report.output, args.visual_rows, args.text_rows, report.plan, args.force)
        return 0


# Prompt sizes a FLOPs workload may describe: counts, not allocations, but a bound keeps
# the numbers meaningful and the arithmetic in range.
MAX_WORKLOAD_ROWS = 2**20


def check_workload(visual_rows: int, text_rows: int) -> None:
    if not 0 <= visual_rows <= MAX_WORKLOAD_ROWS:
        raise VskipError(f"--visual-rows must be a row count in 0-{MAX_WORKLOAD_ROWS}, got {visual_rows}")
    if not 1 <= text_rows <= MAX_WORKLOAD_ROWS:
        raise VskipError(f"--text-rows must be a row count in 1-{MAX_WORKLOAD_ROWS} (at least one text row), "
                         f"got {text_rows}")


def report_files(compiled_path) -> list[Path]:
    """The --report files of a compiled graph: OUT.flops.json and OUT.flops.png, beside it."""
    stem = Path(compiled_path).with_suffix("")
    return [Path(f"{stem}.flops.json"), Path(f"{stem}.flops.png")]


def _flops_report(vanilla_path, compiled_path, visual_rows: int, text_rows: int, plan, force: bool) -> None:
    from .files import Outputs
    from .flops import count_flops, format_comparison, plan_flops, plot_png

    rows = visual_rows + text_rows
    vanilla = count_flops(vanilla_path, sequence_length=rows, visual_rows=visual_rows)
    compiled = count_flops(compiled_path, sequence_length=rows, visual_rows=visual_rows)
    required = plan_flops(vanilla, plan)  # the plan just compiled: no need to read it back from the file
    print(format_comparison(vanilla, compiled, required))
    data = {"workload": {"sequence_length": rows, "visual_rows": visual_rows, "text_rows": text_rows},
            **_speedups(vanilla, compiled, required),
            "vanilla": json.loads(vanilla.to_json()), "compiled": json.loads(compiled.to_json()),
            "required": json.loads(required.to_json()) if required else None}
    json_path, png_path = report_files(compiled_path)
    with Outputs([vanilla_path, compiled_path], force=force) as outputs:
        outputs.write_text(json_path, json.dumps(data, indent=2) + "\n")
        outputs.write_bytes(png_path, plot_png(vanilla, compiled))
        outputs.commit()
    _progress(f"wrote {json_path} and {png_path}")


def _required_flops(vanilla, compiled_path):
    """The FLOPs the compiled graph's recorded plan requires, or None for an unmarked graph."""
    from .flops import plan_flops, recorded_plan

    plan = recorded_plan(compiled_path)
    return None if plan is None else plan_flops(vanilla, plan)


def _speedups(vanilla, compiled, required) -> dict:
    """ideal_speedup: vanilla / what the plan requires (the compiled graph's own count for a
    graph without a recorded plan); executed_speedup: vanilla / what the graph computes."""
    from .flops import ideal_speedup

    return {"ideal_speedup": ideal_speedup(vanilla, required or compiled),
            "executed_speedup": ideal_speedup(vanilla, compiled)}


class Flops(Command):
    """Count a decoder graph's FLOPs per layer, operator class and row class (weights not needed).

    With --compare COMPILED, also count the compiled graph, and print the ideal speedup
    FLOPs(MODEL) / FLOPs the compiled graph's plan requires, beside what the compiled graph
    computes. Matrix products only (MatMul, Gemm, Attention); elementwise work is not counted.
    """

    name = "flops"

    def add_arguments(self, parser):
        parser.add_argument("model", metavar="MODEL.onnx")
        parser.add_argument("--compare", metavar="COMPILED.onnx")
        parser.add_argument("--visual-rows", type=int, default=1024, metavar="N")
        parser.add_argument("--text-rows", type=int, default=64, metavar="M", help="text rows after the visual block")
        parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
        parser.add_argument("--plot", metavar="OUT.png", help="with --compare: per-layer FLOPs before and after")
        parser.add_argument("--force", action="store_true", help="replace OUT.png if it exists")

    def run(self, args):
        from .files import Outputs
        from .flops import count_flops, format_comparison, plot_png

        if args.plot and not args.compare:
            raise VskipError("--plot draws vanilla against compiled: add --compare COMPILED.onnx")
        check_workload(args.visual_rows, args.text_rows)
        outputs = Outputs([args.model] + ([args.compare] if args.compare else []), force=args.force)
        if args.plot:
            outputs.claim(args.plot, "plot")  # before the counting: a bad name costs nothing
        rows = args.visual_rows + args.text_rows
        base = count_flops(args.model, sequence_length=rows, visual_rows=args.visual_rows)
        if not args.compare:
            print(base.to_json() if args.json else base.format_table())
            return 0
        other = count_flops(args.compare, sequence_length=rows, visual_rows=args.visual_rows)
        required = _required_flops(base, args.compare)
        if args.json:
            print(json.dumps({**_speedups(base, other, required), "vanilla": json.loads(base.to_json()),
                              "compiled": json.loads(other.to_json()),
                              "required": json.loads(required.to_json()) if required else None}, indent=2))
        else:
            print(format_comparison(base, other, required))
        if args.plot:
            with outputs:
                outputs.write_bytes(args.plot, plot_png(base, other))
                outputs.commit()
            _progress(f"wrote {args.plot}")
        return 0


class Validate(Command):
    """Compare a graph (compiled or vanilla) with the PyTorch reference under a skip plan.

    The model is the one the graph was exported from (the vskip.json sidecar beside it)
    unless --model names one; the plan is --plan, else the one a compiled graph records,
    else the empty plan. Exits 0 when every output is within --atol, 1 otherwise.
    """

    name = "validate"

    def add_arguments(self, parser):
        parser.add_argument("graph", metavar="GRAPH.onnx")
        parser.add_argument("--plan", metavar="PLAN.json")
        parser.add_argument("--model", metavar="SOURCE", help="checkpoint directory or tiny:<model_type>")
        parser.add_argument("--inputs", metavar="FEEDS.npz", help="feeds to use instead of a generated prompt")
        parser.add_argument("--visual-rows", metavar="RANGES", help="visual rows of --inputs, e.g. 5:21,30:46")
        parser.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance (default 1e-4, fp32)")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def run(self, args):
        from .validate import validate

        report = validate(args.graph, args.plan, args.model, args.inputs, args.visual_rows, args.atol)
        print(report.to_json() if args.json else report.table())
        return 0 if report.passed else 1


# --- paste into vskip_compile/cli.py (and add Bench() to COMMANDS) ---
class Bench(Command):
    """Time a prefill graph against its compiled versions, side by side, on ONNX Runtime CPU.

    Each --plan is compiled from MODEL.onnx (an export with its vskip.json sidecar). The
    vanilla graph and every compiled graph (with --torch also the PyTorch skip reference)
    run in one process on random inputs of --visual-rows image rows inside --text-rows
    text rows: warm-up runs, then rounds in which every config runs once, in an order that
    rotates between rounds. Prints per config the median and spread and per plan the
    speedup, the paired (same-round) speedup, the ideal speedup from FLOPs and the share
    of it realized; --json and --markdown write the full result.
    """

    name = "bench"

    def add_arguments(self, parser):
        from .bench import DEFAULT_ROUNDS, DEFAULT_TEXT_ROWS, DEFAULT_VISUAL_ROWS, DEFAULT_WARMUP

        parser.add_argument("model", metavar="MODEL.onnx", help="a prefill graph from vskip export (not compiled)")
        parser.add_argument("--plan", action="append", default=[], metavar="PLAN.json",
                            help="a vskip plan or OpSkip policy; repeat for several")
        parser.add_argument("--compiled", action="append", default=[], metavar="COMPILED.onnx",
                            help="a graph vskip already compiled from MODEL (e.g. by another version), timed as "
                                 "it is under the plan it records; repeat for several")
        parser.add_argument("--visual-rows", type=int, default=DEFAULT_VISUAL_ROWS, metavar="N",
                            help=f"image rows in the prompt (default {DEFAULT_VISUAL_ROWS})")
        parser.add_argument("--text-rows", type=int, default=DEFAULT_TEXT_ROWS, metavar="M",
                            help=f"text rows in the prompt (default {DEFAULT_TEXT_ROWS})")
        parser.add_argument("--text-prefix", type=int, metavar="P",
                            help="text rows before the image (default: a quarter of --text-rows)")
        parser.add_argument("--threads", type=int, help="intra-op threads, ONNX Runtime and PyTorch (default: all cores)")
        parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help=f"warm-up runs per config (default {DEFAULT_WARMUP})")
        parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"timed rounds (default {DEFAULT_ROUNDS})")
        parser.add_argument("--torch", action="store_true", help="also time the PyTorch skip reference")
        parser.add_argument("--workdir", metavar="DIR",
                            help="keep the compiled graphs here (default: beside MODEL, removed afterwards)")
        parser.add_argument("--sidecar", metavar="FILE.json",
                            help="the model's dims (vskip.json fields) when MODEL has no vskip.json beside it")
        parser.add_argument("--json", metavar="OUT.json", help="write the full result as JSON")
        parser.add_argument("--markdown", metavar="OUT.md", help="write a section for docs/benchmarks.md")
        parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
        parser.add_argument("--force", action="store_true",
                            help="replace existing --json / --markdown files and, in --workdir, compiled graphs")

    def run(self, args):
        from .bench import format_table, run_bench

        result = run_bench(args.model, args.plan, visual_rows=args.visual_rows, text_rows=args.text_rows,
                           prefix_rows=args.text_prefix, threads=args.threads, warmup=args.warmup,
                           rounds=args.rounds, pytorch=args.torch, workdir=args.workdir, sidecar=args.sidecar,
                           seed=args.seed, json_path=args.json, markdown_path=args.markdown, progress=_progress,
                           compiled_graphs=args.compiled, force=args.force)
        print(format_table(result))
        for path in (args.json, args.markdown):
            if path:
                _progress(f"wrote {path}")
        return 0


class Inspect(Command):
    """Find every decoder layer of an ONNX graph by structure and print a table of them."""

    name = "inspect"

    def add_arguments(self, parser):
        parser.add_argument("model", metavar="MODEL.onnx")

    def run(self, args):
        from .compile import load_graph
        from .passes.locate import format_table, locate_model

        print(format_table(locate_model(load_graph(args.model))))
        return 0


class Demo(Command):
    """Run the demo: export a tiny Qwen2-VL, check it on ONNX Runtime against PyTorch, compile, validate, time it."""

    name = "demo"

    def add_arguments(self, parser):
        parser.add_argument("--workdir", metavar="DIR", help="keep the exported files here (default: a temp dir)")

    def run(self, args):
        from .demo import run_demo

        return 0 if run_demo(args.workdir)["ok"] else 1


COMMANDS = [Demo(), Export(), Inspect(), Compile(), Validate(), Flops(), Bench(), Run()]


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
