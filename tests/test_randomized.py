"""Randomized (hypothesis) checks of fused blocks against torchvision's in float64 and
float32, over shapes, strides, projections, layouts and modes, on the CPU backends.
A failure prints the falsifying case."""

from __future__ import annotations

import pytest
import torch
from conftest import CPU_BACKENDS, make_blocks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_blocks import check, run_pair

CASES = st.fixed_dictionaries({
    "kind": st.sampled_from(["bottleneck", "basic"]),
    "inplanes": st.integers(2, 13),
    "planes": st.integers(2, 7),
    "stride": st.sampled_from([1, 2]),
    "batch": st.integers(1, 3),
    "height": st.integers(4, 9),
    "width": st.integers(4, 9),
    "dtype": st.sampled_from([torch.float64, torch.float32]),
    "train": st.booleans(),
    "channels_last": st.booleans(),
    "seed": st.integers(0, 2**31 - 1),
})


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=CASES)
def test_random_blocks_match_torchvision(backend, case):
    torch.manual_seed(case["seed"])
    expansion = 4 if case["kind"] == "bottleneck" else 1
    out_channels = case["planes"] * expansion
    # A projection wherever torchvision's ResNet would put one.
    projection = case["stride"] != 1 or case["inplanes"] != out_channels
    out_hw = [(s - 1) // case["stride"] + 1 for s in (case["height"], case["width"])]
    if case["train"]:
        # Batch statistics over a handful of values make BN's backward ill-conditioned
        # (float64 results then differ by summation order alone): keep >= 8 per channel.
        case["batch"] = max(case["batch"], -(-8 // (out_hw[0] * out_hw[1])))
    tv, fused = make_blocks(case["kind"], case["inplanes"], case["planes"], case["stride"],
                            projection, backend=backend)
    dtype = case["dtype"]
    x = torch.randn(case["batch"], case["inplanes"], case["height"], case["width"],
                    dtype=dtype) + 0.2
    if case["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    check(run_pair(tv, fused.to(dtype), x, case["train"]), dtype)
