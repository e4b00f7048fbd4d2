"""The Qwen-VL vision feeds (numpy, ``vskip_compile.host.vision_qwen``) against transformers.

Each host table is held to what transformers' own grid helpers compute for the same grids
(``transformers.vision_utils``, which the towers call in their forward): rotary positions,
per-frame attention segments, Qwen2.5-VL's windows, Qwen3-VL's position interpolation. The
exported graphs are then run on grids the trace never saw (non-square, several images, a
two-frame grid) against the tower's own forward, and Qwen2-VL's graph is checked in fp16.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from transformers import vision_utils

from conftest import tiny_model
from helpers import assert_close
from vskip_compile.core.errors import VskipError
from vskip_compile.host import vision_feeds
from vskip_compile.host.vision_qwen import (QWEN3_INTERPOLATION, frame_segments, patch_coordinates,
                                            position_interpolation, window_order)
from vskip_compile.models.export import _export_one
from vskip_compile.models.inputs import synthetic_prompt
from vskip_compile.models.vision import config_dict, decoder_image_rows, export_vision, host_feeds

QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

# (t, h, w) in patches, merge 2: square and not, one image and several, tall and wide,
# a two-frame grid (a video's layout), and a grid wider than the tiny windows and table.
GRIDS = [
    [(1, 4, 8)],
    [(1, 6, 4), (1, 4, 8)],
    [(2, 4, 6)],
    [(1, 2, 2), (1, 10, 6), (3, 6, 8)],
    [(1, 16, 2), (1, 2, 14)],
    [(1, 34, 22)],
]
GRID_IDS = ["-".join("x".join(map(str, g)) for g in grids) for grids in GRIDS]


def _grid_array(grids) -> np.ndarray:
    return np.array(grids, dtype=np.int64)


def _blocks(bounds: np.ndarray, n: int) -> np.ndarray:
    """[n, n] bool block-diagonal mask of the segments ``bounds`` (cumulative, from 0)."""
    segment = np.searchsorted(np.asarray(bounds)[1:], np.arange(n), side="right")
    return segment[:, None] == segment[None, :]


def _segment_mask(segments: np.ndarray, unit: int) -> np.ndarray:
    """The [patches, patches] mask the graph builds from per-token segment ids."""
    patches = np.repeat(segments, unit)
    return patches[:, None] == patches[None, :]


# --- host tables against transformers' helpers ------------------------------------------

@pytest.mark.parametrize("grids", GRIDS, ids=GRID_IDS)
def test_rotary_positions_match_transformers(grids):
    truth = vision_utils.get_vision_position_ids(torch.tensor(grids), 2)
    np.testing.assert_array_equal(patch_coordinates(_grid_array(grids), 2), truth.numpy())


@pytest.mark.parametrize("grids", GRIDS, ids=GRID_IDS)
def test_full_attention_segments_match_cu_seqlens(grids):
    cu_seqlens = vision_utils.get_vision_cu_seqlens(torch.tensor(grids)).numpy()
    segments = frame_segments(_grid_array(grids), 2)
    n = int(cu_seqlens[-1])
    assert segments.shape == (n // 4,)
    np.testing.assert_array_equal(_segment_mask(segments, 4), _blocks(cu_seqlens, n))


@pytest.mark.parametrize("window", [1, 2, 4])  # in merged tokens; the tiny preset's is 2, Qwen2.5-VL's 4
@pytest.mark.parametrize("grids", GRIDS, ids=GRID_IDS)
def test_window_order_matches_transformers(grids, window):
    patch = 14
    index, cu_window = vision_utils.get_vision_window_index(
        torch.tensor(grids), spatial_merge_size=2, window_size=window * 2 * patch, patch_size=patch)
    ours, segments = window_order(_grid_array(grids), 2, window)
    np.testing.assert_array_equal(ours, index.numpy())
    cu_window = cu_window.numpy()
    np.testing.assert_array_equal(_segment_mask(segments, 4), _blocks(cu_window, int(cu_window[-1])))


@pytest.mark.parametrize("side", [4, 48])  # the tiny table, and Qwen3-VL's 2304 = 48 x 48 positions
@pytest.mark.parametrize("grids", GRIDS, ids=GRID_IDS)
def test_position_interpolation_matches_transformers(grids, side):
    indices, weights = vision_utils.get_vision_interpolation_indices_and_weights(
        torch.tensor(grids), side, spatial_merge_size=2, **QWEN3_INTERPOLATION)
    ours_indices, ours_weights = position_interpolation(_grid_array(grids), 2, side)
    # Indices are exact; a tap of zero weight may point anywhere (transformers clamps it
    # to the edge too, so they agree there as well).
    np.testing.assert_array_equal(ours_indices, indices.numpy())
    # Both in fp32 with the same roundings: equal to the bit (fp64 weights would miss by 2e-6).
    assert ours_weights.dtype == np.float32
    np.testing.assert_array_equal(ours_weights, weights.numpy())


def test_interpolation_kind_is_the_towers():
    visual = tiny_model("qwen3_vl").model.model.visual
    assert (visual.interpolation_mode, visual.interpolation_align_corners) == (
        QWEN3_INTERPOLATION["mode"], QWEN3_INTERPOLATION["align_corners"])


def test_window_feeds_are_in_window_order():
    loaded = tiny_model("qwen2_5_vl")
    grids = np.array([(1, 6, 10), (2, 4, 4)])
    pixels = np.zeros((int(grids.prod(1).sum()), 96), np.float32)
    feeds = vision_feeds("qwen2_5_vl", config_dict(loaded.model), {"pixel_values": pixels, "image_grid_thw": grids})
    index = feeds["window_index"]
    np.testing.assert_array_equal(index[feeds["window_reverse"]], np.arange(len(index)))
    np.testing.assert_array_equal(feeds["attention_segments"], frame_segments(grids, 2)[index])


# --- bad host inputs ----------------------------------------------------------------

@pytest.mark.parametrize("grid, rows, message", [
    ([[1, 4, 6]], 23, "pixel_values has shape"),
    ([[1, 4, 5]], 20, "not divisible by spatial_merge_size"),
    ([[1, 0, 4]], 0, "non-positive"),
    ([4, 8], 32, "integer \\[images, 3\\]"),
])
@pytest.mark.parametrize("family", QWEN)
def test_bad_grids_are_refused_in_one_line(family, grid, rows, message):
    config = config_dict(tiny_model(family).model)
    inputs = {"pixel_values": np.zeros((rows, 96), np.float32), "image_grid_thw": np.array(grid)}
    with pytest.raises(VskipError, match=message) as caught:
        vision_feeds(family, config, inputs)
    assert "\n" not in str(caught.value)


def test_pixel_width_must_fit_the_patch():
    config = config_dict(tiny_model("qwen2_vl").model)
    with pytest.raises(VskipError, match=r"needs \[32, 96\]"):
        vision_feeds("qwen2_vl", config, {"pixel_values": np.zeros((32, 95), np.float32),
                                          "image_grid_thw": np.array([[1, 4, 8]])})


def test_window_smaller_than_a_token_is_refused():
    config = config_dict(tiny_model("qwen2_5_vl").model)
    config["vision_config"]["window_size"] = 4
    with pytest.raises(VskipError, match="smaller than one merged token"):
        vision_feeds("qwen2_5_vl", config, {"pixel_values": np.zeros((32, 96), np.float32),
                                            "image_grid_thw": np.array([[1, 4, 8]])})


# --- the graphs on grids the trace never saw ---------------------------------------------

@pytest.fixture(scope="module")
def graphs(tmp_path_factory, exported):
    made = {}

    def get(family: str, dtype: str = "float32", opset: int = 20):
        if dtype == "float32" and opset == 20:  # the session's fp32 export holds it
            return tiny_model(family), exported(family) / "vision.onnx"
        if (family, dtype, opset) not in made:
            loaded = _typed_model(family, dtype) if dtype != "float32" else tiny_model(family)
            path = tmp_path_factory.mktemp(f"qwen-vision-{family}-{dtype}-{opset}") / "vision.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_vision(loaded.family, loaded.model, path, opset, False, _export_one)
            made[family, dtype, opset] = (loaded, path)
        return made[family, dtype, opset]

    return get


def _typed_model(family: str, dtype: str):
    from vskip_compile.models.loading import load_model

    return load_model(f"tiny:{family}", dtype=dtype)


@pytest.mark.parametrize("family", QWEN)
def test_graph_has_no_data_dependent_shapes(family, graphs):
    _, path = graphs(family)
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"NonZero", "Compress", "Unique", "Loop", "If", "TopK", "Scan"}
    for value in model.graph.input:
        assert value.type.tensor_type.shape.dim[0].dim_param == "image_tokens", value.name


@pytest.mark.parametrize("opset", [20, 23])
@pytest.mark.parametrize("family", QWEN)
def test_graph_matches_the_tower_on_mixed_grids(family, opset, graphs):
    loaded, path = graphs(family, opset=opset)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    grids = torch.tensor([(1, 6, 10), (2, 4, 4), (1, 2, 2), (1, 8, 6)])
    pixels = torch.randn(int(grids.prod(1).sum()), 96, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        truth = loaded.model.model.visual(pixels, grid_thw=grids)
    outputs = session.run(None, host_feeds(loaded.family, loaded.model,
                                           {"pixel_values": pixels, "image_grid_thw": grids}))
    assert_close(outputs[0], truth.pooler_output, what=f"{family} image_features")
    if family == "qwen3_vl":
        assert_close(outputs[1], torch.stack(truth.deepstack_features), what=f"{family} deepstack_features")


@pytest.mark.parametrize("family", QWEN)
def test_opset_23_graphs_are_clean_for_tensorrt_11(family, graphs):
    """TensorRT's Attention takes a 4-D mask: the masked tower attention gives it one
    (a 2-D mask was a trt11 finding before)."""
    from vskip_compile.trt.lint import lint_graph

    _, path = graphs(family, opset=23)
    assert "Attention" in {node.op_type for node in onnx.load(str(path)).graph.node}
    assert lint_graph(path, "trt11") == []


def test_qwen2_vl_graph_in_float16(graphs):
    """fp16 graph (ORT CPU) against the fp16 model's own rows at the image tokens.

    Both run every op in fp16, rounding after each, with different kernels and summation
    orders, so they may differ by a few units in the last place of the outputs: four fp16
    ulps at the largest output magnitude (measured: one ulp, 2.4e-4 on outputs below 0.5,
    about what the fp16 model itself differs from the fp32 one).
    """
    loaded, path = graphs("qwen2_vl", "float16")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"
    prompt = synthetic_prompt(loaded.family, loaded.config, [3, "image", 2, "image", 1], batch=2, seed=5)
    truth = decoder_image_rows(loaded.family, loaded.model, prompt)["image_features"].float()
    (features,) = session.run(None, host_feeds(loaded.family, loaded.model, prompt.pixels, dtype="float16"))
    assert features.dtype == np.float16 and np.isfinite(features).all()
    ulp = float(np.spacing(np.float16(truth.abs().max())))
    assert_close(features.astype(np.float32), truth, atol=4 * ulp, what="qwen2_vl fp16 image_features")
