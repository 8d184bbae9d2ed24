"""``fleetform plan / apply / reconcile / unlock`` against real Docker engines.

Every test drives a real ``dockerd`` (testing/engines.py: the GPU hook stand-in makes
``driver: nvidia`` device requests work, the offline busybox image serves ``/health``).
Each repository scenario and each drift class runs the six-step idempotency check:
check (changes pending), apply, check (none left), apply (changes nothing), modify,
check and apply (changed) — where the "modify" of one scenario is the next scenario.
"check" is ``fleetform plan --detailed-exitcode`` (or ``reconcile``), apply is
``fleetform apply --auto-approve`` (or ``reconcile --heal``). Plan fidelity is asserted
on every apply: the steps carried out equal the steps the plan printed, and the plan
right after is empty.

The served command traps SIGTERM, so ``docker stop`` returns at once (busybox as PID 1
would otherwise ignore it for the whole stop timeout).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from docker.types import DeviceRequest, Mount

from compiler import api, report
from compiler.apply import Options, apply_plan
from compiler.targets.compose import lock as host_lock
from testing.engines import TEST_IMAGE, Engine, EngineFactory, _environ
from testing.systemd_hosts import SystemdHostFactory

PROJECT = "fleetform"
PREFIX = "io.fleetform"
SECOND_IMAGE = "fleetform-test/busybox:2"
PORTS = "41100-41163"
SERVE = "sh -c \"trap 'exit 0' TERM; httpd -f -p {{worker_ip}}:{{port}} -h /var/www & wait\""
BACKEND = {
    "backend_name": "bb",
    "health_check_path": "/health",
    "default_version": "v1",
    "default_run_command": SERVE,
    "version_configs": {
        "v1": {"image_name": TEST_IMAGE, "custom_framework": "cuda", "entrypoint": "busybox"},
        "cpu": {"image_name": TEST_IMAGE, "custom_framework": "cpu", "entrypoint": "busybox"},
    },
}
# Variables a subprocess must not inherit from the test's own environment.
_CLEAN = ("NO_COLOR", "HF_TOKEN", "FLEETFORM_SECRETS_DIR", "DOCKER_HOST", "DOCKER_CONTEXT")

# `fleetform plan` (text): "h1 (compose)..." headings, then "  + create NAME  (why)".
_HEADING = re.compile(r"^(\S+) \((?:compose|systemd)\)")
_STEP = re.compile(r"^  [-+~>] (create|update|delete|start) +(\S+)  \(")
# apply's progress (stderr): "h1: [1/2] create NAME: done (1.1 s)".
_DONE = re.compile(r"^(\S+): \[\d+/\d+\] (create|update|delete|start) (\S+): done")


# --- the fleet under test ----------------------------------------------------------------


@dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv)} -> {self.returncode}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


def deployment(name: str = "web", **fields: Any) -> dict[str, Any]:
    """A deployment of the busybox backend; ``fields`` override (None removes a key)."""
    document: dict[str, Any] = {"name": name, "backend": "bb", "replicas": 1}
    document.update(fields)
    return {key: value for key, value in document.items() if value is not None}


def own_loopback_address() -> str:
    """A loopback address of this test process's own (127.42.x.y from the pid), with the
    fleet's port range free on it: a test suite running beside this one (another
    checkout, a benchmark) serves on other addresses, so ports never collide."""
    pid = os.getpid()
    address = f"127.42.{(pid >> 8) & 255}.{(pid & 255) or 1}"
    first, last = (int(p) for p in PORTS.split("-"))
    for port in range(first, last + 1):
        with socket.socket() as probe:
            # As httpd does: only a listener, not a closed connection, takes the port.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((address, port))  # raises if taken: the test would fail anyway
    return address


@dataclass
class Target:
    """How the test reaches the compose host ``h1``: fleetform's ``docker_host``, the
    environment its commands need for that (the ssh client's folder), the test's own SDK
    client of the engine and its GPU stand-in's log."""

    docker_host: str
    client: docker.DockerClient
    gpu_assignments: Callable[[], dict[str, str]]
    env: dict[str, str] = field(default_factory=dict)
    # Makes a port of the host's address answer on this machine (a host in a network
    # namespace of its own); nothing to do for an engine of this machine.
    expose: Callable[[str, int], None] = lambda address, port: None


def local_target(engine: Engine) -> Target:
    return Target(engine.base_url, engine.client(), engine.gpu_assignments)


class Fleet:
    """A one-host repository (host ``h1`` = a real engine, on its own loopback
    address) and the commands that drive it."""

    def __init__(self, root: Path, target: Target, models: Path | None = None) -> None:
        self.address = own_loopback_address()
        self.repo = root / "repo"
        self.target = target
        self.client = target.client
        self.api = self.client.api
        self.gpu_assignments = target.gpu_assignments
        self.models = models or root / "models"
        (self.models / "m").mkdir(parents=True)
        host = {
            "name": "h1",
            "address": self.address,
            "docker_host": target.docker_host,
            "gpus": {"framework": "cuda", "count": 4},
            "port_range": PORTS,
        }
        self._write("backends.d/b.yaml", [BACKEND])
        self._write("hosts.d/h.yaml", [host])

    def _write(self, relative: str, documents: list[dict[str, Any]]) -> None:
        path = self.repo / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if documents:
            path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
        else:
            path.unlink(missing_ok=True)

    def deploy(self, *deployments: dict[str, Any]) -> None:
        """Write these deployments (all of them: the others are gone) and compile."""
        model = {"local_path": str(self.models / "m")}
        self._write("deployments.d/d.yaml", [{**model, **d} for d in deployments])
        api.compile_repo(self.repo)

    # --- the CLI ---

    def ff(self, *args: str, env: dict[str, str] | None = None) -> Run:
        argv = [sys.executable, "-c", "from compiler.cli import main; main()", *args]
        environment = {k: v for k, v in os.environ.items() if k not in _CLEAN}
        environment.update(self.target.env)
        environment.update(env or {})
        done = subprocess.run(
            [*argv, "--repo", str(self.repo)],
            capture_output=True,
            text=True,
            env=environment,
            timeout=120,
        )
        return Run(["fleetform", *args], done.returncode, done.stdout, done.stderr)

    def check(self, *, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
        """``plan --detailed-exitcode`` (json): its exit code and the steps it planned."""
        run = self.ff("plan", "--detailed-exitcode", "--format", "json", env=env)
        assert run.returncode in (0, 2), run
        plan = json.loads(run.stdout)
        steps = [
            f"{h['host']} {s['action']} {s['name']}" for h in plan["hosts"] for s in h["steps"]
        ]
        assert (run.returncode == 2) == bool(steps), run
        return run.returncode, steps

    def apply(self, *extra: str, expect: int = 0, env: dict[str, str] | None = None) -> Run:
        """``apply --auto-approve``; asserts it carried out exactly the plan it printed
        (all of it when it succeeded, a prefix when it failed)."""
        run = self.ff("apply", "--auto-approve", "--stop-timeout", "1", *extra, env=env)
        assert run.returncode == expect, str(run)
        planned, done = printed_steps(run.stdout), done_steps(run.stderr)
        if expect == 0:
            assert done == planned, run
        else:
            assert done == planned[: len(done)], run
        return run

    # --- the library ---

    def apply_library(self) -> list[str]:
        """Plan and apply through the library: what was done is exactly what was planned,
        and a plan right after has no steps."""
        with _environ(**self.target.env):  # the ssh client's folder, as for the CLI
            planned = api.plan_repo(self.repo)
            options = Options(stop_timeout=1, label_prefix=planned.settings.label_prefix)
            result = apply_plan(planned.plan, planned.targets, planned.settings.project, options)
            assert result.ok, [(h.host, h.error) for h in result.hosts]
            assert report.steps_text(result.done) == report.steps_text(planned.plan.steps)
            assert not api.plan_repo(self.repo).plan.steps
        return report.steps_text(result.done)

    # --- the engine ---

    def inspect(self, name: str) -> dict[str, Any]:
        details: dict[str, Any] = self.api.inspect_container(name)
        return details

    def env(self, name: str) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.inspect(name)["Config"]["Env"] or [])

    def gpus(self, name: str) -> list[str]:
        requests = self.inspect(name)["HostConfig"]["DeviceRequests"] or []
        return [i for r in requests for i in r["DeviceIDs"]]

    def snapshot(self) -> dict[str, tuple[str, str, str]]:
        """Every container on the engine: name → (id, status, started at)."""
        found = {}
        for summary in self.api.containers(all=True):
            details = self.inspect(summary["Id"])
            state = details["State"]
            found[details["Name"].lstrip("/")] = (
                details["Id"],
                state["Status"],
                state["StartedAt"],
            )
        return found

    def names(self) -> set[str]:
        return set(self.snapshot())

    def recreate(
        self,
        name: str,
        *,
        env: dict[str, str] | None = None,
        image: str | None = None,
        gpu_ids: list[str] | None = None,
    ) -> str:
        """What a person does by hand: remove the container and make it again with the
        same name, labels and settings, except the given env, image or GPUs."""
        details = self.inspect(name)
        config, host = details["Config"], details["HostConfig"]
        self.api.remove_container(details["Id"], force=True)
        requests = [
            DeviceRequest(
                driver=r["Driver"],
                device_ids=gpu_ids if gpu_ids is not None else r["DeviceIDs"],
                capabilities=r["Capabilities"],
            )
            for r in host["DeviceRequests"] or []
        ]
        host_config = self.api.create_host_config(
            network_mode=host["NetworkMode"],
            shm_size=host["ShmSize"],
            restart_policy=host["RestartPolicy"],
            mounts=[
                Mount(m["Target"], m["Source"], type="bind", read_only=m["ReadOnly"])
                for m in host["Mounts"] or []
            ],
            device_requests=requests or None,
        )
        environment = config["Env"] if env is None else [f"{k}={v}" for k, v in env.items()]
        created = self.api.create_container(
            image or config["Image"],
            command=config["Cmd"],
            entrypoint=config["Entrypoint"],
            environment=environment,
            labels=config["Labels"],
            name=name,
            host_config=host_config,
        )
        self.api.start(created["Id"])
        return str(created["Id"])

    def events(self, since: float) -> list[dict[str, Any]]:
        """The engine's container start/stop/die events since ``since``, in order."""
        stream = self.api.events(
            since=f"{since:.6f}",
            until=f"{time.time():.6f}",
            filters={"type": "container"},
            decode=True,
        )
        return [e for e in stream if e.get("Action") in ("start", "stop", "die")]


def printed_steps(text: str) -> list[str]:
    """The steps of a text plan, as ``host action name``."""
    host, steps = "", []
    for line in text.splitlines():
        if heading := _HEADING.match(line):
            host = heading.group(1)
        elif step := _STEP.match(line):
            steps.append(f"{host} {step.group(1)} {step.group(2)}")
    return steps


def done_steps(progress: str) -> list[str]:
    """The steps apply's progress lines say were done, in order."""
    return [
        f"{m.group(1)} {m.group(2)} {m.group(3)}"
        for line in progress.splitlines()
        if (m := _DONE.match(line))
    ]


def converge(fleet: Fleet, expected: list[str], *, via: str = "cli") -> None:
    """Steps 1-4 of the six: check (exactly ``expected`` pending), apply (carries out
    what check printed), check (nothing left), apply (changes nothing at all)."""
    code, planned = fleet.check()
    assert (code, planned) == (2, expected)
    # fleet.apply and fleet.apply_library also assert that what was done is what their
    # own plan held; here it is compared with what the separate `plan` printed.
    done = done_steps(fleet.apply().stderr) if via == "cli" else fleet.apply_library()
    assert done == planned
    assert fleet.check() == (0, [])
    before = fleet.snapshot()
    again = fleet.apply()
    assert "no changes" in again.stdout and "Apply:" not in again.stdout, again
    assert fleet.snapshot() == before


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def wait_for(url: str, status: int = 200, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if get(url) == status:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer {status}"
        time.sleep(0.1)


@pytest.fixture
def fleet(engines: EngineFactory, tmp_path: Path) -> Iterator[Fleet]:
    """A fleet whose host is an engine of this machine, reached through its socket."""
    made = Fleet(tmp_path, local_target(engines("h1")))
    try:
        yield made
    finally:
        made.client.close()


# The engine matrix: the convergence, drift and rollback tests run against each Docker
# Engine fleetform supports, on a compose host reached over ssh:// as users reach theirs.
ENGINES = ("docker20-debian12", "docker26-debian13")


@pytest.fixture(params=ENGINES)
def ssh_fleet(
    request: pytest.FixtureRequest, engines: EngineFactory, tmp_path: Path
) -> Iterator[Fleet]:
    """A fleet whose host ``h1`` is reached over ``ssh://``: Docker 20.10 (Debian 12's
    docker.io, this machine's) behind an sshd on loopback, or Docker 26.1 (Debian 13's)
    inside a Debian 13 host (testing/systemd_hosts.py) whose ssh answers on loopback."""
    if request.param == "docker20-debian12":
        engine = engines("h1")
        host = engines.ssh(engine)
        target = local_target(engine)
        target.docker_host, target.env = host.url, dict(host.env)
        made = Fleet(tmp_path, target)
    else:
        image = request.getfixturevalue("host_images")("trixie")
        hosts: SystemdHostFactory = request.getfixturevalue("systemd_hosts_of")(image)
        models = tmp_path / "models"
        models.mkdir()
        remote = hosts("h1", mounts=[(models, str(models))])
        target = Target(
            remote.url, remote.client(), remote.gpu_assignments, remote.env, remote.forward
        )
        made = Fleet(tmp_path, target, models=models)
    try:
        yield made
    finally:
        made.client.close()


H1 = "h1 "


# --- 1. the repository changes, six steps each -------------------------------------------


def test_repository_changes_converge_in_six_steps(ssh_fleet: Fleet) -> None:
    fleet = ssh_fleet
    fleet.api.tag(TEST_IMAGE, "fleetform-test/busybox", "2")
    aux = deployment("aux", backend_version="cpu")
    web = deployment("web", env={"A": "1"}, gpu_selector={"gpu_ids": ["h1:cuda:0"]})

    # create
    fleet.deploy(web, aux)
    converge(fleet, [H1 + "create fleetform-aux-0", H1 + "create fleetform-web-0"])
    assert fleet.gpus("fleetform-web-0") == ["0"]
    assert fleet.gpus("fleetform-aux-0") == []
    assert fleet.inspect("fleetform-web-0")["State"]["Status"] == "running"
    labels = fleet.inspect("fleetform-web-0")["Config"]["Labels"]
    assert labels[f"{PREFIX}.managed-by"] == "fleetform"
    assert labels[f"{PREFIX}.deployment"] == "web"
    web_id = fleet.inspect("fleetform-web-0")["Id"]

    # env change
    fleet.deploy({**web, "env": {"A": "2"}}, aux)
    shown = fleet.ff("plan")
    assert '      env.A: "1" -> "2"' in shown.stdout.splitlines(), shown
    converge(fleet, [H1 + "update fleetform-web-0"])
    assert fleet.env("fleetform-web-0")["A"] == "2"
    assert fleet.inspect("fleetform-web-0")["Id"] != web_id
    assert fleet.snapshot()["fleetform-aux-0"][1] == "running"

    # image change (through the library this time)
    web = {**web, "env": {"A": "2"}, "image_name": SECOND_IMAGE}
    fleet.deploy(web, aux)
    shown = fleet.ff("plan")
    assert f'      image: "{TEST_IMAGE}" -> "{SECOND_IMAGE}"' in shown.stdout.splitlines()
    converge(fleet, [H1 + "update fleetform-web-0"], via="library")
    assert fleet.inspect("fleetform-web-0")["Config"]["Image"] == SECOND_IMAGE

    # GPU change: gpu_ids and gpus_per_replica
    web = {**web, "gpu_selector": {"gpu_ids": ["h1:cuda:2", "h1:cuda:3"], "gpus_per_replica": 2}}
    fleet.deploy(web, aux)
    shown = fleet.ff("plan")
    assert '      gpus: ["nvidia:0"] -> ["nvidia:2,3"]' in shown.stdout.splitlines(), shown
    converge(fleet, [H1 + "update fleetform-web-0"])
    new = fleet.inspect("fleetform-web-0")
    assert new["HostConfig"]["DeviceRequests"] == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": ["2", "3"],
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    assert fleet.gpu_assignments()[new["Id"]] == "2,3"

    # replicas up
    fleet.deploy(web, {**aux, "replicas": 3})
    converge(fleet, [H1 + "create fleetform-aux-1", H1 + "create fleetform-aux-2"])
    assert {"fleetform-aux-1", "fleetform-aux-2"} <= fleet.names()

    # replicas down
    fleet.deploy(web, aux)
    shown = fleet.ff("plan")
    assert "  - delete fleetform-aux-2  (replica 2 is no longer wanted)" in shown.stdout, shown
    converge(fleet, [H1 + "delete fleetform-aux-1", H1 + "delete fleetform-aux-2"], via="library")
    assert fleet.names() == {"fleetform-aux-0", "fleetform-web-0"}

    # a deployment removed: its container is deleted
    fleet.deploy(aux)
    shown = fleet.ff("plan")
    assert (
        "  - delete fleetform-web-0  (deployment 'web' is no longer in the repository)"
        in shown.stdout
    ), shown
    converge(fleet, [H1 + "delete fleetform-web-0"])
    assert fleet.names() == {"fleetform-aux-0"}


# --- 7. --allow-empty ----------------------------------------------------------------------


def test_removing_every_deployment_needs_allow_empty(fleet: Fleet) -> None:
    fleet.deploy(deployment("aux", backend_version="cpu", replicas=2))
    converge(fleet, [H1 + "create fleetform-aux-0", H1 + "create fleetform-aux-1"])
    before = fleet.snapshot()

    fleet.deploy()
    shown = fleet.ff("plan")
    assert "needs --allow-empty" in shown.stdout, shown
    refused = fleet.apply(expect=1)
    assert (
        "h1: FAILED after 0 step(s): the plan would delete every container fleetform runs"
        " on this host (every model, on a GPUStack cluster); refused without --allow-empty"
    ) in refused.stdout, refused
    assert fleet.snapshot() == before
    assert fleet.check() == (2, [H1 + "delete fleetform-aux-0", H1 + "delete fleetform-aux-1"])

    fleet.apply("--allow-empty")
    assert fleet.names() == set()
    assert fleet.check() == (0, [])


# --- 1. drift, done by hand, found by reconcile and healed -------------------------------


def reconcile(fleet: Fleet, expected: list[str]) -> Run:
    """Steps 1-4 of the six for drift: reconcile finds exactly ``expected`` (exit 2),
    --heal carries out exactly that, then reconcile finds nothing (exit 0) and --heal
    changes nothing. Returns the first report."""
    found = fleet.ff("reconcile")
    assert found.returncode == 2, found
    assert printed_steps(found.stdout) == expected, found
    healed = fleet.ff("reconcile", "--heal", "--stop-timeout", "1")
    assert healed.returncode == 2, healed  # drift was found (and healed)
    assert printed_steps(healed.stdout) == done_steps(healed.stderr) == expected, healed
    assert "1 of 1 hosts converged" in healed.stdout, healed
    clean = fleet.ff("reconcile")
    assert (clean.returncode, clean.stdout) == (
        0,
        "no drift: every host runs what the repository says\n",
    ), clean
    before = fleet.snapshot()
    again = fleet.ff("reconcile", "--heal", "--stop-timeout", "1")
    assert again.returncode == 0, again
    assert fleet.snapshot() == before
    return found


def change_lines(report_text: str) -> list[str]:
    return [line.strip() for line in report_text.splitlines() if line.startswith("      ")]


def test_drift_is_found_and_healed(ssh_fleet: Fleet) -> None:
    fleet = ssh_fleet
    fleet.api.tag(TEST_IMAGE, "fleetform-test/busybox", "2")
    fleet.deploy(deployment(env={"A": "1"}, gpu_selector={"gpu_ids": ["h1:cuda:1"]}))
    converge(fleet, [H1 + "create fleetform-web-0"])
    name = "fleetform-web-0"
    wanted = fleet.inspect(name)

    def unchanged_but_recreated() -> None:
        now = fleet.inspect(name)
        assert now["State"]["Status"] == "running"
        assert now["Config"]["Image"] == TEST_IMAGE
        assert fleet.env(name) == {"A": "1"}
        assert fleet.gpus(name) == ["1"]
        assert now["Config"]["Labels"] == wanted["Config"]["Labels"]

    # stopped -> start (the same container)
    fleet.client.containers.get(name).stop(timeout=1)
    found = reconcile(fleet, [H1 + "start " + name])
    assert f"  > start  {name}  (container is exited)" in found.stdout, found
    assert fleet.inspect(name)["Id"] == wanted["Id"]
    assert fleet.inspect(name)["State"]["Status"] == "running"

    # paused -> start (which, for a paused container, is an unpause)
    fleet.api.pause(name)
    found = reconcile(fleet, [H1 + "start " + name])
    assert f"  > start  {name}  (container is paused)" in found.stdout, found
    assert fleet.inspect(name)["Id"] == wanted["Id"]
    assert fleet.inspect(name)["State"]["Status"] == "running"

    # removed -> create
    fleet.api.remove_container(name, force=True)
    found = reconcile(fleet, [H1 + "create " + name])
    assert f"  + create {name}  (no such container on the host)" in found.stdout, found
    unchanged_but_recreated()

    # env edited (recreated by hand, same labels) -> update, with the env diff
    fleet.recreate(name, env={"A": "by-hand"})
    found = reconcile(fleet, [H1 + "update " + name])
    assert f"  ~ update {name}  (changed outside fleetform (drift))" in found.stdout, found
    assert change_lines(found.stdout) == ['env.A: "by-hand" -> "1"'], found
    unchanged_but_recreated()

    # image changed -> update
    fleet.recreate(name, image=SECOND_IMAGE)
    found = reconcile(fleet, [H1 + "update " + name])
    assert f"  ~ update {name}  (changed outside fleetform (drift))" in found.stdout, found
    assert change_lines(found.stdout) == [f'image: "{SECOND_IMAGE}" -> "{TEST_IMAGE}"'], found
    unchanged_but_recreated()

    # GPU reservation changed -> update; the json report says the same
    fleet.recreate(name, gpu_ids=["3"])
    as_json = fleet.ff("reconcile", "--format", "json")
    assert as_json.returncode == 2, as_json
    (step,) = json.loads(as_json.stdout)["hosts"][0]["steps"]
    assert (step["action"], step["reasons"], step["changes"]) == (
        "update",
        ["changed outside fleetform (drift)"],
        [{"field": "gpus", "before": ["nvidia:3"], "after": ["nvidia:1"]}],
    )
    found = reconcile(fleet, [H1 + "update " + name])
    assert change_lines(found.stdout) == ['gpus: ["nvidia:3"] -> ["nvidia:1"]'], found
    unchanged_but_recreated()
    assert fleet.inspect(name)["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == ["1"]
    # No drift: the json report is still a report (a scheduled job parses it).
    as_json = fleet.ff("reconcile", "--format", "json")
    assert as_json.returncode == 0, as_json
    assert json.loads(as_json.stdout)["hosts"][0]["steps"] == []

    # a foreign container squats the name -> create; the squatter is moved aside, kept
    fleet.api.remove_container(name, force=True)
    squatter = fleet.client.containers.run(
        TEST_IMAGE, ["sleep", "3600"], name=name, detach=True, init=True, network_mode="host"
    )
    found = reconcile(fleet, [H1 + "create " + name])
    assert (
        f"  + create {name}  (the name is taken by container {squatter.id[:12]}, which"
        " fleetform does not own: it will be stopped and renamed, not deleted)"
    ) in found.stdout, found
    unchanged_but_recreated()
    squatter.reload()
    assert squatter.name == f"{name}--displaced-{squatter.id[:12]}"
    assert squatter.status == "exited"
    assert squatter.labels == {}
    assert fleet.names() == {name, squatter.name}


# --- 3. formats ----------------------------------------------------------------------------


def read_pty(argv: list[str], env: dict[str, str]) -> str:
    """Run ``argv`` with its stdout on a pseudo-terminal; what it printed there."""
    import pty

    main_fd, tty_fd = pty.openpty()
    process = subprocess.Popen(argv, stdout=tty_fd, stderr=subprocess.DEVNULL, env=env)
    os.close(tty_fd)
    chunks = []
    while True:
        try:
            chunk = os.read(main_fd, 65536)
        except OSError:  # EIO: the other side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main_fd)
    assert process.wait(timeout=60) == 0
    return b"".join(chunks).decode()


def test_plan_formats(fleet: Fleet) -> None:
    web = deployment(env={"A": "1"}, gpu_selector={"gpu_ids": ["h1:cuda:0"]})
    fleet.deploy(web)
    fleet.apply()
    fleet.deploy({**web, "env": {"A": "2"}})

    as_json = fleet.ff("plan", "--format", "json")
    assert as_json.returncode == 0, as_json
    document = json.loads(as_json.stdout)
    assert document["schema"] == "fleetform.plan/v1"
    assert document["project"] == PROJECT
    assert document["summary"] == {
        "fetch": 0,
        "create": 0,
        "update": 1,
        "delete": 0,
        "start": 0,
        "unchanged": 0,
    }
    (host,) = document["hosts"]
    (step,) = host["steps"]
    assert (host["host"], host["error"], step["action"], step["name"]) == (
        "h1",
        None,
        "update",
        "fleetform-web-0",
    )
    assert step["changes"] == [{"field": "env.A", "before": "1", "after": "2"}]

    markdown = fleet.ff("plan", "--format", "markdown").stdout
    assert markdown.startswith("### fleetform plan: fleetform\n")
    assert "| action | container | why |\n|---|---|---|\n| ~ update | `fleetform-web-0` |" in (
        markdown
    )
    assert '```diff\n- env.A: "1"\n+ env.A: "2"\n```' in markdown

    piped = fleet.ff("plan")
    assert "~ update fleetform-web-0" in piped.stdout and "\x1b[" not in piped.stdout
    argv = [
        sys.executable,
        "-c",
        "from compiler.cli import main; main()",
        "plan",
        "--repo",
        str(fleet.repo),
    ]
    environment = {k: v for k, v in os.environ.items() if k not in _CLEAN}
    colored = read_pty(argv, environment)
    assert "\x1b[33m~ update\x1b[0m fleetform-web-0" in colored
    plain = read_pty(argv, {**environment, "NO_COLOR": "1"})
    assert "~ update fleetform-web-0" in plain and "\x1b[" not in plain


# --- 4. saved plans ------------------------------------------------------------------------


def test_saved_plan_is_applied_exactly_or_refused_when_stale(fleet: Fleet, tmp_path: Path) -> None:
    web = deployment(env={"A": "1"}, gpu_selector={"gpu_ids": ["h1:cuda:0"]})
    fleet.deploy(web, deployment("aux", backend_version="cpu"))
    first = tmp_path / "first.json"
    saved = fleet.ff("plan", "--out", str(first))
    assert saved.returncode == 0 and f"plan saved to {first}" in saved.stderr, saved
    planned = json.loads(first.read_text())
    steps = [f"h1 {s['action']} {s['name']}" for s in planned["hosts"][0]["steps"]]
    assert steps == [H1 + "create fleetform-aux-0", H1 + "create fleetform-web-0"]
    applied = fleet.ff("apply", str(first), "--stop-timeout", "1")
    assert applied.returncode == 0, applied
    assert done_steps(applied.stderr) == steps
    assert fleet.check() == (0, [])

    # The host changed by hand: the saved plan is refused and changes nothing.
    fleet.deploy({**web, "env": {"A": "2"}}, deployment("aux", backend_version="cpu"))
    second = tmp_path / "second.json"
    assert fleet.ff("plan", "--out", str(second)).returncode == 0
    fleet.client.containers.get("fleetform-aux-0").stop(timeout=1)
    before = fleet.snapshot()
    stale = fleet.ff("apply", str(second), "--stop-timeout", "1")
    assert stale.returncode == 1, stale
    assert stale.stderr == (
        "stale plan: since it was made, host(s) h1 changed; run `fleetform plan` again\n"
    ), stale
    assert fleet.snapshot() == before
    assert fleet.env("fleetform-web-0")["A"] == "1"

    # The repository changed: refused too.
    third = tmp_path / "third.json"
    assert fleet.ff("plan", "--out", str(third)).returncode == 0
    fleet.deploy({**web, "env": {"A": "3"}}, deployment("aux", backend_version="cpu"))
    stale = fleet.ff("apply", str(third), "--stop-timeout", "1")
    assert stale.returncode == 1 and "stale plan" in stale.stderr, stale
    assert fleet.snapshot() == before

    # A fresh plan applies: exactly its steps.
    fourth = tmp_path / "fourth.json"
    assert fleet.ff("plan", "--out", str(fourth)).returncode == 0
    steps = [
        f"h1 {s['action']} {s['name']}" for s in json.loads(fourth.read_text())["hosts"][0]["steps"]
    ]
    assert steps == [H1 + "update fleetform-web-0", H1 + "start fleetform-aux-0"]
    applied = fleet.ff("apply", str(fourth), "--stop-timeout", "1")
    assert applied.returncode == 0, applied
    assert done_steps(applied.stderr) == steps
    assert fleet.env("fleetform-web-0")["A"] == "3"
    assert fleet.check() == (0, [])


# --- 5. rollback ----------------------------------------------------------------------------


def test_failed_update_rolls_back_to_the_previous_container(ssh_fleet: Fleet) -> None:
    fleet, port = ssh_fleet, 41120
    fleet.target.expose(fleet.address, port)
    web = deployment(env={"A": "1"}, port=port, gpu_selector={"gpu_ids": ["h1:cuda:0"]})
    fleet.deploy(web)
    fleet.apply()
    old = fleet.inspect("fleetform-web-0")
    wait_for(f"http://{fleet.address}:{port}/health")

    def rolled_back() -> None:
        now = fleet.inspect("fleetform-web-0")
        assert now["Id"] == old["Id"]
        assert now["State"]["Status"] == "running"
        assert now["Config"]["Env"] == old["Config"]["Env"]
        assert now["Config"]["Cmd"] == old["Config"]["Cmd"]
        assert now["HostConfig"]["DeviceRequests"] == old["HostConfig"]["DeviceRequests"]
        assert fleet.names() == {"fleetform-web-0"}  # the failed one is gone, no leftovers
        wait_for(f"http://{fleet.address}:{port}/health")
        assert fleet.check() == (2, [H1 + "update fleetform-web-0"])

    # A run command that exits at once.
    fleet.deploy({**web, "env": {"A": "2"}, "run_command": "sh -c 'echo broken; exit 3'"})
    failed = fleet.apply(expect=1)
    # The last log lines are quoted: "broken" once per run (the restart policy may have
    # run it again before the check saw it exit).
    assert re.search(
        r"^  h1: FAILED after 0 step\(s\): update fleetform-web-0: container exited at once"
        r" \((exit code 3|restarted \d+× by its restart policy)\): broken( \| broken)*;"
        r" rolled back to the previous container$",
        failed.stdout,
        re.MULTILINE,
    ), failed
    rolled_back()

    # --wait: a health check that answers 404 until the deployment's health_timeout.
    web = {**web, "env": {"A": "2"}, "health_timeout": 3}
    fleet.deploy({**web, "health_check_path": "/missing"})
    started = time.monotonic()
    failed = fleet.apply("--wait", expect=1)
    assert time.monotonic() - started >= 3
    assert (
        f"update fleetform-web-0: health check http://{fleet.address}:{port}/missing did not"
        " answer 200 within 3 s (HTTP 404); rolled back to the previous container"
    ) in failed.stdout, failed
    rolled_back()

    # --wait where /health answers 200: the update goes through.
    fleet.deploy(web)
    done = fleet.apply("--wait")
    assert f"h1: waiting for http://{fleet.address}:{port}/health (up to 3 s)" in done.stderr, done
    assert fleet.env("fleetform-web-0") == {"A": "2"}
    assert fleet.inspect("fleetform-web-0")["Id"] != old["Id"]
    assert get(f"http://{fleet.address}:{port}/health") == 200
    assert fleet.check() == (0, [])


def test_new_containers_start_together_and_a_failed_one_stops_the_rest(fleet: Fleet) -> None:
    names = ["fleetform-a-0", "fleetform-b-0", "fleetform-c-0"]
    broken = "sh -c 'echo broken; exit 3'"
    a, b, c = (deployment(n, backend_version="cpu") for n in "abc")
    fleet.deploy(a, {**b, "run_command": broken}, c)
    failed = fleet.apply(expect=1)
    progress = [line for line in failed.stderr.splitlines() if line.startswith("h1: [")]
    # All three were started before the first was watched; a passed, b exited: c is not done.
    assert progress[:3] == [f"h1: [{n}/3] create {x} ..." for n, x in enumerate(names, 1)], failed
    assert len(progress) == 4, failed
    assert progress[3].startswith("h1: [1/3] create fleetform-a-0: done ("), failed
    assert re.search(
        r"^  h1: FAILED after 1 step\(s\): create fleetform-b-0: container exited at once"
        r" \((exit code 3|restarted \d+× by its restart policy)\): broken( \| broken)*$",
        failed.stdout,
        re.MULTILINE,
    ), failed
    assert fleet.names() == {"fleetform-a-0"}  # b removed, c (started after b) removed again
    assert fleet.check() == (2, [H1 + "create fleetform-b-0", H1 + "create fleetform-c-0"])

    fleet.deploy(a, b, c)
    done = fleet.apply()
    assert done_steps(done.stderr) == [H1 + "create fleetform-b-0", H1 + "create fleetform-c-0"]
    assert {name: fleet.inspect(name)["State"]["Status"] for name in names} == dict.fromkeys(
        names, "running"
    )
    assert fleet.check() == (0, [])


def test_ports_that_move_between_deployments_are_freed_before_they_are_taken(
    fleet: Fleet,
) -> None:
    def serving(name: str, port: int) -> None:
        assert fleet.inspect(name)["State"]["Status"] == "running"
        assert f"{fleet.address}:{port}" in " ".join(fleet.inspect(name)["Config"]["Cmd"])
        wait_for(f"http://{fleet.address}:{port}/health")

    a, b = (deployment(n, backend_version="cpu") for n in "ab")
    fleet.deploy({**a, "port": 41130}, {**b, "port": 41131})
    fleet.apply()
    assert fleet.inspect("fleetform-a-0")["Config"]["Labels"]["io.fleetform.holds"] == "port 41130"

    # A chain: a moves onto b's port, b moves on. By name, a's new server would find its
    # port taken (and roll back); b's update goes first.
    fleet.deploy({**a, "port": 41131}, {**b, "port": 41132})
    chain = fleet.apply()
    assert done_steps(chain.stderr) == [H1 + "update fleetform-b-0", H1 + "update fleetform-a-0"]
    serving("fleetform-a-0", 41131)
    serving("fleetform-b-0", 41132)
    assert fleet.check() == (0, [])

    # A swap: no order works; a's step stops b's old container before a's new one starts.
    fleet.deploy({**a, "port": 41132}, {**b, "port": 41131})
    plan = fleet.ff("plan")
    assert (
        "update fleetform-a-0  (spec changed (hash" in plan.stdout
        and "; stops fleetform-b-0 first (fleetform-b-0 holds port 41132))" in plan.stdout
    ), plan
    swap = fleet.apply()
    assert done_steps(swap.stderr) == [H1 + "update fleetform-a-0", H1 + "update fleetform-b-0"]
    assert "h1: stopped fleetform-b-0 first: it holds what fleetform-a-0 needs" in swap.stderr
    serving("fleetform-a-0", 41132)
    serving("fleetform-b-0", 41131)
    assert fleet.check() == (0, [])

    # A swap whose first new container fails: both old ones run again, as they were.
    fleet.deploy({**a, "port": 41131, "run_command": "sh -c 'exit 3'"}, {**b, "port": 41132})
    failed = fleet.apply(expect=1)
    assert re.search(
        r"^  h1: FAILED after 0 step\(s\): update fleetform-a-0: container exited at once .*;"
        r" rolled back to the previous container; started fleetform-b-0 again$",
        failed.stdout,
        re.MULTILINE,
    ), failed
    serving("fleetform-a-0", 41132)
    serving("fleetform-b-0", 41131)


# --- 6. replace order -------------------------------------------------------------------------


def test_gpu_replicas_are_replaced_one_at_a_time(fleet: Fleet) -> None:
    web = deployment(
        replicas=2,
        env={"A": "1"},
        gpu_selector={"gpu_ids": ["h1:cuda:0", "h1:cuda:1"], "gpus_per_replica": 1},
    )
    fleet.deploy(web)
    fleet.apply()
    names = ["fleetform-web-0", "fleetform-web-1"]
    old = [fleet.inspect(name)["Id"] for name in names]
    since = time.time()

    fleet.deploy({**web, "env": {"A": "2"}})
    assert fleet.apply_library() == [H1 + "update " + name for name in names]
    new = [fleet.inspect(name)["Id"] for name in names]
    assert [fleet.gpus(name) for name in names] == [["0"], ["1"]]

    events = fleet.events(since)
    gpus = fleet.gpu_assignments()  # container id → the GPUs it was started with
    assert {gpus[i] for i in old + new} == {"0", "1"}
    timeline = [(e["Action"], e["id"]) for e in events if e["id"] in old + new]
    # Each old container dies before its successor starts; replica 1 is only touched
    # once replica 0's new container runs.
    assert [t for t in timeline if t[0] in ("start", "die")] == [
        ("die", old[0]),
        ("start", new[0]),
        ("die", old[1]),
        ("start", new[1]),
    ]
    running: set[str] = set(old)
    for action, container in timeline:
        if action == "start":
            mine = set(gpus[container].split(","))
            holders = [c for c in running if mine & set(gpus[c].split(","))]
            assert not holders, f"{container[:12]} started holding GPUs of {holders}"
            running.add(container)
        elif action == "die":
            running.discard(container)


# --- 8. locks ---------------------------------------------------------------------------------


def test_concurrent_applies_and_stale_locks(fleet: Fleet) -> None:
    # `sleep` as PID 1 ignores SIGTERM: replacing it waits out its own stop_timeout (5 s),
    # the window in which a second apply finds the first one's lock.
    slow = {"run_command": "sleep 3600", "stop_timeout": 5}
    fleet.deploy(deployment("aux", backend_version="cpu", env={"V": "1"}, **slow))
    fleet.apply()
    fleet.deploy(deployment("aux", backend_version="cpu", env={"V": "2"}, **slow))
    argv = [
        sys.executable,
        "-c",
        "from compiler.cli import main; main()",
        "apply",
        "--auto-approve",
        "--repo",
        str(fleet.repo),
    ]
    environment = {k: v for k, v in os.environ.items() if k not in _CLEAN}
    first = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    )
    try:
        assert first.stderr is not None
        progress = []
        for line in first.stderr:  # the lock is held from before the first step
            progress.append(line)
            if "[1/1] update fleetform-aux-0 ..." in line:
                break
        second = fleet.apply(expect=1)
        out, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, out + "".join(progress) + err
    assert "h1: converged (1 step(s)" in out
    assert re.search(
        rf"h1: FAILED after 0 step\(s\): host 'h1' is locked by \S+ pid {first.pid} since"
        r" \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(0 min \d+ s ago\); if that apply is gone,"
        r" `fleetform unlock h1` breaks the lock",
        second.stdout,
    ), second
    assert fleet.check() == (0, [])

    # A lock left behind (here: taken and never released) blocks every apply ...
    fleet.deploy(deployment("aux", backend_version="cpu", replicas=1))
    from compiler.remote.engine import Engine as EngineClient

    lock_engine = EngineClient(fleet.target.docker_host)
    held = host_lock.acquire(lock_engine, "h1", PROJECT, PREFIX)
    lock_engine.close()
    before = fleet.snapshot()
    blocked = fleet.apply(expect=1)
    assert f"is locked by {host_lock.owner()} since" in blocked.stdout, blocked
    assert fleet.snapshot() == before
    # ... until `fleetform unlock` breaks it.
    unlocked = fleet.ff("unlock", "h1")
    assert (unlocked.returncode, unlocked.stdout) == (0, "h1: lock removed\n"), unlocked
    assert held not in {c["Id"] for c in fleet.api.containers(all=True)}
    unlocked = fleet.ff("unlock", "h1")
    assert (unlocked.returncode, unlocked.stdout) == (0, "h1: was not locked\n"), unlocked
    fleet.apply()
    assert fleet.names() == {"fleetform-aux-0"}
    assert fleet.check() == (0, [])


# --- 9. secrets -------------------------------------------------------------------------------


def test_secret_env_is_injected_at_apply_and_never_shown(fleet: Fleet, tmp_path: Path) -> None:
    first, second = "hf_live_secret_first", "hf_live_secret_second"
    web = deployment(env={"A": "1", "HF_TOKEN": {"secret": "HF_TOKEN"}}, backend_version="cpu")
    fleet.deploy(web)
    compiled = "".join(p.read_text() for p in (fleet.repo / "output").rglob("*") if p.is_file())
    assert "HF_TOKEN" in compiled  # the artifact names the secret ...

    # Without the value: plan works (a pull request's plan), apply fails naming it.
    shown = fleet.ff("plan")
    assert shown.returncode == 0, shown
    assert "secret values not available here" in shown.stdout, shown
    failed = fleet.apply(expect=1)
    assert (
        "h1: FAILED after 0 step(s): secret HF_TOKEN is not set: export it, or put it in a"
        " file of that name in $FLEETFORM_SECRETS_DIR"
    ) in failed.stdout, failed
    assert fleet.names() == set()

    # With it: injected into the container, and never printed.
    with_first = {"HF_TOKEN": first}
    code, planned = fleet.check(env=with_first)
    assert (code, planned) == (2, [H1 + "create fleetform-web-0"])
    applied = fleet.apply(env=with_first)
    assert fleet.env("fleetform-web-0") == {"A": "1", "HF_TOKEN": first}
    assert fleet.check(env=with_first) == (0, [])

    # Another value, from a file this time: an update that names the secret, never
    # either value.
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "HF_TOKEN").write_text(second + "\n", encoding="utf-8")
    with_second = {"FLEETFORM_SECRETS_DIR": str(folder)}
    outputs = [applied]
    for output_format in ("text", "markdown", "json"):
        run = fleet.ff("plan", "--detailed-exitcode", "--format", output_format, env=with_second)
        assert run.returncode == 2, run
        outputs.append(run)
    assert "~ update fleetform-web-0  (secret value changed: HF_TOKEN)" in outputs[1].stdout
    (step,) = json.loads(outputs[3].stdout)["hosts"][0]["steps"]
    assert (step["action"], step["reasons"]) == ("update", ["secret value changed: HF_TOKEN"])
    outputs.append(fleet.apply(env=with_second))
    assert fleet.env("fleetform-web-0") == {"A": "1", "HF_TOKEN": second}
    assert fleet.check(env=with_second) == (0, [])

    # A plain env change next to the secret: the diff shows A, never the secret.
    fleet.deploy({**web, "env": {"A": "2", "HF_TOKEN": {"secret": "HF_TOKEN"}}})
    run = fleet.ff("plan", "--format", "json", env=with_second)
    (step,) = json.loads(run.stdout)["hosts"][0]["steps"]
    assert step["changes"] == [{"field": "env.A", "before": "1", "after": "2"}]
    outputs += [run, fleet.apply(env=with_second), fleet.ff("reconcile", env=with_second)]
    for run in outputs:
        assert first not in run.stdout + run.stderr, run
        assert second not in run.stdout + run.stderr, run
    assert first not in compiled and second not in compiled


# --- 10. user and IPC namespace ---------------------------------------------------------------

UID, GID, HOST_IPC = "GPUSTACK_MODEL_RUNTIME_UID", "GPUSTACK_MODEL_RUNTIME_GID", "GPUSTACK_HOST_IPC"


def test_user_and_ipc_are_applied_observed_and_changed(fleet: Fleet) -> None:
    name = "fleetform-web-0"
    web = deployment(backend_version="cpu", env={UID: "1000", GID: "1000", HOST_IPC: "true"})
    fleet.deploy(web)
    converge(fleet, [H1 + "create " + name])  # ... and the plan right after has no step
    details = fleet.inspect(name)
    assert details["Config"]["User"] == "1000:1000"
    assert details["HostConfig"]["IpcMode"] == "host"
    assert details["HostConfig"]["ShmSize"] == 10 * 1024**3  # recorded, unused
    # It runs as that user, in the host's IPC namespace.
    container = fleet.client.containers.get(name)
    ran = container.exec_run(["busybox", "sh", "-c", "id -u; id -g"])
    assert ran.output.decode().split() == ["1000", "1000"]
    inside = container.exec_run(["busybox", "readlink", "/proc/self/ns/ipc"])
    assert inside.output.decode().strip() == os.readlink("/proc/self/ns/ipc")

    # Another user: an update, with the field diff.
    fleet.deploy({**web, "env": {UID: "1001", GID: "1001", HOST_IPC: "true"}})
    shown = fleet.ff("plan")
    assert change_lines(shown.stdout) == [
        f'env.{GID}: "1000" -> "1001"',
        f'env.{UID}: "1000" -> "1001"',
        'user: "1000:1000" -> "1001:1001"',
    ], shown
    converge(fleet, [H1 + "update " + name])
    assert fleet.inspect(name)["Config"]["User"] == "1001:1001"

    # Neither: the image's own user and the engine's default IPC mode.
    fleet.deploy(deployment(backend_version="cpu"))
    run = fleet.ff("plan", "--format", "json")
    (step,) = json.loads(run.stdout)["hosts"][0]["steps"]
    assert [c for c in step["changes"] if c["field"] in ("ipc", "user")] == [
        {"field": "ipc", "before": "host", "after": None},
        {"field": "user", "before": "1001:1001", "after": None},
    ]
    converge(fleet, [H1 + "update " + name])
    details = fleet.inspect(name)
    assert details["Config"]["User"] == ""
    assert details["HostConfig"]["IpcMode"] in ("private", "shareable")


def test_sizes_port_ranges_and_ipv6_as_docker_reads_them_converge(fleet: Fleet) -> None:
    """shm_size in each form docker accepts reaches the engine as docker's own number
    (never its 64 MB default), port ranges and an IPv6 address bind as ``docker run -p``
    binds them, a stop_timeout is the container's StopTimeout; then there is nothing to
    plan and no drift."""
    fleet.deploy(
        deployment("a", shm_size="1.5g", ports=["9000-9001:80-81"]),
        deployment("b", shm_size="512m", ports=["[::1]:9100:90/udp"]),
        deployment("c", shm_size="1073741824", ports=["9200-9201:80"]),
        deployment("d", shm_size="2GB", stop_timeout=3),
    )
    fleet.apply()
    assert fleet.check() == (0, [])
    # The deployment's stop_timeout is the container's own (docker stop's default grace).
    assert fleet.inspect(f"{PROJECT}-d-0")["Config"]["StopTimeout"] == 3
    assert "StopTimeout" not in fleet.inspect(f"{PROJECT}-a-0")["Config"]
    assert fleet.ff("reconcile").returncode == 0
    shm = {n: fleet.inspect(f"{PROJECT}-{n}-0")["HostConfig"]["ShmSize"] for n in "abcd"}
    assert shm == {"a": 1610612736, "b": 536870912, "c": 1073741824, "d": 2147483648}
    bindings = {n: fleet.inspect(f"{PROJECT}-{n}-0")["HostConfig"]["PortBindings"] for n in "abc"}
    assert bindings == {
        "a": {
            "80/tcp": [{"HostIp": "", "HostPort": "9000"}],
            "81/tcp": [{"HostIp": "", "HostPort": "9001"}],
        },
        "b": {"90/udp": [{"HostIp": "::1", "HostPort": "9100"}]},
        "c": {"80/tcp": [{"HostIp": "", "HostPort": "9200-9201"}]},
    }
    # A size changed in the repository is a spec change, shown in bytes.
    fleet.deploy(
        deployment("a", shm_size="2g", ports=["9000-9001:80-81"]),
        deployment("b", shm_size="512m", ports=["[::1]:9100:90/udp"]),
        deployment("c", shm_size="1073741824", ports=["9200-9201:80"]),
        deployment("d", shm_size="2GB", stop_timeout=3),
    )
    plan = fleet.ff("plan", "--format", "json")
    (step,) = [s for h in json.loads(plan.stdout)["hosts"] for s in h["steps"]]
    assert step["changes"] == [{"field": "shm_size", "before": 1610612736, "after": 2147483648}]
