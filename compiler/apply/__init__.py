"""Stage 8: carry out a Plan, host by host in parallel; no decisions of its own.

For each host with steps: connect, take the host's lock, observe again and refuse if
the host changed since the plan (a stale plan), then run the steps in the plan's
order. A host that fails (unreachable, locked, an engine error, a failed step) stops
there; the other hosts go on. The result lists every host's outcome and every step
that was carried out, so a test (or a log) can compare them with the plan.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from compiler.apply.docker import DockerExecutor, Options, Secrets, StepFailed, run_steps
from compiler.errors import FleetformError
from compiler.plan import DesiredHost, HostPlan, Plan, Step, plan_host, secret_hash

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
    base_url: str
    ssh: str | None = None


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
            error="the plan would delete every container fleetform runs on this host;"
            " refused without --allow-empty",
        )
    secrets = _secrets_for(host_plan, target.desired)
    if isinstance(secrets, str):
        return HostResult(host, "failed", error=secrets)
    from compiler.targets import driver_for

    driver = driver_for(target.desired.target)
    return driver.apply(host_plan, target, project, options, secrets, say)


def apply_docker_host(
    host_plan: HostPlan,
    target: Target,
    project: str,
    options: Options,
    secrets: dict[str, Secrets],
    say: Report,
) -> HostResult:
    """The compose driver's apply: lock the engine, check the plan is current, run it."""
    from compiler.apply import lock as host_lock
    from compiler.observe.docker import describe, observe_engine
    from compiler.observe.engine import Engine, EngineError, HostUnreachable

    host = host_plan.host
    try:
        engine = Engine(target.base_url)
    except FleetformError as error:
        return HostResult(host, "failed", error=error.message)
    result = HostResult(host, "converged")
    in_steps = False  # an engine or transport error then names the step under way
    left: str | None = None  # why the lock could not be released after a failure
    try:
        lock_id = host_lock.acquire(engine, host, project, options.label_prefix)
        try:
            names = [spec.name for spec in target.desired.specs]
            seen = observe_engine(engine, host, project, options.label_prefix, names)
            if seen.fingerprint() != host_plan.observed:
                fresh = plan_host(target.desired, seen, options.label_prefix)
                raise FleetformError(
                    "the host changed since the plan was made (stale plan): plan again"
                    + (f" ({len(fresh.steps)} steps now)" if fresh.error is None else "")
                )
            executor = DockerExecutor(engine, options, lambda m: say(host, m))
            specs = {spec.name: spec for spec in target.desired.specs}
            in_steps = True
            run_steps(executor, host_plan.steps, specs, secrets, result.done)
            in_steps = False
        except BaseException:
            # What failed is the error; a release that fails after it (an engine that
            # went away) is said beside it, never swallowed: the lock stays behind.
            left = _release_after_failure(lambda: host_lock.release(engine, lock_id))
            raise
        host_lock.release(engine, lock_id)
    except StepFailed as error:
        result.status, result.error = "failed", f"{_current(host_plan, result)}: {error.message}"
    except (EngineError, HostUnreachable) as error:  # this host's failure, in that step
        where = _where(in_steps, host_plan, result)
        result.status, result.error = "failed", where + error.message
    except FleetformError as error:
        result.status, result.error = "failed", error.message
    except Exception as error:  # a bug's, or the transport's: this host's failure
        where = _where(in_steps, host_plan, result)
        result.status, result.error = "failed", where + describe(error)
    finally:
        engine.close()
    return _with_lock_left(result, left)


def apply_systemd_host(
    host_plan: HostPlan,
    target: Target,
    project: str,
    options: Options,
    secrets: dict[str, Secrets],
    say: Report,
) -> HostResult:
    from compiler.apply import lock as docker_lock
    from compiler.apply import systemd
    from compiler.observe.systemd import observe_systemd_host
    from compiler.plan_systemd import plan_systemd_host
    from compiler.transport import shell_for

    host = host_plan.host
    desired = target.desired
    result = HostResult(host, "converged")
    left: str | None = None  # why the lock could not be released after a failure
    shell = shell_for(target.ssh)
    try:
        systemd.acquire(shell, host, project, docker_lock.owner())
        try:
            units = desired.units or {}
            seen = observe_systemd_host(
                shell, host, project, desired.unit_dir, units, label_prefix=options.label_prefix
            )
            if seen.fingerprint() != host_plan.observed:
                fresh = plan_systemd_host(desired, seen, project)
                raise FleetformError(
                    "the host changed since the plan was made (stale plan): plan again"
                    + (f" ({len(fresh.steps)} steps now)" if fresh.error is None else "")
                )
            executor = systemd.SystemdExecutor(
                shell, project, desired.unit_dir, options, lambda m: say(host, m)
            )
            executor.run(
                host_plan,
                units,
                {f"{spec.name}.service": spec for spec in desired.specs},
                {unit.name: unit for unit in seen.units},
                {f"{name}.service": s.env for name, s in secrets.items()},
                result.done,
            )
        except BaseException:
            # What failed is the error; a release that fails after it (a host that went
            # away) is said beside it, never swallowed: the lock stays behind.
            left = _release_after_failure(lambda: systemd.release(shell, project))
            raise
        systemd.release(shell, project)
    except StepFailed as error:
        result.status, result.error = "failed", f"{_current(host_plan, result)}: {error.message}"
    except FleetformError as error:
        result.status, result.error = "failed", error.message
    finally:
        shell.close()
    return _with_lock_left(result, left)


def _release_after_failure(release: Callable[[], None]) -> str | None:
    """Release a host's lock after a failure; why it could not be, or None."""
    try:
        release()
    except FleetformError as error:
        return error.message
    except Exception as error:
        return " ".join((str(error) or type(error).__name__).split())[:400]
    return None


def _with_lock_left(result: HostResult, left: str | None) -> HostResult:
    if left is not None and result.error is not None:
        result.error += (
            f"; its apply lock was not released ({left}): once the host is back,"
            f" `fleetform unlock {result.host}` removes it"
        )
    return result


def _current(host_plan: HostPlan, result: HostResult) -> str:
    step = host_plan.steps[len(result.done)]  # the steps done are always the plan's first N
    return f"{step.action} {step.name}"


def _where(in_steps: bool, host_plan: HostPlan, result: HostResult) -> str:
    return f"{_current(host_plan, result)}: " if in_steps else ""


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
