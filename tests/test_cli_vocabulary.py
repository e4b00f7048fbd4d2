"""One CLI vocabulary: help for every argument, an example per subcommand that parses, the
same flag meaning the same thing everywhere, and flags without effect refused."""

from __future__ import annotations

import argparse
import json
import shlex

import pytest

from vskip_compile.cli import COMMANDS, build_parser, main


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, action.choices


def test_every_argument_has_a_help_line():
    _, commands = _subparsers()
    for name, sub in commands.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), f"vskip {name} {action.option_strings or action.dest}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_subcommand_has_an_example_that_parses(command):
    doc = command.__doc__
    assert "Example:" in doc, command.name
    lines = [line.strip() for line in doc.split("Example:", 1)[1].splitlines() if line.strip()]
    assert lines, command.name
    parser, _ = _subparsers()
    for line in lines:
        words = shlex.split(line)
        assert words[0] in ("vskip", "vskip-compile"), line
        argv = words[1:] if words[0] == "vskip" else ["compile", *words[1:]]
        assert argv[0] == command.name, line
        parser.parse_args(argv)  # exits (SystemExit) on an example that does not parse


def test_visual_rows_are_ranges_in_every_subcommand():
    _, commands = _subparsers()
    for name, sub in commands.items():
        for action in sub._actions:
            if "--visual-rows" in action.option_strings:
                assert action.type is None and action.metavar == "RANGES", name
            if "--json" in action.option_strings:
                assert action.metavar == "PATH" and "'-'" in action.help, name
    # counts have their own names; the old count flags are gone
    for name, sub in commands.items():
        flags = {f for a in sub._actions for f in a.option_strings}
        assert not flags & {"--text-rows", "--text-prefix", "--torch"}, name


def _one_line_error(capsys, argv, expect):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err


def test_flags_without_effect_are_errors(exported, tmp_path, capsys):
    source = str(exported("qwen2_vl", 20) / "prefill.onnx")
    plan = "vskip_compile/plans/example_tiny.json"
    _one_line_error(capsys, ["compile", source, "--plan", plan, "--rows", "64", "-o", str(tmp_path / "c.onnx")],
                    "add --report")
    assert not (tmp_path / "c.onnx").exists()
    _one_line_error(capsys, ["flops", source, "--plot", str(tmp_path / "p.png")], "add --compare")
    _one_line_error(capsys, ["validate", source, "--visual-rows", "1:3"], "add --inputs")
    _one_line_error(capsys, ["bench", source, "--json", "-", "--markdown", "-"], "both print to stdout")


def test_json_dash_prints_only_json(exported, capsys):
    source = str(exported("qwen2_vl", 20) / "prefill.onnx")
    assert main(["inspect", source, "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [layer["layer"] for layer in data["layers"]] == [0, 1, 2, 3]
    assert main(["flops", source, "--rows", "40", "--visual-rows", "4:36", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["workload"] == {"sequence_length": 40, "visual_rows": 32, "text_rows": 8, "visual_ranges": "4:36"}
    assert data["suffix_rows"] == 4 and data["prefix_rows"] == 4


def test_json_to_a_file_keeps_the_table_and_refuses_to_replace(exported, tmp_path, capsys):
    source = str(exported("qwen2_vl", 20) / "prefill.onnx")
    target = tmp_path / "layers.json"
    assert main(["inspect", source, "--json", str(target)]) == 0
    assert "4 layers; stream starts at" in capsys.readouterr().out
    assert len(json.loads(target.read_text())["layers"]) == 4
    _one_line_error(capsys, ["inspect", source, "--json", str(target)], "--force")
    assert main(["inspect", source, "--json", str(target), "--force"]) == 0


def test_version_and_command_name_as_typed(capsys):
    from vskip_compile import __version__
    from vskip_compile.cli import compile_main

    assert compile_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"vskip-compile {__version__}"
    assert compile_main(["/nonexistent.onnx", "--plan", "p.json"]) == 2
    assert capsys.readouterr().err.startswith("vskip-compile: error: ")


def test_building_the_parser_loads_no_runtime():
    """`vskip --help` stays fast: the parser imports neither onnx nor a runtime."""
    import subprocess
    import sys

    code = ("import sys, vskip_compile.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'onnx_graphsurgeon', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
