"""Shared fixtures: tiny models and their exports, built once per test session."""

from __future__ import annotations

import warnings

import pytest

from vskip_compile.models.family import families

FAMILIES = sorted(families())

_models: dict = {}
_exports: dict = {}


def tiny_model(family: str):
    """The seeded tiny preset of ``family`` (seed 0), loaded once."""
    from vskip_compile.models.loading import load_model

    if family not in _models:
        _models[family] = load_model(f"tiny:{family}", seed=0)
    return _models[family]


@pytest.fixture(scope="session")
def export_root(tmp_path_factory):
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="session")
def exported(export_root):
    """exported(family, opset, decode, dtype) -> directory with prefill.onnx, vskip.json and,
    when ``decode`` (default: fp32 opset 20 only, to keep the suite short), decode.onnx and
    what the runtime needs (vision.onnx where the family has one, the embedding table,
    config.json)."""
    from vskip_compile.models.export import export_model

    def get(family: str, opset: int = 20, decode: bool | None = None, dtype: str = "float32"):
        decode = opset == 20 and dtype == "float32" if decode is None else decode
        for key in ((family, opset, True, dtype), (family, opset, decode, dtype)):
            if key in _exports:
                return _exports[key]
        key = (family, opset, decode, dtype)
        typed = "" if dtype == "float32" else f"-{dtype}"
        directory = export_root / f"{family}-{opset}{typed}{'' if decode else '-prefill'}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_model(f"tiny:{family}", directory, opset=opset, progress=None, decode=decode, dtype=dtype,
                         vision=decode)
        _exports[key] = directory
        return directory

    return get


@pytest.fixture(scope="session")
def checkpoint_export(tmp_path_factory):
    """checkpoint_export(processor) -> (checkpoint, export): the tiny Qwen2-VL written by
    ``save_pretrained`` (with its offline processor's files beside it, or without any),
    then exported whole by ``vskip export CHECKPOINT -o EXPORT``. Built once per kind.

    The export without a processor is traced in one process, prefill, decode and vision in
    turn (the others, where two cores are usable, in two): tests/models/test_export_speed.py
    holds its graphs to the two-process export of the same weights."""
    from vskip_compile.cli import main
    from vskip_compile.models import export
    from vskip_compile.models.processors import save_tiny_processor

    def get(processor: bool):
        if ("checkpoint", processor) not in _exports:
            root = tmp_path_factory.mktemp("checkpoint-processor" if processor else "checkpoint-bare")
            loaded = tiny_model("qwen2_vl")
            loaded.model.save_pretrained(root / "checkpoint")
            if processor:
                save_tiny_processor("qwen2_vl", loaded.config, root / "checkpoint")
            with warnings.catch_warnings(), pytest.MonkeyPatch.context() as patch:
                warnings.simplefilter("ignore")
                if not processor:
                    patch.setattr(export, "usable_cores", lambda: 1)
                assert main(["export", str(root / "checkpoint"), "-o", str(root / "export")]) == 0
            _exports[("checkpoint", processor)] = (root / "checkpoint", root / "export")
        return _exports[("checkpoint", processor)]

    return get
