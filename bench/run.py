#!/usr/bin/env python3
"""fleetform benchmark: synthetic fleets, fleetform vs kapitan, pass/fail against targets.

Usage: python bench/run.py [--budget SECONDS] [--repeats N] [--kapitan-parallelism N]

Everything it generates lives in bench/.work/ (gitignored); the result table is
printed and written to bench/results.md. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fleetgen  # noqa: E402
import floor  # noqa: E402
import kapitangen  # noqa: E402
from measure import (  # noqa: E402
    Result,
    compiler_digest,
    files_written,
    fleetform_argv,
    install_tool,
    pin_compiler,
    run,
    snapshot,
)

WORK = HERE / ".work"
ROOT = HERE.parent

# name → (deployments, hosts, deployment files)
WORKLOADS: dict[str, tuple[int, int, int]] = {"A": (1_000, 100, 20), "B": (10_000, 1_000, 100)}

TARGET_RATIO = 0.1  # fleetform ≤ 0.1× kapitan's wall time at 1,000 deployments
TARGET_B_WALL = 3.0  # s, 10,000 deployments
TARGET_B_RSS = 300.0  # MB, 10,000 deployments
TARGET_HELP = 0.25  # s, best of 5
TARGET_FLOOR = 2.0  # fleetform compile ≤ 2× the floor (bench/floor.py), at 1,000 and 10,000
MAX_REPEAT_SECONDS = 45.0  # stop repeating a measurement once this much time went into it


@dataclass
class Row:
    workload: str
    tool: str
    wall: float | None
    rss: float | None
    notes: str


@dataclass
class Check:
    target: str
    measured: str
    ok: bool | None  # None: not measured


@dataclass
class Bench:
    budget: float
    repeats: int
    parallelism: int
    profile: bool
    ff_env: dict[str, str] | None = None  # environment for fleetform runs (pinned code)
    code: str = ""  # which compiler/ code is measured
    start: float = field(default_factory=time.monotonic)
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)  # extra markdown after the tables

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.start)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def repeated(
    argv: list[str],
    repeats: int,
    *,
    prepare: Callable[[], None] | None = None,
    log_file: Path | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> list[Result]:
    results: list[Result] = []
    spent = 0.0
    for _ in range(repeats):
        if prepare:
            prepare()
        result = run(argv, log=log_file, cwd=cwd, env=env)
        if result.returncode != 0:
            raise SystemExit(
                f"bench: {' '.join(argv)} exited {result.returncode}:\n{result.output}"
            )
        results.append(result)
        spent += result.wall
        if spent > MAX_REPEAT_SECONDS:
            break
    return results


def median(results: list[Result]) -> tuple[float, float]:
    return (
        statistics.median(r.wall for r in results),
        statistics.median(r.max_rss_mb for r in results),
    )


def runs_note(results: list[Result]) -> str:
    if len(results) == 1:
        return "1 run"
    walls = ", ".join(f"{r.wall:.2f}" for r in results)
    return f"median of {len(results)} runs ({walls} s)"


# --- steps ----------------------------------------------------------------------------


def generate(name: str) -> tuple[fleetgen.Fleet, Path]:
    deployments, hosts, files = WORKLOADS[name]
    started = time.monotonic()
    fleet = fleetgen.generate_fleet(deployments, hosts, files)
    repo = WORK / f"fleet-{name}"
    fleetgen.write_repo(fleet, repo)
    log(
        f"generated {name}: {deployments} deployments, {hosts} hosts,"
        f" {len(fleet.deployment_files)} deployment files in {time.monotonic() - started:.1f} s"
    )
    return fleet, repo


def bench_fleetform(bench: Bench, name: str, repo: Path) -> tuple[float, float]:
    """Fresh compile and no-change recompile; returns the fresh compile's median wall, RSS."""
    deployments = WORKLOADS[name][0]
    label = f"{name}: {deployments:,} deployments"
    output = repo / "output"
    argv = fleetform_argv() + ["compile", "--repo", str(repo)]

    trash = WORK / f"trash-{name}"
    shutil.rmtree(trash, ignore_errors=True)
    trash.mkdir()

    def fresh() -> None:
        # Moved aside, deleted after the timed runs: see "Deleting right before" below.
        if output.exists():
            output.rename(trash / str(len(list(trash.iterdir()))))

    log(f"fleetform compile (fresh output/) on {name}")
    results = repeated(
        argv,
        bench.repeats,
        prepare=fresh,
        log_file=WORK / f"fleetform-{name}.log",
        env=bench.ff_env,
    )
    settle(trash)
    wall, rss = median(results)
    files = sum(1 for _ in output.rglob("*") if _.is_file())
    bench.rows.append(
        Row(label, "fleetform compile (fresh)", wall, rss, f"{runs_note(results)}; {files} files")
    )

    log(f"fleetform compile (no change) on {name}")
    written: list[str] = []
    unchanged: list[Result] = []
    for _ in range(bench.repeats):
        before = snapshot(output)
        result = run(argv, log=WORK / f"fleetform-{name}-nochange.log", env=bench.ff_env)
        after = snapshot(output)
        if result.returncode != 0:
            raise SystemExit(f"bench: recompile exited {result.returncode}:\n{result.output}")
        written += files_written(before, after)
        unchanged.append(result)
        if sum(r.wall for r in unchanged) > MAX_REPEAT_SECONDS:
            break
    wall2, rss2 = median(unchanged)
    bench.rows.append(
        Row(
            label,
            "fleetform compile (no change)",
            wall2,
            rss2,
            f"{runs_note(unchanged)}; files written: {len(set(written))}",
        )
    )
    # Informational: the same fresh compile right after deleting the previous output/.
    deleted = repeated(
        argv,
        bench.repeats,
        prepare=lambda: shutil.rmtree(output, ignore_errors=True),
        log_file=WORK / f"fleetform-{name}-afterdelete.log",
        env=bench.ff_env,
    )
    settle(None)
    bench.rows.append(
        Row(
            label,
            "fleetform compile (fresh, right after `rm -r output/`)",
            *median(deleted),
            f"{runs_note(deleted)}; informational: the file system's cost of the delete"
            " lands in this run",
        )
    )
    shown = ", ".join(sorted(set(written))[:5])
    bench.checks.append(
        Check(
            f"{name}: no-change recompile writes no file",
            f"files written: {len(set(written))}" + (f" ({shown}…)" if written else ""),
            not written,
        )
    )
    return wall, rss


def bench_floor(bench: Bench, name: str, repo: Path, compile_wall: float) -> None:
    """The floor (bench/floor.py: the same inputs parsed by PyYAML's C loader, the same
    output bytes written into a fresh folder), timed as the fresh compile was, and the
    compile's ratio to it."""
    deployments = WORKLOADS[name][0]
    blob = WORK / f"output-{name}.pickle"
    size = floor.capture(repo / "output", blob)
    out = WORK / f"floor-{name}"
    trash = WORK / f"trash-floor-{name}"
    shutil.rmtree(trash, ignore_errors=True)
    trash.mkdir()

    def fresh() -> None:
        if out.exists():
            out.rename(trash / str(len(list(trash.iterdir()))))

    log(f"floor (C-loader parse + the same output bytes) on {name}")
    argv = [sys.executable, str(HERE / "floor.py"), str(repo), str(blob), str(out)]
    results = repeated(argv, bench.repeats, prepare=fresh, log_file=WORK / f"floor-{name}.log")
    settle(trash)
    shutil.rmtree(out, ignore_errors=True)
    wall, rss = median(results)
    files = len(floor.inputs(repo))
    bench.rows.append(
        Row(
            f"{name}: {deployments:,} deployments",
            "floor: PyYAML C loader + write the same bytes",
            wall,
            rss,
            f"{runs_note(results)}; {files} input files, {size / 1e6:.1f} MB written",
        )
    )
    ratio = compile_wall / wall
    bench.checks.append(
        Check(
            f"{deployments:,}: fleetform compile ≤ {TARGET_FLOOR:g}× the floor",
            f"{compile_wall:.3f} s / {wall:.3f} s = {ratio:.2f}×",
            ratio <= TARGET_FLOOR,
        )
    )


def settle(trash: Path | None) -> None:
    """Delete what the timed runs left aside and let the file system finish with it."""
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    os.sync()
    time.sleep(2)


def bench_help(bench: Bench) -> None:
    candidates = [("fleetform --help", fleetform_argv())]
    shim = shutil.which("fleetform")
    if shim and Path(shim).resolve() != Path(fleetform_argv()[0]).resolve():
        candidates.append((f"fleetform --help via PATH ({shim})", [shim]))
    worst = 0.0
    measured = []
    for label, argv in candidates:
        results = [run(argv + ["--help"], env=bench.ff_env) for _ in range(5)]
        if any(r.returncode != 0 for r in results):
            raise SystemExit(f"bench: {argv} --help failed")
        best = min(results, key=lambda r: r.wall)
        worst = max(worst, best.wall)
        measured.append(f"{best.wall:.3f} s" + (" via PATH" if "PATH" in label else ""))
        bench.rows.append(Row("—", label, best.wall, best.max_rss_mb, "best of 5"))
    bench.checks.append(
        Check(
            f"fleetform --help ≤ {TARGET_HELP} s (best of 5)",
            "; ".join(measured),
            worst <= TARGET_HELP,
        )
    )


def ensure_kapitan(bench: Bench) -> Path | None:
    venv = WORK / "kapitan-venv"
    if not (venv / "bin" / "kapitan").exists():
        log("installing kapitan into bench/.work/kapitan-venv (pip, PyPI)")
    exe, note = install_tool(venv, "kapitan", "kapitan")
    if note:
        bench.notes.append(note)
    return exe


def kapitan_env() -> dict[str, str]:
    """The environment for kapitan, minus a dangling HTTPLIB2_CA_CERTS.

    kapitan imports httplib2 (via googleapiclient) at start-up, which raises when that
    variable names a missing file; kapitan makes no network call here.
    """
    env = dict(os.environ)
    cert = env.get("HTTPLIB2_CA_CERTS")
    if cert is not None and not os.path.isfile(cert):
        del env["HTTPLIB2_CA_CERTS"]
    return env


def kapitan_version(exe: Path) -> str:
    done = subprocess.run(
        [str(exe), "--version"], capture_output=True, text=True, env=kapitan_env()
    )
    return (done.stdout or done.stderr).strip().splitlines()[-1] if done.returncode == 0 else "?"


def bench_kapitan(
    bench: Bench, exe: Path, name: str, fleet: fleetgen.Fleet, repo: Path, timeout: float | None
) -> Result | None:
    deployments = WORKLOADS[name][0]
    project = WORK / f"kapitan-{name}"
    targets = kapitangen.write_kapitan_project(fleet, repo / "output", project)
    log(f"kapitan compile on {name}: {targets} targets, --parallelism {bench.parallelism}")
    result = run(
        [str(exe), "compile", "--parallelism", str(bench.parallelism)],
        cwd=project,
        env=kapitan_env(),
        log=WORK / f"kapitan-{name}.log",
        timeout=timeout,
        sample_tree=True,
    )
    label = f"{name}: {deployments:,} deployments"
    if result.timed_out:
        bench.rows.append(
            Row(label, "kapitan compile", None, None, f"killed after {result.wall:.0f} s (budget)")
        )
        return None
    if result.returncode != 0:
        raise SystemExit(f"bench: kapitan compile exited {result.returncode}:\n{result.output}")
    compiled = sum(1 for _ in (project / "compiled").rglob("compose.yml"))
    bench.rows.append(
        Row(
            label,
            f"kapitan compile (jinja2, --parallelism {bench.parallelism})",
            result.wall,
            result.max_rss_mb,
            f"1 run; {compiled} compose files; process-tree RSS peak {result.tree_rss_mb:.0f} MB",
        )
    )
    return result


def profile_b(bench: Bench, repo: Path) -> None:
    out = WORK / "profile-B"
    shutil.rmtree(repo / "output", ignore_errors=True)
    log("cProfile of fleetform compile on B (fresh output/)")
    stats = out.with_suffix(".pstats")
    run(
        [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(stats),
            "-m",
            "compiler.cli",
            "compile",
            "--repo",
            str(repo),
        ],
        cwd=WORK,  # not ROOT: `-m` puts the cwd first on sys.path, ahead of the pin
        env=bench.ff_env,
        log=WORK / "profile-B.log",
    )
    stages = subprocess.run(
        [sys.executable, str(HERE / "stages.py"), str(repo)],
        capture_output=True,
        text=True,
        env=bench.ff_env,
        cwd=WORK,
    )
    if stages.returncode == 0:
        bench.sections.append(
            "Stage breakdown of the 10,000-deployment compile (bench/stages.py, no profiler,"
            " output/ already current):\n\n```\n" + stages.stdout.strip() + "\n```"
        )
    import pstats

    with open(out.with_suffix(".txt"), "w") as handle:
        report = pstats.Stats(str(stats), stream=handle)
        report.sort_stats("cumulative").print_stats(40)
        report.sort_stats("tottime").print_stats(25)
    bench.notes.append(
        "fleetform missed a 10,000-deployment target: cProfile of the fresh compile is in"
        " bench/.work/profile-B.txt (top 40 by cumulative time, top 25 by own time)."
    )


# --- report ---------------------------------------------------------------------------


def fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render(bench: Bench, env: list[str]) -> str:
    lines = [
        "# fleetform benchmark",
        "",
        *env,
        "",
        "| workload | tool | wall s | peak RSS MB | notes |",
    ]
    lines.append("|---|---|---:|---:|---|")
    for row in bench.rows:
        wall, rss = fmt(row.wall, 3), fmt(row.rss, 0)
        lines.append(f"| {row.workload} | {row.tool} | {wall} | {rss} | {row.notes} |")
    lines += ["", "| target | measured | result |", "|---|---|---|"]
    for check in bench.checks:
        verdict = "n/a" if check.ok is None else ("PASS" if check.ok else "FAIL")
        lines.append(f"| {check.target} | {check.measured} | {verdict} |")
    if bench.notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in bench.notes]
    for section in bench.sections:
        lines += ["", section]
    return "\n".join(lines) + "\n"


def environment(bench: Bench, kapitan: str) -> list[str]:
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; fleetform code: {bench.code}",
        f"- machine: {os.cpu_count()} CPUs, {platform.system()} {platform.machine()},"
        f" Python {platform.python_version()}; kapitan {kapitan}",
        "- wall: perf_counter around the child; peak RSS: wait4 ru_maxrss of the child"
        ' (= /usr/bin/time -v "Maximum resident set size"), largest single process',
    ]


# --- main -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=900.0, help="seconds for the whole run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per fleetform measurement")
    parser.add_argument(
        "--kapitan-parallelism",
        type=int,
        default=os.cpu_count() or 1,
        help="kapitan compile --parallelism (kapitan's own default: min(targets, CPUs))",
    )
    parser.add_argument("--no-kapitan", action="store_true", help="skip kapitan entirely")
    parser.add_argument("--no-profile", action="store_true", help="no cProfile when B misses")
    parser.add_argument(
        "--live",
        action="store_true",
        help="measure the working tree's compiler/ as it is (default: a snapshot taken at start)",
    )
    args = parser.parse_args()
    bench = Bench(args.budget, max(1, args.repeats), args.kapitan_parallelism, not args.no_profile)
    WORK.mkdir(exist_ok=True)
    live_digest = compiler_digest(ROOT / "compiler")
    bench.code, pythonpath = pin_compiler(WORK, args.live)
    if pythonpath:
        bench.ff_env = {**os.environ, "PYTHONPATH": pythonpath}

    fleet_a, repo_a = generate("A")
    wall_a, _ = bench_fleetform(bench, "A", repo_a)
    bench_floor(bench, "A", repo_a, wall_a)
    bench_help(bench)

    kapitan_exe = None if args.no_kapitan else ensure_kapitan(bench)
    version = kapitan_version(kapitan_exe) if kapitan_exe else "not run"
    kapitan_a = None
    if kapitan_exe:
        kapitan_a = bench_kapitan(bench, kapitan_exe, "A", fleet_a, repo_a, bench.remaining() - 120)
    if kapitan_a:
        ratio = wall_a / kapitan_a.wall
        bench.checks.insert(
            0,
            Check(
                f"1,000: fleetform ≤ {TARGET_RATIO}× kapitan (wall)",
                f"{wall_a:.3f} s / {kapitan_a.wall:.3f} s = {ratio:.3f}×"
                f" (kapitan {kapitan_a.wall / wall_a:.1f}× slower)",
                ratio <= TARGET_RATIO,
            ),
        )
    else:
        bench.checks.insert(
            0, Check(f"1,000: fleetform ≤ {TARGET_RATIO}× kapitan", "kapitan not run", None)
        )

    fleet_b, repo_b = generate("B")
    wall_b, rss_b = bench_fleetform(bench, "B", repo_b)
    bench_floor(bench, "B", repo_b, wall_b)
    bench.checks.insert(
        1,
        Check(
            f"10,000: fleetform compile ≤ {TARGET_B_WALL} s",
            f"{wall_b:.2f} s",
            wall_b <= TARGET_B_WALL,
        ),
    )
    bench.checks.insert(
        2,
        Check(
            f"10,000: fleetform peak RSS ≤ {TARGET_B_RSS:.0f} MB",
            f"{rss_b:.0f} MB",
            rss_b <= TARGET_B_RSS,
        ),
    )

    if kapitan_exe and kapitan_a:
        estimate = kapitan_a.wall * 10
        room = bench.remaining() - 60
        if estimate <= room:
            kapitan_b = bench_kapitan(bench, kapitan_exe, "B", fleet_b, repo_b, room)
            if kapitan_b is None:
                bench.notes.append(
                    f"kapitan on B was stopped at the time budget; linear extrapolation from A:"
                    f" ~{estimate:.0f} s."
                )
        else:
            bench.rows.append(
                Row(
                    "B: 10,000 deployments",
                    "kapitan compile",
                    None,
                    None,
                    f"skipped: ~{estimate:.0f} s expected (10× A, linear) but {max(room, 0):.0f} s"
                    " of the time budget left",
                )
            )

    if (
        bench.profile
        and (wall_b > TARGET_B_WALL or rss_b > TARGET_B_RSS)
        and bench.remaining() > wall_b * 3
    ):
        profile_b(bench, repo_b)

    if args.live and compiler_digest(ROOT / "compiler") != live_digest:
        bench.notes.append(
            "compiler/ changed during this --live run: the numbers mix code versions; rerun"
            " without --live to measure a snapshot."
        )
    report = render(bench, environment(bench, version))
    (HERE / "results.md").write_text(report)
    print(report)
    log(f"done in {time.monotonic() - bench.start:.0f} s; table written to bench/results.md")
    failed = any(check.ok is False for check in bench.checks)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
