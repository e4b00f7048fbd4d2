"""vskip_compile.bench.timing and the summary: schedule and statistics on a fake clock.

Every expected number is worked out by hand in the comment beside it.
"""

from __future__ import annotations

import pytest

from vskip_compile.bench import Config, measure, paired_ratios, realization, round_order, stats, summarize


class FakeClock:
    """perf_counter stand-in: time moves only when a config 'runs'."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_configs(clock: FakeClock, durations: dict[str, list[float]], calls: list[str]) -> list[Config]:
    """Configs "<backend>:<plan>" whose n-th run takes durations[name][n] on ``clock`` and logs its name."""

    def runner(name):
        def run():
            clock.now += durations[name][sum(c == name for c in calls)]
            calls.append(name)
        return run

    return [Config(name, *name.split(":"), runner(name)) for name in durations]


def test_round_order_rotates_so_every_config_takes_every_place():
    orders = [round_order(4, r) for r in range(4)]
    assert orders == [[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1], [3, 0, 1, 2]]
    for place in range(4):
        assert sorted(order[place] for order in orders) == [0, 1, 2, 3]


def test_measure_interleaves_warmup_and_rounds_on_a_fake_clock():
    clock, calls = FakeClock(), []
    durations = {"ort-cpu:vanilla": [9, 8, 1, 2, 3], "ort-cpu:a": [7, 6, 4, 5, 6], "ort-cpu:b": [5, 5, 7, 8, 9]}
    configs = fake_configs(clock, durations, calls)
    log = []
    measure(configs, warmup=2, rounds=3, clock=clock, progress=log.append)

    v, a, b = "ort-cpu:vanilla", "ort-cpu:a", "ort-cpu:b"
    assert calls == [v, a, b, a, b, v,            # warm-up 1 and 2
                     b, v, a, v, a, b, a, b, v]   # rounds 1-3 continue the rotation
    assert configs[0].warmup_times == [9, 8] and configs[0].times == [1, 2, 3]
    assert configs[1].times == [4, 5, 6] and configs[2].times == [7, 8, 9]
    assert len(log) == 15 and log[0].startswith("warm-up 1/2: ort-cpu:vanilla")
    assert log[6].startswith("round 1/3: ort-cpu:b")


def test_stats_of_a_known_sample():
    s = stats([5.0, 1.0, 4.0, 2.0, 3.0])
    assert s == {"median": 3.0, "min": 1.0, "max": 5.0, "p25": 2.0, "p75": 4.0, "iqr": 2.0, "mean": 3.0, "n": 5}


def test_summary_per_backend_blocks_and_ratios():
    clock, calls = FakeClock(), []
    durations = {"ort-cpu:vanilla": [2.0, 4.0, 6.0], "ort-cpu:p": [1.0, 2.0, 2.0],
                 "torch:vanilla": [8.0, 8.0, 8.0], "torch:p": [4.0, 8.0, 2.0]}
    configs = fake_configs(clock, durations, calls)
    measure(configs, warmup=0, rounds=3, clock=clock)
    rows, plans, vanilla = summarize(configs, {"p": 3.0})

    assert [r["name"] for r in rows] == list(durations)
    assert [r["backend"] for r in rows] == ["ort-cpu", "ort-cpu", "torch", "torch"]
    assert rows[0]["median_s"] == 4.0 and rows[0]["times_s"] == [2.0, 4.0, 6.0] and rows[0]["n"] == 3
    (plan,) = plans
    # The first backend's block, at the top level.
    assert plan["median_s"] == 2.0
    assert plan["speedup"] == 2.0                                   # 4 / 2
    assert plan["paired_speedup"]["median"] == 2.0                  # median of 2/1, 4/2, 6/2 = 2, 2, 3
    assert plan["paired_speedup"]["max"] == 3.0
    assert plan["realization"] == pytest.approx(0.5)                # (2 - 1) / (3 - 1)
    assert plan["paired_realization"] == pytest.approx(0.5)         # (2 - 1) / (3 - 1)
    # Every backend's block, the first one's equal to the top level.
    assert set(plan["backends"]) == {"ort-cpu", "torch"}
    assert plan["backends"]["ort-cpu"]["speedup"] == 2.0
    assert plan["backends"]["torch"]["median_s"] == 4.0             # median of 4, 8, 2
    assert plan["backends"]["torch"]["speedup"] == 2.0              # 8 / 4
    assert plan["backends"]["torch"]["paired_speedup"]["median"] == 2.0   # median of 8/4, 8/8, 8/2 = 2, 1, 4
    assert plan["backends"]["torch"]["realization"] == pytest.approx(0.5)
    # The first backend's time over the other's.
    ratio = plan["ratios"]["ort-cpu/torch"]
    assert ratio["ratio_of_medians"] == 0.5                          # 2 / 4
    assert ratio["paired"]["median"] == 0.25                         # median of 1/4, 2/8, 2/2 = .25, .25, 1
    assert set(plan["ratios"]) == {"ort-cpu/torch"}
    # The vanilla block.
    assert vanilla["median_s"] == 4.0
    assert vanilla["backends"] == {"ort-cpu": {"median_s": 4.0}, "torch": {"median_s": 8.0}}
    assert vanilla["ratios"]["ort-cpu/torch"]["ratio_of_medians"] == 0.5       # 4 / 8
    assert vanilla["ratios"]["ort-cpu/torch"]["paired"]["median"] == 0.5       # median of .25, .5, .75
    assert vanilla["ratios"]["ort-cpu/torch"]["paired"]["p25"] == 0.375        # halfway from .25 to .5


def test_summary_of_one_backend_has_no_ratios():
    clock, calls = FakeClock(), []
    configs = fake_configs(clock, {"ort-cpu:vanilla": [3.0], "ort-cpu:p": [1.0]}, calls)
    measure(configs, warmup=0, rounds=1, clock=clock)
    _, (plan,), vanilla = summarize(configs, {"p": 1.0})
    assert plan["speedup"] == 3.0 and plan["ratios"] == {} and vanilla["ratios"] == {}
    assert plan["realization"] is None                              # ideal 1: nothing to realise


def test_paired_ratios_need_the_same_rounds():
    assert paired_ratios([2, 6], [1, 3]) == [2, 2]
    with pytest.raises(ValueError):
        paired_ratios([1, 2], [1])


def test_realization_formula():
    assert realization(1.5, 2.0) == pytest.approx(0.5)
    assert realization(2.0, 2.0) == pytest.approx(1.0)
    assert realization(0.9, 2.0) == pytest.approx(-0.1)   # slower than vanilla: negative
    assert realization(1.1, 1.0) is None                   # nothing to realise (empty plan)
    assert realization(None, 2.0) is None
