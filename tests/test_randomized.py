"""Randomized (hypothesis) checks of fused blocks against torchvision's in float64 and
float32, over shapes, strides, projections, layouts and modes, on the CPU backends.
A failure prints the falsifying case."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CPU_BACKENDS_ONE_FAST, TOLERANCE, make_blocks, rel_err
from hypothesis import HealthCheck, example, given, settings
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


@pytest.mark.parametrize("backend", CPU_BACKENDS_ONE_FAST)
# derandomize: CI runs the same examples every time, so a red CI is the change's doing (new
# failures are looked for by hand: pytest --hypothesis-seed=random).
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=CASES)
# Found by CI: fp32 ill-conditioned downsample gradient (error 0.49 vs float64).
@example(case={"kind": "basic", "inplanes": 4, "planes": 2, "stride": 2, "batch": 1,
               "height": 4, "width": 6, "dtype": torch.float32, "train": True,
               "channels_last": True, "seed": 1747})
# Found by hypothesis: fp32 bn2.bias.grad of a 1x9x4 batch, 1.2e-5 from float64 (torchvision's
# 6e-7): a sum of BN-backward outputs that nearly cancel.
@example(case={"kind": "bottleneck", "inplanes": 11, "planes": 2, "stride": 1, "batch": 1,
               "height": 9, "width": 4, "dtype": torch.float32, "train": True,
               "channels_last": True, "seed": 2})
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
    result = run_pair(tv, fused.to(dtype), x, case["train"])
    if dtype == torch.float64:
        check(result, dtype)
        return
    # float32: random tiny shapes can make a training-mode gradient ill-conditioned (BN's
    # backward removes the mean and xhat components; what is left may be pure rounding), so
    # each tensor may be as far from float64 as 2x torchvision's own float32 result is. The
    # BN parameter gradients are sums of the next layer's BN-backward outputs, which cancel
    # by construction; their rounding error depends on the order of operations, in which the
    # fused dy = a*dz + b*y + c and torchvision's dz - mean(dz) - ... differ: up to 1e-4.
    plain = run_pair(tv, copy.deepcopy(tv).float(), x, case["train"])
    for what, (got, want) in result.items():
        if what.endswith("num_batches_tracked"):
            assert torch.equal(got, want), what
            continue
        bn_param = what.startswith(("bn", "downsample.1.")) and what.endswith(".grad")
        floor = 1e-4 if bn_param else TOLERANCE[dtype]
        err, tol = rel_err(got, want), max(floor, 2 * rel_err(*plain[what]))
        assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


@pytest.mark.parametrize("backend", CPU_BACKENDS_ONE_FAST)
def test_strided_1x1_weight_gradient_is_stable(backend):
    """A case hypothesis found: oneDNN's float32 weight gradient of a strided 1x1 conv on
    channels_last input (the projection shortcut) was wrong now and then -- about 1 block in
    12 here, in eager torchvision too. The CPU backends now compute it at stride 1 over the
    pixels the conv reads; 40 repeats would miss the old bug ~3% of the time."""
    for _ in range(40):
        torch.manual_seed(2)
        tv, fused = make_blocks("bottleneck", 4, 5, 2, True, backend=backend)
        x = (torch.randn(2, 4, 8, 4) + 0.2).contiguous(memory_format=torch.channels_last)
        got, want = run_pair(tv, fused.float(), x, True)["downsample.0.weight.grad"]
        assert rel_err(got, want) <= TOLERANCE[torch.float32], rel_err(got, want)
