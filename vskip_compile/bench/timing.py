"""Timing and its statistics: the rotating schedule, the clock, medians and paired ratios.

Every config runs ``warmup`` times, then ``rounds`` rounds in which every config runs
once. The order rotates by one config per round (round r starts with config r mod k), so
the slow first iterations of these VMs and any drift of the machine hit every config
alike, and each config is timed right next to the vanilla graph. Rounds that are a
multiple of the number of configs put every config in every place of the order equally
often. Nothing here knows what a config runs: a backend session, or a fake in a test.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

VANILLA = "vanilla"


@dataclass
class Config:
    """One thing to time: a graph (under a plan) on one backend."""

    name: str                       # "<backend>:<plan>", e.g. "ort-cpu:vanilla", "torch:opskip_like"
    backend: str                    # the backend's registry name
    plan: str                       # a plan label, VANILLA for the source graph / no plan
    run: Callable[[], object]
    graph: str | None = None
    times: list[float] = field(default_factory=list)
    warmup_times: list[float] = field(default_factory=list)


def config_name(backend: str, plan: str) -> str:
    return f"{backend}:{plan}"


def round_order(num_configs: int, round_index: int) -> list[int]:
    """Config indices for one round: the list rotated left by ``round_index``."""
    start = round_index % num_configs
    return list(range(start, num_configs)) + list(range(start))


def measure(configs: list[Config], warmup: int, rounds: int, clock: Callable[[], float] = time.perf_counter,
            progress: Callable[[str], None] | None = None) -> None:
    """Fill each config's ``warmup_times`` and ``times``; warm-up rounds rotate too."""
    total = warmup + rounds
    for index in range(total):
        warming = index < warmup
        label = f"warm-up {index + 1}/{warmup}" if warming else f"round {index - warmup + 1}/{rounds}"
        for position in round_order(len(configs), index):
            config = configs[position]
            start = clock()
            config.run()
            elapsed = clock() - start
            (config.warmup_times if warming else config.times).append(elapsed)
            if progress:
                progress(f"{label}: {config.name} {elapsed:.3f} s")


def stats(values: list[float]) -> dict:
    """Median and spread of a sample (numpy's linear-interpolation percentiles)."""
    array = np.asarray(values, dtype=np.float64)
    p25, median, p75 = np.percentile(array, [25, 50, 75])
    return {"median": float(median), "min": float(array.min()), "max": float(array.max()),
            "p25": float(p25), "p75": float(p75), "iqr": float(p75 - p25), "mean": float(array.mean()),
            "n": int(array.size)}


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Round-by-round ratios of two configs timed in the same rounds."""
    if len(numerator) != len(denominator):
        raise ValueError("paired ratios need the same number of rounds")
    return [a / b for a, b in zip(numerator, denominator)]


def ratio(numerator: Config, denominator: Config) -> dict:
    """One config's time over another's: the ratio of medians and the per-round ratios' stats."""
    return {"ratio_of_medians": float(np.median(numerator.times) / np.median(denominator.times)),
            "paired": stats(paired_ratios(numerator.times, denominator.times))}


def realization(speedup: float | None, ideal: float | None) -> float | None:
    """(measured - 1) / (ideal - 1): the share of the ideal gain that was measured.

    None when the ideal speedup is 1 (nothing to realise, e.g. an empty plan).
    """
    if speedup is None or ideal is None or abs(ideal - 1.0) < 1e-9:
        return None
    return (speedup - 1.0) / (ideal - 1.0)


def speedup_block(vanilla: Config, plan: Config, ideal: float | None) -> dict:
    """A plan's timing on one backend against that backend's vanilla graph."""
    speedup = float(np.median(vanilla.times) / np.median(plan.times))
    paired = stats(paired_ratios(vanilla.times, plan.times))
    return {"median_s": float(np.median(plan.times)), "speedup": speedup, "paired_speedup": paired,
            "realization": realization(speedup, ideal), "paired_realization": realization(paired["median"], ideal)}
