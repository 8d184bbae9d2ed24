"""`fleetform apply` when things go wrong, against real engines (testing/engines.py).

* kill -9 of an apply at five points of a rolling update, then `unlock` and a rerun
  that converges with nothing unowned left behind;
* a host whose engine is down among three applied with ``--parallel 3``;
* ``ssh://`` hosts: the six-step check, and unknown or changed host keys refused;
* image pulls from a real registry on loopback (Debian's ``docker-registry``);
* an engine that refuses the GPU request; a stale plan file under concurrency.

The kill points are reached deterministically through :class:`EngineProxy`, a
transparent unix-socket proxy in front of the real engine that can hold one chosen
Engine API request: the apply is killed while that request waits, so the engine is
exactly in the state just before it (checked on the engine itself before the kill).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testing.engines import (
    REQUIRE_TOOLS_ENV,
    TEST_IMAGE,
    Engine,
    EngineFactory,
    _ping,
    free_port,
)

PROJECT = "ffr"
PREVIOUS = "--fleetform-previous"
RUN_TIMEOUT = 120
CLI = [sys.executable, "-c", "from compiler.cli import main; main()"]

# --- a fleet repository ------------------------------------------------------------------

BACKEND = """\
backend_name: bb
health_check_path: /health
default_run_command: "httpd -f -p 127.0.0.1:{{{{port}}}} -h /var/www"
version_configs:
  v1: {{image_name: "{image}", custom_framework: cuda, entrypoint: busybox}}
"""


@dataclass
class HostSpec:
    name: str
    docker_host: str
    ports: str  # port_range; hosts share the loopback (network_mode: host)


@dataclass
class Fleet:
    """A fleet repository in a temp folder, and the fleetform CLI run on it."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)  # for ssh://: HOME and PATH

    def write(self, hosts: list[HostSpec], deployments: dict[str, dict[str, Any]]) -> None:
        """The whole repository: every host (labelled ``pool: <name>``), then deploy."""
        for folder in ("backends.d", "deployments.d", "hosts.d", "models/m"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        (self.root / "fleetform.yaml").write_text(
            f"project: {PROJECT}\ndefaults: {{shm_size: 64m}}\n", encoding="utf-8"
        )
        (self.root / "backends.d" / "bb.yaml").write_text(
            BACKEND.format(image=TEST_IMAGE), encoding="utf-8"
        )
        host_text = ""
        for host in hosts:
            host_text += (
                f"- name: {host.name}\n"
                "  address: 127.0.0.1\n"
                f"  docker_host: {host.docker_host}\n"
                f"  labels: {{pool: {host.name}}}\n"
                "  gpus: {framework: cuda, count: 4}\n"
                f"  port_range: {host.ports}\n"
            )
        (self.root / "hosts.d" / "hosts.yaml").write_text(host_text, encoding="utf-8")
        self.deploy(deployments)

    def deploy(self, deployments: dict[str, dict[str, Any]]) -> None:
        """Write deployments.d/ (name → fields) and compile it."""
        for old in (self.root / "deployments.d").glob("*.yaml"):
            old.unlink()
        for name, fields in deployments.items():
            lines = [
                f"name: {name}",
                "backend: bb",
                f"local_path: {self.root / 'models' / 'm'}",
            ]
            for key, value in fields.items():
                lines.append(f"{key}: {_flow(value)}")
            (self.root / "deployments.d" / f"{name}.yaml").write_text(
                "\n".join(lines) + "\n", encoding="utf-8"
            )
        compiled = self.run("compile")
        assert compiled.returncode == 0, compiled.stderr

    def command(self, *args: str) -> list[str]:
        return [*CLI, *args, "--repo", str(self.root)]

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.update({"NO_COLOR": "1", **self.env})
        return env

    def run(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            env=env or self.environ(),
            timeout=RUN_TIMEOUT,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=self.environ(),
        )

    def apply(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "--auto-approve", "--stop-timeout", "0", *extra)

    def assert_converges(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """Apply; every planned step was carried out, and the plan afterwards is empty."""
        applied = self.apply(*extra)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert planned_steps(applied.stdout) == done_steps(applied.stderr), applied
        self.assert_no_changes()
        return applied

    def assert_no_changes(self) -> None:
        check = self.run("plan", "--detailed-exitcode")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "Plan: 0 to create, 0 to update, 0 to delete, 0 to start" in check.stdout


def _flow(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return '"' + value + '"'
    return str(value)


_PLANNED = re.compile(r"^  [+~\->] (create|update|delete|start) +(\S+)  \(", re.M)
_DONE = re.compile(r"^(\S+): \[\d+/\d+\] (\w+) (\S+): done", re.M)


def planned_steps(stdout: str) -> list[str]:
    return sorted(f"{action} {name}" for action, name in _PLANNED.findall(stdout))


def done_steps(stderr: str) -> list[str]:
    return sorted(f"{action} {name}" for _, action, name in _DONE.findall(stderr))


def port_block(count: int) -> str:
    """A ``port_range`` of ``count`` ports free on 127.0.0.1 right now.

    Containers use the host's network, so every engine of this machine (and other test
    runs) shares the loopback: a random block keeps fixed ports from colliding."""
    for _ in range(200):
        start = random.randrange(20000, 32000)  # below the ephemeral range (32768-)
        taken = False
        for port in range(start, start + count):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    taken = True
                    break
        if not taken:
            return f"{start}-{start + count - 1}"
    raise RuntimeError(f"no {count} consecutive free ports on 127.0.0.1")


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return Fleet(tmp_path / "repo")


# --- looking at an engine ----------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    name: str
    id: str
    state: str
    env: dict[str, str]
    owned: bool


def containers(engine: Engine) -> dict[str, Seen]:
    client = engine.client(timeout=30)
    try:
        found = {}
        for summary in client.api.containers(all=True):
            details = client.api.inspect_container(summary["Id"])
            labels = details["Config"].get("Labels") or {}
            env = dict(item.partition("=")[::2] for item in details["Config"].get("Env") or [])
            name = details["Name"].lstrip("/")
            found[name] = Seen(
                name,
                details["Id"],
                details["State"]["Status"],
                env,
                labels.get("io.fleetform.managed-by") == "fleetform",
            )
        return found
    finally:
        client.close()


def states(engine: Engine) -> dict[str, tuple[str, str]]:
    """name → (state, the env variable V): the shape each kill point is checked by."""
    return {name: (c.state, c.env.get("V", "")) for name, c in containers(engine).items()}


def assert_clean(engine: Engine, desired: dict[str, str], before: set[str]) -> None:
    """Only the desired containers, running with the desired V, plus what was there before
    the test (untouched): no previous, no lock, nothing created and abandoned."""
    seen = containers(engine)
    assert set(seen) == set(desired) | before, sorted(seen)
    for name, value in desired.items():
        assert (seen[name].state, seen[name].env.get("V"), seen[name].owned) == (
            "running",
            value,
            True,
        ), seen[name]
    assert not [name for name in seen if name.endswith(PREVIOUS)]


# --- a proxy that holds one chosen Engine API request ------------------------------------


class Hold:
    """One request to stop at: the ``nth`` whose request line matches ``pattern``."""

    def __init__(self, pattern: str, nth: int) -> None:
        self.pattern = re.compile(pattern)
        self.nth = nth
        self.count = 0
        self.request = ""
        self.reached = threading.Event()
        self._decided = threading.Event()
        self._forward = False

    def wait(self, process: subprocess.Popen[str] | None = None, timeout: float = 60) -> str:
        """Block until the request arrives (failing if ``process`` exits first)."""
        deadline = time.monotonic() + timeout
        while not self.reached.wait(0.05):
            if process is not None and process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(
                    f"apply exited ({process.returncode}) before {self.pattern.pattern}"
                    f"\n{out}\n{err}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no request matched {self.pattern.pattern} in {timeout:g} s")
        return self.request

    def release(self) -> None:
        """Send the held request on to the engine."""
        self._forward = True
        self._decided.set()

    def drop(self) -> None:
        """Never send it: close the connection instead."""
        self._forward = False
        self._decided.set()


class EngineProxy:
    """A transparent HTTP proxy between a unix socket and a real engine's socket.

    Requests are forwarded as they are (Content-Length bodies; responses are streamed
    back byte for byte), except the one a :class:`Hold` names, which waits until the
    test releases or drops it. A request it cannot frame fails the test loudly."""

    def __init__(self, upstream: Path, path: Path) -> None:
        self.upstream = upstream
        self.path = path
        self.errors: list[str] = []
        self._holds: list[Hold] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"unix://{self.path}"

    def hold(self, pattern: str, nth: int = 1) -> Hold:
        hold = Hold(pattern, nth)
        with self._lock:
            self._holds.append(hold)
        return hold

    def close(self) -> None:
        with self._lock:
            for hold in self._holds:
                hold.drop()
            self._holds.clear()
            for sock in [self._listener, *self._sockets]:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
        self.path.unlink(missing_ok=True)

    def _match(self, line: str) -> Hold | None:
        with self._lock:
            for hold in self._holds:
                if not hold.reached.is_set() and hold.pattern.search(line):
                    hold.count += 1
                    if hold.count == hold.nth:
                        hold.request = line
                        return hold
        return None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            self._sockets += [client, upstream]
        try:
            upstream.connect(str(self.upstream))
            threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
            reader = client.makefile("rb")
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline(65536)
                    if not line:
                        return
                    head += line
                request = head.split(b"\r\n", 1)[0].decode("latin-1")
                headers = {
                    key.strip().lower(): value.strip()
                    for key, _, value in (
                        h.decode("latin-1").partition(":") for h in head.split(b"\r\n")[1:] if h
                    )
                }
                if "chunked" in headers.get("transfer-encoding", ""):
                    self.errors.append(f"chunked request body: {request}")
                    return
                body = reader.read(int(headers.get("content-length", "0")))
                hold = self._match(request)
                if hold is not None:
                    hold.reached.set()
                    hold._decided.wait()
                    if not hold._forward:
                        return
                upstream.sendall(head + body)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxies() -> Iterator[list[EngineProxy]]:
    made: list[EngineProxy] = []
    yield made
    for proxy in made:
        proxy.close()
    assert not [error for proxy in made for error in proxy.errors]


def proxy_for(engine: Engine, made: list[EngineProxy]) -> EngineProxy:
    proxy = EngineProxy(engine.socket, engine.dir / "proxy.sock")
    made.append(proxy)
    return proxy


# --- 1. kill -9 of an apply, unlock, rerun -----------------------------------------------


@dataclass(frozen=True)
class KillPoint:
    name: str
    hold: str  # a request-line pattern; {web0}/{web1} are the old containers' ids
    nth: int
    # name → (state, V) on the engine while the request is held ("old"/"new" values)
    expect: dict[str, tuple[str, str]]


W0, W1, W0_PREV = f"{PROJECT}-web-0", f"{PROJECT}-web-1", f"{PROJECT}-web-0{PREVIOUS}"
KILL_POINTS = [
    KillPoint(
        "old-stopped",  # stopped to free its GPUs and port, not yet renamed aside
        r"^POST /v1\.\d+/containers/\w+/rename",
        1,
        {W0: ("exited", "old"), W1: ("running", "old")},
    ),
    KillPoint(
        "old-aside",  # renamed aside, the new one not created yet
        rf"^POST /v1\.\d+/containers/create\?name={W0} HTTP/",
        1,
        {W0_PREV: ("exited", "old"), W1: ("running", "old")},
    ),
    KillPoint(
        "new-created",  # the new one created, not started
        r"^POST /v1\.\d+/containers/\w+/start",
        1,
        {W0_PREV: ("exited", "old"), W0: ("created", "new"), W1: ("running", "old")},
    ),
    KillPoint(
        "new-started",  # the new one runs; the old one not yet removed
        r"^DELETE /v1\.\d+/containers/{web0}\?",
        1,
        {W0_PREV: ("exited", "old"), W0: ("running", "new"), W1: ("running", "old")},
    ),
    KillPoint(
        "between-replicas",  # replica 0 replaced, replica 1 about to be stopped
        r"^POST /v1\.\d+/containers/\w+/stop",
        2,
        {W0: ("running", "new"), W1: ("running", "old")},
    ),
]


@pytest.mark.parametrize("point", KILL_POINTS, ids=[p.name for p in KILL_POINTS])
def test_kill_9_during_apply_then_unlock_and_rerun_converges(
    engines: EngineFactory, proxies: list[EngineProxy], fleet: Fleet, point: KillPoint
) -> None:
    """kill -9 of `apply --wait` at ``point`` of a two-replica rolling update: the lock
    stays and a second apply meanwhile is refused naming the holder; afterwards apply
    reports the dead holder with owner and age, `unlock` breaks it, and a rerun carries
    out exactly its plan and converges: empty plan, no previous container, nothing
    unowned, the bystander untouched."""
    engine = engines("k")
    # Something that was there before fleetform: it must be neither touched nor counted.
    bystander = engine.client().containers.run(
        TEST_IMAGE, ["sleep", "600"], name="bystander", detach=True, init=True
    )
    before = set(containers(engine))
    proxy = proxy_for(engine, proxies)
    fleet.write([HostSpec("h1", proxy.base_url, port_block(4))], {"web": _web("old")})
    fleet.assert_converges()
    ids = {name: c.id for name, c in containers(engine).items()}

    fleet.deploy({"web": _web("new")})
    hold = proxy.hold(point.hold.format(web0=ids[W0], web1=ids[W1]), point.nth)
    killed = fleet.start("apply", "--auto-approve", "--stop-timeout", "0", "--wait")
    try:
        hold.wait(killed)
        seen = states(engine)
        expect = {
            **point.expect,
            "bystander": ("running", ""),
            f"fleetform-lock-{PROJECT}": ("created", ""),
        }
        assert seen == expect, point.name
        # A second apply meanwhile is refused by the lock, naming its holder.
        second = fleet.apply()
        assert second.returncode == 1
        assert f"pid {killed.pid}" in second.stdout, second.stdout
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=30)
        hold.drop()
    assert killed.returncode == -signal.SIGKILL

    # The crashed apply's lock stays: reported with owner and age, broken explicitly.
    locked = fleet.apply()
    assert locked.returncode == 1
    failure = [line for line in locked.stdout.splitlines() if "FAILED" in line]
    assert len(failure) == 1, locked.stdout
    assert re.search(
        rf"h1: FAILED after 0 step\(s\): host 'h1' is locked by \S+ pid {killed.pid} since"
        r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(0 min \d+ s ago\);"
        r" if that apply is gone, `fleetform unlock h1` breaks the lock$",
        failure[0],
    ), failure[0]
    unlocked = fleet.run("unlock", "h1")
    assert (unlocked.returncode, unlocked.stdout) == (0, "h1: lock removed\n"), unlocked.stderr
    again = fleet.run("unlock", "h1")
    assert (again.returncode, again.stdout) == (0, "h1: was not locked\n")

    rerun = fleet.assert_converges("--wait")
    if point.name in ("old-aside", "new-created", "new-started"):
        assert "delete " + W0_PREV in planned_steps(rerun.stdout)
        assert "left behind by an interrupted apply" in rerun.stdout
    assert_clean(engine, {W0: "new", W1: "new"}, before)
    bystander.reload()
    assert bystander.status == "running"


def _web(value: str, **extra: Any) -> dict[str, Any]:
    return {"replicas": 2, "env": {"V": value}, **extra}


# --- 2. a host that is down, among three applied in parallel -----------------------------


def stop_engine(engine: Engine) -> dict[str, str]:
    """Stop dockerd, keeping its data; returns the environment to start it again with."""
    raw = Path(f"/proc/{engine.process.pid}/environ").read_bytes()
    env = dict(item.decode().partition("=")[::2] for item in raw.split(b"\0") if item)
    engine.stop(remove=False)
    return env


def restart_engine(engine: Engine, env: dict[str, str], timeout: float = 60) -> None:
    """The same dockerd (argv, environment, folders, data) again, as after a reboot."""
    with engine.log.open("ab") as out:
        engine.process = subprocess.Popen(
            engine.process.args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while not _ping(engine.socket):
        assert engine.process.poll() is None, engine.log.read_text()[-2000:]
        assert time.monotonic() < deadline, f"dockerd {engine.name} did not come back"
        time.sleep(0.05)


def test_parallel_apply_with_one_engine_down_then_rerun_after_restart(
    engines: EngineFactory, fleet: Fleet
) -> None:
    """Three hosts, ``--parallel 3``, one engine stopped: the other two converge, the
    summary names the failed host (exit 1); once the same engine is back, a rerun
    converges it and touches nothing else."""
    fleet_engines = [engines(name) for name in ("p1", "p2", "p3")]
    hosts = [
        HostSpec(f"h{i}", engine.base_url, port_block(4))
        for i, engine in enumerate(fleet_engines, 1)
    ]
    deployments = {
        f"web{i}": {"env": {"V": "a"}, "worker_selector": {"pool": f"h{i}"}} for i in (1, 2, 3)
    }
    fleet.write(hosts, deployments)
    fleet.assert_converges("--parallel", "3")

    for fields in deployments.values():
        fields["env"] = {"V": "b"}
    fleet.deploy(deployments)
    down = fleet_engines[1]
    env = stop_engine(down)
    applied = fleet.apply("--parallel", "3")
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert "Traceback" not in applied.stderr
    summary = applied.stdout[applied.stdout.index("Apply:\n") :].splitlines()
    assert summary[1].startswith("  h1: converged (1 step(s), ")
    assert summary[2].startswith(f"  h2: FAILED after 0 step(s): cannot reach {down.base_url}: ")
    assert summary[3].startswith("  h3: converged (1 step(s), ")
    assert summary[4:] == ["2 of 3 hosts converged, 1 failed"]
    # The plan already showed the host's error, on its heading line.
    assert f"h2 (compose): error: cannot reach {down.base_url}: " in applied.stdout
    for engine, name in (
        (fleet_engines[0], f"{PROJECT}-web1-0"),
        (fleet_engines[2], f"{PROJECT}-web3-0"),
    ):
        assert states(engine)[name] == ("running", "b")

    restart_engine(down, env)
    rerun = fleet.assert_converges("--parallel", "3")
    assert planned_steps(rerun.stdout) == [f"update {PROJECT}-web2-0"], rerun.stdout
    assert "  h1: no changes\n  h2: converged (1 step(s)" in rerun.stdout
    assert_clean(down, {f"{PROJECT}-web2-0": "b"}, set())


def test_engine_that_dies_mid_update_fails_naming_the_step_and_converges_after_restart(
    engines: EngineFactory, proxies: list[EngineProxy], fleet: Fleet
) -> None:
    """The engine goes away after the old container was stopped (a host reboot): the
    host fails naming the step, without a crash; after the restart the lock the apply
    could not remove is reported, broken with unlock, and a rerun converges."""
    engine = engines("dies")
    proxy = proxy_for(engine, proxies)
    fleet.write([HostSpec("h1", proxy.base_url, port_block(4))], {"web": _web("old")})
    fleet.assert_converges()
    fleet.deploy({"web": _web("new")})
    hold = proxy.hold(r"^POST /v1\.\d+/containers/\w+/rename")
    applying = fleet.start("apply", "--auto-approve", "--stop-timeout", "0")
    try:
        hold.wait(applying)
        env = stop_engine(engine)
    finally:
        hold.drop()
    out, err = applying.communicate(timeout=RUN_TIMEOUT)
    assert applying.returncode == 1, out + err
    assert "Traceback" not in err
    summary = out[out.index("Apply:\n") :].splitlines()
    assert summary[1].startswith(f"  h1: FAILED after 0 step(s): update {W0}: "), summary[1]
    assert summary[2:] == ["0 of 1 hosts converged, 1 failed"]

    restart_engine(engine, env)
    locked = fleet.apply()
    assert locked.returncode == 1 and "is locked by " in locked.stdout, locked.stdout
    assert fleet.run("unlock", "h1").stdout == "h1: lock removed\n"
    fleet.assert_converges()
    assert_clean(engine, {W0: "new", W1: "new"}, set())


# --- 3. ssh:// hosts ---------------------------------------------------------------------


def test_ssh_hosts_six_steps_and_host_keys(
    engines: EngineFactory, fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ``ssh://`` hosts (sshd on 127.0.0.x): the six-step check; one ``ssh`` per
    observation; unknown and changed host keys refused."""
    fleet_engines = [engines("s1"), engines("s2")]
    ssh_hosts = [engines.ssh(engine) for engine in fleet_engines]
    fleet.env = dict(ssh_hosts[0].env)  # PATH: the client folder's ssh; HOME: paramiko's
    hosts = [HostSpec(f"h{i}", host.url, port_block(4)) for i, host in enumerate(ssh_hosts, 1)]
    deployments = {
        f"web{i}": {"env": {"V": "a"}, "worker_selector": {"pool": f"h{i}"}} for i in (1, 2)
    }
    fleet.write(hosts, deployments)

    timings: dict[str, float] = {}

    def step(label: str, *args: str, code: int) -> subprocess.CompletedProcess[str]:
        began = time.monotonic()
        result = fleet.run(*args)
        timings[label] = time.monotonic() - began
        assert result.returncode == code, f"{label}: {result.stdout}{result.stderr}"
        return result

    first = step("1 plan", "plan", "--detailed-exitcode", code=2)
    assert planned_steps(first.stdout) == [f"create {PROJECT}-web1-0", f"create {PROJECT}-web2-0"]
    applied = step("2 apply", "apply", "--auto-approve", "--stop-timeout", "0", code=0)
    assert planned_steps(applied.stdout) == done_steps(applied.stderr)
    step("3 plan", "plan", "--detailed-exitcode", code=0)
    noop = step("4 apply", "apply", "--auto-approve", code=0)
    assert "h1 (compose): 1 unchanged\n  no changes" in noop.stdout
    assert "Apply:" not in noop.stdout
    deployments["web2"]["env"] = {"V": "b"}
    fleet.deploy(deployments)
    changed = step("5 plan", "plan", "--detailed-exitcode", code=2)
    assert planned_steps(changed.stdout) == [f"update {PROJECT}-web2-0"]
    assert 'env.V: "a" -> "b"' in changed.stdout
    applied = step("6 apply", "apply", "--auto-approve", "--stop-timeout", "0", code=0)
    assert (
        planned_steps(applied.stdout) == done_steps(applied.stderr) == [f"update {PROJECT}-web2-0"]
    )
    step("6 plan", "plan", "--detailed-exitcode", code=0)
    assert states(fleet_engines[0]) == {f"{PROJECT}-web1-0": ("running", "a")}
    assert states(fleet_engines[1]) == {f"{PROJECT}-web2-0": ("running", "b")}
    print("ssh:// timings (s):", {k: round(v, 2) for k, v in timings.items()})

    # A whole observation (list, inspect container, inspect image) runs one `ssh`, i.e.
    # one session and one `docker system dial-stdio` on the host, as the docker CLI does.
    from compiler.targets.compose.observe import observe_docker_host

    client_bin = ssh_hosts[0].client_home / "bin"
    log = tmp_path / "ssh-calls.log"
    counting = tmp_path / "counting-bin"
    counting.mkdir()
    (counting / "ssh").write_text(
        f'#!/bin/sh\necho "$*" >> {log}\nexec {client_bin / "ssh"} "$@"\n', encoding="utf-8"
    )
    (counting / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{counting}{os.pathsep}{os.environ['PATH']}")
    seen = observe_docker_host(
        "h1", ssh_hosts[0].url, PROJECT, "io.fleetform", [f"{PROJECT}-web1-0"]
    )
    assert seen.error is None and [c.name for c in seen.containers] == [f"{PROJECT}-web1-0"]
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and calls[0].endswith(
        f"-l root -p {ssh_hosts[0].port} -T -- {ssh_hosts[0].address} docker system dial-stdio"
    ), calls
    assert "StrictHostKeyChecking=yes" in calls[0] and "BatchMode=yes" in calls[0]

    # Host keys: an unknown host is refused (not trusted on first use), and so is a host
    # whose key changed; each host fails with one line naming it, nothing is changed.
    client_ssh = ssh_hosts[0].client_home / ".ssh"
    for case in ("unknown", "changed"):
        home = tmp_path / f"home-{case}"
        (home / ".ssh").mkdir(parents=True)
        (home / "bin").mkdir()
        known_hosts = home / ".ssh" / "known_hosts"
        config = home / ".ssh" / "config"
        config.write_text(
            (client_ssh / "config")
            .read_text()
            .replace(str(client_ssh / "known_hosts"), str(known_hosts))
        )
        (home / "bin" / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {config} "$@"\n')
        (home / "bin" / "ssh").chmod(0o755)
        known = ""
        if case == "changed":
            other = tmp_path / f"other-key-{case}"
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True
            )
            key = (other.with_suffix(".pub")).read_text().split()
            known = "".join(f"[{h.address}]:{h.port} {key[0]} {key[1]}\n" for h in ssh_hosts)
        known_hosts.write_text(known)
        env = {
            **fleet.environ(),
            "HOME": str(home),
            "PATH": f"{home / 'bin'}{os.pathsep}{os.environ['PATH']}",
        }
        for command in (["plan"], ["apply", "--auto-approve"]):
            refused = fleet.run(*command, env=env)
            assert refused.returncode == 1, refused.stdout + refused.stderr
            assert "Traceback" not in refused.stderr
            for number, host in enumerate(ssh_hosts, 1):
                lines = [
                    line
                    for line in refused.stdout.splitlines()
                    if line.startswith(f"h{number} (compose): error: ")
                ]
                assert len(lines) == 1, refused.stdout
                peer = f"[{host.address}]:{host.port}"
                wanted = (
                    f"No ED25519 host key is known for {peer} and you have requested strict"
                    " checking."
                    if case == "unknown"
                    else f"Host key for {peer} has changed and you have requested strict checking."
                )
                assert (
                    lines[0] == f"h{number} (compose): error: cannot reach {host.url}: {wanted}"
                ), lines[0]
    assert states(fleet_engines[1]) == {f"{PROJECT}-web2-0": ("running", "b")}


def test_ssh_master_connection_outlives_a_command(engines: EngineFactory, fleet: Fleet) -> None:
    """One SSH master per host carries the sessions of the commands that follow it
    (``FLEETFORM_SSH_PERSIST``, default 60 s): a second plan, and the apply after it,
    log in to sshd no more; ``=0`` adds no multiplexing; a short time ends the master."""
    host = engines.ssh(engines("m1"))
    fleet.env = dict(host.env)
    fleet.write(
        [HostSpec("h1", host.url, port_block(4))],
        {"web1": {"env": {"V": "a"}, "worker_selector": {"pool": "h1"}}},
    )
    folder = host.client_home / ".cache" / "fleetform-ssh"
    target = ["-p", str(host.port), f"{host.user}@{host.address}"]

    def logins() -> int:
        return host.log.read_text(errors="replace").count("Accepted publickey for")

    def master() -> str | None:
        """``Master running (pid=N)`` while the host's master is up."""
        check = subprocess.run(
            ["ssh", "-O", "check", "-o", f"ControlPath={folder}/%C", *target],
            capture_output=True,
            text=True,
            env=fleet.environ(),
        )
        return check.stderr.strip() if check.returncode == 0 else None

    def plan(**env: str) -> None:
        result = fleet.run("plan", env={**fleet.environ(), **env})
        assert result.returncode == 0, result.stdout + result.stderr

    plan(FLEETFORM_SSH_PERSIST="0")
    plan(FLEETFORM_SSH_PERSIST="0")
    assert logins() == 2 and master() is None
    assert not folder.exists() or not any(folder.iterdir())

    plan()
    first = master()
    assert first is not None and first.startswith("Master running (pid="), first
    assert logins() == 3
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    plan()
    applied = fleet.run("apply", "--auto-approve", "--stop-timeout", "0")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    plan()
    assert master() == first and logins() == 3  # three commands, no new login

    plan(FLEETFORM_SSH_PERSIST="0")  # beside a master, without it
    assert logins() == 4 and master() == first

    ended = subprocess.run(
        ["ssh", "-O", "exit", "-o", f"ControlPath={folder}/%C", *target],
        capture_output=True,
        env=fleet.environ(),
    )
    assert ended.returncode == 0 and master() is None
    # A short time, yet long enough that a loaded CI machine still finds the
    # master right after the plan (1 s raced the check there).
    plan(FLEETFORM_SSH_PERSIST="3")
    assert logins() == 5 and master() is not None
    # Each `ssh -O check` is a client of the master and starts its idle time again:
    # look only after longer than the persist time.
    for _ in range(4):
        time.sleep(5)
        if master() is None:
            break
    assert master() is None, "the master outlived FLEETFORM_SSH_PERSIST=3 by 20 s"

    wrong = fleet.run("plan", env={**fleet.environ(), "FLEETFORM_SSH_PERSIST": "soon"})
    assert wrong.returncode == 1
    assert "h1 (compose): error: FLEETFORM_SSH_PERSIST='soon': expected a number of seconds" in (
        wrong.stdout
    ), wrong.stdout + wrong.stderr


def _certificates(folder: Path, address: str) -> None:
    """A CA, a server certificate for ``address`` and a client certificate, as
    ``DOCKER_CERT_PATH`` holds them (ca.pem, cert.pem, key.pem; server-*.pem)."""
    folder.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
    )
    for who, extension in (
        ("server", f"subjectAltName=IP:{address}\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        (folder / f"{who}.ext").write_text(extension + "\n")
        openssl(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            f"{who}-key.pem",
            "-out",
            f"{who}.csr",
            "-subj",
            f"/CN={who}",
        )
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "2", "-extfile", f"{who}.ext",
                "-out", f"{who}-cert.pem")  # fmt: skip
    (folder / "cert.pem").write_bytes((folder / "client-cert.pem").read_bytes())
    (folder / "key.pem").write_bytes((folder / "client-key.pem").read_bytes())


def test_tcp_host_with_tls_from_the_environment(
    engines: EngineFactory, fleet: Fleet, tmp_path: Path
) -> None:
    """``tcp://`` with ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH`` as the docker CLI reads
    them: plan and apply over mutual TLS; a client without the CA's trust, or without a
    certificate, fails that host in one line and changes nothing."""
    address = "127.0.0.1"
    port = free_port(address, 23760, 23860)
    certs = tmp_path / "certs"
    _certificates(certs, address)  # fmt: skip
    engine = engines(
        "tls",
        extra_args=[
            "--host", f"tcp://{address}:{port}",
            "--tlsverify",
            "--tlscacert", str(certs / "ca.pem"),
            "--tlscert", str(certs / "server-cert.pem"),
            "--tlskey", str(certs / "server-key.pem"),
        ],
    )  # fmt: skip
    url = f"tcp://{address}:{port}"
    fleet.env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)}
    fleet.write(
        [HostSpec("h1", url, port_block(4))],
        {"web1": {"env": {"V": "a"}, "worker_selector": {"pool": "h1"}}},
    )
    first = fleet.run("plan", "--detailed-exitcode")
    assert first.returncode == 2, first.stdout + first.stderr
    assert planned_steps(first.stdout) == [f"create {PROJECT}-web1-0"]
    applied = fleet.run("apply", "--auto-approve", "--stop-timeout", "0")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    again = fleet.run("plan", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    assert states(engine) == {f"{PROJECT}-web1-0": ("running", "a")}

    stranger = tmp_path / "stranger"
    _certificates(stranger, address)  # another CA: the server's certificate is not trusted
    no_certificate = tmp_path / "no-certificate"
    no_certificate.mkdir()
    (no_certificate / "ca.pem").write_bytes((certs / "ca.pem").read_bytes())
    empty = tmp_path / "empty"
    empty.mkdir()
    for folder, reason in (
        (stranger, "certificate verify failed"),
        (no_certificate, f"(no client certificate (cert.pem, key.pem) in {no_certificate})"),
        (empty, f"the TLS files in {empty}: [Errno 2] No such file or directory"),
    ):
        env = {**fleet.environ(), "DOCKER_CERT_PATH": str(folder)}
        refused = fleet.run("plan", env=env)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused
        (line,) = [ln for ln in refused.stdout.splitlines() if ln.startswith("h1 (compose)")]
        assert line.startswith(f"h1 (compose): error: cannot reach {url}: "), line
        assert reason in line, line
    assert states(engine) == {f"{PROJECT}-web1-0": ("running", "a")}


# --- 4. pulling images from a registry on loopback ---------------------------------------


@dataclass
class Registry:
    address: str
    process: subprocess.Popen[bytes]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """Debian's ``docker-registry`` (the distribution registry) on 127.0.0.1, storage in
    a temp folder. Engines treat registries on 127.0.0.0/8 as insecure (plain HTTP)."""
    yield from _registry(tmp_path, "")


REGISTRY_USER, REGISTRY_PASSWORD = "ci-puller", "s3cret-Pa55"


@pytest.fixture
def private_registry(tmp_path: Path) -> Iterator[Registry]:
    """The same registry behind htpasswd (bcrypt) basic auth: one user, one password."""
    import bcrypt

    hashed = bcrypt.hashpw(REGISTRY_PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
    (tmp_path / "htpasswd").write_text(f"{REGISTRY_USER}:{hashed}\n", encoding="utf-8")
    auth = f"auth: {{htpasswd: {{realm: fleetform-test, path: {tmp_path / 'htpasswd'}}}}}\n"
    yield from _registry(tmp_path, auth)


def _registry(tmp_path: Path, auth: str) -> Iterator[Registry]:
    binary = shutil.which("docker-registry")
    if binary is None:
        message = "the registry tests need docker-registry (apt: docker-registry)"
        if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
            pytest.fail(message + f" ({REQUIRE_TOOLS_ENV}=1: CI installs it, see .ci/run)")
        pytest.skip(message)
    port = free_port("127.0.0.1", start=25000 + random.randrange(0, 5000), stop=31000)
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: error, accesslog: {disabled: true}}\n"
        f"storage: {{filesystem: {{rootdirectory: {tmp_path / 'registry'}}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n" + auth,
        encoding="utf-8",
    )
    log = (tmp_path / "registry.log").open("wb")
    process = subprocess.Popen(
        [binary, "serve", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert process.poll() is None, (tmp_path / "registry.log").read_text()
                assert time.monotonic() < deadline, "docker-registry did not listen"
                time.sleep(0.05)
        yield Registry(f"127.0.0.1:{port}", process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def push(engine: Engine, source: str, target: str, auth: dict[str, str] | None = None) -> None:
    """Tag ``source`` as ``target`` on ``engine``, push it, and drop the tag again."""
    client = engine.client()
    try:
        repository, _, tag = target.rpartition(":")
        client.api.tag(source, repository, tag)
        pushed = client.api.push(repository, tag, stream=True, decode=True, auth_config=auth)
        for event in pushed:
            assert "error" not in event, event
        client.api.remove_image(target)
    finally:
        client.close()


def test_missing_image_is_pulled_and_a_pull_failure_is_that_hosts_error(
    engines: EngineFactory, fleet: Fleet, registry: Registry
) -> None:
    """An image the engine lacks is pulled from the registry (progress shown) and the
    host converges; a tag the registry lacks fails that host alone, in one line."""
    empty = engines("pull", image=False)  # has never seen the test image
    other = engines("pushed")
    image = f"{registry.address}/fleetform-test/busybox:1"
    missing = f"{registry.address}/fleetform-test/busybox:missing"
    push(other, TEST_IMAGE, image)
    hosts = [
        HostSpec("ha", empty.base_url, port_block(4)),
        HostSpec("hb", other.base_url, port_block(4)),
    ]
    fleet.write(
        hosts,
        {
            "weba": {"image_name": image, "worker_selector": {"pool": "ha"}},
            "webb": {"image_name": missing, "worker_selector": {"pool": "hb"}},
        },
    )

    applied = fleet.apply()
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert "Traceback" not in applied.stderr
    assert f"ha: pulling {image}\n" in applied.stderr
    assert f"hb: pulling {missing}\n" in applied.stderr
    summary = applied.stdout[applied.stdout.index("Apply:\n") :].splitlines()
    assert summary[1].startswith("  ha: converged (1 step(s), ")
    assert re.fullmatch(
        rf"  hb: FAILED after 0 step\(s\): create {PROJECT}-webb-0: cannot pull {missing}: .*"
        r"manifest unknown.*",
        summary[2],
    ), summary[2]
    assert summary[3:] == ["1 of 2 hosts converged, 1 failed"]
    assert states(empty) == {f"{PROJECT}-weba-0": ("running", "")}
    assert states(other) == {}  # nothing created for the image it could not pull

    fleet.deploy(
        {
            "weba": {"image_name": image, "worker_selector": {"pool": "ha"}},
            "webb": {"image_name": image, "worker_selector": {"pool": "hb"}},
        }
    )
    rerun = fleet.assert_converges()
    assert f"hb: pulling {image}\n" in rerun.stderr
    assert "ha: pulling" not in rerun.stderr  # present now: not pulled again
    assert states(other) == {f"{PROJECT}-webb-0": ("running", "")}


def test_a_pull_that_fails_mid_stream_leaves_the_host_unlocked_and_usable(
    engines: EngineFactory, fleet: Fleet, registry: Registry, tmp_path: Path
) -> None:
    """The registry serves the image's manifest but has lost its layer: the engine starts
    the pull and fails partway, in its streamed answer. fleetform stops reading there;
    the rest of that answer must not poison the connection: the lock is released on it,
    the host's failure is the pull's alone, and the next apply finds the host unlocked."""
    empty = engines("pull", image=False)
    other = engines("pushed")
    image = f"{registry.address}/fleetform-test/busybox:layerless"
    push(other, TEST_IMAGE, image)
    blobs = sorted(
        (tmp_path / "registry").rglob("blobs/sha256/*/*/data"), key=lambda p: p.stat().st_size
    )
    blobs[-1].unlink()  # the largest blob: the image's one layer
    fleet.write(
        [HostSpec("ha", empty.base_url, port_block(4))],
        {"weba": {"image_name": image, "worker_selector": {"pool": "ha"}}},
    )

    applied = fleet.apply()
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert f"ha: pulling {image}\n" in applied.stderr
    summary = applied.stdout[applied.stdout.index("Apply:\n") :].splitlines()
    assert re.fullmatch(
        rf"  ha: FAILED after 0 step\(s\): create {PROJECT}-weba-0: cannot pull {image}: .+",
        summary[1],
    ), summary[1]
    assert "lock was not released" not in applied.stdout + applied.stderr
    assert "locked" not in summary[1]
    assert states(empty) == {}  # no lock container left behind, nothing created
    again = fleet.apply()  # the same failure, not "locked by ..."
    assert "locked" not in again.stdout + again.stderr, again.stdout + again.stderr
    assert "cannot pull" in again.stdout


def _docker_config(folder: Path, config: dict[str, Any]) -> dict[str, str]:
    """A docker CLI config folder, as `docker login` leaves it: the env that points at it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return {"DOCKER_CONFIG": str(folder)}


def test_a_private_registry_is_pulled_from_with_the_credentials_docker_login_stored(
    engines: EngineFactory, fleet: Fleet, private_registry: Registry, tmp_path: Path
) -> None:
    """Credentials as the docker CLI finds them: config.json `auths`, then a credential
    helper (`credHelpers`, a docker-credential-* program); a wrong password is that
    host's one-line error; no credential appears in any output, plan file or log."""
    address = private_registry.address
    pusher = engines("pusher")
    image = f"{address}/team/busybox:1"
    push(pusher, TEST_IMAGE, image, {"username": REGISTRY_USER, "password": REGISTRY_PASSWORD})
    token = base64.b64encode(f"{REGISTRY_USER}:{REGISTRY_PASSWORD}".encode()).decode()
    wrong = base64.b64encode(f"{REGISTRY_USER}:not-it".encode()).decode()
    secrets = (REGISTRY_PASSWORD, token, "not-it", wrong)

    def deploy_on(engine: Engine) -> None:
        fleet.write(
            [HostSpec("ha", engine.base_url, port_block(4))],
            {"weba": {"image_name": image, "worker_selector": {"pool": "ha"}}},
        )

    def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return fleet.run(*args, env={**fleet.environ(), **env})

    def clean(*texts: str) -> None:
        for text in texts:
            for secret in secrets:
                assert secret not in text

    # No credentials: the registry refuses the anonymous pull, in one line.
    anonymous = engines("anonymous", image=False)
    deploy_on(anonymous)
    env = _docker_config(tmp_path / "none", {})
    refused = run("apply", "--auto-approve", env=env)
    assert refused.returncode == 1
    assert re.search(rf"ha: FAILED .*cannot pull {re.escape(image)}: .*", refused.stdout)

    # A wrong password (as a stale `docker login` leaves it): one line, no secret shown.
    env = _docker_config(tmp_path / "wrong", {"auths": {address: {"auth": wrong}}})
    failed = run("apply", "--auto-approve", env=env)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    (line,) = [x for x in failed.stdout.splitlines() if x.startswith("  ha: FAILED")]
    assert "cannot pull" in line and "Traceback" not in failed.stderr
    clean(failed.stdout, failed.stderr)

    # `docker login` (config.json auths): pulled, converged.
    env = _docker_config(tmp_path / "login", {"auths": {address: {"auth": token}}})
    plan_file = tmp_path / "plan.json"
    planned = run("plan", "--out", str(plan_file), env=env)
    applied = run("apply", str(plan_file), env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"ha: pulling {image}\n" in applied.stderr
    assert states(anonymous) == {f"{PROJECT}-weba-0": ("running", "")}
    clean(planned.stdout, planned.stderr, plan_file.read_text(), applied.stdout, applied.stderr)

    # A credential helper (credHelpers), as Docker Desktop or ecr-login keep them.
    helper_dir = tmp_path / "bin"
    helper_dir.mkdir()
    helper = helper_dir / "docker-credential-fleetform-test"
    helper.write_text(
        '#!/bin/sh\n[ "$1" = get ] || exit 1\nread server\n'
        f'printf \'{{"ServerURL":"%s","Username":"{REGISTRY_USER}",'
        f'"Secret":"{REGISTRY_PASSWORD}"}}\' "$server"\n',
        encoding="utf-8",
    )
    helper.chmod(0o755)
    helped = engines("helped", image=False)
    deploy_on(helped)
    env = {
        **_docker_config(tmp_path / "helper", {"credHelpers": {address: "fleetform-test"}}),
        "PATH": f"{helper_dir}:{os.environ['PATH']}",
    }
    applied = run("apply", "--auto-approve", env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert states(helped) == {f"{PROJECT}-weba-0": ("running", "")}
    clean(applied.stdout, applied.stderr)


# --- 5. the engine refuses the GPU request -----------------------------------------------


def test_engine_without_gpu_driver_fails_the_host_cleanly(
    engines: EngineFactory, fleet: Fleet
) -> None:
    """The engine refuses the nvidia device request: one line with the engine's own
    words, exit 1, and no created-but-not-started container or lock left behind."""
    engine = engines("nogpu", gpu_hook=False)
    fleet.write([HostSpec("h1", engine.base_url, port_block(4))], {"web": {}})
    applied = fleet.apply()
    assert applied.returncode == 1, applied.stdout + applied.stderr
    assert "Traceback" not in applied.stderr
    summary = applied.stdout[applied.stdout.index("Apply:\n") :].splitlines()
    assert summary[1].startswith(
        f"  h1: FAILED after 0 step(s): create {PROJECT}-web-0: container did not start: "
    ), summary[1]
    assert 'could not select device driver "nvidia" with capabilities: [[gpu]]' in summary[1]
    assert summary[2:] == ["0 of 1 hosts converged, 1 failed"]
    # Nothing left behind: no created-but-not-started container, no lock.
    assert states(engine) == {}
    again = fleet.run("plan", "--detailed-exitcode")
    assert again.returncode == 2 and f"+ create {PROJECT}-web-0" in again.stdout


# --- 6. a stale plan file ----------------------------------------------------------------


def test_saved_plan_is_refused_once_another_apply_changed_the_host(
    engines: EngineFactory, proxies: list[EngineProxy], fleet: Fleet, tmp_path: Path
) -> None:
    """`apply PLANFILE` refuses a plan once another apply changed the host: when it
    starts, and when the change lands while it waits for the host's lock."""
    engine = engines("st")
    proxy = proxy_for(engine, proxies)
    fleet.write([HostSpec("h1", proxy.base_url, port_block(4))], {"web": _web("a")})
    plan_file = tmp_path / "plan.json"

    # Before the apply starts: its first look already differs from the saved plan.
    saved = fleet.run("plan", "--out", str(plan_file))
    assert saved.returncode == 0, saved.stderr
    fleet.assert_converges()  # someone else applied meanwhile
    refused = fleet.run("apply", str(plan_file))
    assert refused.returncode == 1
    assert refused.stderr == (
        "stale plan: since it was made, host(s) h1 changed; run `fleetform plan` again\n"
    )
    assert "Apply:" not in refused.stdout

    # While the apply waits for the host's lock: another apply takes it first and
    # changes the host; the first, once it holds the lock, looks again and refuses.
    fleet.deploy({"web": _web("b")})
    saved = fleet.run("plan", "--out", str(plan_file))
    assert saved.returncode == 0, saved.stderr
    hold = proxy.hold(rf"^POST /v1\.\d+/containers/create\?name=fleetform-lock-{PROJECT} ")
    first = fleet.start("apply", str(plan_file), "--stop-timeout", "0")
    try:
        hold.wait(first)
        fleet.assert_converges()  # the other apply: same repository, the lock was free
    finally:
        hold.release()
    out, err = first.communicate(timeout=RUN_TIMEOUT)
    assert first.returncode == 1, out + err
    assert out.endswith(
        "Apply:\n  h1: FAILED after 0 step(s): the host changed since the plan was made"
        " (stale plan): plan again (0 steps now)\n0 of 1 hosts converged, 1 failed\n"
    ), out
    assert not done_steps(err)
    assert_clean(engine, {W0: "b", W1: "b"}, set())
