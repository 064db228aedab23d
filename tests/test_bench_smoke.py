"""CI smoke test of benchmarks/bench_blocks.py on the CPU, its interleaved CPU timing, and
the roofline model's numbers and CPU peaks.

The benchmark runs as a subprocess, as a user runs it, at a tiny size (batch 2, spatial
sizes / 4: smaller leaves conv5_x at 1x1, whose training BN over 2 values is ill-conditioned
even for PyTorch). Every row must pass the float64 correctness gate, the JSON must follow
the documented schema and the 16-block summary must be the weighted sum of its rows.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks", "bench_blocks.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import roofline  # noqa: E402

TOP_KEYS = {"device", "torch", "triton", "cuda", "commit", "date", "dtype", "batch", "summary",
            "summary_vs_eager", "network", "rows", "peaks"}
SUMMARY_KEYS = {"eager", "compile", "fused_cuda", "fused_triton", "fused_cpp", "fused_floor"}
ROW_KEYS = {"case", "provider", "mode", "median_ms", "p20_ms", "p80_ms", "tflops", "gbps",
            "floor_ms", "peak_mem_mb", "max_rel_err", "speedup_vs_eager", "speedup_vs_compile",
            "speedup_vs_compile_freezing"}
R50_WEIGHTS = {"r50_conv2_first": 1, "r50_conv2_rep": 2, "r50_conv3_first": 1,
               "r50_conv3_rep": 3, "r50_conv4_first": 1, "r50_conv4_rep": 5,
               "r50_conv5_first": 1, "r50_conv5_rep": 2}


def run_bench(tmp_path, name: str, *flags: str) -> dict:
    out = tmp_path / f"{name}.json"
    cmd = [sys.executable, BENCH, "--quick", "--device", "cpu", "--batch", "2", "--threads", "1",
           "--min-time-s", "0.05", "--json", str(out), "--csv", str(tmp_path / f"{name}.csv"),
           *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "FUSED_RESNET_COMMIT": "test"})
    tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"rc {proc.returncode}\n{tail}"
    assert out.exists(), "no JSON written"
    return json.loads(out.read_text())


def check_common(res: dict, providers: list[str]) -> None:
    assert TOP_KEYS <= res.keys()
    assert res["dtype"] == "float32" and res["batch"] == 2
    assert res["device"].startswith("cpu: ")
    assert res["peaks"]["source"] == "measured on this CPU" and res["peaks"]["flops"] > 0
    assert "measured on this CPU" in res["notes"][0]
    for mode in ("inference", "training"):
        assert SUMMARY_KEYS <= res["summary"][mode].keys()
        for v in res["summary"][mode].values():
            assert v is None or (isinstance(v, float) and v > 0), res["summary"]
    assert {"inference_img_s", "training_img_s"} <= res["network"].keys()
    for row in res["rows"]:
        assert ROW_KEYS <= row.keys()
        assert row["status"] != "failed", row
        assert row["provider"] in providers
    # eager and the reference backend always run; the C++ one may be unbuilt, never wrong.
    for row in res["rows"]:
        must_run = row["provider"] in ("eager", "fused_reference")
        assert row["status"] == "ok" or (not must_run and row["status"] == "skipped"
                                          and row["reason"]), row
        if row["status"] == "ok":
            assert 0 < row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
            assert 0 <= row["max_rel_err"] <= row["tol"]


@pytest.mark.slow
def test_bench_blocks_quick(tmp_path):
    providers = ["eager", "fused_cpp", "fused_reference"]
    res = run_bench(tmp_path, "blocks", "--providers", ",".join(providers), "--cases", "r50",
                    "--hw-div", "4", "--no-network")
    check_common(res, providers)
    rows = res["rows"]
    assert {(r["case"], r["provider"], r["mode"]) for r in rows} == {
        (c, p, m) for c in R50_WEIGHTS for p in providers for m in ("inference", "train_fwd_bwd")}
    for row in (r for r in rows if r["status"] == "ok"):
        assert row["floor_ms"] > 0 and row["tflops"] > 0 and row["gbps"] > 0
        assert row["peak_mem_mb"] is None  # CPU
    # The summary is the weighted 16-block total of the rows (a real number for eager).
    for key, mode in (("inference", "inference"), ("training", "train_fwd_bwd")):
        want = sum(w * next(r["median_ms"] for r in rows if r["case"] == c
                            and r["provider"] == "eager" and r["mode"] == mode)
                   for c, w in R50_WEIGHTS.items())
        assert res["summary"][key]["eager"] == pytest.approx(want)
        assert res["summary"][key]["compile"] is None  # not asked for
        assert res["summary_vs_eager"][key]["eager"] == pytest.approx(1.0)
        assert res["summary_vs_eager"][key]["fused_reference"] > 0
    assert os.path.getsize(tmp_path / "blocks.csv") > 0


@pytest.mark.slow
def test_bench_network_inference(tmp_path):
    providers = ["eager", "fused_reference"]
    res = run_bench(tmp_path, "net", "--providers", ",".join(providers), "--cases", "none",
                    "--modes", "inference", "--hw-div", "8")
    check_common(res, providers)
    assert [(r["case"], r["mode"]) for r in res["rows"]] == [("resnet50", "inference")] * 2
    img_s = res["network"]["inference_img_s"]
    assert set(img_s) == set(providers) and all(v > 0 for v in img_s.values())


def quick_args(*flags: str):
    import bench_blocks as bb

    threads = torch.get_num_threads()
    args = bb.parse_args(["--quick", "--device", "cpu", "--batch", "2", "--min-time-s", "0.01",
                          *flags])
    torch.set_num_threads(threads)  # --quick sets 1 thread for the process
    return args


def wrong_build(monkeypatch, damage):
    """Make provider ``fused_reference`` eager PyTorch damaged by ``damage(module)``."""
    from harness import providers, runner

    real_build = providers.build

    def build(provider, master, case, args, training):
        module = real_build("eager", master, case, args, training)
        if provider == "fused_reference":
            damage(module)
        return module

    monkeypatch.setattr(runner, "build", build)


def test_gate_fails_a_wrong_provider(monkeypatch):
    """A provider whose result is off by 0.1 % in one weight is failed and not timed."""
    from harness.cases import ALL_CASES
    from harness.runner import run_row
    from harness.workload import Workload

    work = Workload(ALL_CASES["r50_conv5_rep"], quick_args())

    def damage(module):
        with torch.no_grad():
            module.conv2.weight.mul_(1.001)

    wrong_build(monkeypatch, damage)
    for mode in ("inference", "train_fwd_bwd"):
        assert run_row(work, "eager", mode)["status"] == "ok"
        bad = run_row(work, "fused_reference", mode)
        assert bad["status"] == "failed" and bad["median_ms"] is None, bad
        assert bad["max_rel_err"] > bad["tol"] >= 1e-5


def test_gate_allows_what_rounding_explains(monkeypatch):
    """A provider's tensor is held to 2x the larger of eager's error and the rounding-emulated
    run's (eager may round a ReLU input near zero the float64 way by luck, a provider not)."""
    from harness.cases import ALL_CASES
    from harness.runner import run_row
    from harness.workload import Workload

    work = Workload(ALL_CASES["r50_conv5_rep"], quick_args())

    def damage(module):
        with torch.no_grad():
            module.conv2.weight.mul_(1.001)

    wrong_build(monkeypatch, damage)
    assert run_row(work, "fused_reference", "inference")["status"] == "failed"
    monkeypatch.setattr(work, "rounding_errors", lambda mode: {"out": 1e-2})
    ok = run_row(work, "fused_reference", "inference")
    assert ok["status"] == "ok" and ok["tol"] == pytest.approx(2e-2), ok


def _runs(log: list[str]) -> list[str]:
    """The log with repeats collapsed: which provider ran, block by block."""
    return [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]


def test_cpu_row_times_its_providers_interleaved(monkeypatch):
    """On a CPU a row's providers are timed in rounds of one block each, in turn (ABAB)."""
    from harness import providers, runner
    from harness.cases import ALL_CASES
    from harness.workload import Workload

    work, log = Workload(ALL_CASES["r50_conv5_rep"], quick_args("--rounds", "5")), []
    real_build = providers.build

    def build(provider, master, case, args, training):  # eager, logging who runs
        module = real_build("eager", master, case, args, training)
        module.register_forward_hook(lambda *_: log.append(provider))
        return module

    monkeypatch.setattr(runner, "build", build)
    rows = runner.run_group(work, ("eager", "fused_reference"), "inference")
    assert [r["status"] for r in rows] == ["ok", "ok"], rows
    assert _runs(log)[-10:] == ["eager", "fused_reference"] * 5  # 5 rounds, not 1 block each
    assert rows[0]["speedup_vs_eager"] == 1.0 and rows[1]["speedup_vs_eager"] > 0


def test_cpu_speedups_are_medians_of_round_ratios(monkeypatch):
    """A row's speedup is the median of per-round ratios (2.0 here), not the ratio of the
    medians (1.0): a slow round slows every provider of that round alike."""
    from harness import runner
    from harness.cases import ALL_CASES
    from harness.workload import Workload

    work = Workload(ALL_CASES["r50_conv5_rep"], quick_args())
    canned = {"eager": [2.0, 6.0, 2.0], "fused_reference": [1.0, 3.0, 2.0]}
    monkeypatch.setattr(runner, "time_interleaved", lambda steps, *a: canned)
    eager, fused = runner.run_group(work, ("eager", "fused_reference"), "inference")
    assert fused["median_ms"] == 2.0 and eager["median_ms"] == 2.0
    assert fused["speedup_vs_eager"] == pytest.approx(2.0)
    assert fused["speedup_vs_compile"] is None  # not in the row


def test_cpu_floor_from_measured_peaks():
    """On a CPU the floor divides by this CPU's measured GEMM rate and copy bandwidth (once
    per process and thread count), and the report names them."""
    from harness.cases import ALL_CASES
    from harness.report import notes
    from harness.runner import block_roofline

    args = quick_args()
    cpu = roofline.peaks(torch.device("cpu"), torch.float32)
    assert cpu is roofline.peaks(torch.device("cpu"), torch.float32)  # cached
    assert cpu == roofline.cpu_peaks(torch.float32, torch.get_num_threads())
    assert 1e8 < cpu.flops < 1e14 and 1e8 < cpu.bw < 1e13, cpu
    flops, nbytes, floor = block_roofline(ALL_CASES["r50_conv4_rep"], args, "inference")
    assert floor == pytest.approx(1e3 * max(flops / cpu.flops, nbytes / cpu.bw))
    assert floor > 100 * roofline.floor_ms(flops, nbytes, roofline.h100_peaks(torch.float32))
    note = notes(args)[0]
    assert "measured on this CPU" in note and f"{cpu.flops / 1e9:.1f} GFLOP/s" in note
    assert f"{cpu.bw / 1e9:.1f} GB/s" in note


def ill_conditioned_block(case):
    """The ``basic_conv3_rep`` block whose eager float32 gradients are 3.5e-3 from float64 at
    batch 2: a ReLU input within rounding of zero lands on the other side in float32, and
    every gradient behind it moves by that element's contribution."""
    from harness.cases import seed_for
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(seed_for(case.name))
    block = BasicBlock(case.inplanes, case.planes, case.stride, None)
    with torch.no_grad():
        for bn in (block.bn1, block.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return block


@pytest.fixture
def ill_conditioned(monkeypatch):
    """A workload whose eager float32 gradients are far from float64 by construction."""
    from harness import workload
    from harness.cases import ALL_CASES

    monkeypatch.setattr(workload, "make_block", ill_conditioned_block)
    work = workload.Workload(ALL_CASES["basic_conv3_rep"], quick_args("--hw-div", "1"))
    eager = work.eager_errors("train_fwd_bwd")
    assert max(eager.values()) > 1e-3, f"not the ill-conditioned case any more: {eager}"
    return work


@pytest.mark.slow
@pytest.mark.parametrize("provider", ["eager", "fused_cpp", "fused_reference"])
def test_gate_passes_ill_conditioned_gradients(ill_conditioned, provider):
    """Eager and the CPU backends pass the gate where eager's own error is 3.5e-3 > 1e-5."""
    from harness.runner import run_row

    row = run_row(ill_conditioned, provider, "train_fwd_bwd")
    if row["status"] == "skipped":
        pytest.skip(row["reason"])
    assert row["status"] == "ok", row
    assert row["max_rel_err"] <= row["tol"]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["output", "grad"])
def test_gate_fails_a_wrong_provider_on_ill_conditioned_gradients(ill_conditioned, monkeypatch,
                                                                  where):
    """The eager allowance does not hide a wrong provider: its output scaled by 1.001, or its
    input gradient alone scaled by 1.02 (eager's own error there is 3.2e-3)."""
    from harness.runner import run_row

    def damage(module):
        if where == "output":
            forward = module.forward
            module.forward = lambda x: forward(x) * 1.001
        else:
            module.conv1.register_full_backward_hook(lambda m, gin, gout: (gin[0] * 1.02,))

    wrong_build(monkeypatch, damage)
    bad = run_row(ill_conditioned, "fused_reference", "train_fwd_bwd")
    assert bad["status"] == "failed" and bad["median_ms"] is None, bad
    assert bad["max_rel_err"] > bad["tol"]


def test_rounding_run_inverts_only_the_relus_rounding_decides():
    """Eager's yardstick: the float64 run inverts the ReLU decisions of exactly the inputs that
    lie closer to zero than the largest rounding change in their channel."""
    from harness import gate

    assert gate.rounding_band(torch.float32) == pytest.approx(64 * 2.0 ** -24)
    assert gate.rounding_band(torch.bfloat16) == pytest.approx(4 * 2.0 ** -8)
    torch.manual_seed(0)
    clean = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    dev = torch.tensor([1e-3, 0.0, 0.3], dtype=torch.float64).view(1, 3, 1, 1)
    noisy = clean + dev * torch.where(torch.rand_like(clean) < 0.5, -1.0, 1.0)
    z = noisy.clone().requires_grad_()
    gate._UncertainReLU.apply(z, clean).backward(torch.ones_like(z))
    inverted = (z.grad > 0) != (clean > 0)
    assert torch.equal(inverted, clean.abs() < dev)
    assert not inverted[:, 1].any() and inverted[:, 2].any()


# ----------------------------------------------------------------------------- roofline
def test_roofline_bottleneck_by_hand():
    """conv5_x repeating bottleneck, N=128, bf16: FLOPs and bytes written out by hand."""
    n, m = 128, 128 * 7 * 7  # pixels of every activation in this block
    chain, proj = roofline.block_convs("bottleneck", 2048, 512, 1, 7, False)
    assert proj is None and [c.hout for c in chain] == [7, 7, 7]
    flops = 2 * m * (2048 * 512 + 512 * 512 * 9 + 512 * 2048)
    weights = 2048 * 512 + 512 * 512 * 9 + 512 * 2048
    # conv1: x -> a1, conv2: a1 -> a2, conv3: a2 + x -> out
    inf_bytes = 2 * (m * (2048 + 512) + m * (512 + 512) + m * (512 + 2048 + 2048) + weights)
    assert roofline.block_model(chain, proj, n, 2, "inference") == (flops, inf_bytes)
    # training forward: raw y1, y2, y3, then the block end reads y3 and x, writes out
    fwd_bytes = 2 * (m * (2048 + 512) + m * (512 + 512) + m * (512 + 2048) + weights
                     + 3 * m * 2048)
    assert roofline.block_model(chain, proj, n, 2, "train_fwd") == (flops, fwd_bytes)
    f, b = roofline.block_model(chain, proj, n, 2, "train_fwd_bwd")
    assert f == 3 * flops and b > 2 * fwd_bytes
    floor = roofline.floor_ms(flops, inf_bytes, roofline.h100_peaks(torch.bfloat16))
    assert floor == pytest.approx(1e3 * max(flops / 790e12, inf_bytes / 3.0e12))


def test_roofline_resnet50_totals_near_design():
    """The 16-block floors land near docs/design.md §2's table (2.30 ms / 11.18 ms, H100 bf16
    N=128): this model counts weights and the BN-backward dataflow of roofline.py."""
    stages = [(64, 64, 1, True, 56, 1), (256, 64, 1, False, 56, 2), (256, 128, 2, True, 56, 1),
              (512, 128, 1, False, 28, 3), (512, 256, 2, True, 28, 1),
              (1024, 256, 1, False, 14, 5), (1024, 512, 2, True, 14, 1),
              (2048, 512, 1, False, 7, 2)]

    def total(mode):
        t = 0.0
        for cin, planes, stride, proj, hw, weight in stages:
            chain, pj = roofline.block_convs("bottleneck", cin, planes, stride, hw, proj)
            t += weight * roofline.floor_ms(*roofline.block_model(chain, pj, 128, 2, mode),
                                            roofline.h100_peaks(torch.bfloat16))
        return t

    assert math.isclose(total("inference"), 2.30, rel_tol=0.05)
    assert math.isclose(total("train_fwd_bwd"), 11.18, rel_tol=0.15)
