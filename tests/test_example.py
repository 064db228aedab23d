"""examples/train.py end to end: real data (scikit-learn's digits) to the accuracy band
with fused and with eager blocks, an interrupted run resumed to the same result, and a
two-process torchrun (gloo) run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")
ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train.py"
# Small enough for a 2-core CI machine: ResNet-18 on 16x16 digits, 3 epochs of 22 steps.
DIGITS = ["--model", "resnet18", "--data", "digits", "--image-size", "16", "--epochs", "3",
          "--batch-size", "64"]
ACCURACY = re.compile(r"test accuracy: (\d+\.\d)%$")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("FUSED_RESNET_BACKEND", None)
    return env


def train(*args, launcher=(sys.executable,)) -> tuple[float, str]:
    """Run the example; return the final test accuracy (its last line) and its output."""
    proc = subprocess.run([*launcher, str(SCRIPT), *args], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    match = ACCURACY.match(last)
    assert match, f"last line {last!r}"
    return float(match.group(1)), proc.stdout + proc.stderr


@pytest.mark.slow
def test_digits_fused_and_eager_reach_the_band(tmp_path):
    fused, out = train(*DIGITS, "--backend", "cpp", "--plot", str(tmp_path / "curves.png"))
    eager, _ = train(*DIGITS, "--backend", "eager")
    assert fused >= 90.0 and eager >= 90.0, (fused, eager)
    assert abs(fused - eager) <= 5.0, (fused, eager)
    assert "\r" not in out, "no progress bar without a terminal"
    assert (tmp_path / "curves.png").stat().st_size > 0


@pytest.mark.slow
def test_resume_continues_where_it_stopped(tmp_path):
    """Stopped at step 6 and resumed to step 12: the same batches, schedule and optimizer
    state as one uninterrupted 12-step run, so the same weights."""
    full_ckpt, split_ckpt = tmp_path / "full.pt", tmp_path / "split.pt"
    full_acc, _ = train(*DIGITS, "--backend", "cpp", "--checkpoint", str(full_ckpt),
                        "--max-steps", "12")
    train(*DIGITS, "--backend", "cpp", "--checkpoint", str(split_ckpt), "--max-steps", "6")
    assert torch.load(split_ckpt, weights_only=False)["step"] == 6
    resumed_acc, out = train(*DIGITS, "--backend", "cpp", "--checkpoint", str(split_ckpt),
                             "--max-steps", "12", "--resume")
    assert "at step 6 (epoch 1, batch 6)" in out, out
    assert resumed_acc == full_acc
    full, split = (torch.load(p, weights_only=False) for p in (full_ckpt, split_ckpt))
    assert split["step"] == full["step"] == 12
    assert [h["epoch"] for h in split["history"]] == [1]
    for name, value in full["model"].items():
        torch.testing.assert_close(split["model"][name], value, msg=name)


@pytest.mark.slow
def test_checkpoint_loads_into_plain_torchvision(tmp_path):
    import torchvision

    ckpt = tmp_path / "run.pt"
    train(*DIGITS, "--backend", "cpp", "--max-steps", "2", "--checkpoint", str(ckpt))
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(torch.load(ckpt, weights_only=False)["model"], strict=True)


@pytest.mark.slow
def test_torchrun_two_processes_gloo():
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2")
    accuracy, out = train(*DIGITS, "--backend", "cpp", "--max-steps", "3", "--device", "cpu",
                          launcher=launcher)
    assert "on cpu x2:" in out, out  # two processes trained
    assert "epoch 1 step 3:" in out, out
    assert 0.0 <= accuracy <= 100.0
