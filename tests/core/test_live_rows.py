"""The one statement of which rows each plan action keeps live, and the host-side rows."""

from __future__ import annotations

import numpy as np
import pytest

from vskip_compile.core.errors import VskipError
from vskip_compile.core.plan import Action, FreezeScope, Plan, Rows, live_rows
from vskip_compile.core.visual_rows import (SUFFIX_ROWS, TEXT_ROWS, format_ranges, live_mask, parse_ranges,
                                            row_feeds, row_inputs, workload)

A, F, V, P = Rows.ALL, Rows.TEXT, FreezeScope.VISUAL, FreezeScope.PREFIX_THROUGH_VISUAL


@pytest.mark.parametrize("action, scope, expected", [
    # DESIGN.md section 2, written out by hand: (attention rows, FFN rows)
    (Action.FULL, V, (A, A)), (Action.FULL, P, (A, A)),
    (Action.SKIP_ATTENTION, V, (F, A)), (Action.SKIP_ATTENTION, P, (F, A)),
    (Action.SKIP_FFN, V, (A, F)), (Action.SKIP_FFN, P, (A, F)),
    (Action.FREEZE, V, (F, F)), (Action.FREEZE, P, (Rows.SUFFIX, Rows.SUFFIX)),
])
def test_live_rows(action, scope, expected):
    assert live_rows(action, scope) == expected


def test_live_masks_of_a_two_image_prompt():
    visual = parse_ranges("2:4,6:8", 10)                 # rows 2, 3, 6, 7 are visual
    assert np.flatnonzero(live_mask(Rows.TEXT, visual)).tolist() == [0, 1, 4, 5, 8, 9]
    assert np.flatnonzero(live_mask(Rows.SUFFIX, visual)).tolist() == [8, 9]
    assert live_mask(Rows.ALL, visual).all()
    batch = np.stack([visual, visual])                   # [B, S] masks keep their shape
    assert live_mask(Rows.SUFFIX, batch).shape == (2, 10)


def test_row_inputs_follow_the_plan():
    assert row_inputs(Plan.empty(3)) == [TEXT_ROWS]
    assert row_inputs(Plan((Action.FULL, Action.FREEZE), P)) == [TEXT_ROWS, SUFFIX_ROWS]
    assert row_inputs(Plan((Action.SKIP_ATTENTION, Action.SKIP_FFN), P)) == [TEXT_ROWS]  # scope: freeze only


def test_row_feeds_and_their_errors():
    feeds = row_feeds(parse_ranges("2:4,6:8", 10), [TEXT_ROWS, SUFFIX_ROWS])
    assert feeds[TEXT_ROWS].tolist() == [0, 1, 4, 5, 8, 9] and feeds[SUFFIX_ROWS].tolist() == [8, 9]
    assert feeds[TEXT_ROWS].dtype == np.int64
    with pytest.raises(VskipError, match="every row is visual"):
        row_feeds(np.ones(4, bool), [TEXT_ROWS])
    with pytest.raises(VskipError, match="ends with a visual row"):
        row_feeds(parse_ranges("2:4", 4), [TEXT_ROWS, SUFFIX_ROWS])


def test_ranges_round_trip():
    for text in ("5:21,30:46", "0:1", "3:4,5:6"):
        assert format_ranges(parse_ranges(text, 50)) == text
    assert format_ranges(np.zeros(5, bool)) == ""


def test_workload_defaults_and_bounds():
    visual = workload(None, None, 2**17)
    assert visual.size == 1088 and format_ranges(visual) == "16:1040"
    with pytest.raises(VskipError, match="--rows must be a row count in 1-100"):
        workload(101, "0:1", 100)
    with pytest.raises(VskipError, match="default --visual-rows 16:1040 does not fit --rows 64"):
        workload(64, None, 2**17)
    with pytest.raises(VskipError, match="must end with a text row"):
        workload(8, "4:8", 2**17)
