"""The CPU benchmark's interleaved timing (benchmarks/harness/timing.py): rounds of one
block per provider in turn, and ratios as medians over rounds."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from harness.timing import round_ratios, time_interleaved  # noqa: E402


def _runs(log: list[str]) -> list[str]:
    """The log with repeats collapsed: which step ran, block by block."""
    return [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]


def test_rounds_alternate_between_providers():
    log: list[str] = []
    steps = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c")}
    times = time_interleaved(steps, rounds=4, block_s=1e-4)
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert _runs(log)[-12:] == ["a", "b", "c"] * 4


def test_ratios_are_medians_of_per_round_ratios():
    # A load spike in round 2 slows both providers: the per-round ratio stays 2.
    times = {"eager": [2.0, 20.0, 2.0], "fused": [1.0, 10.0, 1.0]}
    assert round_ratios(times, "eager") == pytest.approx({"eager": 1.0, "fused": 2.0})
    assert round_ratios({"eager": [2.0, 6.0, 2.0], "fused": [1.0, 3.0, 2.0]},
                        "eager")["fused"] == pytest.approx(2.0)
