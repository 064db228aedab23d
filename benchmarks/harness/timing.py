"""Timing: on a GPU one step at a time by CUDA events with L2 flushed
(triton.testing.do_bench, :func:`time_cuda`); on a CPU every provider of a row interleaved
round by round (:func:`time_interleaved`), ratios as medians of per-round ratios
(:func:`round_ratios`). The timed steps rotate over input buffers."""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .providers import params_of


def time_interleaved(steps: dict, rounds: int, block_s: float = 0.05,
                     min_time_s: float = 0.0) -> dict[str, list[float]]:
    """Milliseconds per call of each of ``steps`` (CPU), measured in at least ``rounds``
    rounds (more until every step has ``min_time_s`` timed seconds) of one ~``block_s``
    block of calls per step, in turn (ABAB...): load that comes and goes on a shared
    machine falls on every step alike, and per-round ratios cancel it."""
    from torch.utils import benchmark
    timers, numbers = {}, {}
    for name, step in steps.items():
        step()  # warm-up (first calls allocate, compile, prepack)
        timers[name] = benchmark.Timer(stmt="step()", globals={"step": step},
                                       num_threads=torch.get_num_threads())
        numbers[name] = max(1, int(block_s / max(timers[name].timeit(1).mean, 1e-6)))
    times = {name: [] for name in steps}

    def timed_s(name: str) -> float:
        return sum(times[name]) * numbers[name] / 1e3
    while len(times[next(iter(times))]) < rounds or min(map(timed_s, times)) < min_time_s:
        for name, timer in timers.items():
            times[name].append(timer.timeit(numbers[name]).mean * 1e3)
    return times


def summary_ms(times: list[float]) -> tuple[float, float, float]:
    """(median, p20, p80) of per-call milliseconds."""
    t = np.array(times)
    return float(np.median(t)), float(np.percentile(t, 20)), float(np.percentile(t, 80))


def round_ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """Median over rounds of ``base``'s time / each step's time (>1: faster than base)."""
    return {name: float(np.median(np.array(times[base]) / np.array(t)))
            for name, t in times.items()}


def time_cuda(step, quick: bool) -> tuple[float, float, float]:
    """(median, p20, p80) of one call, in ms; ``quick``: fewer samples."""
    warmup, rep, least = (10, 60, 5) if quick else (25, 300, 20)
    times = cuda_event_times(step, 3)  # warm-up and estimate
    rep = max(rep, least * float(np.median(times)))  # slow steps still get `least` samples
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None:  # flushes L2 before each call, CUDA events around it
        q = do_bench(step, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
        return float(q[0]), float(q[1]), float(q[2])
    return summary_ms(cuda_event_times(step, max(least, int(rep / max(np.median(times), 1e-3)))))


def cuda_event_times(step, n: int) -> list[float]:
    """Milliseconds of each of ``n`` calls, by CUDA events."""
    times = []
    for _ in range(n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return times


def peak_mem_mb(step, device: torch.device) -> float | None:
    """Memory one call needs on top of what is allocated before it (inputs, weights)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def n_buffers(nbytes: int, device: torch.device) -> int:
    """Input buffers to cycle through so the timed calls do not find their input in cache."""
    cache = (torch.cuda.get_device_properties(device).L2_cache_size
             if device.type == "cuda" else 32 * 2**20)
    return int(min(8, max(2, math.ceil(4 * cache / max(nbytes, 1)))))


def block_step(module: nn.Module, xs: list, gs: list, mode: str):
    """One timed call; each call takes the next input buffer."""
    order = itertools.cycle(range(len(xs)))
    params = [p for _, p in params_of(module)]
    if mode == "inference":
        def step():
            with torch.no_grad():
                return module(xs[next(order)])
    elif mode == "train_fwd":
        def step():
            return module(xs[next(order)])
    else:
        def step():
            i = next(order)
            module(xs[i]).backward(gs[i])
            for t in params + [xs[i]]:
                t.grad = None  # fresh gradients each call, as with zero_grad(set_to_none)
    return step


def network_step(module: nn.Module, xs: list, labels: torch.Tensor, mode: str):
    order = itertools.cycle(range(len(xs)))
    if mode == "inference":
        def step():
            with torch.no_grad():
                return module(xs[next(order)])
        return step
    opt = torch.optim.SGD(module.parameters(), lr=1e-4, momentum=0.9)

    def step():
        loss = F.cross_entropy(module(xs[next(order)]).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step
