#!/usr/bin/env python3
"""Prints criterion results (median per iteration and elements/s) as a Markdown table.

Usage: scripts/bench-table.py GROUP [GROUP...]   (reads target/criterion/GROUP/*/*/new/)
"""
import json
import pathlib
import sys

root = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"
print("| benchmark | case | median time | elements/s (median) |")
print("|---|---|---|---|")
for group in sys.argv[1:]:
    for est in sorted((root / group).glob("*/*/new/estimates.json")):
        bench_dir = est.parent.parent
        bench = json.loads((est.parent / "benchmark.json").read_text())
        median_ns = json.loads(est.read_text())["median"]["point_estimate"]
        elements = (bench.get("throughput") or {}).get("Elements", 1)
        rate = elements / median_ns * 1e3  # M elements per second
        print(f"| {group}/{bench['function_id']} | {bench['value_str']} | {median_ns:.1f} ns | {rate:.1f} M |")
