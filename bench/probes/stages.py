#!/usr/bin/env python3
"""Where a compile spends its time and memory, stage by stage (no profiler overhead).

Usage: python bench/probes/stages.py REPO [--fresh] [--tracemalloc]

Runs the stages of ``compiler.api.compile_repo`` one by one (load, validate, read the
prior index, resolve, render, diff against output/) and prints wall time and the
process's peak RSS after each, with the garbage collector tuned as the CLI tunes it.
With --fresh, resolves as a compile into an empty output/ does: no placement is kept
from the previous compile (every replica is placed anew). With --tracemalloc, also the
top allocation sites live at the end of resolve and render (slower). Writes nothing to
output/.
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("repo", type=Path)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args()
    gc.set_threshold(50_000, 20, 20)  # as compiler.cli does for every command
    if args.tracemalloc:
        tracemalloc.start(1)

    start = time.perf_counter()
    from compiler import api
    from compiler.load import load_repo
    from compiler.model import validate_repo
    from compiler.output import diff_output, read_prior
    from compiler.render.fleet import render_fleet
    from compiler.resolve import resolve_fleet

    rows: list[tuple[str, float, float]] = []
    last = start

    def stage(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        rows.append((name, now - last, peak_mb()))
        last = now

    def top(label: str) -> None:
        if not args.tracemalloc:
            return
        snap = tracemalloc.take_snapshot()
        print(f"\n-- live allocations after {label} (top 12 lines) --")
        for stat in snap.statistics("lineno")[:12]:
            print(f"{stat.size / 2**20:8.1f} MB {stat.count:9d} blocks  {stat.traceback[0]}")
        current, peak = tracemalloc.get_traced_memory()
        print(f"traced: {current / 2**20:.1f} MB now, {peak / 2**20:.1f} MB peak")

    stage("imports")
    raw = load_repo(args.repo)
    stage("load (YAML → documents)")
    repo = validate_repo(raw)
    stage("validate (pydantic)")
    out = api.output_dir(args.repo, repo)
    prior = {} if args.fresh else read_prior(out)
    stage("read prior index.json")
    fleet = resolve_fleet(repo, prior)
    stage("resolve + place")
    top("resolve")
    files: dict[str, Any] = render_fleet(fleet)
    stage("render (compose/systemd/index)")
    top("render")
    changes = diff_output(out, files)
    stage("diff against output/")
    gc.collect()

    print(f"\n{'stage':32} {'seconds':>8} {'peak RSS MB':>12}")
    for name, seconds, rss in rows:
        print(f"{name:32} {seconds:8.2f} {rss:12.0f}")
    total = time.perf_counter() - start
    print(f"{'total':32} {total:8.2f} {peak_mb():12.0f}")
    print(
        f"\n{len(fleet.workloads)} workloads, {len(files)} files;"
        f" would create {len(changes.created)}, update {len(changes.updated)},"
        f" delete {len(changes.deleted)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
