"""``fleetform plan / apply / reconcile / unlock`` against real systemd hosts.

Every test drives real hosts (testing/systemd_hosts.py): Debian's systemd as PID 1, sshd,
an inner dockerd with the GPU hook stand-in, reached over real ssh on a loopback
address. fleetform runs as a subprocess (``--repo``) with the ssh client environment of
the harness (its key and known_hosts), exactly as an operator runs it.

"check" is ``fleetform plan --detailed-exitcode`` (or ``reconcile``), apply is
``fleetform apply --auto-approve`` (or ``reconcile --heal``). Plan fidelity is asserted
on every apply: the steps carried out equal the steps the plan printed, and the plan
right after is empty. What runs is read back on the host itself: the unit file and
``systemctl show`` through ``docker exec`` into the host, the container through the
inner ``docker inspect``.

The served command traps SIGTERM: the unit's ``ExecStop`` is ``docker stop --time 30``,
and busybox as PID 1 would otherwise ignore the signal for all of that time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler import api, report
from compiler.apply import Options, apply_plan
from testing.engines import TEST_IMAGE, Engine, EngineFactory
from testing.gpustack_server import GPUStackServer
from testing.systemd_hosts import SystemdHost, SystemdHostFactory

PROJECT = "fleetform"
SECOND_IMAGE = "fleetform-test/busybox:2"
UNIT_DIR = "/etc/systemd/system"
LOCK_DIR = f"/run/lock/fleetform-{PROJECT}.lock"
HOST_MODEL_DIR = "/srv/models"
IDLE_SCRIPT = "trap 'exit 0' TERM; sleep 1000000 & wait"
IDLE = f'sh -c "{IDLE_SCRIPT}"'
BACKEND = {
    "backend_name": "bb",
    "default_version": "v1",
    "default_run_command": IDLE,
    "version_configs": {
        "v1": {"image_name": TEST_IMAGE, "custom_framework": "cuda", "entrypoint": "busybox"},
        "cpu": {"image_name": TEST_IMAGE, "custom_framework": "cpu", "entrypoint": "busybox"},
    },
}
# Variables a subprocess must not inherit from the test's own environment.
_CLEAN = ("NO_COLOR", "HF_TOKEN", "FLEETFORM_SECRETS_DIR", "DOCKER_HOST", "DOCKER_CONTEXT")

# `fleetform plan` (text): "s1 (systemd)..." headings, then "  + create NAME  (why)".
_HEADING = re.compile(r"^(\S+) \((?:compose|systemd|gpustack)\)")
_STEP = re.compile(r"^  [-+~>] (create|update|delete|start) +(\S+)  \(")
# apply's progress (stderr): "s1: [1/2] create NAME: done (2.1 s)".
_DONE = re.compile(r"^(\S+): \[\d+/\d+\] (create|update|delete|start) (\S+): done")


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


def on(host: str, name: str, **fields: Any) -> dict[str, Any]:
    """A CPU deployment placed on ``host`` (by its ``host`` label)."""
    return deployment(name, backend_version="cpu", worker_selector={"host": host}, **fields)


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


def per_host(steps: list[str]) -> dict[str, list[str]]:
    """Steps by host, each host's in order (hosts are converged in parallel: their
    progress lines interleave)."""
    hosts: dict[str, list[str]] = {}
    for step in steps:
        hosts.setdefault(step.split(" ", 1)[0], []).append(step)
    return hosts


def environ(container: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in container["Config"]["Env"] or [])


class Fleet:
    """A repository whose hosts are real systemd hosts (and, optionally, real Docker
    engines), and the commands that drive it."""

    def __init__(
        self, root: Path, hosts: Sequence[SystemdHost], engines: Sequence[Engine] = ()
    ) -> None:
        self.repo = root / "repo"
        self.hosts = {host.name: host for host in hosts}
        # Each host's model_dir (mounted read-only): the engines' on this machine, the
        # systemd hosts' on their own disk, not under /tmp (which their boot empties).
        engine_models = root / "models"
        engine_models.mkdir()
        documents: list[dict[str, Any]] = []
        for host in hosts:
            host.exec(["mkdir", "-p", HOST_MODEL_DIR])
            documents.append(
                {
                    "name": host.name,
                    "address": "127.0.0.1",  # the host's own loopback: only it serves there
                    "target": "systemd",
                    "ssh": host.ssh_target,
                    "labels": {"host": host.name},
                    "gpus": {"framework": "cuda", "count": 4},
                    "model_dir": HOST_MODEL_DIR,
                }
            )
        for engine in engines:
            documents.append(
                {
                    "name": engine.name,
                    "address": "127.0.0.1",
                    "docker_host": engine.base_url,
                    "labels": {"host": engine.name},
                    "gpus": {"framework": "cuda", "count": 4},
                    "model_dir": str(engine_models),
                }
            )
        # Every host's ssh client environment is the same (one client home per session).
        self.client_env = dict(next(iter(self.hosts.values())).env) if hosts else {}
        self._write("backends.d/b.yaml", [BACKEND])
        self._write("hosts.d/h.yaml", documents)

    def _write(self, relative: str, documents: list[dict[str, Any]]) -> None:
        path = self.repo / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if documents:
            path.write_text(
                yaml.safe_dump_all(documents, sort_keys=False, allow_unicode=True),
                encoding="utf-8",
            )
        else:
            path.unlink(missing_ok=True)

    def deploy(self, *deployments: dict[str, Any]) -> None:
        """Write these deployments (all of them: the others are gone) and compile."""
        # A hub model the test stages itself: apply does not fetch it.
        model = {"huggingface_repo_id": "fleetform-test/model", "model_provisioning": "none"}
        self._write(
            "deployments.d/d.yaml",
            [d if "local_path" in d else {**model, **d} for d in deployments],
        )
        api.compile_repo(self.repo)

    def compiled_unit(self, host: str, unit: str) -> str:
        return (self.repo / "output" / host / "systemd" / unit).read_text(encoding="utf-8")

    # --- the CLI ---

    def environment(self, env: dict[str, str] | None = None) -> dict[str, str]:
        environment = {k: v for k, v in os.environ.items() if k not in _CLEAN}
        environment.update(self.client_env)
        environment.update(env or {})
        return environment

    def argv(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-c",
            "from compiler.cli import main; main()",
            *args,
            "--repo",
            str(self.repo),
        ]

    def ff(self, *args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Run:
        done = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=self.environment(env),
            timeout=timeout,
        )
        return Run(["fleetform", *args], done.returncode, done.stdout, done.stderr)

    def check(self, *, env: dict[str, str] | None = None) -> tuple[int, list[str]]:
        """``plan --detailed-exitcode`` (json): its exit code and the steps it planned."""
        run = self.ff("plan", "--detailed-exitcode", "--format", "json", env=env)
        assert run.returncode in (0, 2), str(run)
        plan = json.loads(run.stdout)
        steps = [
            f"{h['host']} {s['action']} {s['name']}" for h in plan["hosts"] for s in h["steps"]
        ]
        assert (run.returncode == 2) == bool(steps), str(run)
        return run.returncode, steps

    def apply(self, *extra: str, expect: int = 0, env: dict[str, str] | None = None) -> Run:
        """``apply --auto-approve``; asserts it carried out exactly the plan it printed
        (all of it when it succeeded, a prefix when it failed)."""
        run = self.ff("apply", "--auto-approve", "--stop-timeout", "1", *extra, env=env)
        assert run.returncode == expect, str(run)
        planned, done = per_host(printed_steps(run.stdout)), per_host(done_steps(run.stderr))
        for host, steps in planned.items():
            if expect == 0:
                assert done.get(host, []) == steps, str(run)
            else:
                assert steps[: len(done.get(host, []))] == done.get(host, []), str(run)
        assert set(done) <= set(planned), str(run)
        return run

    # --- what the hosts run ---

    def snapshot(self) -> dict[str, Any]:
        """:func:`snapshot` of every systemd host."""
        return {name: snapshot(host) for name, host in self.hosts.items()}


def snapshot(host: SystemdHost) -> dict[str, Any]:
    """One host: our unit files (md5) and drop-in folders, each unit's state, and every
    container of the inner docker (id, status, started at)."""
    files = host.exec(
        ["sh", "-c", f"md5sum {UNIT_DIR}/{PROJECT}-*.service; ls -d {UNIT_DIR}/{PROJECT}-*.d"],
        check=False,
    ).stdout
    units = {
        unit: unit_state(host, unit) for unit in re.findall(rf"\b{PROJECT}-\S+\.service\b", files)
    }
    containers = {}
    for container_id in host.exec(["docker", "ps", "-aq"]).stdout.split():
        data = host.docker_inspect(container_id)
        if data is not None:
            state = data["State"]
            containers[data["Name"].lstrip("/")] = (data["Id"], state["Status"], state["StartedAt"])
    return {"files": files, "units": units, "containers": containers}


def unit_state(host: SystemdHost, unit: str) -> dict[str, str]:
    shown = host.exec(
        [
            "systemctl",
            "show",
            "-p",
            "LoadState,ActiveState,SubState,UnitFileState,DropInPaths,NeedDaemonReload",
            unit,
        ]
    ).stdout
    return dict(line.partition("=")[::2] for line in shown.splitlines())


def unit_file(host: SystemdHost, unit: str) -> str | None:
    result = host.exec(["cat", f"{UNIT_DIR}/{unit}"], check=False)
    return result.stdout if result.returncode == 0 else None


def running(host: SystemdHost, name: str, timeout: float = 15) -> dict[str, Any]:
    """The inner ``docker inspect`` of container ``name`` once it runs."""
    deadline = time.monotonic() + timeout
    while True:
        data = host.docker_inspect(name)
        if data is not None and data["State"]["Running"]:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is not running on {host.name}:\n{host.journal()}")
        time.sleep(0.1)


def wait_until(condition: Any, timeout: float = 15) -> None:
    """Poll ``condition()`` until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def assert_serving(fleet: Fleet, host: SystemdHost, unit: str) -> dict[str, Any]:
    """The unit is the compiled file, enabled and active, and its container runs."""
    assert unit_file(host, unit) == fleet.compiled_unit(host.name, unit)
    state = unit_state(host, unit)
    assert (state["ActiveState"], state["UnitFileState"], state["DropInPaths"]) == (
        "active",
        "enabled",
        "",
    ), state
    return running(host, unit.removesuffix(".service"))


def converge(fleet: Fleet, expected: list[str]) -> Run:
    """Steps 1-4 of the six: check (exactly ``expected`` pending), apply (carries out
    what check printed), check (nothing left), apply (changes nothing at all)."""
    code, planned = fleet.check()
    assert (code, planned) == (2, expected)
    applied = fleet.apply()
    assert per_host(done_steps(applied.stderr)) == per_host(planned)
    assert fleet.check() == (0, [])
    before = fleet.snapshot()
    again = fleet.apply()
    assert "no changes" in again.stdout and "Apply:" not in again.stdout, str(again)
    assert fleet.snapshot() == before
    return applied


def diff_lines(plan_text: str) -> list[str]:
    """The unified diff lines a text plan shows under its steps."""
    return [line[6:] for line in plan_text.splitlines() if line.startswith("      ")]


# --- 1. the repository changes, six steps each -------------------------------------------


def test_repository_changes_converge_in_six_steps(
    systemd_hosts: SystemdHostFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = systemd_hosts("s1")
    host.exec(["docker", "tag", TEST_IMAGE, SECOND_IMAGE])
    fleet = Fleet(tmp_path, [host])
    web_unit, aux_unit = f"{PROJECT}-web-0.service", f"{PROJECT}-aux-0.service"
    aux = on("s1", "aux")
    web = deployment("web", env={"A": "1"}, gpu_selector={"gpu_ids": ["s1:cuda:0"]})

    # create
    fleet.deploy(web, aux)
    converge(fleet, [f"s1 create {aux_unit}", f"s1 create {web_unit}"])
    first = assert_serving(fleet, host, web_unit)
    assert_serving(fleet, host, aux_unit)
    assert environ(first)["A"] == "1"
    assert [r["DeviceIDs"] for r in first["HostConfig"]["DeviceRequests"]] == [["0"]]
    assert first["Config"]["Labels"]["io.fleetform.deployment"] == "web"

    # env change: the plan shows the unit's unified diff
    fleet.deploy({**web, "env": {"A": "2"}}, aux)
    shown = fleet.ff("plan")
    assert f"  ~ update {web_unit}  (spec changed (hash " in shown.stdout, str(shown)
    diff = diff_lines(shown.stdout)
    assert f"--- {UNIT_DIR}/{web_unit}" in diff and f"+++ {UNIT_DIR}/{web_unit}" in diff, str(shown)
    assert '-    "--env" "A=1" \\' in diff and '+    "--env" "A=2" \\' in diff, str(shown)
    aux_before = running(host, f"{PROJECT}-aux-0")
    converge(fleet, [f"s1 update {web_unit}"])
    second = assert_serving(fleet, host, web_unit)
    assert environ(second)["A"] == "2"
    assert second["Id"] != first["Id"]
    assert running(host, f"{PROJECT}-aux-0")["Id"] == aux_before["Id"]  # untouched

    # GPU change: the container that systemd started has exactly the new device ids
    web = {**web, "env": {"A": "2"}}
    web["gpu_selector"] = {"gpu_ids": ["s1:cuda:2", "s1:cuda:3"], "gpus_per_replica": 2}
    fleet.deploy(web, aux)
    shown = fleet.ff("plan")
    assert '-    "--gpus" "\\"device=0\\"" \\' in diff_lines(shown.stdout), str(shown)
    assert '+    "--gpus" "\\"device=2,3\\"" \\' in diff_lines(shown.stdout), str(shown)
    converge(fleet, [f"s1 update {web_unit}"])
    third = assert_serving(fleet, host, web_unit)
    assert third["HostConfig"]["DeviceRequests"] == [
        {
            "Driver": "",
            "Count": 0,
            "DeviceIDs": ["2", "3"],
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    assert host.gpu_assignments()[third["Id"]] == "2,3"

    # image change, through the library this time (in this process: the ssh client
    # environment of the harness)
    for key, value in fleet.client_env.items():
        monkeypatch.setenv(key, value)
    fleet.deploy({**web, "image_name": SECOND_IMAGE}, aux)
    planned = api.plan_repo(fleet.repo)
    assert report.steps_text(planned.plan.steps) == [f"s1 update {web_unit}"]
    options = Options(stop_timeout=1, label_prefix=planned.settings.label_prefix)
    result = apply_plan(planned.plan, planned.targets, planned.settings.project, options)
    assert result.ok, [(h.host, h.error) for h in result.hosts]
    assert report.steps_text(result.done) == report.steps_text(planned.plan.steps)
    assert not api.plan_repo(fleet.repo).plan.steps
    fourth = assert_serving(fleet, host, web_unit)
    assert fourth["Config"]["Image"] == SECOND_IMAGE
    assert fleet.check() == (0, [])

    # delete: the unit is stopped, disabled and removed, its container gone
    fleet.deploy(aux)
    shown = fleet.ff("plan")
    assert f"  - delete {web_unit}  (no longer in the repository)" in shown.stdout, str(shown)
    converge(fleet, [f"s1 delete {web_unit}"])
    assert unit_file(host, web_unit) is None
    assert unit_state(host, web_unit)["LoadState"] == "not-found"
    assert host.exec(["test", "-e", f"{UNIT_DIR}/{web_unit}.d"], check=False).returncode == 1
    assert host.docker_inspect(f"{PROJECT}-web-0") is None
    assert set(fleet.snapshot()["s1"]["containers"]) == {f"{PROJECT}-aux-0"}
    assert_serving(fleet, host, aux_unit)


# --- 2. argument fidelity on the real thing ----------------------------------------------

HOSTILE_ENV = {
    "SPACES": "two  words\tand a tab ",
    "QUOTES": "it's \"double\" and 'single'",
    "DOLLAR": "$HOME ${PATH} $$ $(id) `id`",
    "PERCENT": "%h %n %% %i %",
    "SEMICOLON": "a; rm -rf / && echo pwned | cat > /x",
    "BACKSLASH": "C:\\dir\\n\\t \\\\ end\\",
    "NEWLINE": "first line\nsecond line",
    "UNICODE": "ünïcødé — 模型 ✓",
}
# Each parameter is split like a shell (the README's rule); the expected words after.
HOSTILE_PARAMETERS = [
    "--served-model-name='my model; rm -rf /'",
    '--label "$HOME %h \\"quoted\\""',
    "--dir 'C:\\dir\\'",
    "--ünï=模型 --percent=%%n",
]
HOSTILE_PARAMETER_WORDS = [
    "--served-model-name=my model; rm -rf /",
    "--label",
    '$HOME %h "quoted"',
    "--dir",
    "C:\\dir\\",
    "--ünï=模型",
    "--percent=%%n",
]
HOSTILE_MODEL = "/srv/my models; $HOME %h 'q' \"d\" \\b, ü/the model"


def test_hostile_values_reach_the_container_exactly(
    systemd_hosts: SystemdHostFactory, tmp_path: Path
) -> None:
    host = systemd_hosts("s1")
    fleet = Fleet(tmp_path, [host])
    host.exec(["mkdir", "-p", HOSTILE_MODEL])
    run_command = (
        f"{IDLE} fleetform {{{{model_path}}}} {{{{SEMICOLON}}}} {{{{DOLLAR}}}}"
        " {{PERCENT}} {{UNICODE}}"
    )
    web = deployment(
        "web",
        local_path=HOSTILE_MODEL,
        run_command=run_command,
        env=HOSTILE_ENV,
        backend_parameters=HOSTILE_PARAMETERS,
        gpu_selector={"gpu_ids": ["s1:cuda:1", "s1:cuda:3"], "gpus_per_replica": 2},
    )
    fleet.deploy(web)
    unit = f"{PROJECT}-web-0.service"
    converge(fleet, [f"s1 create {unit}"])
    container = assert_serving(fleet, host, unit)

    expected_argv = [
        "sh",
        "-c",
        IDLE_SCRIPT,
        "fleetform",
        HOSTILE_MODEL,
        HOSTILE_ENV["SEMICOLON"],
        HOSTILE_ENV["DOLLAR"],
        HOSTILE_ENV["PERCENT"],
        HOSTILE_ENV["UNICODE"],
        *HOSTILE_PARAMETER_WORDS,
    ]
    assert container["Config"]["Entrypoint"] == ["busybox"]
    assert container["Config"]["Cmd"] == expected_argv
    env = environ(container)
    assert {key: env.get(key) for key in HOSTILE_ENV} == HOSTILE_ENV
    # Two GPUs: their order pinned to the PCI bus, as GPUStack does (compiler/gpus.py).
    assert env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID"
    assert set(env) - set(HOSTILE_ENV) <= {"PATH", "CUDA_DEVICE_ORDER"}, env
    # The process itself got exactly those words and values.
    cmdline = host.exec(["docker", "exec", f"{PROJECT}-web-0", "cat", "/proc/1/cmdline"]).stdout
    assert cmdline.split("\0")[:-1] == ["busybox", *expected_argv]
    # The model folder (the local path's parent) is mounted read-only, path intact.
    model_parent = HOSTILE_MODEL.rsplit("/", 1)[0]
    assert [(m["Source"], m["Destination"], m["RW"]) for m in container["Mounts"]] == [
        (model_parent, model_parent, False)
    ]
    # --gpus carried the exact ids: the request, and what the hook was started with.
    assert container["HostConfig"]["DeviceRequests"] == [
        {
            "Driver": "",
            "Count": 0,
            "DeviceIDs": ["1", "3"],
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    assert host.gpu_assignments()[container["Id"]] == "1,3"


# --- 3. drift, done by hand on the host, found by reconcile and healed -------------------

DRIFT_OVERRIDE = 'trap "exit 0" TERM; sleep 999 & wait'


def test_every_drift_class_is_found_and_healed(
    systemd_hosts: SystemdHostFactory, tmp_path: Path
) -> None:
    """A deployment per drift class, all drifted at once, two per host (a host's steps
    run one after the other, hosts in parallel): one reconcile finds each with its own
    cause, one ``--heal`` heals them all."""
    hosts = systemd_hosts.many("s1", "s2", "s3", "s4")
    fleet = Fleet(tmp_path, hosts)
    placed = {
        "s1": ("edited", "dropin"),
        "s2": ("removed", "rmrunning"),
        "s3": ("stopped", "disabled"),
        "s4": ("gone", "dropinenv"),
    }
    # Restart=no: with the default (always) systemd itself restarts a unit whose container
    # was removed, 5 s later, racing the reconcile that should find it.
    fleet.deploy(
        *(
            on(host, name, env={"A": "1"}, restart="no")
            for host, names in placed.items()
            for name in names
        )
    )
    where = {name: fleet.hosts[host] for host, names in placed.items() for name in names}

    def unit(name: str) -> str:
        return f"{PROJECT}-{name}-0.service"

    def path(name: str) -> str:
        return f"{UNIT_DIR}/{unit(name)}"

    def container(name: str) -> str:
        return f"{PROJECT}-{name}-0"

    def on_host(name: str, *argv: str, input: str | None = None) -> None:
        where[name].exec(list(argv), input=input)

    def edit_by_hand(name: str) -> None:
        # What a person does: edit the unit, reload, restart it: the edit runs.
        on_host(name, "sed", "-i", 's/"--env" "A=1"/"--env" "A=by-hand"/', path(name))
        on_host(name, "systemctl", "daemon-reload")
        on_host(name, "systemctl", "restart", unit(name))
        assert environ(running(where[name], container(name)))["A"] == "by-hand"

    def step(action: str, name: str) -> str:
        return f"{where[name].name} {action} {unit(name)}"

    converge(
        fleet,
        [step("create", name) for names in placed.values() for name in sorted(names)],
    )
    wanted = {name: assert_serving(fleet, host, unit(name)) for name, host in where.items()}

    # the unit file edited by hand (and running the edit)
    edit_by_hand("edited")
    # a drop-in that changes what runs: another ExecStart
    override = (
        "[Service]\nExecStart=\nExecStart=/usr/bin/docker run --rm --name"
        f" {container('dropin')} {TEST_IMAGE} sh -c '{DRIFT_OVERRIDE}'\n"
    )
    on_host("dropin", "mkdir", "-p", f"{path('dropin')}.d")
    on_host("dropin", "sh", "-c", f"cat > {path('dropin')}.d/override.conf", input=override)
    on_host("dropin", "systemctl", "daemon-reload")
    on_host("dropin", "systemctl", "restart", unit("dropin"))
    assert running(where["dropin"], container("dropin"))["Config"]["Cmd"] == [
        "sh",
        "-c",
        DRIFT_OVERRIDE,
    ]
    # removed: stopped, disabled, its file deleted
    on_host("removed", "systemctl", "disable", "--now", unit("removed"))
    on_host("removed", "rm", path("removed"))
    on_host("removed", "systemctl", "daemon-reload")
    # removed while it runs an edit: the file deleted, the unit goes on running the edit
    edit_by_hand("rmrunning")
    on_host("rmrunning", "rm", path("rmrunning"))
    on_host("rmrunning", "systemctl", "daemon-reload")
    assert unit_state(where["rmrunning"], unit("rmrunning"))["LoadState"] == "not-found"
    assert unit_state(where["rmrunning"], unit("rmrunning"))["ActiveState"] == "active"
    # stopped
    on_host("stopped", "systemctl", "stop", unit("stopped"))
    assert where["stopped"].docker_inspect(container("stopped")) is None
    # disabled (still running)
    on_host("disabled", "systemctl", "disable", unit("disabled"))
    # its container removed by hand: docker run exits, the unit fails (and stays so)
    on_host("gone", "docker", "rm", "-f", container("gone"))
    wait_until(lambda: unit_state(where["gone"], unit("gone"))["ActiveState"] == "failed")
    # a drop-in that changes the environment docker's client runs in (at the next start)
    on_host("dropinenv", "mkdir", "-p", f"{path('dropinenv')}.d")
    on_host(
        "dropinenv",
        "sh",
        "-c",
        f"cat > {path('dropinenv')}.d/env.conf",
        input="[Service]\nEnvironment=A=drop-in DOCKER_HOST=unix:///nowhere\n",
    )
    on_host("dropinenv", "systemctl", "daemon-reload")

    expected = [
        step("update", "dropin"),
        step("update", "edited"),
        step("create", "removed"),
        step("create", "rmrunning"),
        step("start", "disabled"),
        step("start", "stopped"),
        step("update", "dropinenv"),
        step("start", "gone"),
    ]
    assert fleet.check() == (2, expected)
    found = fleet.ff("reconcile")
    assert found.returncode == 2, str(found)
    assert printed_steps(found.stdout) == expected, str(found)
    for line in [
        f"  ~ update {unit('edited')}  (unit file edited outside fleetform (drift))",
        f"  ~ update {unit('dropin')}  (drop-in {path('dropin')}.d/override.conf changes"
        " what runs (drift))",
        f"  ~ update {unit('dropinenv')}  (drop-in {path('dropinenv')}.d/env.conf changes"
        " what runs (drift))",
        f"  + create {unit('removed')}  (no such unit on the host)",
        f"  + create {unit('rmrunning')}  (no such unit on the host)",
        f"  > start  {unit('stopped')}  (unit is inactive (dead))",
        f"  > start  {unit('disabled')}  (unit is disabled)",
        f"  > start  {unit('gone')}  (unit is failed (failed))",
    ]:
        assert line in found.stdout.splitlines(), str(found)
    diff = diff_lines(found.stdout)
    assert '-    "--env" "A=by-hand" \\' in diff and '+    "--env" "A=1" \\' in diff, str(found)
    assert f"--- {path('dropin')}.d/override.conf (removed)" in diff, str(found)
    assert "-Environment=A=drop-in DOCKER_HOST=unix:///nowhere" in diff, str(found)

    healed = fleet.ff("reconcile", "--heal", "--stop-timeout", "1")
    assert healed.returncode == 2, healed  # drift was found (and healed)
    assert printed_steps(healed.stdout) == expected, str(healed)
    assert per_host(done_steps(healed.stderr)) == per_host(expected), str(healed)
    assert "4 of 4 hosts converged" in healed.stdout, str(healed)
    clean = fleet.ff("reconcile")
    assert (clean.returncode, clean.stdout) == (
        0,
        "no drift: every host runs what the repository says\n",
    ), str(clean)
    before = fleet.snapshot()
    again = fleet.ff("reconcile", "--heal", "--stop-timeout", "1")
    assert again.returncode == 0, str(again)
    assert fleet.snapshot() == before

    # Each unit is the compiled one again, enabled, active, without drop-ins, and runs
    # a container of the compiled config.
    for name, host in where.items():
        now = assert_serving(fleet, host, unit(name))
        assert environ(now) == {"A": "1"}, name
        for key in ("Cmd", "Entrypoint", "Image", "Labels"):
            assert now["Config"][key] == wanted[name]["Config"][key], (name, key)
    for name in ("dropin", "dropinenv"):
        assert where[name].exec(["ls", "-A", f"{path(name)}.d"]).stdout == ""


# --- 4. an unowned unit of a name fleetform would use ------------------------------------

FOREIGN_UNIT = f"""\
[Unit]
Description=someone else's service, by chance of fleetform's name

[Service]
ExecStartPre=-/usr/bin/docker rm --force squatter
ExecStart=/usr/bin/docker run --rm --init --name squatter {TEST_IMAGE} sleep 1000000
ExecStop=/usr/bin/docker stop --time 1 squatter

[Install]
WantedBy=multi-user.target
"""


def test_an_unowned_unit_of_our_name_is_a_conflict_and_never_touched(
    systemd_hosts: SystemdHostFactory, tmp_path: Path
) -> None:
    s1, s2 = systemd_hosts.many("s1", "s2")
    fleet = Fleet(tmp_path, [s1, s2])
    unit = f"{PROJECT}-web-0.service"
    s1.exec(["sh", "-c", f"cat > {UNIT_DIR}/{unit}"], input=FOREIGN_UNIT)
    s1.exec(["systemctl", "daemon-reload"])
    s1.exec(["systemctl", "enable", "--now", unit])
    squatter = running(s1, "squatter")
    fleet.deploy(on("s1", "web"), on("s1", "aux"), on("s2", "other"))
    before = snapshot(s1)
    message = (
        f"unit {unit} ({UNIT_DIR}/{unit}) exists and is not fleetform's (no"
        f" X-Fleetform-Project={PROJECT}): fleetform will not touch it; remove or rename it"
    )

    def untouched() -> None:
        assert unit_file(s1, unit) == FOREIGN_UNIT
        assert snapshot(s1) == before
        assert running(s1, "squatter")["Id"] == squatter["Id"]
        assert s1.exec(["test", "-e", LOCK_DIR], check=False).returncode == 1

    shown = fleet.ff("plan", "--detailed-exitcode")
    assert shown.returncode == 1, str(shown)
    assert f"s1 (systemd): error: {message}" in shown.stdout.splitlines(), str(shown)
    as_json = fleet.ff("plan", "--format", "json")
    assert as_json.returncode == 1, str(as_json)
    (host,) = [h for h in json.loads(as_json.stdout)["hosts"] if h["host"] == "s1"]
    assert (host["error"], host["steps"]) == (message, [])
    untouched()

    # apply converges the other host; this one is not changed at all (aux neither)
    applied = fleet.apply(expect=1)
    assert f"  s1: FAILED after 0 step(s): {message}" in applied.stdout, str(applied)
    assert "  s2: converged (1 step(s)" in applied.stdout, str(applied)
    assert "1 of 2 hosts converged, 1 failed" in applied.stdout, str(applied)
    assert_serving(fleet, s2, f"{PROJECT}-other-0.service")
    untouched()
    healed = fleet.ff("reconcile", "--heal")
    assert healed.returncode == 1 and message in healed.stdout, str(healed)
    untouched()

    # Once its owner has moved it away, fleetform takes the name.
    s1.exec(["systemctl", "disable", "--now", unit])
    s1.exec(["mv", f"{UNIT_DIR}/{unit}", f"{UNIT_DIR}/squatter.service"])
    s1.exec(["systemctl", "daemon-reload"])
    assert fleet.check() == (2, [f"s1 create {PROJECT}-aux-0.service", f"s1 create {unit}"])
    fleet.apply()
    assert fleet.check() == (0, [])
    assert_serving(fleet, s1, unit)
    assert s1.exec(["cat", f"{UNIT_DIR}/squatter.service"]).stdout == FOREIGN_UNIT


# --- 5. a mixed fleet: Docker hosts and systemd hosts in one apply -----------------------


_SUMMARY = re.compile(r"^  (\S+): (converged|FAILED|no changes)(.*)$", re.MULTILINE)


class Watched:
    """A running ``fleetform`` whose progress (stderr) is read line by line, each line
    with the time it arrived."""

    def __init__(self, fleet: Fleet, *args: str) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            fleet.argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=fleet.environment(),
        )
        self.lines: list[tuple[float, str]] = []

    def until(self, predicate: Any) -> str:
        """Read progress until a line matches; that line."""
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append((time.monotonic(), line))
            if predicate(line):
                return line
        raise AssertionError("no such progress line:\n" + self.progress)

    def finish(self, timeout: float = 180) -> Run:
        assert self.process.stderr is not None and self.process.stdout is not None
        try:
            for line in self.process.stderr:
                self.lines.append((time.monotonic(), line))
            stdout = self.process.stdout.read()
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        self.seconds = time.monotonic() - self.started
        return Run(["fleetform", "apply"], self.process.returncode, stdout, self.progress)

    @property
    def progress(self) -> str:
        return "".join(line for _, line in self.lines)

    def span(self, host: str) -> tuple[float, float]:
        """When the first and the last progress line of ``host`` arrived."""
        times = [at for at, line in self.lines if line.startswith(f"{host}: ")]
        return times[0], times[-1]


def test_one_apply_converges_a_mixed_fleet_and_a_host_that_went_down(
    engines: EngineFactory, systemd_hosts: SystemdHostFactory, tmp_path: Path
) -> None:
    """Two Docker engines and two systemd hosts in one apply. "Mid-run" is: while the
    apply runs, as soon as its progress shows s2's first step under way (its files
    written, its lock held), s2's power is cut (``SystemdHost.stop()``)."""
    d1, d2 = engines("d1"), engines("d2")
    s1, s2 = systemd_hosts.many("s1", "s2")
    fleet = Fleet(tmp_path, [s1, s2], [d1, d2])
    clients = {engine.name: engine.client() for engine in (d1, d2)}
    layout = {"d1": ["a1"], "d2": ["a2"], "s1": ["b1", "b2"], "s2": ["c1", "c2", "c3"]}

    def fleet_with(env: dict[str, str], extra: dict[str, list[str]]) -> list[dict[str, Any]]:
        return [
            on(host, name, env=env)
            for host in layout
            for name in layout[host] + extra.get(host, [])
        ]

    def docker_env(engine: str, name: str) -> dict[str, str]:
        details = clients[engine].api.inspect_container(f"{PROJECT}-{name}-0")
        assert details["State"]["Running"], details["State"]
        return dict(item.split("=", 1) for item in details["Config"]["Env"] or [])

    try:
        # All four converge in one apply, the hosts in parallel.
        fleet.deploy(*fleet_with({"A": "1"}, {}))
        expected = [
            "d1 create fleetform-a1-0",
            "d2 create fleetform-a2-0",
            "s1 create fleetform-b1-0.service",
            "s1 create fleetform-b2-0.service",
            "s2 create fleetform-c1-0.service",
            "s2 create fleetform-c2-0.service",
            "s2 create fleetform-c3-0.service",
        ]
        assert fleet.check() == (2, expected)
        watched = Watched(fleet, "apply", "--auto-approve", "--stop-timeout", "1")
        run = watched.finish()
        assert run.returncode == 0, str(run)
        assert per_host(done_steps(run.stderr)) == per_host(expected), str(run)
        assert "4 of 4 hosts converged" in run.stdout, str(run)
        # In parallel: the systemd hosts' steps overlap in time, and the whole apply took
        # less than its hosts' times added up.
        (s1_first, s1_last), (s2_first, s2_last) = watched.span("s1"), watched.span("s2")
        assert s1_first < s2_last and s2_first < s1_last, str(run)
        seconds = [
            float(m.group(3).split(", ")[1].split()[0]) for m in _SUMMARY.finditer(run.stdout)
        ]
        assert watched.seconds < sum(seconds), (watched.seconds, seconds, str(run))
        assert fleet.check() == (0, [])
        for engine, names in (("d1", ["a1"]), ("d2", ["a2"])):
            assert [docker_env(engine, name)["A"] for name in names] == ["1"]
        for host in (s1, s2):
            for name in layout[host.name]:
                container = assert_serving(fleet, host, f"{PROJECT}-{name}-0.service")
                assert environ(container)["A"] == "1"

        # s2's power is cut while its first step runs: the others converge, s2 fails.
        fleet.deploy(*fleet_with({"A": "2"}, {"s2": ["c4", "c5"]}))
        watched = Watched(fleet, "apply", "--auto-approve", "--stop-timeout", "1")
        cut_at = watched.until(lambda line: line.startswith("s2: [1/"))
        s2.stop()
        run = watched.finish()
        assert run.returncode == 1, str(run)
        outcomes = {m.group(1): (m.group(2), m.group(3)) for m in _SUMMARY.finditer(run.stdout)}
        assert {host: outcome for host, (outcome, _) in outcomes.items()} == {
            "d1": "converged",
            "d2": "converged",
            "s1": "converged",
            "s2": "FAILED",
        }, str(run)
        # (Cut while its first step settles: that step is not done, unless this machine
        # was so slow that the cut came after it.)
        cut = re.fullmatch(
            rf" after ([01]) step\(s\): cannot reach {re.escape(s2.ssh_target)} over ssh: .+",
            outcomes["s2"][1],
        )
        assert cut, (cut_at, str(run))
        assert "3 of 4 hosts converged, 1 failed" in run.stdout, str(run)
        planned, done = per_host(printed_steps(run.stdout)), per_host(done_steps(run.stderr))
        assert {host: done.get(host, []) for host in ("d1", "d2", "s1")} == {
            host: planned[host] for host in ("d1", "d2", "s1")
        }, str(run)
        assert done.get("s2", []) == planned["s2"][: int(cut.group(1))], str(run)
        assert docker_env("d1", "a1")["A"] == docker_env("d2", "a2")["A"] == "2"
        for name in layout["s1"]:
            assert environ(assert_serving(fleet, s1, f"{PROJECT}-{name}-0.service"))["A"] == "2"
        down = fleet.ff("plan", "--detailed-exitcode")
        assert down.returncode == 1, str(down)
        assert re.search(
            rf"^s2 \(systemd\): error: cannot reach {re.escape(s2.ssh_target)} over ssh",
            down.stdout,
            re.MULTILINE,
        ), str(down)

        # Back up (its lock was on /run, a tmpfs): a rerun converges it, and only it.
        s2.start()
        code, steps = fleet.check()
        assert code == 2 and steps and all(step.startswith("s2 ") for step in steps), steps
        fleet.apply()
        assert fleet.check() == (0, [])
        for name in layout["s2"] + ["c4", "c5"]:
            container = assert_serving(fleet, s2, f"{PROJECT}-{name}-0.service")
            assert environ(container)["A"] == "2"
    finally:
        for client in clients.values():
            client.close()


def test_one_plan_and_apply_over_a_docker_host_a_systemd_host_and_a_gpustack_cluster(
    engines: EngineFactory,
    systemd_hosts: SystemdHostFactory,
    gpustack: GPUStackServer,
    tmp_path: Path,
) -> None:
    """The three kinds of host in one repository: one plan shows them all, one apply
    converges them all, and the next plan shows nothing."""
    d1, (s1,) = engines("d1"), systemd_hosts.many("s1")
    fleet = Fleet(tmp_path, [s1], [d1])
    cluster = f"mixed-{uuid.uuid4().hex[:8]}"
    status, made = gpustack.request("POST", "/v2/clusters", {"name": cluster})
    assert status == 200, made
    fleet._write(
        "hosts.d/gs.yaml",
        [
            {
                "name": "gs",
                "target": "gpustack",
                "url": gpustack.url,
                "cluster": cluster,
                "labels": {"host": "gs"},
            }
        ],
    )
    key = {"GPUSTACK_API_KEY": gpustack.api_key, "GPUSTACK_URL": gpustack.url}
    fleet.deploy(on("d1", "a"), on("s1", "b"), on("gs", "c", local_path="/models/c", replicas=2))
    assert fleet.check(env=key) == (
        2,
        [
            "d1 create fleetform-a-0",
            "gs create backend/bb-custom",
            "gs create model/c",
            "s1 create fleetform-b-0.service",
        ],
    )
    run = fleet.apply(env=key)
    assert "3 of 3 hosts converged" in run.stdout, str(run)
    assert fleet.check(env=key) == (0, [])
    status, models = gpustack.request("GET", f"/v2/models?cluster_id={made['id']}")
    assert [(m["name"], m["replicas"]) for m in models["items"]] == [("c", 2)]

    # Off the cluster again: its model, then its backend (the server's, shared by every
    # cluster on it) are deleted; the other hosts are left as they are.
    fleet.deploy(on("d1", "a"), on("s1", "b"))
    assert fleet.check(env=key) == (2, ["gs delete model/c", "gs delete backend/bb-custom"])
    fleet.apply("--allow-empty", env=key)
    assert fleet.check(env=key) == (0, [])


# --- 6. a failed start rolls back --------------------------------------------------------


def test_a_failed_start_rolls_back_to_the_previous_unit(
    systemd_hosts: SystemdHostFactory, tmp_path: Path
) -> None:
    host = systemd_hosts("s1")
    fleet = Fleet(tmp_path, [host])
    web = deployment("web", env={"A": "1"}, gpu_selector={"gpu_ids": ["s1:cuda:0"]})
    zed = on("s1", "zed", env={"A": "1"})  # after web in the plan's order
    fleet.deploy(web, zed)
    units = {name: f"{PROJECT}-{name}-0.service" for name in ("web", "zed")}
    unit = units["web"]
    fleet.apply()
    old_text = {name: unit_file(host, u) for name, u in units.items()}
    old = {name: assert_serving(fleet, host, u) for name, u in units.items()}

    def rolled_back(pending: list[str]) -> None:
        """Each unit's previous file is back, active, and runs the previous config."""
        for name, previous in old.items():
            assert unit_file(host, units[name]) == old_text[name], name
            state = unit_state(host, units[name])
            assert (state["ActiveState"], state["UnitFileState"], state["NeedDaemonReload"]) == (
                "active",
                "enabled",
                "no",
            ), state
            now = running(host, f"{PROJECT}-{name}-0")
            for key in ("Image", "Entrypoint", "Cmd", "Env", "Labels"):
                assert now["Config"][key] == previous["Config"][key], (name, key)
            assert now["HostConfig"]["DeviceRequests"] == previous["HostConfig"]["DeviceRequests"]
        leftovers = host.exec(["sh", "-c", f"ls -A {UNIT_DIR} | grep fleetform-tmp"], check=False)
        assert leftovers.stdout == ""
        assert host.exec(["test", "-e", LOCK_DIR], check=False).returncode == 1
        # The repository still asks for the changes that failed.
        assert fleet.check() == (2, pending)

    # (a) an image the host does not have, and cannot pull (no network): docker run fails.
    # zed's update comes after web's in the same apply: it is not carried out, and its
    # file (written before the restarts) goes back too.
    fleet.deploy(
        {**web, "env": {"A": "2"}, "image_name": "fleetform-test/absent:1"},
        {**zed, "env": {"A": "2"}},
    )
    failed = fleet.apply(expect=1)
    assert re.search(
        rf"^  s1: FAILED after 0 step\(s\): update {re.escape(unit)}: {re.escape(unit)} did"
        r" not stay active \(.*; rolled back to the previous unit$",
        failed.stdout,
        re.MULTILINE,
    ), str(failed)
    # docker's own words are quoted: it could not find the image, nor pull it
    summary = failed.stdout.split("\nApply:\n")[1]
    assert "Unable to find image 'fleetform-test/absent:1' locally" in summary, str(failed)
    rolled_back([f"s1 update {unit}", f"s1 update {units['zed']}"])

    # (b) a command that exits at once
    fleet.deploy({**web, "env": {"A": "2"}, "run_command": "sh -c 'echo broken; exit 3'"}, zed)
    failed = fleet.apply(expect=1)
    assert re.search(
        rf"^  s1: FAILED after 0 step\(s\): update {re.escape(unit)}: {re.escape(unit)} did"
        r" not stay active \(activating/auto-restart, exit status 3\): broken; rolled back to the"
        r" previous unit$",
        failed.stdout,
        re.MULTILINE,
    ), str(failed)
    rolled_back([f"s1 update {unit}"])

    # (c) a new unit that fails is stopped and removed again; the others stay as they are
    fleet.deploy(web, zed, on("s1", "bad", run_command="sh -c 'exit 4'"))
    failed = fleet.apply(expect=1)
    bad = f"{PROJECT}-bad-0.service"
    assert re.search(
        rf"FAILED after 0 step\(s\): create {bad}: {bad} did not stay active"
        r" \(activating/auto-restart, exit status 4\); the new unit was stopped and removed$",
        failed.stdout,
        re.MULTILINE,
    ), str(failed)
    assert unit_file(host, bad) is None
    assert unit_state(host, bad)["LoadState"] == "not-found"
    rolled_back([f"s1 create {bad}"])


# --- 7. secrets --------------------------------------------------------------------------


def test_secrets_reach_the_container_through_a_0600_env_file_and_are_never_shown(
    systemd_hosts: SystemdHostFactory, tmp_path: Path
) -> None:
    host = systemd_hosts("s1")
    fleet = Fleet(tmp_path, [host])
    # Everything systemd's EnvironmentFile= parser treats specially.
    first = "hf_first \"double\" 'single' \\back\\slash\\ $HOME ${X} `id` %h #no-comment\nline 2\t;"
    second = "hf_second_value"
    web = on("s1", "web", env={"A": "1", "HF_TOKEN": {"secret": "HF_TOKEN"}})
    fleet.deploy(web)
    unit, name = f"{PROJECT}-web-0.service", f"{PROJECT}-web-0"
    env_file = f"/etc/fleetform/{PROJECT}/{name}.env"
    compiled = fleet.compiled_unit("s1", unit)
    assert f"EnvironmentFile={env_file}" in compiled and '"--env" "HF_TOKEN"' in compiled

    # Without the value: plan works (a pull request's plan), apply fails naming it.
    shown = fleet.ff("plan")
    assert shown.returncode == 0, str(shown)
    assert "secret values not available here" in shown.stdout, str(shown)
    failed = fleet.apply(expect=1)
    assert (
        "s1: FAILED after 0 step(s): secret HF_TOKEN is not set: export it, or put it in a"
        " file of that name in $FLEETFORM_SECRETS_DIR"
    ) in failed.stdout, str(failed)
    assert unit_file(host, unit) is None

    # With it: written to the env file (0600), the container gets exactly the value.
    with_first = {"HF_TOKEN": first}
    assert fleet.check(env=with_first) == (2, [f"s1 create {unit}"])
    outputs = [fleet.apply(env=with_first)]
    container = assert_serving(fleet, host, unit)
    assert environ(container) == {"A": "1", "HF_TOKEN": first}
    assert host.exec(["stat", "-c", "%a %U", env_file]).stdout == "600 root\n"
    assert first not in unit_file(host, unit)  # type: ignore[operator]
    assert fleet.check(env=with_first) == (0, [])

    # Another value, from a file this time: an update naming the secret, never a value.
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "HF_TOKEN").write_text(second + "\n", encoding="utf-8")
    with_second = {"FLEETFORM_SECRETS_DIR": str(folder)}
    for output_format in ("text", "markdown", "json"):
        run = fleet.ff("plan", "--detailed-exitcode", "--format", output_format, env=with_second)
        assert run.returncode == 2, str(run)
        outputs.append(run)
    assert f"  ~ update {unit}  (secret value changed: HF_TOKEN)" in outputs[1].stdout
    (step,) = json.loads(outputs[3].stdout)["hosts"][0]["steps"]
    assert (step["action"], step["reasons"], step["diff"]) == (
        "update",
        ["secret value changed: HF_TOKEN"],
        [],
    )
    outputs.append(fleet.apply(env=with_second))
    assert environ(running(host, name)) == {"A": "1", "HF_TOKEN": second}
    assert host.exec(["stat", "-c", "%a %U", env_file]).stdout == "600 root\n"
    assert fleet.check(env=with_second) == (0, [])
    outputs += [fleet.ff("reconcile", env=with_second), fleet.ff("plan", env=with_first)]

    # A new value with an update that fails to start: rolled back, the previous value
    # too (the unit runs it again, and the plan still has the change to make).
    third = "hf_third_value"
    with_third = {"HF_TOKEN": third}
    fleet.deploy({**web, "run_command": "sh -c 'exit 5'"})
    failed = fleet.apply(expect=1, env=with_third)
    assert re.search(
        rf"^  s1: FAILED after 0 step\(s\): update {unit}: {unit} did not stay active .*;"
        " rolled back to the previous unit$",
        failed.stdout,
        re.MULTILINE,
    ), str(failed)
    outputs.append(failed)
    assert environ(running(host, name)) == {"A": "1", "HF_TOKEN": second}
    assert host.exec(["stat", "-c", "%a %U", env_file]).stdout == "600 root\n"
    assert host.exec(["ls", f"/etc/fleetform/{PROJECT}"]).stdout == f"{name}.env\n"
    run = fleet.ff("plan", "--format", "json", env=with_third)
    (step,) = json.loads(run.stdout)["hosts"][0]["steps"]
    assert step["reasons"][1:] == ["secret value changed: HF_TOKEN"], step
    outputs.append(run)
    for run in outputs:
        for value in (first, second, third, "hf_first", "hf_second", "hf_third"):
            assert value not in run.stdout + run.stderr, str(run)

    # The secret dropped from the deployment: its value leaves the host's disk too.
    fleet.deploy(on("s1", "web", env={"A": "2"}))
    fleet.apply()
    assert environ(running(host, name)) == {"A": "2"}
    assert host.exec(["ls", "-A", f"/etc/fleetform/{PROJECT}"]).stdout == ""
    assert fleet.check() == (0, [])


# --- 8. locks ----------------------------------------------------------------------------


def test_a_second_apply_is_refused_and_a_killed_apply_is_unlocked_and_finished(
    systemd_hosts: SystemdHostFactory, tmp_path: Path
) -> None:
    host = systemd_hosts("s1")
    fleet = Fleet(tmp_path, [host])
    fleet.deploy(on("s1", "aux", replicas=3, env={"A": "1"}))
    units = [f"{PROJECT}-aux-{replica}.service" for replica in range(3)]

    # While an apply runs, a second one is refused, naming the first.
    first = Watched(fleet, "apply", "--auto-approve")
    first.until(lambda line: f"s1: [1/3] create {units[0]} ..." in line)
    held = host.exec(["cat", f"{LOCK_DIR}/owner"]).stdout
    second = fleet.apply(expect=1)
    run = first.finish()
    assert run.returncode == 0, str(run)
    assert "s1: converged (3 step(s)" in run.stdout, str(run)
    assert re.fullmatch(rf"\S+@\S+ pid {first.process.pid} since \d+\n", held), held
    assert re.search(
        rf"  s1: FAILED after 0 step\(s\): host 's1' is locked by \S+ pid {first.process.pid}"
        r" \(0 min \d+ s ago\); if that apply is gone, `fleetform unlock s1` breaks the lock",
        second.stdout,
    ), str(second)
    assert host.exec(["test", "-e", LOCK_DIR], check=False).returncode == 1  # released
    assert fleet.check() == (0, [])

    # An apply killed half-way (its files written, one unit being restarted) leaves its
    # lock: every apply is refused, naming it ...
    fleet.deploy(on("s1", "aux", replicas=3, env={"A": "2"}))
    killed = Watched(fleet, "apply", "--auto-approve")
    killed.until(lambda line: f"s1: [1/3] update {units[0]} ..." in line)
    killed.process.kill()
    killed.finish()
    # What it had sent may still be under way on the host: let it end.
    wait_until(lambda: "No jobs running." in host.exec(["systemctl", "list-jobs"]).stdout)
    running(host, units[0].removesuffix(".service"))
    before = snapshot(host)
    blocked = fleet.apply(expect=1)
    assert re.search(
        rf"  s1: FAILED after 0 step\(s\): host 's1' is locked by \S+ pid {killed.process.pid}"
        r" \(0 min \d+ s ago\)",
        blocked.stdout,
    ), str(blocked)
    assert snapshot(host) == before
    # ... and the plan sees the units it wrote but did not restart: their files are
    # right, their containers run the old spec.
    shown = fleet.ff("plan")
    for unit in units[1:]:
        assert unit_file(host, unit) == fleet.compiled_unit("s1", unit)
        assert environ(running(host, unit.removesuffix(".service")))["A"] == "1"
        assert re.search(
            rf"^  ~ update {unit}  \(its container runs an older unit \(hash \w+ -> \w+\):"
            r" not restarted since the file changed\)$",
            shown.stdout,
            re.MULTILINE,
        ), str(shown)
    # `fleetform unlock` breaks the lock; the next apply finishes the work.
    unlocked = fleet.ff("unlock", "s1")
    assert (unlocked.returncode, unlocked.stdout) == (0, "s1: lock removed\n"), str(unlocked)
    assert host.exec(["test", "-e", LOCK_DIR], check=False).returncode == 1
    unlocked = fleet.ff("unlock", "s1")
    assert (unlocked.returncode, unlocked.stdout) == (0, "s1: was not locked\n"), str(unlocked)
    # A lock folder without its owner (an apply killed between mkdir and writing it).
    host.exec(["mkdir", LOCK_DIR])
    blocked = fleet.apply(expect=1)
    assert (
        f"  s1: FAILED after 0 step(s): host 's1' is locked by an apply that left no owner"
        f" in {LOCK_DIR} (it died taking the lock, or is taking it now); if no apply is"
        " running, `fleetform unlock s1` breaks the lock"
    ) in blocked.stdout, str(blocked)
    assert snapshot(host) == before
    unlocked = fleet.ff("unlock", "s1")
    assert (unlocked.returncode, unlocked.stdout) == (0, "s1: lock removed\n"), str(unlocked)
    fleet.apply()
    assert fleet.check() == (0, [])
    for unit in units:
        assert environ(assert_serving(fleet, host, unit))["A"] == "2"
