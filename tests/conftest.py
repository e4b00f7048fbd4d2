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
    """exported(family, opset) -> directory with prefill.onnx, decode.onnx, vskip.json."""
    from vskip_compile.models.export import export_model

    def get(family: str, opset: int = 20):
        key = (family, opset)
        if key not in _exports:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_model(f"tiny:{family}", export_root / f"{family}-{opset}", opset=opset, progress=None)
            _exports[key] = export_root / f"{family}-{opset}"
        return _exports[key]

    return get
