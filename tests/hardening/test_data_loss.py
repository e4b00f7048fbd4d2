"""No command replaces a file it was not asked to own, nor any of its own inputs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from hostile import (PLAN, assert_refused, external_source, run_cli, snapshot,  # noqa: F401
                     workspace)


def _compile(*args):
    return run_cli("compile", *args)


def test_compiled_graphs_written_elsewhere_own_their_weights(workspace):
    out = workspace / "out"
    out.mkdir()
    for name in ("a", "b"):
        result = _compile(workspace / "src" / "model.onnx", "--plan", PLAN, "-o", out / f"{name}.onnx")
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.onnx", "a.onnx.data", "b.onnx", "b.onnx.data"]
    for name in ("a", "b"):
        locations = {e.value for t in onnx.load(out / f"{name}.onnx", load_external_data=False).graph.initializer
                     for e in t.external_data if e.key == "location"}
        assert locations == {f"{name}.onnx.data"}


def test_force_replaces_only_the_outputs_own_files(workspace):
    out = workspace / "out"
    out.mkdir()
    assert _compile(workspace / "src" / "model.onnx", "--plan", PLAN, "-o", out / "a.onnx").returncode == 0
    other = out / "model.onnx.data"  # a file named like the source's weights: not the output's
    other.write_bytes(b"someone else's")
    result = _compile(workspace / "src" / "model.onnx", "--plan", PLAN, "-o", out / "b.onnx", "--force")
    assert result.returncode == 0, result.stderr
    assert other.read_bytes() == b"someone else's"


def test_beside_the_source_the_weights_are_shared(workspace):
    result = _compile(workspace / "src" / "model.onnx", "--plan", PLAN)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (workspace / "src").iterdir()) == [
        "model.onnx", "model.onnx.data", "model.vskip.onnx", "vskip.json"]


@pytest.mark.parametrize("target", ["model.onnx", "model.onnx.data", "vskip.json", "plan"])
def test_compile_never_writes_over_its_inputs_even_with_force(workspace, target):
    plan = workspace / "plan.json"
    shutil.copy(PLAN, plan)
    output = plan if target == "plan" else workspace / "src" / target
    before = snapshot(workspace)
    result = _compile(workspace / "src" / "model.onnx", "--plan", plan, "-o", output, "--force")
    assert_refused(result, before, workspace, "own input")


def test_compile_refuses_an_output_whose_weights_name_is_an_input(workspace):
    """-o src2/model.onnx.data.onnx would be fine; -o elsewhere named so that OUT.data is the
    source's data file (a hard link to it) is not."""
    out = workspace / "out"
    out.mkdir()
    (out / "x.onnx.data").hardlink_to(workspace / "src" / "model.onnx.data")
    before = snapshot(workspace)
    result = _compile(workspace / "src" / "model.onnx", "--plan", PLAN, "-o", out / "x.onnx", "--force")
    assert_refused(result, before, workspace, "own input")


@pytest.mark.parametrize("json_name, extra", [("c.onnx", []), ("c.onnx.data", []),
                                             ("c.flops.json", ["--report", "--rows", "64", "--visual-rows", "8:40"])])
def test_compile_json_report_is_never_one_of_its_other_outputs(workspace, json_name, extra):
    """--json names a file the command also writes (the graph, its weights, a --report
    file): refused before any work, even with --force, and nothing is written."""
    out = workspace / "out"
    out.mkdir()
    before = snapshot(workspace)
    for force in ([], ["--force"]):
        result = _compile(workspace / "src" / "model.onnx", "--plan", PLAN, "-o", out / "c.onnx",
                          "--json", out / json_name, *extra, *force)
        assert_refused(result, before, workspace, "named twice as an output")


def test_run_never_writes_over_the_model_or_the_feeds(workspace, exported):
    feeds = workspace / "feeds.npz"
    np.savez(feeds, x=np.zeros(2, np.float32))
    for output in (workspace / "src" / "model.onnx", feeds, workspace / "src" / "model.onnx.data"):
        before = snapshot(workspace)
        result = run_cli("run", workspace / "src" / "model.onnx", "--inputs", feeds, "-o", output, "--force")
        assert_refused(result, before, workspace, "own input")


def test_flops_plot_never_replaces_a_file_without_force_nor_an_input_with_it(workspace):
    src = workspace / "src" / "model.onnx"
    assert _compile(src, "--plan", PLAN, "-o", workspace / "c.onnx").returncode == 0
    existing = workspace / "plot.png"
    existing.write_bytes(b"keep")
    before = snapshot(workspace)
    assert_refused(run_cli("flops", src, "--compare", workspace / "c.onnx", "--plot", existing),
                   before, workspace, "exists")
    assert_refused(run_cli("flops", src, "--compare", workspace / "c.onnx", "--plot", src, "--force"),
                   before, workspace, "own input")
    assert_refused(run_cli("flops", src, "--plot", workspace / "new.png"), before, workspace, "--compare")


def test_bench_reports_never_replace_files_without_force(workspace):
    src = workspace / "src" / "model.onnx"
    existing = workspace / "r.json"
    existing.write_text("{}")
    before = snapshot(workspace)
    for flag in ("--json", "--markdown"):
        result = run_cli("bench", src, "--plan", PLAN, flag, existing, "--rounds", 1, "--warmup", 0,
                         "--rows", 12, "--visual-rows", "2:10")
        assert_refused(result, before, workspace, "exists")
    result = run_cli("bench", src, "--plan", PLAN, "--json", src, "--force", "--rounds", 1, "--warmup", 0)
    assert_refused(result, before, workspace, "own input")


def test_bench_workdir_never_recompiles_over_a_compiled_input(workspace):
    src = workspace / "src" / "model.onnx"
    work = workspace / "work"
    work.mkdir()
    # The name bench --workdir gives the plan's graph: model.<plan stem>.onnx
    given = work / f"model.{PLAN.stem}.onnx"
    assert _compile(src, "--plan", PLAN, "-o", given).returncode == 0
    before = snapshot(workspace)
    result = run_cli("bench", src, "--plan", PLAN, "--compiled", given, "--workdir", work, "--force",
                     "--rounds", 1, "--warmup", 0, "--rows", 12, "--visual-rows", "2:10")
    assert_refused(result, before, workspace, "own input")


def test_export_into_a_directory_with_foreign_graphs_needs_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "prefill.onnx").write_bytes(b"someone's graph")
    before = snapshot(tmp_path)
    result = run_cli("export", "tiny:qwen2_vl", "-o", out, "--prefill-only")
    assert_refused(result, before, tmp_path, "exists")


def test_export_never_writes_into_its_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    (ckpt / "vskip.json").write_text("{}")  # an export's file name, here an input
    before = snapshot(tmp_path)
    result = run_cli("export", ckpt, "-o", ckpt, "--force", "--prefill-only")
    assert_refused(result, before, tmp_path, "own input")
