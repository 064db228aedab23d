#!/usr/bin/env python3
"""Structure profile: what each backend would launch on an H100 for the ResNet-50
bottlenecks, the stem and a whole ResNet-50 step, traced on meta tensors (no GPU, no
data), with a modeled time beside the roofline floor. Everything it prints is MODELED.
See benchmarks/README.md ("Structure profile").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # run from a checkout

import torch  # noqa: E402
from harness import structure, structure_report  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--providers", default=",".join(structure.PROVIDERS),
                   help=f"comma list from {','.join(structure.PROVIDERS)}")
    p.add_argument("--modes", default=",".join(structure.MODES),
                   help=f"comma list from {','.join(structure.MODES)}")
    p.add_argument("--no-network", action="store_true", help="skip the whole-ResNet-50 step")
    p.add_argument("--compile-resources", action="store_true",
                   help="compile the Triton kernels whose register and shared-memory use is "
                        "not cached yet (minutes on a small machine; otherwise occupancy "
                        "comes from threads and shared-memory estimates)")
    p.add_argument("--json", help="write the profile as JSON here")
    p.add_argument("--plot", help="write a PNG here")
    args = p.parse_args(argv)
    for name, allowed in (("providers", structure.PROVIDERS), ("modes", structure.MODES)):
        values = [v for v in getattr(args, name).split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            p.error(f"--{name}: unknown {bad or 'empty list'}; choose from {','.join(allowed)}")
        setattr(args, name, tuple(values))
    if args.batch < 1:
        p.error("--batch must be at least 1")
    return args


def run(args: argparse.Namespace) -> dict:
    start = time.perf_counter()

    def progress(msg: str) -> None:
        print(f"[{time.perf_counter() - start:5.1f}s] {msg}", file=sys.stderr, flush=True)

    tracer = structure.Tracer(dtype=DTYPES[args.dtype], batch=args.batch,
                              compile_resources=args.compile_resources, progress=progress)
    providers = []
    for p in args.providers:
        reason = tracer.unavailable(p)
        if reason:
            progress(f"{p} skipped: {reason}")
        else:
            providers.append(p)
    profiles = structure.profile_all(tracer, tuple(providers), args.modes,
                                     network=not args.no_network, progress=progress)
    return structure.to_json(tracer, profiles, tuple(providers))


def report(data: dict) -> None:
    """The table, the worst launches, measured beside modeled, the 16-block lines."""
    structure_report.print_table(data)
    structure_report.measured_beside_modeled(data)
    if data["cases"]:
        print(f"\n16 blocks, training (modeled): {structure_report.sixteen_block_line(data)}")
    if data["inference_cases"]:
        print("16 blocks, inference (modeled): "
              f"{structure_report.sixteen_block_line(data, 'inference')}")


def main(argv=None) -> int:
    args = parse_args(argv)
    data = run(args)
    report(data)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    if args.plot and data["cases"]:
        structure_report.write_plot(data, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
