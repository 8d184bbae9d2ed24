"""Stage 8: carry out a Plan, host by host in parallel; no decisions of its own.

For each host with steps: connect, take the host's lock, observe again and refuse if
the host changed since the plan (a stale plan), then run the steps in the plan's
order. A host that fails (unreachable, locked, an engine error, a failed step) stops
there; the other hosts go on. The result lists every host's outcome and every step
that was carried out, so a test (or a log) can compare them with the plan.
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from compiler.errors import FleetformError, describe
from compiler.plan import DesiredHost, HostPlan, Plan, Step, secret_hash
from compiler.render.container import ContainerSpec

if TYPE_CHECKING:
    from compiler.model import Settings


class StepFailed(FleetformError):
    """A step that could not be carried out (after any rollback it did)."""


@dataclass(frozen=True)
class Options:
    stop_timeout: int = 30
    wait: bool = False
    label_prefix: str = "io.fleetform"
    # Where and with what apply fetches hub models (the repository's ``hub`` settings).
    hub_endpoint: str | None = None
    modelscope_endpoint: str | None = None
    helper_image: str = "python:3.12-slim"

    @classmethod
    def of(cls, settings: Settings, *, stop_timeout: int = 30, wait: bool = False) -> Options:
        """An apply's options: these, and what the repository's settings say."""
        return cls(
            stop_timeout=stop_timeout,
            wait=wait,
            label_prefix=settings.label_prefix,
            hub_endpoint=settings.hub.endpoint,
            modelscope_endpoint=settings.hub.modelscope_endpoint,
            helper_image=settings.hub.helper_image,
        )


Progress = Callable[[str], None]


@dataclass(frozen=True)
class Secrets:
    """One container's secret variables with their values, and their hash label."""

    env: dict[str, str]
    hash: str


NO_SECRETS = Secrets({}, "")


class HostLocked(FleetformError):
    """Another apply holds the host's lock."""


def owner() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a bare container
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


# How often a health check is asked while waiting for a replica to answer.
HEALTH_POLL_SECONDS = 0.5


Status = Literal["converged", "unchanged", "failed", "skipped"]
SECRETS_DIR_ENV = "FLEETFORM_SECRETS_DIR"


@dataclass
class HostResult:
    host: str
    status: Status
    done: list[Step] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class ApplyResult:
    hosts: tuple[HostResult, ...]

    @property
    def ok(self) -> bool:
        return all(h.status in ("converged", "unchanged") for h in self.hosts)

    @property
    def done(self) -> list[Step]:
        return [step for host in self.hosts for step in host.done]


@dataclass(frozen=True)
class Target:
    """How to reach one host (its engine, or its shell for systemd), and what it must
    run."""

    desired: DesiredHost
    base_url: str  # a Docker engine's, or a GPUStack server's URL
    ssh: str | None = None
    # A GPUStack cluster: its name (or id) on the server, and the variable holding the
    # API key.
    cluster: str | None = None
    api_key_env: str | None = None


Report = Callable[[str, str], None]  # (host, message)


def secret_values(names: set[str]) -> tuple[dict[str, str], list[str]]:
    """Secret values from the applying environment: the variable NAME, else the file
    ``$FLEETFORM_SECRETS_DIR/NAME``. Returns the values and the names not found."""
    values: dict[str, str] = {}
    missing: list[str] = []
    folder = os.environ.get(SECRETS_DIR_ENV)
    for name in sorted(names):
        if name in os.environ:
            values[name] = os.environ[name]
        elif folder and (Path(folder) / name).is_file():
            values[name] = (Path(folder) / name).read_text(encoding="utf-8").rstrip("\n")
        else:
            missing.append(name)
    return values, missing


def apply_plan(
    plan: Plan,
    targets: dict[str, Target],
    project: str,
    options: Options,
    *,
    parallel: int = 4,
    allow_empty: bool = False,
    report: Report | None = None,
) -> ApplyResult:
    lock = threading.Lock()

    def say(host: str, message: str) -> None:
        if report is not None:
            with lock:
                report(host, message)

    def one(host_plan: HostPlan) -> HostResult:
        started = time.monotonic()
        result = _apply_host(host_plan, targets[host_plan.host], project, options, allow_empty, say)
        result.seconds = time.monotonic() - started
        return result

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        results = list(pool.map(one, plan.hosts))
    return ApplyResult(tuple(results))


def _apply_host(
    host_plan: HostPlan,
    target: Target,
    project: str,
    options: Options,
    allow_empty: bool,
    say: Report,
) -> HostResult:
    host = host_plan.host
    if host_plan.error is not None:
        return HostResult(host, "failed", error=host_plan.error)
    if not host_plan.steps:
        return HostResult(host, "unchanged")
    if host_plan.empties and not allow_empty:
        return HostResult(
            host,
            "failed",
            error="the plan would delete every container fleetform runs on this host"
            " (every model, on a GPUStack cluster); refused without --allow-empty",
        )
    secrets = _secrets_for(host_plan, target.desired)
    if isinstance(secrets, str):
        return HostResult(host, "failed", error=secrets)
    from compiler.targets import driver_for

    driver = driver_for(target.desired.target)
    return driver.apply(host_plan, target, project, options, secrets, say)


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


def release_after_failure(release: Callable[[], None]) -> str | None:
    """Release a host's lock after a failure; why it could not be, or None."""
    try:
        release()
    except FleetformError as error:
        return error.message
    except Exception as error:
        return " ".join((str(error) or type(error).__name__).split())[:400]
    return None


def with_lock_left(result: HostResult, left: str | None) -> HostResult:
    if left is not None and result.error is not None:
        result.error += (
            f"; its apply lock was not released ({left}): once the host is back,"
            f" `fleetform unlock {result.host}` removes it"
        )
    return result


def current_step(host_plan: HostPlan, result: HostResult) -> str:
    step = host_plan.steps[len(result.done)]  # the steps done are always the plan's first N
    return f"{step.action} {step.name}"


def step_prefix(in_steps: bool, host_plan: HostPlan, result: HostResult) -> str:
    return f"{current_step(host_plan, result)}: " if in_steps else ""


def _secrets_for(host_plan: HostPlan, desired: DesiredHost) -> dict[str, Secrets] | str:
    """Each container's secrets, or the error naming what is missing."""
    from compiler.targets import driver_for

    needed = {
        driver_for(step.target).spec_name(step.name)
        for step in host_plan.steps
        if step.action in ("create", "update")
    }
    specs = [spec for spec in desired.specs if spec.name in needed and spec.secrets]
    values, missing = secret_values({name for spec in specs for name in spec.secrets.values()})
    if missing:
        return (
            f"secret {', '.join(missing)} is not set: export it, or put it in a file of"
            f" that name in ${SECRETS_DIR_ENV}"
        )
    return {
        spec.name: Secrets(
            {var: values[secret] for var, secret in spec.secrets.items()},
            secret_hash(spec, values),
        )
        for spec in specs
    }
