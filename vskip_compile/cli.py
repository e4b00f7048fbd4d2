"""The ``vskip`` command line: one subcommand per job.

User errors (VskipError) print one line and exit 2; nothing else is caught, so bugs keep
their tracebacks. Heavy imports (torch, transformers) happen inside the subcommands that
need them, so ``vskip --help`` and graph-only commands start fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import VskipError


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
        parser.add_argument("--seed", type=int, default=0, help="seed of a tiny preset's random weights")
        parser.add_argument("--force", action="store_true", help="overwrite an existing export in DIR")

    def run(self, args):
        from .models.export import export_model

        export_model(args.source, args.output, opset=args.opset, all_logits=args.all_logits,
                     force=args.force, seed=args.seed, progress=_progress)
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
        parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
        parser.add_argument("--force", action="store_true", help="overwrite OUT.npz if it exists")

    def run(self, args):
        from .runner import run_graph
        from .npz import read_npz, write_npz_atomic

        output = Path(args.output)
        if output.exists() and not args.force:
            raise VskipError(f"{output}: exists; pass --force to overwrite it")
        feeds = read_npz(args.inputs)
        outputs = run_graph(args.model, feeds, threads=args.threads)
        write_npz_atomic(output, outputs)
        _progress(f"wrote {len(outputs)} outputs to {output}")
        return 0


class Compile(Command):
    """Compile a decoder graph with a skip plan (vskip-compile MODEL.onnx --plan PLAN.json)."""

    name = "compile"

    def add_arguments(self, parser):
        parser.add_argument("model", metavar="MODEL.onnx")
        parser.add_argument("--plan", required=True, metavar="PLAN.json")
        parser.add_argument("-o", "--output", metavar="OUT.onnx")

    def run(self, args):
        raise VskipError("compile is not built yet: the graph rewrite lands with the compiler issue")


class Demo(Command):
    """Run the demo: export a tiny Qwen2-VL, run it on ONNX Runtime and compare with PyTorch."""

    name = "demo"

    def add_arguments(self, parser):
        parser.add_argument("--workdir", metavar="DIR", help="keep the exported files here (default: a temp dir)")

    def run(self, args):
        from .demo import run_demo

        return 0 if run_demo(args.workdir)["ok"] else 1


COMMANDS = [Demo(), Export(), Run(), Compile()]


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vskip", description="vskip: skip work on visual tokens in multimodal LLM decoders.")
    parser.add_argument("--version", action="version", version=f"vskip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        doc = command.__doc__.strip()
        sp = sub.add_parser(command.name, help=doc.splitlines()[0], description=doc,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(sp)
        sp.set_defaults(handler=command)
    return parser




def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler.run(args)
    except VskipError as exc:
        print(f"vskip {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"vskip {args.command}: interrupted", file=sys.stderr)
        return 130


def compile_main(argv: list[str] | None = None) -> int:
    """``vskip-compile ...`` is ``vskip compile ...``."""
    return main(["compile", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
