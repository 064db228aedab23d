"""Structure of the Triton launches at ResNet-50 shapes, from the launch plans the launchers
execute (fused_resnet/triton/plans.py), without a GPU: reductions never walk more than
MAX_SERIAL_STEPS dependent steps, wgrad fills an H100 with at least two waves, every op
stays within its launch budget, and no config passes the family's shared memory."""

from __future__ import annotations

import pytest

from fused_resnet.triton import configs, plans

H100 = configs.TARGETS["sm90"]
REDUCTIONS = ("column_sum", "merge_stats")


def resnet50_convs(batch: int):
    """(C_in, C_out, kernel, stride, H_in) of every distinct ResNet-50 conv."""
    out = [(3, 64, 7, 2, 224)]
    inplanes = 64
    for planes, stride, hw in ((64, 1, 56), (128, 2, 56), (256, 2, 28), (512, 2, 14)):
        hw_out = hw // stride
        out += [(inplanes, planes, 1, 1, hw), (planes, planes, 3, stride, hw),
                (planes, planes * 4, 1, 1, hw_out), (inplanes, planes * 4, 1, stride, hw),
                (planes * 4, planes, 1, 1, hw_out), (planes, planes, 3, 1, hw_out)]
        inplanes = planes * 4
    return [(batch, *c) for c in out]


def _op_plans(batch, c_in, c_out, k, s, h, dc, target=H100):
    h_out = (h + 2 * (k // 2) - k) // s + 1
    return {
        "fwd_train": plans.conv_fwd_plan(batch, c_in, h_out, h_out, c_out, k, s, dc, target,
                                         True),
        "fwd_eval": plans.conv_fwd_plan(batch, c_in, h_out, h_out, c_out, k, s, dc, target,
                                        False),
        "dgrad": plans.conv_dgrad_plan(batch, c_in, h, h, c_out, k, s, dc, target, True),
        "wgrad": plans.conv_wgrad_plan(batch, c_in, c_out, h_out, h_out, k, s, dc, target),
        "block_end_bwd": plans.block_end_bwd_plan(batch * h_out * h_out, c_out, dc, target,
                                                  True),
    }


CASES = [(b, *conv) for b in (128, 256) for conv in resnet50_convs(b)]


def _id(case):
    return "b{}-{}x{}k{}s{}h{}".format(*case[1:])


@pytest.mark.parametrize("dc", configs.DTYPE_CLASSES)
@pytest.mark.parametrize("case", CASES, ids=map(_id, CASES))
def test_reductions_walk_at_most_64_steps(case, dc):
    for name, plan in _op_plans(*case[1:], dc).items():
        for launch in plan:
            if launch.kernel in REDUCTIONS:
                assert launch.serial_steps <= configs.MAX_SERIAL_STEPS, (name, launch)


@pytest.mark.parametrize("batch", [32, 64, 128, 256])
@pytest.mark.parametrize("dc", configs.DTYPE_CLASSES)
def test_wgrad_launches_two_waves_on_132_sms(batch, dc):
    for conv in resnet50_convs(batch):
        gemm = _op_plans(*conv, dc)["wgrad"].launches[0]
        assert gemm.waves(H100.sms) >= 2, (conv, gemm.grid, gemm.config)


@pytest.mark.parametrize("dc", configs.DTYPE_CLASSES)
def test_launch_budget_at_batch_128(dc):
    """Eval forward: one kernel per conv. Training: the GEMM plus at most three merge
    levels (statistics) or two column-sum levels per sum."""
    for conv in resnet50_convs(128):
        p = _op_plans(*conv, dc)
        assert [launch.kernel for launch in p["fwd_eval"]] == ["conv_fwd"]
        assert len(p["fwd_train"]) <= 1 + 3, (conv, p["fwd_train"])
        assert len(p["dgrad"]) <= 1 + 2 * 2, (conv, p["dgrad"])
        assert len(p["wgrad"]) <= 1 + 1, (conv, p["wgrad"])
        assert len(p["block_end_bwd"]) <= 1 + 3 * 2, (conv, p["block_end_bwd"])
    assert len(plans.bn_finalize_plan(2048, H100)) == 1
    assert len(plans.block_end_plan(128 * 56 * 56, 256, dc, H100)) == 1


@pytest.mark.parametrize("family", sorted(configs.TARGETS))
@pytest.mark.parametrize("dc", configs.DTYPE_CLASSES)
def test_every_launch_fits_the_family(family, dc):
    target = configs.TARGETS[family]
    for conv in resnet50_convs(128):
        for plan in _op_plans(*conv, dc, target=target).values():
            for launch in plan:
                assert launch.smem_bytes <= target.shared_limit, (family, conv, launch)


def test_unknown_gpu_never_gets_an_oversized_config():
    """A device with less shared memory than its family's tables assume falls back."""
    tiny = configs.TARGETS["sm90"].with_device(64 * 1024, 16)
    for conv in resnet50_convs(32):
        for plan in _op_plans(*conv, "fp32", target=tiny).values():
            for launch in plan:
                assert launch.smem_bytes <= 64 * 1024, (conv, launch)


def test_config_choice_is_a_pure_function():
    """No autotuning: the same shape picks the same config in every process."""
    for conv in resnet50_convs(128):
        assert _op_plans(*conv, "16bit") == _op_plans(*conv, "16bit")


def test_empty_batch_launches_nothing():
    assert len(plans.conv_fwd_plan(0, 64, 56, 56, 64, 3, 1, "16bit", H100, True)) == 0
    assert len(plans.conv_dgrad_plan(0, 64, 56, 56, 64, 3, 1, "16bit", H100, True)) == 0


@pytest.mark.parametrize("dc", configs.DTYPE_CLASSES)
def test_dgrad_skips_stride_holes(dc):
    """By stride phase: a stride-s dgrad walks ceil(k/s)^2 taps per phase, not k^2, and
    does the forward's arithmetic, not s^2 times it."""
    for conv in resnet50_convs(128):
        batch, c_in, c_out, k, s, h = conv
        p = _op_plans(*conv, dc)
        gemm = p["dgrad"].launches[0]
        assert gemm.grid[2] == s * s
        assert gemm.serial_steps == plans.cdiv(k, s) ** 2 * plans.cdiv(c_out, gemm.config.block_k)
        assert gemm.flops == p["fwd_eval"].launches[0].flops
