"""vskip_compile.bench.workload: the prompt's mask, its description and the random feeds."""

from __future__ import annotations

import numpy as np
import pytest

from vskip_compile.backends import TensorSpec
from vskip_compile.bench import MAX_ROWS, config_feeds, default_visual, synthesize_feeds
from vskip_compile.bench.workload import check_visual, describe, record
from vskip_compile.core.errors import VskipError


def mask(*runs: tuple[int, bool]) -> np.ndarray:
    return np.concatenate([np.full(n, v, dtype=bool) for n, v in runs])


def test_the_default_prompt_is_16_text_1024_visual_48_text():
    visual = default_visual()
    assert visual.dtype == np.bool_ and visual.shape == (1088,)
    assert not visual[:16].any() and visual[16:1040].all() and not visual[1040:].any()
    assert record(visual) == {"sequence_length": 1088, "visual_rows": 1024, "text_rows": 64,
                              "layout": "16 text + 1024 visual + 48 text", "visual_ranges": "16:1040"}


def test_describe_names_every_run():
    assert describe(mask((2, False), (6, True), (2, False))) == "2 text + 6 visual + 2 text"
    assert describe(mask((3, True), (1, False))) == "0 text + 3 visual + 1 text"
    assert describe(mask((1, False), (2, True), (1, False), (3, True), (1, False))) == \
        "1 text + 2 visual + 1 text + 3 visual + 1 text"
    assert describe(mask((4, False))) == "4 text + 0 visual + 0 text"
    assert record(mask((1, False), (2, True), (1, False), (3, True), (1, False)))["visual_ranges"] == "1:3,4:7"


@pytest.mark.parametrize("value, message", [
    ([False, True, False], "1-D numpy bool array"),
    (np.zeros(4, dtype=np.int64), "1-D numpy bool array"),
    (np.zeros((1, 4), dtype=bool), "1-D numpy bool array"),
    (np.zeros(0, dtype=bool), "1-131072 rows"),
    (np.zeros(MAX_ROWS + 1, dtype=bool), "1-131072 rows"),
    (np.array([False, True]), "row 1 is visual"),
])
def test_a_mask_bench_cannot_time_is_refused_in_one_line(value, message):
    with pytest.raises(VskipError, match=message) as info:
        check_visual(value)
    assert "\n" not in str(info.value)


def test_synthesized_feeds_cover_the_family_inputs():
    visual = mask((1, False), (6, True), (3, False))
    inputs = [TensorSpec("inputs_embeds", ("batch", "seq", 8), np.float32),
              TensorSpec("attention_mask", ("batch", "seq"), np.int64),
              TensorSpec("position_ids", (3, "batch", "seq"), np.int64),
              TensorSpec("visual_pos_masks", ("batch", "seq"), np.bool_),
              TensorSpec("deepstack_visual_embeds", (2, "visual", 8), np.float32),
              TensorSpec("vskip_text_rows", ("n",), np.int64)]
    feeds, notes = synthesize_feeds(inputs, visual, 8)
    assert feeds["inputs_embeds"].shape == (1, 10, 8) and feeds["inputs_embeds"].dtype == np.float32
    assert feeds["position_ids"].shape == (3, 1, 10) and feeds["position_ids"][2, 0, -1] == 9
    assert feeds["visual_pos_masks"][0].tolist() == visual.tolist()
    assert feeds["deepstack_visual_embeds"].shape == (2, 6, 8)
    assert "vskip_text_rows" not in feeds and set(notes) == set(feeds)
    with pytest.raises(VskipError, match="pixel_values"):
        synthesize_feeds([TensorSpec("pixel_values", (1, 3, 8, 8), np.float32)], visual, 8)


def test_inputs_without_a_dtype_get_the_exports_types():
    visual = mask((2, False), (2, True), (1, False))
    inputs = [TensorSpec("inputs_embeds", (1, "seq", 4), None), TensorSpec("attention_mask", (1, "seq"), None),
              TensorSpec("position_ids", (1, "seq"), None)]
    feeds, _ = synthesize_feeds(inputs, visual, 4)
    assert [feeds[n].dtype for n in ("inputs_embeds", "attention_mask", "position_ids")] == \
        [np.float32, np.int64, np.int64]


def test_config_feeds_add_the_row_inputs_and_refuse_new_inputs():
    visual = mask((2, False), (3, True), (2, False))
    base = {"inputs_embeds": np.zeros((1, 7, 4), np.float32)}
    compiled = [TensorSpec("inputs_embeds", (1, "seq", 4), np.float32),
                TensorSpec("vskip_text_rows", ("n",), np.int64), TensorSpec("vskip_suffix_rows", ("m",), np.int64)]
    feeds = config_feeds(compiled, base, visual)
    assert feeds["vskip_text_rows"].tolist() == [0, 1, 5, 6] and feeds["vskip_suffix_rows"].tolist() == [5, 6]
    assert feeds["inputs_embeds"] is base["inputs_embeds"]
    with pytest.raises(VskipError, match="g.onnx: takes inputs the vanilla graph does not \\(extra\\)"):
        config_feeds([*compiled, TensorSpec("extra", (1,), np.int64)], base, visual, "g.onnx")
