"""The embedding table file: round trips, refusals of damaged files, and the rows an
export writes equal the text model's own input embeddings (Gemma3's scale included)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from conftest import tiny_model
from vskip_compile.core.dtypes import numpy_dtype
from vskip_compile.core.errors import VskipError
from vskip_compile.core.embedding import embed, read_table, table_chunks, write_table


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_round_trip_in_chunks(tmp_path, dtype):
    rows = np.random.default_rng(0).standard_normal((37, 8)).astype(numpy_dtype(dtype))
    path = tmp_path / "t.safetensors"
    write_table(path, 37, 8, dtype, table_chunks(lambda a, b: rows[a:b].astype(np.float32), 37, block=10))
    table = read_table(path)
    assert table.dtype == numpy_dtype(dtype) and table.shape == (37, 8)
    np.testing.assert_array_equal(np.asarray(table).view(np.uint8), rows.view(np.uint8))
    np.testing.assert_array_equal(embed(table, np.array([[3, 0], [36, 3]])).astype(np.float32),
                                  rows[[3, 0, 36, 3]].reshape(2, 2, 8).astype(np.float32))
    with pytest.raises(VskipError, match="token id 37 is outside the embedding table's 37 rows"):
        embed(table, np.array([[37]]))


def _file(tmp_path, header: dict | bytes, data: bytes = b"", length: int | None = None):
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(body) if length is None else length) + body + data)
    return path


@pytest.mark.parametrize("header, data, length, message", [
    ({}, b"", 1 << 40, "declares a 1099511627776-byte header"),
    (b"{not json", b"", None, "no valid safetensors header"),
    ({"other": {}}, b"", None, "holds no tensor named 'embedding'"),
    ({"embedding": {"dtype": "I64", "shape": [2, 2], "data_offsets": [0, 32]}}, b"", None, "dtype 'I64'"),
    ({"embedding": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"", None, "shape must be"),
    ({"embedding": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}, b"", None, "do not hold"),
    ({"embedding": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\0" * 8, None, "is truncated"),
])
def test_damaged_tables_are_refused_in_one_line(tmp_path, header, data, length, message):
    with pytest.raises(VskipError, match=message):
        read_table(_file(tmp_path, header, data, length))


def test_short_file_is_refused(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\1\2")
    with pytest.raises(VskipError, match="shorter than a safetensors header"):
        read_table(path)


@pytest.mark.parametrize("family", ["gemma3", "qwen2_vl"])
def test_exported_table_is_the_models_embedding(family, exported):
    from vskip_compile.core.sidecar import load_sidecar_file

    directory = exported(family)
    sidecar = load_sidecar_file(directory / "vskip.json")
    table = read_table(directory / sidecar.embedding)
    loaded = tiny_model(family)
    ids = torch.tensor([[0, 5, 17, loaded.text_config.vocab_size - 1]])
    with torch.no_grad():
        expected = loaded.text_model.get_input_embeddings()(ids)[0].numpy()
    np.testing.assert_array_equal(embed(table, ids.numpy())[0], expected)
