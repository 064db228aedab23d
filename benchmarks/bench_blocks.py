#!/usr/bin/env python3
"""Benchmark fused ResNet blocks against eager PyTorch and torch.compile.

Cases: the ResNet-50 bottlenecks of each stage (first block with stride and projection,
and a repeating block, weighted 1+2, 1+3, 1+5, 1+2 so the 16-block total is real), the
ResNet-18/34 basic blocks, and the whole ResNet-50 (images/s). Every provider is first
checked against a float64 reference (the torchvision block on the CPU); a provider that
fails the check is reported as failed and not timed. On a CPU the default run is sized for
a CPU (a few minutes); --full runs the whole sweep. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # run from a checkout (an in-place build works too)

from harness.cases import ALL_CASES, GROUPS, MODES, QUICK_CPU_CASES, Case  # noqa: E402
from harness.providers import FUSED_IMPORT_ERROR, PROVIDERS  # noqa: E402
from harness.report import (  # noqa: E402
    dtype_name,
    print_table,
    report,
    write_csv,
    write_json,
    write_plot,  # noqa: E402
)
from harness.runner import run_all  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
          "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}
# The default run on a CPU: every ResNet-50 bottleneck (so the 16-block summary is real) and
# the network at a quarter of the spatial sizes, without torch.compile (minutes to compile).
CPU_DEFAULT = {"cases": "r50", "hw_div": 4, "modes": ["inference", "train_fwd_bwd"],
               "min_time_s": 0.5}
FULL_HINT = "the full sweep: add --full (all cases, modes and providers at full size)"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", help="bf16 | fp16 | fp32 (default: bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--batch", type=int, help="batch size (default: 128 on CUDA, 2 on CPU)")
    p.add_argument("--hw-div", type=int,
                   help="divide every spatial size by this, rounding up (default: 1; 4 on CPU "
                        "without --full)")
    p.add_argument("--providers", help=f"comma list from {','.join(PROVIDERS)} (default: "
                   "eager,compile + the fused providers of the device; no compile on CPU "
                   "without --full)")
    p.add_argument("--modes", help=f"comma list from {','.join(MODES)} (default: all; "
                   "inference,train_fwd_bwd with --quick, and on CPU without --full)")
    p.add_argument("--cases", help="comma list of case names or groups r50, basic, all, none "
                   f"(default: all; r50 on CPU without --full; with --quick on CPU: "
                   f"{','.join(QUICK_CPU_CASES)}, on CUDA: r50)")
    p.add_argument("--no-network", action="store_true", help="skip the whole-ResNet-50 rows")
    p.add_argument("--quick", action="store_true", help="few cases, short timing")
    p.add_argument("--full", action="store_true",
                   help="on CPU: the whole sweep of a GPU run (all cases, modes and providers "
                        "at full size; tens of minutes); a GPU run is always full")
    p.add_argument("--budget-s", type=float,
                   help="stop starting new rows after this many seconds (default: none; with "
                        "--quick 150 on CUDA, 180 on CPU); on CUDA torch.compile rows run last; "
                        "SIGTERM also stops the run and still writes the outputs")
    p.add_argument("--min-time-s", type=float,
                   help="CPU: least timed seconds per row (default 0.3 with --quick, 0.5 in "
                        "the CPU default run, else 2)")
    p.add_argument("--rounds", type=int,
                   help="CPU: least interleaved timing rounds per row (default 7 with --quick "
                        "and in the CPU default run, else 15)")
    p.add_argument("--threads", type=int,
                   help="CPU threads (default: torch's; 1 with --quick: on a machine shared "
                        "with a compiler, OpenMP barriers make 2 threads up to 50x slower)")
    p.add_argument("--network-gate-batch", type=int, default=16,
                   help="batch of the float64 correctness check of the whole network")
    p.add_argument("--json", help="write results as JSON here")
    p.add_argument("--csv", help="write the rows as CSV here")
    p.add_argument("--plot", help="write a PNG of speedups and roofline ratios here")
    p.add_argument("--structure", action="store_true",
                   help="also profile the structure of the GPU backends (modeled, no GPU "
                        "needed: H100, batch 128, bf16; see structure.py) into the output "
                        "and the JSON's `structure` section")
    args = p.parse_args(argv)
    return resolve_defaults(args, p)


def resolve_defaults(args: argparse.Namespace, p: argparse.ArgumentParser) -> argparse.Namespace:
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = args.device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is available")
    if args.quick and args.full:
        p.error("--quick and --full exclude each other")
    # The CPU-sized default: everything not given on the command line.
    args.cpu_default = not cuda and not args.quick and not args.full
    cpu = CPU_DEFAULT if args.cpu_default else {}
    args.threads = args.threads or (1 if args.quick and not cuda else None)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.dtype and args.dtype not in DTYPES:
        p.error(f"--dtype must be one of {sorted(DTYPES)}")
    args.dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if cuda else torch.float32)
    args.batch = args.batch or (128 if cuda else 2)
    args.hw_div = args.hw_div or (4 if args.quick and not cuda else cpu.get("hw_div", 1))
    default_providers = (["eager", "compile", "fused_cuda", "fused_triton"] if cuda
                         else ["eager", "fused_cpp", "fused_reference"] if args.cpu_default
                         else ["eager", "compile", "fused_cpp", "fused_reference"])
    args.providers = split_list(args.providers, PROVIDERS, p, "--providers") or default_providers
    quick_modes = ["inference", "train_fwd_bwd"]
    args.modes = split_list(args.modes, MODES, p, "--modes") or (
        quick_modes if args.quick else cpu.get("modes", list(MODES)))
    args.cases = resolve_cases(args.cases or cpu.get("cases"), args.quick, cuda, p)
    if args.budget_s is None and args.quick:
        args.budget_s = 150.0 if cuda else 180.0
    args.rounds = args.rounds or (7 if args.quick or args.cpu_default else 15)
    args.min_time_s = args.min_time_s or (0.3 if args.quick else cpu.get("min_time_s", 2.0))
    args.compile_mode = "default" if args.quick else "max-autotune-no-cudagraphs"
    return args


def split_list(text: str | None, allowed, p, flag) -> list[str]:
    items = [s.strip() for s in (text or "").split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad:
        p.error(f"{flag}: unknown {bad}; choose from {list(allowed)}")
    return items


def resolve_cases(text: str | None, quick: bool, cuda: bool, p) -> list[Case]:
    if not text:
        text = "r50" if quick and cuda else ",".join(QUICK_CPU_CASES) if quick else "all"
    out: list[Case] = []
    for name in (s.strip() for s in text.split(",") if s.strip()):
        if name not in GROUPS and name not in ALL_CASES:
            p.error(f"--cases: unknown {name!r}; choose from {list(GROUPS) + list(ALL_CASES)}")
        out += [c for c in GROUPS.get(name, (ALL_CASES.get(name),)) if c not in out]
    return out


def interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device.type == "cpu":
        print(f"note: CPU run at batch {args.batch}, spatial / {args.hw_div}, dtype "
              f"{dtype_name(args.dtype)}, {torch.get_num_threads()} thread(s); providers timed "
              "interleaved; roofline floors from this CPU's measured peaks", file=sys.stderr)
    if args.cpu_default:
        print(f"note: the CPU-sized default run; {FULL_HINT}", file=sys.stderr)
    if FUSED_IMPORT_ERROR:
        print(f"note: {FUSED_IMPORT_ERROR}; fused providers are skipped", file=sys.stderr)
    signal.signal(signal.SIGTERM, interrupt)
    start = time.monotonic()
    rows = run_all(args)
    res = report(rows, args, time.monotonic() - start)
    print_table(res)
    if args.structure:
        import structure as structure_cli
        res["structure"] = structure_cli.run(structure_cli.parse_args([]))
        structure_cli.report(res["structure"])
    if args.cpu_default:
        print(f"\nThis was the CPU-sized default run; {FULL_HINT}.")
    for path, writer in ((args.json, lambda p: write_json(res, p)),
                         (args.csv, lambda p: write_csv(res["rows"], p)),
                         (args.plot, lambda p: write_plot(res, p))):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            writer(path)
    return 1 if any(r["status"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
