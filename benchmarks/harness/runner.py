"""The run loop: which rows run in which order, gate then time them (on a CPU a row's
providers interleaved), and progress lines with the elapsed time and an estimate of the
time left."""

from __future__ import annotations

import sys
import time

import roofline
import torch

from .cases import R50_CASES, Case, scaled
from .providers import Skipped, build
from .timing import (
    block_step,
    network_step,
    peak_mem_mb,
    round_ratios,
    summary_ms,
    time_cuda,
    time_interleaved,
)
from .workload import Workload

# Relative cost of a row for the time-left estimate: torch.compile rows spend most of their
# time compiling; every row pays a float64 gate and a warm-up besides its timed calls.
COMPILE_COST_FACTOR = 6.0
ROW_OVERHEAD_GFLOP = 2.0
NETWORK_COST_FACTOR = 5.0
CPU_BLOCK_S = 0.02  # one provider's block of calls in a CPU round: timer resolution is moot


# Speedups every row reports: each base's time / the row's (>1: faster than the base).
SPEEDUP_BASES = ("eager", "compile", "compile_freezing")
# A row's providers (case, mode, providers); on a CPU they are timed interleaved.
Group = tuple  # (Case | None, str, tuple[str, ...])


def new_row(w: Workload | None, provider: str, mode: str, case: Case | None = None) -> dict:
    name = w.name if w else case.name if case else "resnet50"
    return {"case": name, "provider": provider, "mode": mode, "status": None, "reason": None,
            "median_ms": None, "p20_ms": None, "p80_ms": None, "tflops": None, "gbps": None,
            "floor_ms": None, "floor_ratio": None,
            **{f"speedup_vs_{b}": None for b in SPEEDUP_BASES},
            "peak_mem_mb": None, "max_rel_err": None, "tol": None, "worst": None}


def block_roofline(case: Case, args, mode: str) -> tuple[int, int, float]:
    """(FLOPs, minimal bytes, floor ms) of one block in ``mode`` (train_step: fwd+bwd)."""
    chain, proj = roofline.block_convs(case.kind, case.inplanes, case.planes, case.stride,
                                       scaled(case.hw, args.hw_div), case.proj)
    elem = torch.tensor([], dtype=args.dtype).element_size()
    model_mode = "train_fwd_bwd" if mode == "train_step" else mode
    flops, nbytes = roofline.block_model(chain, proj, args.batch, elem, model_mode)
    return flops, nbytes, roofline.floor_ms(flops, nbytes,
                                            roofline.peaks(args.device, args.dtype))


def failed(row: dict, e: Exception) -> dict:
    first_line = (str(e).splitlines() or [""])[0][:300]
    row.update(status="failed", reason=f"{type(e).__name__}: {first_line}")
    return row


def gated_step(w: Workload, provider: str, mode: str):
    """(row, step): ``provider``'s module built and gated, and its timed step (run once, so
    a crash shows here), or None with the row failed or skipped; never raises."""
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
            return row, None
        step = (network_step(module, w.xs, w.labels, mode) if w.case is None
                else block_step(module, w.xs, w.gs, mode))
        step()
        return row, step
    except Skipped as e:
        row.update(status="skipped", reason=str(e))
    except Exception as e:  # noqa: BLE001 - a crashing provider is a failed row, not a dead run
        failed(row, e)
    return row, None


def timed(row: dict, w: Workload, med: float, p20: float, p80: float) -> None:
    """Fill ``row`` with its times and what follows from them."""
    args, mode = w.args, row["mode"]
    row.update(status="ok", median_ms=med, p20_ms=p20, p80_ms=p80)
    if w.case is None:
        row["img_s"] = args.batch / (med / 1e3)
    else:
        flops, nbytes, floor = block_roofline(w.case, args, mode)
        row.update(tflops=flops / med / 1e9, gbps=nbytes / med / 1e6, floor_ms=floor,
                   floor_ratio=med / floor)


def run_group(w: Workload, providers, mode: str) -> list[dict]:
    """Gate, then time, ``providers`` on one workload and mode; never raises. On a GPU one
    provider after the other (CUDA events); on a CPU all that passed interleaved, round by
    round, each speedup the median of per-round ratios (a shared CPU's load cancels)."""
    if w.args.device.type == "cuda":
        return [run_cuda(w, p, mode) for p in providers]
    gated = [gated_step(w, p, mode) for p in providers]
    rows = {row["provider"]: row for row, _ in gated}
    steps = {row["provider"]: step for row, step in gated if step is not None}
    try:
        times = time_interleaved(steps, w.args.rounds, CPU_BLOCK_S, w.args.min_time_s) \
            if steps else {}
    except Exception as e:  # noqa: BLE001 - a step that crashes while timed fails the row
        times = {}
        for name in steps:
            failed(rows[name], e)
    for name, t in times.items():
        timed(rows[name], w, *summary_ms(t))
        for base in SPEEDUP_BASES:
            if base in times:
                rows[name][f"speedup_vs_{base}"] = round_ratios(times, base)[name]
    return list(rows.values())


def run_cuda(w: Workload, provider: str, mode: str) -> dict:
    row, step = gated_step(w, provider, mode)
    try:
        if step is not None:
            timed(row, w, *time_cuda(step, w.args.quick))
            row["peak_mem_mb"] = peak_mem_mb(step, w.args.device)
    except Exception as e:  # noqa: BLE001 - a crashing provider is a failed row, not a dead run
        failed(row, e)
    finally:
        del step
        torch.cuda.empty_cache()
    return row


def run_row(w: Workload, provider: str, mode: str) -> dict:
    """Gate, then time, one (workload, provider, mode); never raises."""
    return run_group(w, (provider,), mode)[0]


def plan(args) -> list[Group]:
    """The rows, grouped as they are timed. CPU: every provider of a (case, mode) in one
    group, timed interleaved. GPU: one provider per group, torch.compile rows last, so a time
    budget cuts the slow compiles first."""
    if args.device.type == "cpu":
        cases = list(args.cases) + ([None] if not args.no_network else [])
        return [(c, m, tuple(args.providers)) for c in cases
                for m in (args.modes if c else network_modes(args))]
    items = []
    for compiled in (False, True):
        provs = [p for p in args.providers if p.startswith("compile") == compiled]
        for mode in args.modes:
            items += [(c, mode, (p,)) for c in args.cases for p in provs]
        if not args.no_network:
            items += [(None, m, (p,)) for m in network_modes(args) for p in provs]
    return items


def network_modes(args) -> list[str]:
    """The network's rows: inference when asked for, a training step when any training mode
    is (on a CPU's default run, only inference: a float64-gated training step of the whole
    network takes minutes there)."""
    modes = ["inference"] if "inference" in args.modes else []
    if any(m != "inference" for m in args.modes) and not args.cpu_default:
        modes.append("train_step")
    return modes


def row_cost(case: Case | None, provider: str, mode: str, args) -> float:
    """Relative cost of a planned row, for the time-left estimate only."""
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


def skipped_row(case: Case | None, provider: str, mode: str, reason: str) -> dict:
    row = new_row(None, provider, mode, case)
    row.update(status="skipped", reason=reason)
    return row


def run_all(args) -> list[dict]:
    groups, rows = plan(args), []
    costs = [sum(row_cost(case, p, mode, args) for p in provs) for case, mode, provs in groups]
    n_rows = sum(len(provs) for _, _, provs in groups)
    start, current, stop = time.monotonic(), None, None
    for i, (case, mode, provs) in enumerate(groups):
        if args.budget_s is not None and time.monotonic() - start > args.budget_s:
            stop = stop or f"time budget of {args.budget_s:.0f} s used up"
        skips = {p: stop or not_in_quick(case, p, args) for p in provs}
        run = [p for p in provs if not skips[p]]
        by_provider = {p: skipped_row(case, p, mode, skips[p]) for p in provs if skips[p]}
        if run:
            try:
                if current is None or current.case != case:
                    current = None  # free the previous workload's buffers first
                    current = Workload(case, args)
                by_provider.update((r["provider"], r) for r in run_group(current, run, mode))
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep what ran, write it out
                stop = "interrupted"
                by_provider.update((p, skipped_row(case, p, mode, stop)) for p in run)
        elapsed = time.monotonic() - start
        left = time_left(elapsed, costs, i + 1, stop)
        for p in provs:
            rows.append(by_provider[p])
            progress(len(rows), n_rows, elapsed, left, by_provider[p])
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
    """Speedups not measured interleaved (GPU rows, timed one by one): ratios of medians."""
    ok = ok_times(rows)
    for r in rows:
        if r["status"] != "ok":
            continue
        for base in SPEEDUP_BASES:
            b = ok.get((r["case"], base, r["mode"]))
            if r[f"speedup_vs_{base}"] is None and b:
                r[f"speedup_vs_{base}"] = b / r["median_ms"]
