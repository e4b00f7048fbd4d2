"""vskip_compile.bench.report: the table and the Markdown section from a result dict."""

from __future__ import annotations

from vskip_compile.bench import Config, format_table, summarize, to_markdown


def result_of(times: dict[str, list[float]], ideals: dict[str, float]) -> dict:
    configs = [Config(name, *name.split(":"), run=lambda: None, times=t) for name, t in times.items()]
    rows, plans, vanilla = summarize(configs, ideals)
    return {"model": "/x/prefill.onnx", "family": "qwen2_vl", "num_layers": 4, "hidden_size": 64,
            "command": "vskip bench x", "date": "2026-01-01T00:00:00+00:00",
            "machine": {"cpu": "Test CPU", "cores": 2}, "versions": {"vskip": "0.1.0", "torch": None},
            "backends": [{"backend": "ort-cpu", "runtime": "onnxruntime", "version": "1.0", "device": "CPU",
                          "precision": "fp32"}],
            "sequence_length": 10, "layout": "2 text + 6 visual + 2 text", "threads": 1, "warmup": 0, "rounds": 2,
            "ideal_source": "given by the caller", "vanilla": vanilla, "plans": plans, "configs": rows}


def test_the_table_has_one_row_per_config_and_a_ratio_line_per_other_backend():
    result = result_of({"ort-cpu:vanilla": [2.0, 2.0], "ort-cpu:p": [1.0, 1.0],
                        "torch:vanilla": [4.0, 4.0], "torch:p": [4.0, 4.0]}, {"p": 3.0})
    lines = format_table(result).splitlines()
    assert lines[0].split()[0] == "config" and len(lines) == 1 + 4 + 1 + 1
    assert lines[1].split()[:4] == ["ort-cpu:vanilla", "2.000", "2.000-2.000", "1"]
    # speedup 2 / 1, paired 2 [2-2], ideal 3, realized (2 - 1) / (3 - 1)
    assert lines[2].split() == ["ort-cpu:p", "1.000", "1.000-1.000", "2.000", "2.000", "[2.000-2.000]", "3.000",
                                "50%"]
    assert lines[4].split()[:4] == ["torch:p", "4.000", "4.000-4.000", "1.000"]
    assert lines[5] == "ort-cpu / torch time (median): vanilla 0.50, p 0.25"     # 2 / 4, 1 / 4
    assert lines[6].startswith("S = 10 (2 text + 6 visual + 2 text), 1 threads, 0 warm-up + 2 interleaved")


def test_one_backend_has_no_ratio_line():
    result = result_of({"ort-cpu:vanilla": [2.0], "ort-cpu:p": [2.0]}, {"p": 1.0})
    table = format_table(result)
    assert "time (median)" not in table and table.splitlines()[2].split()[-1] == "-"   # ideal 1: realized -


def test_markdown_names_the_command_machine_backends_and_configs():
    result = result_of({"ort-cpu:vanilla": [2.0], "ort-cpu:p": [1.0], "torch:vanilla": [4.0], "torch:p": [4.0]},
                       {"p": 3.0})
    markdown = to_markdown(result)
    assert markdown.startswith("### Prefill: prefill.onnx (qwen2_vl, 4 layers, hidden 64)")
    assert "vskip bench x" in markdown and "Test CPU, 2 cores; 1 threads" in markdown
    assert "- backends: ort-cpu (onnxruntime 1.0, CPU, fp32)" in markdown
    assert "vskip 0.1.0" in markdown and "torch None" not in markdown
    assert "| `torch:p` | 4.0" in markdown and "| `ort-cpu:p` | 1.000 | 1.000-1.000 | 2.000 |" in markdown
    assert "ort-cpu / torch time (median): vanilla 0.50, p 0.25" in markdown


def test_a_faster_other_backend_is_said_in_words():
    result = result_of({"ort-cpu:vanilla": [3.0], "ort-cpu:p": [1.0], "torch-skip:vanilla": [2.0],
                        "torch-skip:p": [2.0]}, {"p": 3.0})
    line = next(line for line in format_table(result).splitlines() if "time (median)" in line)
    assert line == ("ort-cpu / torch-skip time (median): vanilla 1.50, p 0.50; "
                    "torch-skip is faster than ort-cpu on this host for vanilla")


def test_the_reference_backend_is_explained_only_when_timed():
    times = {"ort-cpu:vanilla": [2.0], "ort-cpu:p": [1.0], "torch:vanilla": [4.0], "torch:p": [4.0]}
    result = result_of(times, {"p": 3.0})
    assert "computes every row" not in to_markdown(result)
    result["backends"].append({"backend": "torch", "runtime": "torch", "version": "2", "device": "CPU",
                               "precision": "fp32"})
    assert "computes every row and zeroes the skipped ones" in to_markdown(result)
