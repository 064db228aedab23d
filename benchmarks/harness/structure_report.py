"""Printing the structure profile: the table, the worst launches, the plot, and measured
beside modeled when a GPU benchmark result exists."""

from __future__ import annotations

import glob
import json
import os
import sys

from .structure import MAX_SERIAL_STEPS

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")
MODE_TITLES = {"train_fwd_bwd": "training forward+backward", "inference": "inference"}


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(data: dict, out=None) -> None:
    out = out or sys.stdout
    t = data["target"]
    print(f"\nStructure profile (MODELED, not measured): {t['name']}, {t['sms']} SMs, "
          f"{t['bandwidth_bytes_s'] / 1e12:.1f} TB/s, {t['peak_flops'] / 1e12:.0f} TFLOP/s, "
          f"{t['dtype']} {t['memory_format']}, batch {t['batch']}", file=out)
    print(f"occupancy: {t['occupancy']}", file=out)
    for source in t["sources"]:
        print(f"  constant: {source}", file=out)
    print("eager: the ATen ops it dispatches, each one launch at its own roofline (cuDNN and "
          "ATen kernels assumed to fill the GPU): a lower bound of eager's time", file=out)
    for mode, key in (("train_fwd_bwd", "cases"), ("inference", "inference_cases")):
        cases = data.get(key) or {}
        if not cases:
            continue
        head = (f"{'case':<17} {'provider':<13} {'launches':>8} {'GB':>7} {'floor GB':>8} "
                f"{'GFLOP':>8} {'needed':>8} {'serial':>6} {'<2 waves':>8} {'modeled ms':>10} "
                f"{'floor ms':>8} {'/floor':>6}")
        print(f"\n{MODE_TITLES[mode]}\n{head}\n{'-' * len(head)}", file=out)
        for case, row in cases.items():
            for provider, s in row.items():
                ratio = s["modeled_ms"] / s["floor_ms"] if s["floor_ms"] else None
                print(f"{case:<17} {provider:<13} {s['launches']:>8} {s['bytes'] / 1e9:>7.2f} "
                      f"{s['floor_bytes'] / 1e9:>8.2f} {s['flops'] / 1e9:>8.0f} "
                      f"{s['flops_needed'] / 1e9:>8.0f} {s['max_serial_steps']:>6} "
                      f"{s['launches_under_2_waves']:>8} {s['modeled_ms']:>10.3f} "
                      f"{s['floor_ms']:>8.3f} {_fmt(ratio, '6.2f')}", file=out)
    print(f"\nserial: the longest loop of one program (GEMM K loops included; the budget of "
          f"{MAX_SERIAL_STEPS} applies to reductions); <2 waves: launches over 1 us of work "
          "that fill less than two waves of the SMs", file=out)
    for provider, rows in data.get("worst_launches", {}).items():
        print(f"\nworst launches of {provider} (modeled time beyond their roofline share):",
              file=out)
        for r in rows:
            print(f"  {r['excess_us']:8.1f} us  {r['mode']:<13} {r['case']:<16} {r['op']:<16} "
                  f"{r['kernel']:<14} grid {r['grid']} {r['config']} waves "
                  f"{_fmt(r['waves'], '.2f')} serial {r['serial_steps']}", file=out)


def sixteen_block_line(data: dict, mode: str = "train_fwd_bwd") -> str:
    """One line of the modeled 16-block ratios (the README's benchmark section)."""
    row = (data["cases"] if mode == "train_fwd_bwd" else data["inference_cases"])
    row = row.get("r50_16_blocks", {})
    eager = row.get("eager")
    parts = []
    for provider in ("fused_triton", "fused_cuda"):
        s = row.get(provider)
        if not s or not eager:
            continue
        parts.append(f"{provider}: {s['modeled_ms'] / s['floor_ms']:.2f}x floor, "
                     f"{s['launches'] / eager['launches']:.2f}x eager's launches, "
                     f"{s['bytes'] / eager['bytes']:.2f}x eager's bytes")
    return "; ".join(parts)


def measured_beside_modeled(data: dict, pattern: str = os.path.join(RESULTS, "*.json"),
                            out=None) -> list[dict]:
    """For each GPU benchmark result of the same dtype and batch at full size: the measured
    median beside the modeled time per (case, provider, mode)."""
    out = out or sys.stdout
    t, rows = data["target"], []
    for path in sorted(glob.glob(pattern)):
        try:
            with open(path) as f:
                res = json.load(f)
        except (OSError, ValueError):
            continue
        if not isinstance(res, dict) or "rows" not in res or res.get("hw_div", 1) != 1 \
                or res.get("dtype") != t["dtype"] or res.get("batch") != t["batch"] \
                or "cpu" in str(res.get("device", "cpu")).lower():
            continue
        for r in res["rows"]:
            key = "cases" if r["mode"] == "train_fwd_bwd" else "inference_cases"
            modeled = (data.get(key) or {}).get(r["case"], {}).get(r["provider"])
            if modeled and r.get("median_ms"):
                rows.append({"result": os.path.basename(path), "case": r["case"],
                             "provider": r["provider"], "mode": r["mode"],
                             "measured_ms": r["median_ms"], "modeled_ms": modeled["modeled_ms"],
                             "measured_over_modeled": r["median_ms"] / modeled["modeled_ms"]})
    if rows:
        print("\nmeasured (GPU results) beside modeled:", file=out)
        for r in rows:
            print(f"  {r['result']:<24} {r['case']:<16} {r['provider']:<13} {r['mode']:<13} "
                  f"measured {r['measured_ms']:8.3f} ms  modeled {r['modeled_ms']:8.3f} ms  "
                  f"x{r['measured_over_modeled']:.2f}", file=out)
    else:
        print("\nno GPU benchmark result of this dtype and batch in benchmarks/results/: "
              "nothing measured to put beside the model", file=out)
    return rows


def write_plot(data: dict, path: str) -> None:
    """Per case: modeled time over the roofline floor and launches, per provider."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed", file=sys.stderr)
        return
    cases = {k: v for k, v in data["cases"].items() if k != "resnet50_step"}
    names = list(cases)
    providers = list(next(iter(cases.values())))
    fig, axes = plt.subplots(1, 2, figsize=(15, 4.5))
    width = 0.8 / len(providers)
    for i, p in enumerate(providers):
        xs = [j + i * width for j in range(len(names))]
        axes[0].bar(xs, [cases[c][p]["modeled_ms"] / cases[c][p]["floor_ms"] for c in names],
                    width, label=p)
        axes[1].bar(xs, [cases[c][p]["launches"] for c in names], width, label=p)
    for ax, title in zip(axes, ("modeled time / roofline floor (MODELED)", "launches"),
                         strict=True):
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=45,
                      ha="right", fontsize=8)
        ax.set_title(f"{title}, training fwd+bwd")
        ax.legend(fontsize=8)
    axes[0].axhline(1.0, color="k", lw=0.8)
    axes[1].set_yscale("log")  # the 16-block total next to single blocks
    fig.suptitle(f"structure profile, {data['target']['name']} {data['target']['dtype']} "
                 f"batch {data['target']['batch']} (modeled, no GPU run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
