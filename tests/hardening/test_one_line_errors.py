"""Malformed files and odd arguments: one line, exit 2, no traceback, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from hostile import (PLAN, assert_refused, error_line, external_source, run_cli, save_graph_only,  # noqa: F401
                     set_external, snapshot, workspace)


def _compile(workspace, *extra):
    return run_cli("compile", workspace / "src" / "model.onnx", "--plan", PLAN, *extra)


def _set_metadata(path, key, value):
    model = onnx.load(path, load_external_data=False)
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
    save_graph_only(model, path)


@pytest.mark.parametrize("value", ["{not json", "[1, 2]", "[" * 10000 + "]" * 10000])
@pytest.mark.parametrize("command", ["compile", "validate", "flops", "bench"])
def test_malformed_recorded_plan_metadata(workspace, value, command):
    path = workspace / "src" / "model.onnx"
    _set_metadata(path, "vskip.plan", value)
    before = snapshot(workspace)
    args = {"compile": ["compile", path, "--plan", PLAN, "-o", workspace / "c.onnx"],
            "validate": ["validate", path],
            "flops": ["flops", workspace / "src" / "model.onnx", "--compare", path],
            "bench": ["bench", path, "--plan", PLAN]}[command]
    assert_refused(run_cli(*args), before, workspace, "vskip.plan")


@pytest.mark.parametrize("fields, problem", [
    ({"offset": "12abc"}, "not a non-negative integer"),
    ({"offset": "-4"}, "not a non-negative integer"),
    ({"length": "-1"}, "not a non-negative integer"),
    ({"length": "7"}, "is not its"),
    ({"location": None}, "without a location"),
    ({"location": ""}, "without a location"),
    ({"location": "missing.bin"}, "no such file (external data file)"),
    ({"location": "a\nb"}, "\\x0a"),
])
def test_malformed_external_data_entries(workspace, fields, problem):
    path = workspace / "src" / "model.onnx"
    save_graph_only(set_external(onnx.load(path, load_external_data=False), **fields), path)
    before = snapshot(workspace)
    for command in (["compile", path, "--plan", PLAN, "-o", workspace / "c.onnx"], ["inspect", path]):
        assert_refused(run_cli(*command), before, workspace, problem)


@pytest.mark.parametrize("sidecar, problem", [
    ("[1, 2]", "must be a JSON object"),
    ('{"num_layers": "four"}', "'num_layers' must be a positive integer"),
    ('{"num_layers": -4}', "'num_layers' must be a positive integer"),
    ('{"family": 7}', "'family' must be a string"),
    ("{bad", "malformed JSON"),
    ("", "malformed JSON"),
    ('{"num_layers": 1' + "0" * 5000 + "}", "digits"),
])
@pytest.mark.parametrize("command", ["compile", "bench"])
def test_malformed_sidecar(workspace, sidecar, problem, command):
    (workspace / "src" / "vskip.json").write_text(sidecar)
    before = snapshot(workspace)
    path = workspace / "src" / "model.onnx"
    args = {"compile": ["compile", path, "--plan", PLAN, "-o", workspace / "c.onnx"],
            "bench": ["bench", path, "--plan", PLAN]}[command]
    assert_refused(run_cli(*args), before, workspace, "vskip.json", problem)


def test_sidecar_lacking_fields(workspace):
    (workspace / "src" / "vskip.json").write_text('{"family": "qwen2_vl"}')
    before = snapshot(workspace)
    assert_refused(run_cli("bench", workspace / "src" / "model.onnx", "--plan", PLAN), before, workspace,
                   "lacks")
    assert_refused(run_cli("validate", workspace / "src" / "model.onnx"), before, workspace, "names no 'source'")
    (workspace / "src" / "vskip.json").write_text("[1]")
    assert_refused(run_cli("validate", workspace / "src" / "model.onnx"), before | {"src/vskip.json": snapshot(
        workspace)["src/vskip.json"]}, workspace, "must be a JSON object")


def test_output_that_is_a_directory(workspace):
    (workspace / "out").mkdir()
    before = snapshot(workspace)
    for extra in ([], ["--force"]):
        assert_refused(_compile(workspace, "-o", workspace / "out", *extra), before, workspace, "is a directory")


def test_a_legal_long_output_name(workspace):
    """244 characters is a legal name; the temp files must not push it past NAME_MAX."""
    out = workspace / "o"
    out.mkdir()
    name = "n" * 239 + ".onnx"
    result = _compile(workspace, "-o", out / name)
    # OUT.onnx.data would be 249 bytes: still legal, so this compiles.
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [name, f"{name}.data"]


def test_an_output_name_too_long_for_its_weights(workspace):
    out = workspace / "o"
    out.mkdir()
    before = snapshot(workspace)
    result = _compile(workspace, "-o", out / ("n" * 246 + ".onnx"))
    assert_refused(result, before, workspace, "file name is")


def test_export_to_a_dangling_symlink(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    before = snapshot(tmp_path)
    result = run_cli("export", "tiny:qwen2_vl", "-o", tmp_path / "link", "--prefill-only")
    assert_refused(result, before, tmp_path, "dangling symbolic link")


@pytest.mark.parametrize("text, problem", [
    ("[" * 100000 + "]" * 100000, "nests"),
    ('{"format": "vskip-plan", "version": 1' + "0" * 5000 + "}", "digits"),
    ('{"format": "vskip-plan", "version": NaN}', "not JSON"),
    (b"\xff\xfe\x00garbage", "UTF-8"),
    ('{"a": 1, "a": 2}', "appears twice"),
])
def test_hostile_plan_json(workspace, text, problem):
    plan = workspace / "plan.json"
    plan.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = snapshot(workspace)
    result = run_cli("compile", workspace / "src" / "model.onnx", "--plan", plan, "-o", workspace / "c.onnx")
    assert_refused(result, before, workspace, problem)


def test_control_characters_in_messages_are_escaped(workspace):
    name = workspace / "evil\x1b[2J\nname.json"
    before = snapshot(workspace)
    result = run_cli("compile", workspace / "src" / "model.onnx", "--plan", name)
    line = assert_refused(result, before, workspace, "\\x1b")
    assert "\x1b" not in result.stderr and "\\x0a" in line


def test_garbage_graph_bytes(workspace):
    (workspace / "g.onnx").write_bytes(b"\x08\x07garbage" * 100)
    before = snapshot(workspace)
    assert_refused(run_cli("compile", workspace / "g.onnx", "--plan", PLAN), before, workspace, "not an ONNX model")


def test_internal_errors_are_one_line_and_traceback_only_with_debug(workspace):
    patch = "from vskip_compile import compile as c\ndef boom(*a, **k):\n    raise RuntimeError('boom\\nsecond')\nc.read_graph = boom"
    args = ["compile", str(workspace / "src" / "model.onnx"), "--plan", str(PLAN), "-o", str(workspace / "c.onnx")]
    code = f"import sys\n{patch}\nfrom vskip_compile.cli import main\nsys.exit(main())"
    plain = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert plain.returncode == 2
    assert "--debug" in error_line(plain) and "boom" in error_line(plain)
    debug = subprocess.run([sys.executable, "-c", code, *args, "--debug"], capture_output=True, text=True,
                           timeout=60)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_concurrent_forced_compiles_into_one_directory(workspace):
    """They used to share one temp name, and one crashed with FileNotFoundError."""
    out = workspace / "out"
    out.mkdir()
    code = "import sys; from vskip_compile.cli import main; sys.exit(main())"
    processes = [subprocess.Popen([sys.executable, "-c", code, "compile", str(workspace / "src" / "model.onnx"),
                                   "--plan", str(PLAN), "-o", str(out / "c.onnx"), "--force"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in processes]
    for code_, stderr in results:
        assert code_ == 0, stderr
    assert sorted(p.name for p in out.iterdir()) == ["c.onnx", "c.onnx.data"]
    onnx.checker.check_model(str(out / "c.onnx"))


def test_vskip_compile_names_itself(workspace):
    result = run_cli(workspace / "missing.onnx", "--plan", PLAN, prog="vskip-compile")
    assert result.returncode == 2 and error_line(result).startswith("vskip-compile: error:")


def test_plan_with_an_unknown_family_field_type(workspace):
    plan = workspace / "plan.json"
    plan.write_text(json.dumps({"format": "vskip-plan", "version": 1, "model": {"num_layers": 4, "family": 3},
                                "layers": {}}))
    before = snapshot(workspace)
    assert_refused(run_cli("compile", workspace / "src" / "model.onnx", "--plan", plan), before, workspace,
                   "model.family")
