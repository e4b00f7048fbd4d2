"""Damaged and hostile checkpoints: ``vskip export`` refuses each with one line and exit 2,
before transformers builds anything, writing nothing and changing no input.

One real checkpoint (the tiny Qwen2-VL, written by ``save_pretrained``, so in the hub's
legacy key layout) is copied into each test's tmp_path and damaged there.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import struct
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FAMILIES, tiny_model
from vskip_compile.core.errors import VskipError
from vskip_compile.models import checkpoint as checkpoint_module
from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt
from vskip_compile.models.loading import load_model

FAMILY = "qwen2_vl"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
# A text-layer weight in the name save_pretrained writes (the module is model.language_model.layers.0)
UP_PROJ = "model.layers.0.mlp.up_proj.weight"
# The pre-load check's words; transformers' own report after loading reads differently
MISMATCH = "the checkpoint does not match Qwen2VLForConditionalGeneration"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("saved") / "ckpt"
    tiny_model(FAMILY).model.save_pretrained(directory)
    return directory


@pytest.fixture()
def ckpt(saved, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(saved, target)
    return target


def _tensors(ckpt) -> dict[str, torch.Tensor]:
    return load_file(ckpt / WEIGHTS)


def _rewrite(ckpt, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, ckpt / WEIGHTS, metadata={"format": "pt"})


def _edit_config(ckpt, **text_config) -> None:
    config = json.loads((ckpt / "config.json").read_text())
    config["text_config"].update(text_config)
    (ckpt / "config.json").write_text(json.dumps(config))


def _listing(root) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def _hashes(root) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in root.rglob("*") if path.is_file()}


def _refused(tmp_path, ckpt, *expect: str) -> str:
    """Run ``vskip export`` on ``ckpt``; assert the clean refusal; return its line."""
    before, hashes = _listing(tmp_path), _hashes(tmp_path)
    out = tmp_path / "out"
    # a hard bound, not a measurement: every refusal happens before transformers builds anything
    result = subprocess.run([sys.executable, "-m", "vskip_compile.cli", "export", str(ckpt), "-o", str(out),
                             "--prefill-only"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for text in expect:
        assert text in lines[0], lines[0]
    assert not out.exists()
    assert _listing(tmp_path) == before
    assert _hashes(tmp_path) == hashes
    return lines[0]


# ------------------------------------------------------------------- incomplete weights

def test_missing_layer(tmp_path, ckpt):
    tensors = _tensors(ckpt)
    layer = [name for name in tensors if name.startswith("model.layers.1.")]
    assert len(layer) > 5  # the whole layer: attention, MLP and both norms
    _rewrite(ckpt, {k: v for k, v in tensors.items() if k not in layer})
    line = _refused(tmp_path, ckpt, MISMATCH, f"{len(layer)} tensors missing", "layers.1.",
                    f"and {len(layer) - 3} more")
    assert "unexpected" not in line


def test_unexpected_tensor(tmp_path, ckpt):
    tensors = _tensors(ckpt)
    tensors["model.layers.0.mlp.extra_proj.weight"] = torch.zeros(4, 4)
    _rewrite(ckpt, tensors)
    line = _refused(tmp_path, ckpt, MISMATCH, "1 tensor unexpected", "model.layers.0.mlp.extra_proj.weight")
    assert "missing" not in line


def test_misshapen_tensor(tmp_path, ckpt):
    tensors = _tensors(ckpt)
    rows, columns = tensors[UP_PROJ].shape
    tensors[UP_PROJ] = torch.zeros(rows - 1, columns)
    _rewrite(ckpt, tensors)
    _refused(tmp_path, ckpt, MISMATCH, "1 tensor of the wrong shape", UP_PROJ, f"is [{rows - 1}, {columns}]",
             f"expected [{rows}, {columns}]")


def test_int_tensor_for_a_float_weight(tmp_path, ckpt):
    tensors = _tensors(ckpt)
    tensors[UP_PROJ] = torch.ones(tensors[UP_PROJ].shape, dtype=torch.int32)
    _rewrite(ckpt, tensors)
    _refused(tmp_path, ckpt, MISMATCH, "1 tensor of the wrong dtype", UP_PROJ, "I32")


class _Planted:
    """Unpickling this creates a file, which the listing after the run would show."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_pickle_beside_an_empty_safetensors(tmp_path, ckpt):
    (ckpt / WEIGHTS).write_bytes(b"")
    (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps(_Planted(tmp_path / "unpickled")))
    _refused(tmp_path, ckpt, "pytorch_model.bin", "safetensors only", "delete or move it")


# --------------------------------------------------------------------- broken files

@pytest.mark.parametrize("content", [
    b"this is not a safetensors file\n" * 64,                # its first 8 bytes read as a 7 EiB header
    struct.pack("<Q", 16) + b"not JSON, sorry!" + b"\0" * 64,  # a plausible length before junk
], ids=["text", "junk-header"])
def test_garbage_safetensors(tmp_path, ckpt, content):
    (ckpt / WEIGHTS).write_bytes(content)
    _refused(tmp_path, ckpt, f"{ckpt / WEIGHTS}:", "not a safetensors file")


def test_truncated_safetensors(tmp_path, ckpt):
    data = (ckpt / WEIGHTS).read_bytes()
    (ckpt / WEIGHTS).write_bytes(data[:len(data) // 2])
    _refused(tmp_path, ckpt, f"{ckpt / WEIGHTS}:", "truncated")


def test_header_declaring_a_huge_length(tmp_path, ckpt):
    data = (ckpt / WEIGHTS).read_bytes()
    (ckpt / WEIGHTS).write_bytes(struct.pack("<Q", 2**62) + data[8:])
    _refused(tmp_path, ckpt, f"{ckpt / WEIGHTS}:", f"claims {2**62} bytes")


# -------------------------------------------------------------------------- indexes

def _shard(ckpt, second: str) -> None:
    """Turn model.safetensors into shard 1 of an index that puts one tensor in ``second``."""
    shard = "model-00001-of-00002.safetensors"
    (ckpt / WEIGHTS).rename(ckpt / shard)
    names = sorted(load_file(ckpt / shard))
    weight_map = {name: shard for name in names}
    weight_map[names[0]] = second
    (ckpt / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_index_naming_a_missing_shard(tmp_path, ckpt):
    _shard(ckpt, "model-00002-of-00002.safetensors")
    _refused(tmp_path, ckpt, INDEX, "model-00002-of-00002.safetensors", "not in")


def test_index_naming_a_file_outside_the_checkpoint(tmp_path, ckpt):
    shutil.copy(ckpt / WEIGHTS, tmp_path / "x.safetensors")  # it exists: only its path is wrong
    _shard(ckpt, "../x.safetensors")
    _refused(tmp_path, ckpt, INDEX, "'../x.safetensors'", "plain file name")


# ------------------------------------------------------------------------ resources

def test_a_million_layers(tmp_path, ckpt):
    _edit_config(ckpt, num_hidden_layers=1_000_000)
    _refused(tmp_path, ckpt, "text_config.num_hidden_layers is 1000000", "outside 1..")


def test_a_huge_hidden_size(tmp_path, ckpt):
    _edit_config(ckpt, hidden_size=10**9)
    _refused(tmp_path, ckpt, f"text_config.hidden_size is {10**9}", "outside 1..")


def test_weights_larger_than_memory(ckpt, monkeypatch):
    weights = sum(t.numel() for t in _tensors(ckpt).values()) * 4
    assert weights < 2**20  # so the message counts bytes
    monkeypatch.setattr(checkpoint_module, "available_memory", lambda: weights - 1)
    with pytest.raises(VskipError, match=f"in float32 needs {weights} bytes of memory, but {weights - 1} bytes.*"
                                         "--dtype bfloat16 or float16 loads it in half"):
        load_model(str(ckpt))
    # Loaded in half precision, the weights take half the bytes: an 8B model in bf16 fits
    # 24 GB, where the fp32 count refused it.
    monkeypatch.setattr(checkpoint_module, "available_memory", lambda: weights * 3 // 4)
    with pytest.raises(VskipError, match="in float32 needs"):
        load_model(str(ckpt))
    assert next(load_model(str(ckpt), dtype="bfloat16").model.parameters()).dtype == torch.bfloat16
    monkeypatch.setattr(checkpoint_module, "available_memory", lambda: weights // 2 - 1)
    with pytest.raises(VskipError, match=f"in float16 needs {weights // 2} bytes of memory"):
        load_model(str(ckpt), dtype="float16")  # the message names the type asked for
    monkeypatch.setattr(checkpoint_module, "available_memory", lambda: weights * 2)
    load_model(str(ckpt))  # the same checkpoint loads once its fp32 weights fit


# ------------------------------------------- refused in process (no export to start)

def test_transformers_report_is_checked_after_loading(ckpt, monkeypatch):
    """The second line of defence: were the pre-load comparison to miss a tensor (say, one a
    transformers converter renames differently), transformers' own loading info refuses it."""
    tensors = _tensors(ckpt)
    _rewrite(ckpt, {k: v for k, v in tensors.items() if k != UP_PROJ})
    monkeypatch.setattr(checkpoint_module, "match_tensors", lambda *args: None)
    with pytest.raises(VskipError, match="transformers could not load every tensor of Qwen2VLForConditionalGeneration: "
                                         r"1 tensor missing \(model.language_model.layers.0.mlp.up_proj.weight\)"):
        load_model(str(ckpt))


def test_transformers_weights_cannot_redirect_loading(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "sub").mkdir()
    shutil.copy(ckpt / WEIGHTS, ckpt / "sub" / WEIGHTS)
    config["transformers_weights"] = "sub/model.safetensors"
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(VskipError, match="transformers_weights"):
        load_model(str(ckpt))


def test_safetensors_the_index_does_not_name(ckpt):
    _shard(ckpt, "model-00001-of-00002.safetensors")  # a valid index over one shard
    load_model(str(ckpt))
    shutil.copy(ckpt / "model-00001-of-00002.safetensors", ckpt / "adapter_model.safetensors")
    with pytest.raises(VskipError, match="adapter_model.safetensors: not named in"):
        load_model(str(ckpt))


def test_a_tensor_in_two_shards(ckpt):
    _shard(ckpt, "model-00002-of-00002.safetensors")
    shutil.copy(ckpt / "model-00001-of-00002.safetensors", ckpt / "model-00002-of-00002.safetensors")
    with pytest.raises(VskipError, match="is also in model-00001-of-00002.safetensors; transformers would keep one"):
        load_model(str(ckpt))


def test_quantized_config(ckpt):
    config = json.loads((ckpt / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8"}
    (ckpt / "config.json").write_text(json.dumps(config))
    with pytest.raises(VskipError, match="quantized checkpoint"):
        load_model(str(ckpt))


# -------------------------------------------------------------------------- positive

def _same_model(loaded, reference) -> None:
    """Equal weights under equal names, and the same outputs on an image prompt."""
    got, want = loaded.model.state_dict(), reference.model.state_dict()
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    prompt = synthetic_prompt(reference.family, reference.config, [3, "image", 4], seed=1)
    with torch.no_grad():
        a = prepare_decoder_inputs(loaded.family, loaded.model, prompt)
        b = prepare_decoder_inputs(reference.family, reference.model, prompt)
    assert torch.equal(a.full_logits, b.full_logits)
    for name in b.feeds:
        assert torch.equal(a.feeds[name], b.feeds[name]), name


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_checkpoints_load(tmp_path, family):
    """Every family, in the key layout save_pretrained writes (legacy names for five of them;
    Gemma-3's lm_head tied to the embeddings, so absent from the file)."""
    reference = tiny_model(family)
    reference.model.save_pretrained(tmp_path / "ckpt")
    _same_model(load_model(str(tmp_path / "ckpt")), reference)


def test_module_names_load_too(tmp_path, saved):
    """A checkpoint keyed by the model's own module names (no legacy renaming) loads alike."""
    reference = tiny_model(FAMILY)
    shutil.copy(saved / "config.json", tmp_path / "config.json")
    save_file({k: v.contiguous() for k, v in reference.model.state_dict().items()}, tmp_path / WEIGHTS,
              metadata={"format": "pt"})
    assert "model.language_model.layers.0.mlp.up_proj.weight" in load_file(tmp_path / WEIGHTS)
    _same_model(load_model(str(tmp_path)), reference)


def test_sharded_checkpoint_loads(tmp_path):
    reference = tiny_model(FAMILY)
    reference.model.save_pretrained(tmp_path / "ckpt", max_shard_size="100KB")
    assert (tmp_path / "ckpt" / INDEX).exists() and len(list((tmp_path / "ckpt").glob("*.safetensors"))) > 1
    _same_model(load_model(str(tmp_path / "ckpt")), reference)
