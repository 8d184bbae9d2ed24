"""Carry out one Docker host's steps through the Engine API. No decisions here: each
step does what the plan says, and only that.

Replacing a container (update): the old one is stopped (releasing its GPUs and port)
and renamed aside, the new one created and started; if it does not start, exits at
once, or (``--wait``) fails its health check, it is removed and the old one renamed
back and started again, and the step fails. An interrupted apply leaves at most a
stopped ``<name>--fleetform-previous`` container, which the next plan deletes.
"""

from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compiler.errors import FleetformError
from compiler.observe.docker import describe, parse_size
from compiler.plan import PREVIOUS_SUFFIX, Step
from compiler.render.container import ContainerSpec

# A container that has not exited within this long after start counts as started.
SETTLE_SECONDS = 1.0
HEALTH_POLL_SECONDS = 0.5


class StepFailed(FleetformError):
    """A step that could not be carried out (after any rollback it did)."""


@dataclass(frozen=True)
class Options:
    stop_timeout: int = 30
    wait: bool = False
    label_prefix: str = "io.fleetform"


Progress = Callable[[str], None]


@dataclass(frozen=True)
class Secrets:
    """One container's secret variables with their values, and their hash label."""

    env: dict[str, str]
    hash: str


NO_SECRETS = Secrets({}, "")


class DockerExecutor:
    """Executes steps on one engine (``api``: a docker SDK low-level client)."""

    def __init__(self, api: Any, options: Options, progress: Progress) -> None:
        self.api = api
        self.options = options
        self.progress = progress

    def run(self, step: Step, spec: ContainerSpec | None, secrets: Secrets) -> None:
        if step.action == "delete":
            self._remove(step.current)
            return
        assert spec is not None
        if step.action == "start":
            if self.api.inspect_container(step.current)["State"].get("Paused"):
                self.api.unpause(step.current)  # the engine refuses to start a paused one
            else:
                self.api.start(step.current)
            self._check_started(spec, step.current)
            return
        if step.action == "create":
            self._create_step(step, spec, secrets)
            return
        self._replace(step, spec, secrets)

    # --- the actions ---------------------------------------------------------------

    def _create_step(self, step: Step, spec: ContainerSpec, secrets: Secrets) -> None:
        squatter_running = False
        aside = ""
        if step.displace:
            squatter_running = self._running(step.displace)
            aside = f"{spec.name}--displaced-{step.displace[:12]}"
            self._stop(step.displace)
            self.api.rename(step.displace, aside)
            self.progress(f"moved the foreign container {step.displace[:12]} aside as {aside}")
        try:
            self._start_new(spec, secrets)
        except StepFailed:
            if step.displace:
                self.api.rename(step.displace, spec.name)
                if squatter_running:
                    self.api.start(step.displace)
            raise

    def _replace(self, step: Step, spec: ContainerSpec, secrets: Secrets) -> None:
        old = step.current
        was_running = self._running(old)
        self._stop(old)  # frees its GPUs and port before the new one starts
        aside = spec.name + PREVIOUS_SUFFIX
        self.api.rename(old, aside)
        try:
            self._start_new(spec, secrets)
        except StepFailed as error:
            self.api.rename(old, spec.name)
            if was_running:
                self.api.start(old)
            raise StepFailed(f"{error.message}; rolled back to the previous container") from None
        self._remove(old)

    def _start_new(self, spec: ContainerSpec, secrets: Secrets) -> None:
        self._ensure_image(spec.image)
        created = self._create(spec, secrets)
        try:
            try:
                self.api.start(created)
            except Exception as error:
                raise StepFailed(f"container did not start: {describe(error)}") from None
            self._check_started(spec, created)
        except StepFailed:
            self._remove(created)
            raise

    def _check_started(self, spec: ContainerSpec, container: str) -> None:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            state = self.api.inspect_container(container)["State"]
            if state.get("Status") not in ("running", "restarting") or state.get("Restarting"):
                logs = self.api.logs(container, tail=5).decode("utf-8", "replace").strip()
                tail = f": {' | '.join(logs.splitlines()[-3:])}" if logs else ""
                raise StepFailed(
                    f"container exited at once (exit code {state.get('ExitCode')}){tail}"
                )
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if self.options.wait and spec.health_check_path:
            self._wait_healthy(spec, container)

    def _wait_healthy(self, spec: ContainerSpec, container: str) -> None:
        def running() -> bool:
            return bool(self.api.inspect_container(container)["State"].get("Status") == "running")

        wait_healthy(spec, running, self.progress)

    # --- engine calls ----------------------------------------------------------------

    def _ensure_image(self, image: str) -> None:
        import docker

        try:
            self.api.inspect_image(image)
            return
        except docker.errors.ImageNotFound:
            pass
        self.progress(f"pulling {image}")
        try:
            shown = 0.0
            for event in self.api.pull(image, stream=True, decode=True):
                if "error" in event:
                    raise StepFailed(f"cannot pull {image}: {event['error']}")
                now = time.monotonic()
                if now - shown > 5 and event.get("progress"):
                    self.progress(f"pulling {image}: {event.get('status', '')} {event['progress']}")
                    shown = now
        except StepFailed:
            raise
        except Exception as error:
            raise StepFailed(f"cannot pull {image}: {describe(error)}") from None

    def _create(self, spec: ContainerSpec, secrets: Secrets) -> str:
        import docker

        env = {**spec.env, **secrets.env}
        labels = dict(spec.labels)
        if secrets.env:
            labels[f"{self.options.label_prefix}.secret-hash"] = secrets.hash
            # Which variables hold secrets: a later plan masks them, whatever the spec.
            labels[f"{self.options.label_prefix}.secret-vars"] = ",".join(sorted(secrets.env))
        ports, bindings = _ports(spec.ports)
        host_config = self.api.create_host_config(
            network_mode=spec.network_mode,
            shm_size=parse_size(spec.shm_size),
            restart_policy={"Name": spec.restart} if spec.restart != "no" else None,
            mounts=[
                docker.types.Mount(m.target, m.source, type="bind", read_only=m.read_only)
                for m in spec.mounts
            ],
            binds=list(spec.binds) or None,
            devices=list(spec.devices) or None,
            device_requests=(
                [
                    docker.types.DeviceRequest(
                        driver=spec.gpu_driver,
                        device_ids=list(spec.gpu_ids),
                        capabilities=[["gpu"]],
                    )
                ]
                if spec.gpu_driver
                else None
            ),
            port_bindings=bindings or None,
        )
        try:
            created = self.api.create_container(
                spec.image,
                command=list(spec.command) or None,
                entrypoint=list(spec.entrypoint) if spec.entrypoint is not None else None,
                environment=[f"{key}={value}" for key, value in sorted(env.items())],
                labels=labels,
                name=spec.name,
                host_config=host_config,
                ports=ports or None,
            )
        except Exception as error:
            raise StepFailed(f"cannot create the container: {describe(error)}") from None
        return str(created["Id"])

    def _running(self, container: str) -> bool:
        state = self.api.inspect_container(container)["State"]
        return bool(state.get("Running"))

    def _stop(self, container: str) -> None:
        self.api.stop(container, timeout=self.options.stop_timeout)

    def _remove(self, container: str) -> None:
        import docker

        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(container, force=True)


def wait_healthy(spec: ContainerSpec, running: Callable[[], bool], progress: Progress) -> None:
    """Poll ``http://<address>:<port><health_check_path>`` until it answers 200, the
    deployment's health timeout passes, or the container stops running."""
    url = f"http://{spec.address}:{spec.port}{spec.health_check_path}"
    progress(f"waiting for {url} (up to {spec.health_timeout:.0f} s)")
    deadline = time.monotonic() + spec.health_timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
                last = f"HTTP {answer.status}"
        except urllib.error.HTTPError as error:
            last = f"HTTP {error.code}"
        except (OSError, ValueError) as error:
            last = describe(error)
        if not running():
            raise StepFailed(f"container exited while waiting for {url}")
        time.sleep(HEALTH_POLL_SECONDS)
    raise StepFailed(
        f"health check {url} did not answer 200 within {spec.health_timeout:.0f} s ({last})"
    )


def _ports(ports: tuple[str, ...]) -> tuple[list[Any], dict[Any, Any]]:
    """compose's short port syntax ``[IP:]HOST:CONTAINER[/PROTO]`` → the SDK's form."""
    exposed: list[Any] = []
    bindings: dict[Any, Any] = {}
    for text in ports:
        spec, _, proto = text.partition("/")
        parts = spec.rsplit(":", 2)
        container = parts[-1]
        key: Any = f"{container}/{proto}" if proto else int(container)
        exposed.append((int(container), proto) if proto else int(container))
        if len(parts) == 3:
            bindings[key] = (parts[0], int(parts[1]))
        elif len(parts) == 2:
            bindings[key] = int(parts[1]) if parts[1] else None
        else:
            bindings[key] = None
    return exposed, bindings
