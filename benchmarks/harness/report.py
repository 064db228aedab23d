"""Results: the weighted 16-block summary, the JSON/CSV/PNG outputs and the printed table."""

from __future__ import annotations

import csv
import datetime
import itertools
import json
import math
import os
import platform
import subprocess
import sys

import numpy as np
import roofline
import torch

from .cases import BASIC_CASES, MODES, R50_CASES
from .providers import PROVIDERS, SUMMARY_PROVIDERS, fused_reason
from .runner import block_roofline, ok_times

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


SUMMARY_MODES = (("inference", "inference"), ("training", "train_fwd_bwd"))


def summarize(rows: list[dict], args) -> dict:
    """Weighted 16-block ResNet-50 totals (ms) per provider; null unless all 8 cases ran."""
    ok = ok_times(rows)
    out = {}
    for key, mode in SUMMARY_MODES:
        s = {}
        always = SUMMARY_PROVIDERS + ("fused_reference",)
        for p in always + tuple(q for q in args.providers if q not in always):
            times = [ok.get((c.name, p, mode)) for c in R50_CASES]
            s[p] = (sum(c.weight * t for c, t in zip(R50_CASES, times, strict=True))
                    if all(times) else None)
        s["fused_floor"] = sum(c.weight * block_roofline(c, args, mode)[2] for c in R50_CASES)
        out[key] = s
    return out


def summarize_vs_eager(rows: list[dict]) -> dict:
    """The 16 blocks' speedup over eager per provider: eager's weighted total over the
    provider's, each row's time taken as eager's median / the row's speedup (on a CPU the
    median of per-round ratios, so the total inherits the interleaved measurement); null
    unless all 8 cases have both."""
    out = {}
    for key, mode in SUMMARY_MODES:
        got = {(r["case"], r["provider"]): r for r in rows
               if r["mode"] == mode and r["status"] == "ok"}
        s = {}
        for p in PROVIDERS:
            pairs = [(got.get((c.name, "eager")), got.get((c.name, p)), c.weight)
                     for c in R50_CASES]
            if all(e and r and r["speedup_vs_eager"] for e, r, _ in pairs):
                eager = sum(w * e["median_ms"] for e, _, w in pairs)
                s[p] = eager / sum(w * e["median_ms"] / r["speedup_vs_eager"]
                                   for e, r, w in pairs)
        out[key] = s
    return out


def network_summary(rows: list[dict]) -> dict:
    net = {"inference_img_s": {}, "training_img_s": {}}
    for r in rows:
        if r["case"] == "resnet50" and r["status"] == "ok":
            key = "inference_img_s" if r["mode"] == "inference" else "training_img_s"
            net[key][r["provider"]] = r["img_s"]
    return net


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return sha or os.environ.get("FUSED_RESNET_COMMIT") or "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         model)
    except OSError:
        pass
    return f"cpu: {model} ({os.cpu_count()} cores)"


def notes(args) -> list[str]:
    peak = roofline.peaks(args.device, args.dtype)
    n = [peak.note + "; FLOPs and bytes per benchmarks/roofline.py"]
    if args.device.type == "cpu":
        n.append(f"CPU run: batch {args.batch}, spatial sizes divided by {args.hw_div} "
                 f"(rounded up), dtype {dtype_name(args.dtype)}, {torch.get_num_threads()} "
                 f"thread(s); each row's providers timed interleaved in at least {args.rounds} "
                 "rounds, speedups are medians of per-round ratios")
    if args.dtype == torch.float32 and args.device.type == "cuda":
        n.append(f"fp32 with cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}")
    n.append("peak_mem_mb: CUDA memory one call needs above what was allocated before it")
    n.append(f"compile mode: {args.compile_mode}")
    return n


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def clean(v):
    """JSON has no inf/NaN: those become null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, list):
        return [clean(x) for x in v]
    return v


def report(rows: list[dict], args, wall_s: float) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    skipped = {p: fused_reason(p[len("fused_"):], args.device, args.dtype)
               for p in args.providers if p.startswith("fused_")}
    peak = roofline.peaks(args.device, args.dtype)
    return clean({
        "device": device_name(args.device), "torch": torch.__version__,
        "triton": triton_version, "cuda": torch.version.cuda, "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": dtype_name(args.dtype), "batch": args.batch,
        "summary": summarize(rows, args), "summary_vs_eager": summarize_vs_eager(rows),
        "network": network_summary(rows), "rows": rows,
        "hw_div": args.hw_div, "quick": args.quick, "cpu_default": args.cpu_default,
        "wall_s": wall_s,
        "providers": args.providers, "modes": args.modes,
        "unavailable": {p: r for p, r in skipped.items() if r}, "notes": notes(args),
        "peaks": {"flops": peak.flops, "bytes_per_s": peak.bw,
                  "source": "measured on this CPU" if args.device.type == "cpu" else "H100"},
    })


def fmt(v, spec: str) -> str:
    width = int("".join(itertools.takewhile(str.isdigit, spec)) or 0)
    return "-".rjust(width) if v is None else format(v, spec)


def print_table(res: dict) -> None:
    print(f"\n{res['device']}  torch {res['torch']}  dtype {res['dtype']}  batch {res['batch']}"
          f"  commit {res['commit'][:12]}")
    for note in res["notes"]:
        print(f"note: {note}")
    head = (f"{'case':<18} {'provider':<15} {'mode':<13} {'median':>9} {'p20':>9} {'p80':>9} "
            f"{'x eager':>7} {'x comp':>7} {'x frz':>7} {'TFLOP/s':>8} {'GB/s':>7} {'floor':>8} "
            f"{'/floor':>7} {'mem MB':>8} {'rel err':>8}  status")
    print(head)
    print("-" * len(head))
    for r in res["rows"]:
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        print(f"{r['case']:<18} {r['provider']:<15} {r['mode']:<13} {fmt(r['median_ms'], '9.3f')} "
              f"{fmt(r['p20_ms'], '9.3f')} {fmt(r['p80_ms'], '9.3f')} "
              f"{fmt(r['speedup_vs_eager'], '7.2f')} {fmt(r['speedup_vs_compile'], '7.2f')} "
              f"{fmt(r['speedup_vs_compile_freezing'], '7.2f')} "
              f"{fmt(r['tflops'], '8.2f')} {fmt(r['gbps'], '7.1f')} {fmt(r['floor_ms'], '8.3f')} "
              f"{fmt(r['floor_ratio'], '7.1f')} {fmt(r['peak_mem_mb'], '8.1f')} "
              f"{fmt(r['max_rel_err'], '8.1e')}  {status}")
    print("\nResNet-50, 16 bottlenecks weighted (ms):")
    for key, s in res["summary"].items():
        print(f"  {key:<10} " + "  ".join(f"{p}={fmt(v, '.3f')}" for p, v in s.items()))
    for key, s in res["summary_vs_eager"].items():
        if s:
            print(f"  {key:<10} x eager: " + "  ".join(f"{p}={v:.2f}" for p, v in s.items()))
    for key, s in res["network"].items():
        print(f"  network {key}: " + ("  ".join(f"{p}={v:.1f}" for p, v in s.items()) or "-"))


def write_json(res: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(res, f, indent=1)


def write_csv(rows: list[dict], path: str) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_plot(res: dict, path: str) -> None:
    """Per-stage speedup vs eager and ratio to the roofline floor, for the ResNet-50 cases."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed", file=sys.stderr)
        return
    modes = [m for m in MODES if any(r["mode"] == m for r in res["rows"])]
    cases = [c.name for c in R50_CASES + BASIC_CASES
             if any(r["case"] == c.name and r["status"] == "ok" for r in res["rows"])]
    fig, axes = plt.subplots(len(modes), 2, figsize=(14, 3.5 * len(modes)), squeeze=False)
    for ax_row, mode in zip(axes, modes, strict=True):
        for ax, key, title in zip(ax_row, ("speedup_vs_eager", "floor_ratio"),
                                  ("speedup vs eager", "time / roofline floor"), strict=True):
            provs = [p for p in PROVIDERS if any(r["provider"] == p and r["mode"] == mode
                                                 and r[key] for r in res["rows"])]
            width = 0.8 / max(1, len(provs))
            for j, p in enumerate(provs):
                vals = [next((r[key] for r in res["rows"] if r["case"] == c and r["provider"] == p
                              and r["mode"] == mode and r[key]), 0) for c in cases]
                ax.bar(np.arange(len(cases)) + j * width, vals, width, label=p)
            ax.axhline(1.0, color="k", lw=0.8)
            if key == "floor_ratio":
                ax.set_yscale("log")  # ratios span orders of magnitude
            ax.set_xticks(np.arange(len(cases)) + 0.4 - width / 2)
            ax.set_xticklabels(cases, rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{mode}: {title}", fontsize=9)
            ax.legend(fontsize=7)
    fig.suptitle(f"{res['device']} {res['dtype']} batch {res['batch']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
