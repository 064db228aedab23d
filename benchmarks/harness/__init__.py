"""The benchmark harness behind bench_blocks.py: cases, providers, the correctness gate,
timing, the run loop and reporting, one module each."""
