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
