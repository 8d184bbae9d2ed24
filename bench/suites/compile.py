"""The compile suite: synthetic fleets compiled by fleetform, by kapitan and by the floor.

``python bench/run.py compile`` (bench/README.md says what each figure means): fleets of
1,000 and 10,000 deployments (``bench/fleets/synthetic.py``); fleetform's fresh compile,
timed in turns with the floor (``bench/probes/floor.py``), its no-change recompile and
``--help``; kapitan on the same fleets (``bench/fleets/kapitan.py``, installed by
``bench/competitors/kapitan.sh``). Everything it generates lives in bench/.work/.
"""

from __future__ import annotations

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

from fleets import kapitan as kapitan_project
from fleets import synthetic
from measure import (
    BenchError,
    Competitor,
    Result,
    competitor,
    compiler_digest,
    files_written,
    fleetform_argv,
    pin_compiler,
    snapshot,
)
from measure import run as run_command
from probes import floor

from suites import Report

BENCH = Path(__file__).resolve().parents[1]
WORK = BENCH / ".work"
ROOT = BENCH.parent
KAPITAN = WORK / "kapitan-venv" / "bin" / "kapitan"

WORKLOADS: dict[str, tuple[int, int, int]] = {"A": (1_000, 100, 20), "B": (10_000, 1_000, 100)}

TARGET_RATIO = 0.1  # fleetform ≤ 0.1× kapitan's wall time at 1,000 deployments
TARGET_B_WALL = 3.0  # s, 10,000 deployments
TARGET_B_RSS = 300.0  # MB, 10,000 deployments
TARGET_HELP = 0.25  # s, best of 5
TARGET_FLOOR = 2.0  # compile ≤ 2× the floor (median of the pairs' ratios), at 1,000 and 10,000
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
    print(f"[compile {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def repeated(
    argv: list[str],
    repeats: int,
    *,
    prepare: Callable[[], None] | None = None,
    log_file: Path | None = None,
    env: dict[str, str] | None = None,
) -> list[Result]:
    results: list[Result] = []
    spent = 0.0
    for _ in range(repeats):
        if prepare:
            prepare()
        result = run_command(argv, log=log_file, env=env)
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


def generate(name: str) -> tuple[synthetic.Fleet, Path]:
    deployments, hosts, files = WORKLOADS[name]
    started = time.monotonic()
    fleet = synthetic.generate_fleet(deployments, hosts, files)
    repo = WORK / f"fleet-{name}"
    synthetic.write_repo(fleet, repo)
    log(
        f"generated {name}: {deployments} deployments, {hosts} hosts,"
        f" {len(fleet.deployment_files)} deployment files in {time.monotonic() - started:.1f} s"
    )
    return fleet, repo


@dataclass
class Pairs:
    """Fresh compiles and runs of the floor, taken in turns: pair i is (compiles[i], floors[i])."""

    compiles: list[Result] = field(default_factory=list)
    floors: list[Result] = field(default_factory=list)
    written: int = 0  # bytes each floor run writes: the compile's output

    def ratios(self) -> list[float]:
        return [c.wall / f.wall for c, f in zip(self.compiles, self.floors, strict=True)]


def fresh_against_floor(bench: Bench, name: str, repo: Path) -> Pairs:
    """fleetform's fresh compile and the floor (bench/probes/floor.py: the same inputs
    parsed by PyYAML's C loader, the same output bytes written into a fresh folder), in
    turns: compile, floor, compile, floor, ... with ``os.sync()`` (untimed) before each.

    Timed in separate blocks, the floor at 10,000 took 1.35–2.38 s for the same work: the
    file system's writeback of one run landed in the next. Synced and alternating, each
    pair sees the same machine state, so the ratio is taken pair by pair."""
    output, out = repo / "output", WORK / f"floor-{name}"
    blob = WORK / f"output-{name}.pickle"
    trash = WORK / f"trash-{name}"
    shutil.rmtree(trash, ignore_errors=True)
    trash.mkdir()
    compile_argv = fleetform_argv() + ["compile", "--repo", str(repo)]
    floor_argv = [sys.executable, str(BENCH / "probes" / "floor.py"), str(repo), str(blob)]
    pairs = Pairs()
    log(f"fleetform compile (fresh output/) and the floor, in turns, on {name}")
    for _ in range(bench.repeats):
        set_aside(output, trash)
        pairs.compiles.append(
            synced(compile_argv, WORK / f"fleetform-{name}.log", env=bench.ff_env)
        )
        if not pairs.written:  # the bytes the floor writes: the first compile's output
            pairs.written = floor.capture(output, blob)
        set_aside(out, trash)
        pairs.floors.append(synced([*floor_argv, str(out)], WORK / f"floor-{name}.log"))
        spent = max(sum(r.wall for r in pairs.compiles), sum(r.wall for r in pairs.floors))
        if spent > MAX_REPEAT_SECONDS:
            break
    settle(trash)
    shutil.rmtree(out, ignore_errors=True)
    return pairs


def set_aside(folder: Path, trash: Path) -> None:
    """Moved aside, deleted after the timed runs: a delete right before a run is charged
    to that run's file creations (the informational "right after `rm -r output/`" row)."""
    if folder.exists():
        folder.rename(trash / str(len(list(trash.iterdir()))))


def synced(argv: list[str], log_file: Path, env: dict[str, str] | None = None) -> Result:
    os.sync()  # untimed: the writeback of what ran before is not charged to this run
    result = run_command(argv, log=log_file, env=env)
    if result.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} exited {result.returncode}:\n{result.output}")
    return result


def bench_unchanged(bench: Bench, name: str, repo: Path, label: str) -> None:
    """No-change recompiles: their row, and the check that they write no file."""
    output = repo / "output"
    argv = fleetform_argv() + ["compile", "--repo", str(repo)]
    log(f"fleetform compile (no change) on {name}")
    written: list[str] = []
    results: list[Result] = []
    for _ in range(bench.repeats):
        before = snapshot(output)
        result = run_command(argv, log=WORK / f"fleetform-{name}-nochange.log", env=bench.ff_env)
        after = snapshot(output)
        if result.returncode != 0:
            raise SystemExit(f"bench: recompile exited {result.returncode}:\n{result.output}")
        written += files_written(before, after)
        results.append(result)
        if sum(r.wall for r in results) > MAX_REPEAT_SECONDS:
            break
    files = sorted(set(written))
    bench.rows.append(
        Row(
            label,
            "fleetform compile (no change)",
            *median(results),
            f"{runs_note(results)}; files written: {len(files)}",
        )
    )
    shown = ", ".join(files[:5])
    bench.checks.append(
        Check(
            f"{name}: no-change recompile writes no file",
            f"files written: {len(files)}" + (f" ({shown}…)" if files else ""),
            not files,
        )
    )


def bench_after_delete(bench: Bench, name: str, repo: Path, label: str) -> None:
    """Informational: the same fresh compile right after deleting the previous output/."""
    output = repo / "output"
    results = repeated(
        fleetform_argv() + ["compile", "--repo", str(repo)],
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
            *median(results),
            f"{runs_note(results)}; informational: the file system's cost of the delete"
            " lands in this run",
        )
    )


def bench_fleet(bench: Bench, name: str, repo: Path) -> tuple[float, float]:
    """fleetform on one fleet, and the floor; returns the fresh compile's median wall, RSS."""
    deployments = WORKLOADS[name][0]
    label = f"{name}: {deployments:,} deployments"
    pairs = fresh_against_floor(bench, name, repo)
    wall, rss = median(pairs.compiles)
    files = sum(1 for _ in (repo / "output").rglob("*") if _.is_file())
    bench.rows.append(
        Row(
            label,
            "fleetform compile (fresh)",
            wall,
            rss,
            f"{runs_note(pairs.compiles)}; {files} files; in turns with the floor, sync before"
            " each",
        )
    )
    bench_unchanged(bench, name, repo, label)
    bench_after_delete(bench, name, repo, label)
    bench.rows.append(
        Row(
            label,
            "floor: PyYAML C loader + write the same bytes",
            *median(pairs.floors),
            f"{runs_note(pairs.floors)}; {len(floor.inputs(repo))} input files,"
            f" {pairs.written / 1e6:.1f} MB written",
        )
    )
    bench.checks.append(floor_check(deployments, pairs))
    return wall, rss


def floor_check(deployments: int, pairs: Pairs) -> Check:
    """The target is on the median of the pairs' ratios; the medians' ratio is beside it."""
    ratios = pairs.ratios()
    ratio = statistics.median(ratios)
    compile_wall, floor_wall = median(pairs.compiles)[0], median(pairs.floors)[0]
    each = ", ".join(f"{r:.2f}" for r in ratios)
    return Check(
        f"{deployments:,}: fleetform compile ≤ {TARGET_FLOOR:g}× the floor",
        f"{ratio:.2f}× (median of the pairs' ratios: {each}); medians {compile_wall:.3f} s"
        f" / {floor_wall:.3f} s = {compile_wall / floor_wall:.2f}×",
        ratio <= TARGET_FLOOR,
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
        results = [run_command(argv + ["--help"], env=bench.ff_env) for _ in range(5)]
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


def install_kapitan(bench: Bench) -> Competitor | None:
    log("kapitan: bench/competitors/kapitan.sh (installs it into bench/.work/kapitan-venv once)")
    try:
        kapitan = competitor("kapitan.sh", KAPITAN)
    except BenchError as error:
        bench.notes.append(f"kapitan could not be installed: {error}")
        return None
    bench.notes += kapitan.notes
    return kapitan


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


def bench_kapitan(
    bench: Bench, exe: Path, name: str, fleet: synthetic.Fleet, repo: Path, timeout: float | None
) -> Result | None:
    deployments = WORKLOADS[name][0]
    project = WORK / f"kapitan-{name}"
    targets = kapitan_project.write_kapitan_project(fleet, repo / "output", project)
    log(f"kapitan compile on {name}: {targets} targets, --parallelism {bench.parallelism}")
    result = run_command(
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
    run_command(
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
        [sys.executable, str(BENCH / "probes" / "stages.py"), str(repo)],
        capture_output=True,
        text=True,
        env=bench.ff_env,
        cwd=WORK,
    )
    if stages.returncode == 0:
        bench.sections.append(
            "Stage breakdown of the 10,000-deployment compile (bench/probes/stages.py, no"
            " profiler, output/ already current):\n\n```\n" + stages.stdout.strip() + "\n```"
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


# --- the suite ------------------------------------------------------------------------


def run(
    *, budget: float, repeats: int, live: bool, kapitan: bool, parallelism: int, profile: bool
) -> Report:
    """Measure both fleets; ``live``: the working tree's compiler/ as it is (default: a
    snapshot taken at start); ``kapitan``: also measure kapitan, with ``--parallelism``."""
    bench = Bench(budget, repeats, parallelism, profile)
    WORK.mkdir(exist_ok=True)
    live_digest = compiler_digest(ROOT / "compiler")
    bench.code, pythonpath = pin_compiler(WORK, live)
    if pythonpath:
        bench.ff_env = {**os.environ, "PYTHONPATH": pythonpath}

    fleet_a, repo_a = generate("A")
    wall_a, _ = bench_fleet(bench, "A", repo_a)
    bench_help(bench)
    tool = install_kapitan(bench) if kapitan else None
    kapitan_a = None
    if tool:
        kapitan_a = bench_kapitan(bench, tool.exe, "A", fleet_a, repo_a, bench.remaining() - 120)
    bench.checks.insert(0, kapitan_check(wall_a, kapitan_a))

    fleet_b, repo_b = generate("B")
    wall_b, rss_b = bench_fleet(bench, "B", repo_b)
    bench.checks[1:1] = [
        Check(
            f"10,000: fleetform compile ≤ {TARGET_B_WALL} s",
            f"{wall_b:.2f} s",
            wall_b <= TARGET_B_WALL,
        ),
        Check(
            f"10,000: fleetform peak RSS ≤ {TARGET_B_RSS:.0f} MB",
            f"{rss_b:.0f} MB",
            rss_b <= TARGET_B_RSS,
        ),
    ]
    if tool and kapitan_a:
        kapitan_on_b(bench, tool.exe, kapitan_a, fleet_b, repo_b)
    if (
        bench.profile
        and (wall_b > TARGET_B_WALL or rss_b > TARGET_B_RSS)
        and bench.remaining() > wall_b * 3
    ):
        profile_b(bench, repo_b)

    if live and compiler_digest(ROOT / "compiler") != live_digest:
        bench.notes.append(
            "compiler/ changed during this --live run: the numbers mix code versions; rerun"
            " without --live to measure a snapshot."
        )
    markdown = render(bench, environment(bench, tool.version if tool else "not run"))
    return Report(markdown, passed=not any(check.ok is False for check in bench.checks))


def kapitan_check(wall_a: float, kapitan_a: Result | None) -> Check:
    if kapitan_a is None:
        return Check(f"1,000: fleetform ≤ {TARGET_RATIO}× kapitan", "kapitan not run", None)
    ratio = wall_a / kapitan_a.wall
    return Check(
        f"1,000: fleetform ≤ {TARGET_RATIO}× kapitan (wall)",
        f"{wall_a:.3f} s / {kapitan_a.wall:.3f} s = {ratio:.3f}×"
        f" (kapitan {kapitan_a.wall / wall_a:.1f}× slower)",
        ratio <= TARGET_RATIO,
    )


def kapitan_on_b(
    bench: Bench, exe: Path, kapitan_a: Result, fleet_b: synthetic.Fleet, repo_b: Path
) -> None:
    """kapitan on B, only if 10× its time on A fits in what is left of the budget."""
    estimate = kapitan_a.wall * 10
    room = bench.remaining() - 60
    if estimate <= room:
        if bench_kapitan(bench, exe, "B", fleet_b, repo_b, room) is None:
            bench.notes.append(
                f"kapitan on B was stopped at the time budget; linear extrapolation from A:"
                f" ~{estimate:.0f} s."
            )
        return
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
