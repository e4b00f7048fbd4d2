"""`vskip generate` on the command line: both input paths, the JSON report, streaming,
and every refusal in one line with exit 2.

The prompt path goes through a checkpoint directory that ``save_pretrained`` wrote with
its processor files, exported like any checkpoint, so the real processor loading is
covered; its tokens are held to transformers' ``generate`` on the same processor output.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_model
from vskip_compile import generate
from vskip_compile.cli import main
from vskip_compile.models.inputs import synthetic_prompt
from vskip_compile.models.reference import reference_generate

FAMILY = "qwen2_vl"
MARKER = "<|vision_start|><|image_pad|><|vision_end|>"


def _one_line_error(capsys, argv, expect):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err


@pytest.fixture(scope="module")
def inputs_file(tmp_path_factory):
    loaded = tiny_model(FAMILY)
    prompt = synthetic_prompt(loaded.family, loaded.config, [3, "image", 2], batch=1, seed=11)
    path = tmp_path_factory.mktemp("gen") / "inputs.npz"
    arrays = {"input_ids": prompt.input_ids, "attention_mask": prompt.attention_mask, **prompt.pixels,
              **prompt.model_kwargs}
    np.savez(path, **{k: v.numpy() for k, v in arrays.items()})
    return path, arrays


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(40, 56, 3), (30, 30, 3)]):
        paths.append(directory / f"{i}.png")
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(paths[-1])
    return paths


def test_inputs_file_to_json(exported, inputs_file, tmp_path, capsys):
    path, arrays = inputs_file
    out = tmp_path / "gen.json"
    assert main(["generate", str(exported(FAMILY)), "--inputs", str(path), "--max-new-tokens", "6",
                 "--json", str(out), "--profile"]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    loaded = tiny_model(FAMILY)
    expected = reference_generate(loaded.family, loaded.model, arrays, 6).tolist()
    assert report["token_ids"] == expected
    assert printed.startswith(report["text"][0] + "\n"), "a single prompt's text streams to stdout"
    assert "first token" in printed and "tokens/s" in printed
    assert report["timings"]["decode_steps"] == 5 and report["visual_rows"] == ["4:12"]
    assert len(report["text"]) == 1, "the tiny export holds its offline processor, so text comes back too"
    api = generate(exported(FAMILY), {k: v.numpy() for k, v in arrays.items()}, max_new_tokens=6)
    assert api.token_ids == expected


def test_prompt_through_a_saved_checkpoint(checkpoint_export, tmp_path, images, capsys):
    from vskip_compile.models.processors import tiny_processor

    loaded = tiny_model(FAMILY)
    _, export = checkpoint_export(processor=True)
    prompts = [f"w5 w6 {MARKER} w7 {MARKER} w8", f"w9 {MARKER} w10 w11 {MARKER} w12 w13 w14"]
    out = tmp_path / "gen.json"
    argv = ["generate", str(export), "--max-new-tokens", "8", "--json", str(out)]
    for prompt in prompts:
        argv += ["--prompt", prompt]
    for image in [*images, *images]:
        argv += ["--image", str(image)]
    assert main(argv) == 0
    report = json.loads(out.read_text())

    processor = tiny_processor(FAMILY, loaded.config)
    processor.tokenizer.padding_side = "left"
    pictures = [Image.open(p).convert("RGB") for p in [*images, *images]]
    batch = dict(processor(text=prompts, images=pictures, return_tensors="pt", padding=True))
    expected = reference_generate(loaded.family, loaded.model, batch, 8).tolist()
    assert report["token_ids"] == expected
    assert report["text"] == [processor.tokenizer.decode(t, skip_special_tokens=True) for t in expected]
    assert "[0]" in capsys.readouterr().out, "a batch prints one line per prompt"


def test_a_checkpoint_without_processor_files(checkpoint_export, inputs_file, tmp_path, capsys):
    """Exported whole all the same (the vision graph traced on synthetic pixels), and
    generating from model inputs reports token ids, without text; a text prompt is refused."""
    _, export = checkpoint_export(processor=False)
    sidecar = json.loads((export / "vskip.json").read_text())
    assert "processor" not in sidecar and sidecar["vision"]["file"] == "vision.onnx"
    assert (export / "vision.onnx").is_file() and not (export / "tokenizer.json").exists()
    path, arrays = inputs_file
    out = tmp_path / "ids.json"
    assert main(["generate", str(export), "--inputs", str(path), "--max-new-tokens", "6", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    loaded = tiny_model(FAMILY)
    assert report["token_ids"] == reference_generate(loaded.family, loaded.model, arrays, 6).tolist()
    assert "text" not in report
    printed = capsys.readouterr().out
    assert printed.startswith(" ".join(map(str, report["token_ids"][0])) + "\n"), "without a tokenizer, ids stream"
    _one_line_error(capsys, ["generate", str(export), "--prompt", "w1"], "the export has no processor files")


def test_refusals_are_one_line(exported, inputs_file, images, tmp_path, capsys):
    export = str(exported(FAMILY))
    path, _ = inputs_file
    _one_line_error(capsys, ["generate", export], "either as --prompt TEXT")
    _one_line_error(capsys, ["generate", export, "--inputs", str(path), "--prompt", "w1"], "either as --prompt TEXT")
    _one_line_error(capsys, ["generate", export, "--inputs", str(path), "--image", str(images[0])],
                    "--image goes with --prompt")
    _one_line_error(capsys, ["generate", str(tmp_path / "nowhere"), "--inputs", str(path)], "not an export directory")
    _one_line_error(capsys, ["generate", export, "--prompt", f"w1 {MARKER}", "--image", str(tmp_path / "no.png")],
                    "no such file")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    _one_line_error(capsys, ["generate", export, "--prompt", f"w1 {MARKER}", "--image", str(broken)],
                    "not a readable image")
    _one_line_error(capsys, ["generate", export, "--prompt", f"w1 {MARKER}", "--image", str(images[0]),
                             "--image", str(images[1])], "1 image marker(s)")
    _one_line_error(capsys, ["generate", export, "--inputs", str(path), "--max-new-tokens", "0"], "at least 1")
    # The tiny config has 1024 positions; the prompt's last one is its length less 1 (no image
    # compresses them by much here), so 1024 new tokens go past them.
    _one_line_error(capsys, ["generate", export, "--inputs", str(path), "--max-new-tokens", "1024"],
                    "past the model's max_position_embeddings 1024")
    sliver = tmp_path / "sliver.png"  # an aspect ratio of 300: Qwen2-VL's image processor refuses it
    Image.fromarray(np.zeros((2, 600, 3), dtype=np.uint8)).save(sliver)
    _one_line_error(capsys, ["generate", export, "--prompt", f"w1 {MARKER}", "--image", str(sliver)],
                    "the processor refused the input")
    _one_line_error(capsys, ["generate", export, "--inputs", str(path), "--temperature", "-1"], "--temperature")
    _one_line_error(capsys, ["generate", export, "--inputs", str(path), "--plan",
                             "vskip_compile/plans/opskip_qwen3vl8b_preset20.json"], "plan was made for")
    _one_line_error(capsys, ["generate", export, "--inputs", str(path), "--backend", "torch"], "prefill graphs only")


def test_a_graph_of_another_model_is_refused(exported, inputs_file, capsys):
    path, _ = inputs_file
    export = str(exported(FAMILY))
    # Same input names and widths, another model: told apart by the sidecar beside it.
    _one_line_error(capsys, ["generate", export, "--inputs", str(path), "--compiled",
                             str(exported("llava") / "prefill.onnx")], "compiled from tiny:llava (seed 0)")
    _one_line_error(capsys, ["generate", export, "--inputs", str(path), "--compiled",
                             str(exported("gemma3") / "prefill.onnx")], "not a prefill graph of the export")


def test_exports_without_a_vision_graph_or_a_decode_graph_are_refused(exported, inputs_file, tmp_path, capsys):
    """An export made with --no-vision (its sidecar names no vision graph) is refused for
    a prompt with images; one without a decode graph for any prompt."""
    import shutil

    path, _ = inputs_file
    source = exported(FAMILY)
    sidecar = json.loads((source / "vskip.json").read_text())
    for name, drop, expect in [("no-vision", "vision", "the export has no vision graph"),
                               ("no-decode", "decode", "the sidecar lacks decode")]:
        directory = tmp_path / name
        directory.mkdir()
        for file in ("prefill.onnx", "decode.onnx", "embedding.safetensors", "config.json"):
            shutil.copy(source / file, directory / file)
        (directory / "vskip.json").write_text(json.dumps({k: v for k, v in sidecar.items()
                                                          if k not in (drop, "processor")}))
        _one_line_error(capsys, ["generate", str(directory), "--inputs", str(path)], expect)


def test_a_routable_prefill_takes_the_plan_at_run_time(exported, inputs_file, tmp_path, capsys):
    """--compiled ROUTABLE --plan P gives the tokens of the prefill compiled with P;
    --plan-for/--task pick a request's plan; without a plan it is the vanilla model."""
    from vskip_compile.compile import compile_model

    path, _ = inputs_file
    export = exported(FAMILY)
    routable = tmp_path / "routable.onnx"
    compile_model(export / "prefill.onnx", None, routable, routable=True)
    plan = "vskip_compile/plans/example_tiny.json"
    frozen = tmp_path / "frozen.json"
    frozen.write_text(json.dumps({"format": "vskip-plan", "version": 1, "model": {"num_layers": 4},
                                  "layers": {"0-3": "freeze"}}))

    def tokens(*extra):
        out = tmp_path / "gen.json"
        assert main(["generate", str(export), "--inputs", str(path), "--max-new-tokens", "6", "--json", str(out),
                     "--force", *extra]) == 0
        return json.loads(out.read_text())["token_ids"]

    static = tokens("--plan", plan)
    assert tokens("--compiled", str(routable), "--plan", plan) == static
    assert tokens("--compiled", str(routable)) == tokens() != static
    routes = ["--compiled", str(routable), "--plan-for", f"mixed={plan}", "--plan-for", f"frozen={frozen}"]
    assert tokens(*routes, "--task", "mixed") == static
    assert tokens(*routes, "--task", "frozen") == tokens("--plan", str(frozen))
    capsys.readouterr()
    _one_line_error(capsys, ["generate", str(export), "--inputs", str(path), *routes], "--plan-for needs --task")
    _one_line_error(capsys, ["generate", str(export), "--inputs", str(path), *routes, "--task", "other"],
                    "no --plan-for plan for it")
    _one_line_error(capsys, ["generate", str(export), "--inputs", str(path), "--plan-for", f"a={plan}", "--task", "a"],
                    "compile one with vskip-compile --routable")
    _one_line_error(capsys, ["generate", str(export), "--inputs", str(path), "--compiled",
                             str(export / "prefill.onnx"), "--plan", plan], "not a routable graph")


def test_sampling_is_seeded(exported, inputs_file):
    _, arrays = inputs_file
    feeds = {k: v.numpy() for k, v in arrays.items()}
    runs = [generate(exported(FAMILY), feeds, max_new_tokens=8, temperature=1.5, top_p=0.9, seed=s).token_ids
            for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_images_are_bounded_before_they_are_decoded(images, monkeypatch):
    from vskip_compile.core.errors import VskipError
    from vskip_compile.runtime import processor

    assert processor.load_image(str(images[0])).size == (56, 40)
    monkeypatch.setattr(processor, "MAX_IMAGE_PIXELS", 56 * 40 - 1)
    with pytest.raises(VskipError, match="56 x 40 pixels is more than vskip reads"):
        processor.load_image(str(images[0]))
