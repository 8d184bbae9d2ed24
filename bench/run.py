#!/usr/bin/env python3
"""fleetform's benchmark driver: runs the suites, writes their results, sets the exit status.

  python bench/run.py [compile|live|all] [options]     (default: all)

  compile  synthetic fleets of 1,000 and 10,000 deployments: fleetform against kapitan
           and against the floor                               → bench/results.md
  live     3 ssh:// hosts × 10 deployments on real engines, as root: fleetform's plan and
           apply against compose-farm and plain docker compose  → bench/live-results.md

Each suite prints its table and writes its results file. Exit status 1 when a target is
missed, a step failed or a suite cannot run here. Scratch files go to bench/.work/
(gitignored). bench/README.md says what each figure means.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# The live suite starts its hosts with the test harness (testing/) of this checkout;
# sys.path[0] is bench/ itself.
sys.path.insert(1, str(BENCH.parent))

from suites import Report, Unavailable  # noqa: E402

RESULTS = {"compile": "results.md", "live": "live-results.md"}
BUDGETS = {"compile": 900.0, "live": 420.0}  # seconds, default --budget of each suite
REPEATED = {
    "compile": "compile: each fleetform measurement, the floor in turns with the fresh compile",
    "live": "live: each no-op, round by round",
}
SUMMARIES = {
    "compile": "fleetform compile against kapitan and the floor, on synthetic fleets",
    "live": "fleetform plan/apply against compose-farm on 3 ssh:// hosts (as root)",
    "all": "the compile suite, then the live suite",
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(
        prog="bench/run.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    suites = main.add_subparsers(dest="suite", metavar="{compile,live,all}")
    for name, summary in SUMMARIES.items():
        sub = suites.add_parser(name, help=summary, description=summary)
        names = list(RESULTS) if name == "all" else [name]
        one = len(names) == 1
        sub.add_argument(
            "--budget",
            type=float,
            help=f"seconds for {'the' if one else 'each'} suite (default: "
            + ", ".join(f"{'' if one else n + ' '}{BUDGETS[n]:g}" for n in names)
            + ")",
        )
        sub.add_argument(
            "--repeats",
            type=int,
            default=3,
            help="runs per measurement, their median reported (default 3): "
            + "; ".join(REPEATED[n] for n in names),
        )
        sub.add_argument(
            "--live",
            action="store_true",
            help="measure the working tree's compiler/ as it is (default: a snapshot taken"
            " at start)",
        )
        if "compile" in names:
            group = sub.add_argument_group("compile suite")
            group.add_argument(
                "--kapitan-parallelism",
                type=int,
                default=os.cpu_count() or 1,
                help="kapitan compile --parallelism (kapitan's own default: min(targets, CPUs))",
            )
            group.add_argument("--no-kapitan", action="store_true", help="skip kapitan entirely")
            group.add_argument(
                "--no-profile",
                action="store_true",
                help="no cProfile when a 10,000-deployment target is missed",
            )
    return main


def run_suite(name: str, args: argparse.Namespace) -> Report:
    budget = BUDGETS[name] if args.budget is None else args.budget
    repeats = max(1, args.repeats)
    if name == "compile":
        from suites import compile as compile_suite

        return compile_suite.run(
            budget=budget,
            repeats=repeats,
            live=args.live,
            kapitan=not args.no_kapitan,
            parallelism=args.kapitan_parallelism,
            profile=not args.no_profile,
        )
    from suites import live as live_suite

    return live_suite.run(budget=budget, repeats=repeats, live=args.live)


def main(argv: list[str]) -> int:
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["all", *argv]
    args = parser().parse_args(argv)
    passed = True
    for name in list(RESULTS) if args.suite == "all" else [args.suite]:
        started = time.monotonic()
        try:
            report = run_suite(name, args)
        except Unavailable as missing:
            print(f"bench/run.py {name}: {missing}", file=sys.stderr)
            passed = False
            continue
        path = BENCH / RESULTS[name]
        path.write_text(report.markdown, encoding="utf-8")
        print(report.markdown)
        log(f"{name}: {time.monotonic() - started:.0f} s; written to bench/{path.name}")
        passed = passed and report.passed
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
