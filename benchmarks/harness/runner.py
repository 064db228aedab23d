"""The run loop: which rows run in which order, gate then time each one, and progress lines
with the elapsed time and an estimate of the time left."""

from __future__ import annotations

import sys
import time

import roofline
import torch

from .cases import R50_CASES, Case, scaled
from .providers import Skipped, build
from .timing import block_step, network_step, peak_mem_mb, time_ms
from .workload import Workload

# Relative cost of a row for the time-left estimate: torch.compile rows spend most of their
# time compiling; every row pays a float64 gate and a warm-up besides its timed calls.
COMPILE_COST_FACTOR = 6.0
ROW_OVERHEAD_GFLOP = 2.0
NETWORK_COST_FACTOR = 5.0


def new_row(w: Workload | None, provider: str, mode: str, case: Case | None = None) -> dict:
    name = w.name if w else case.name if case else "resnet50"
    return {"case": name, "provider": provider, "mode": mode, "status": None, "reason": None,
            "median_ms": None, "p20_ms": None, "p80_ms": None, "tflops": None, "gbps": None,
            "floor_ms": None, "floor_ratio": None, "speedup_vs_eager": None,
            "speedup_vs_compile": None, "peak_mem_mb": None, "max_rel_err": None, "tol": None,
            "worst": None}


def block_roofline(case: Case, args, mode: str) -> tuple[int, int, float]:
    """(FLOPs, minimal bytes, floor ms) of one block in ``mode`` (train_step: fwd+bwd)."""
    chain, proj = roofline.block_convs(case.kind, case.inplanes, case.planes, case.stride,
                                       scaled(case.hw, args.hw_div), case.proj)
    elem = torch.tensor([], dtype=args.dtype).element_size()
    model_mode = "train_fwd_bwd" if mode == "train_step" else mode
    flops, nbytes = roofline.block_model(chain, proj, args.batch, elem, model_mode)
    return flops, nbytes, roofline.floor_ms(flops, nbytes, args.dtype)


def run_row(w: Workload, provider: str, mode: str) -> dict:
    """Gate, then time, one (workload, provider, mode); never raises."""
    args, row = w.args, new_row(w, provider, mode)
    try:
        module = build(provider, w.master, w.case, args, mode != "inference")
        passed, worst, err, tol = w.check(provider, module, mode)
        row.update(max_rel_err=err, tol=tol, worst=worst)
        if not passed:
            hint = ""
            if provider != "eager" and worst in w.eager_errs.get(mode, {}):
                hint = f"; eager's error: {w.eager_errs[mode][worst]:.3g}"
            row.update(status="failed",
                       reason=f"rel err {err:.3g} > tol {tol:.3g} ({worst}){hint}")
            return row
        step = (network_step(module, w.xs, w.labels, mode) if w.case is None
                else block_step(module, w.xs, w.gs, mode))
        med, p20, p80 = time_ms(step, args.device, args.quick or args.cpu_default,
                                args.min_time_s)
        row.update(status="ok", median_ms=med, p20_ms=p20, p80_ms=p80,
                   peak_mem_mb=peak_mem_mb(step, args.device))
        if w.case is None:
            row["img_s"] = args.batch / (med / 1e3)
        else:
            flops, nbytes, floor = block_roofline(w.case, args, mode)
            row.update(tflops=flops / med / 1e9, gbps=nbytes / med / 1e6, floor_ms=floor,
                       floor_ratio=med / floor)
    except Skipped as e:
        row.update(status="skipped", reason=str(e))
    except Exception as e:  # noqa: BLE001 - a crashing provider is a failed row, not a dead run
        first_line = (str(e).splitlines() or [""])[0][:300]
        row.update(status="failed", reason=f"{type(e).__name__}: {first_line}")
    finally:
        if args.device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def plan(args) -> list[tuple[Case | None, str, str]]:
    """(case or None for the network, provider, mode); torch.compile rows last, so a time
    budget cuts the slow compiles first."""
    items = []
    for compiled in (False, True):
        provs = [p for p in args.providers if p.startswith("compile") == compiled]
        for mode in args.modes:
            items += [(c, p, mode) for c in args.cases for p in provs]
        if not args.no_network:
            items += [(None, p, m) for m in network_modes(args) for p in provs]
    return items


def network_modes(args) -> list[str]:
    """The network's rows: inference when asked for, a training step when any training mode
    is (on a CPU's default run, only inference: a float64-gated training step of the whole
    network takes minutes there)."""
    modes = ["inference"] if "inference" in args.modes else []
    if any(m != "inference" for m in args.modes) and not args.cpu_default:
        modes.append("train_step")
    return modes


def row_cost(item: tuple[Case | None, str, str], args) -> float:
    """Relative cost of a planned row, for the time-left estimate only."""
    case, provider, mode = item
    if case is None:  # the network: ~the 16 bottlenecks and a stem, gated on a larger batch
        gflop = NETWORK_COST_FACTOR * sum(c.weight * block_roofline(c, args, mode)[0]
                                          for c in R50_CASES) / 1e9
    else:
        gflop = block_roofline(case, args, mode)[0] / 1e9
    gflop += ROW_OVERHEAD_GFLOP
    return gflop * (COMPILE_COST_FACTOR if provider.startswith("compile") else 1.0)


def not_in_quick(case: Case | None, provider: str, args) -> str | None:
    """Rows that --quick leaves out: compiling all of ResNet-50 takes minutes on a CPU."""
    if args.quick and case is None and provider.startswith("compile") and args.device.type == "cpu":
        return "--quick on CPU: compiling the whole network takes minutes"
    return None


def run_all(args) -> list[dict]:
    items, rows = plan(args), []
    costs = [row_cost(item, args) for item in items]
    start, current, stop = time.monotonic(), None, None
    for i, (case, provider, mode) in enumerate(items, 1):
        if args.budget_s is not None and time.monotonic() - start > args.budget_s:
            stop = stop or f"time budget of {args.budget_s:.0f} s used up"
        reason = stop or not_in_quick(case, provider, args)
        if reason:
            row = new_row(None, provider, mode, case)
            row.update(status="skipped", reason=reason)
        else:
            try:
                if current is None or current.case != case:
                    current = None  # free the previous workload's buffers first
                    current = Workload(case, args)
                row = run_row(current, provider, mode)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep what ran, write it out
                stop = "interrupted"
                row = new_row(None, provider, mode, case)
                row.update(status="skipped", reason=stop)
        rows.append(row)
        elapsed = time.monotonic() - start
        progress(i, len(items), elapsed, time_left(elapsed, costs, i, stop), row)
    add_speedups(rows)
    return rows


def time_left(elapsed: float, costs: list[float], done: int, stop: str | None) -> float:
    """Seconds left, extrapolated from the time per unit of cost so far."""
    if stop or done >= len(costs):
        return 0.0
    return elapsed / max(sum(costs[:done]), 1e-9) * sum(costs[done:])


def fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def progress(i: int, n: int, elapsed: float, left: float, row: dict) -> None:
    if row["status"] == "ok":
        what = f"{row['median_ms']:.3f} ms  err {row['max_rel_err']:.1e}"
    else:
        what = f"{row['status']}: {row['reason']}"
    print(f"[{i:3d}/{n} {fmt_s(elapsed):>7} elapsed, ~{fmt_s(left):>7} left] {row['case']:<18} "
          f"{row['provider']:<15} {row['mode']:<13} {what}", file=sys.stderr, flush=True)


def ok_times(rows: list[dict]) -> dict[tuple, float]:
    """(case, provider, mode) -> median ms of the rows that ran."""
    return {(r["case"], r["provider"], r["mode"]): r["median_ms"]
            for r in rows if r["status"] == "ok"}


def add_speedups(rows: list[dict]) -> None:
    ok = ok_times(rows)
    for r in rows:
        if r["status"] != "ok":
            continue
        for base in ("eager", "compile"):
            b = ok.get((r["case"], base, r["mode"]))
            r[f"speedup_vs_{base}"] = b / r["median_ms"] if b else None
