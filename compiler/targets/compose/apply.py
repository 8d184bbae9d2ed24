"""Carry out one Docker host's steps through the Engine API. No decisions here: each
step does what the plan says, and only that.

Replacing a container (update): the old one is stopped (releasing its GPUs and port)
and renamed aside, the new one created and started; if it does not start, exits at
once, or (``--wait``) fails its health check, it is removed and the old one renamed
back and started again, and the step fails. An interrupted apply leaves at most a
stopped ``<name>--fleetform-previous`` container, which the next plan deletes.

A new container (create) is ``launch``-ed and later ``settle``-d: ``run_steps`` starts a
row of them, then watches them together.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from compiler.apply import (
    NO_SECRETS,
    HostResult,
    Options,
    Progress,
    Report,
    Secrets,
    StepFailed,
    Target,
    current_step,
    release_after_failure,
    step_prefix,
    wait_healthy,
    with_lock_left,
)
from compiler.errors import FleetformError, describe
from compiler.hub import HubModel
from compiler.labels import HOLDS, SECRET_HASH, SECRET_VARS, label
from compiler.plan import HostPlan, Step
from compiler.remote.engine import Engine, EngineError, HostUnreachable, demultiplex
from compiler.render.container import ContainerSpec
from compiler.targets.compose import lock as host_lock
from compiler.targets.compose.fetch import fetch_model
from compiler.targets.compose.fields import Wanted, create_request
from compiler.targets.compose.observe import observe_engine
from compiler.targets.compose.plan import PREVIOUS_SUFFIX, plan_host

# A container that has not exited within this long after start counts as started.
SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class Started:
    """A new container, started at ``at`` (monotonic) and not yet settled."""

    spec: ContainerSpec
    container: str
    at: float


PULL_IDLE_SECONDS = 600  # a pull may say nothing for this long (a big layer unpacking)


class DockerExecutor:
    """Executes steps on one engine through its Engine API."""

    def __init__(
        self, engine: Engine, options: Options, progress: Progress, project: str = ""
    ) -> None:
        self.engine = engine
        self.options = options
        self.progress = progress
        self.project = project
        self._images: set[str] = set()  # on the engine already: asked once per apply

    def run(self, step: Step, spec: ContainerSpec | None, secrets: Secrets) -> None:
        if step.action == "fetch":
            raise AssertionError("fetch steps are run by fetch_model")  # see run_steps
        if step.action == "delete":
            self.remove(step.current)
            return
        assert spec is not None
        if step.action == "start":
            if self._inspect(step.current)["State"].get("Paused"):
                self._post(step.current, "unpause")  # the engine refuses to start a paused one
            else:
                self._post(step.current, "start")
            self._check_started(spec, step.current, time.monotonic())
            return
        stopped = self._stop_first(step)
        try:
            if step.action == "create":
                self._create_step(step, spec, secrets)
            else:
                self._replace(step, spec, secrets)
        except StepFailed as error:
            for name in stopped:
                self._post(name, "start")
            if stopped:
                raise StepFailed(f"{error.message}; started {', '.join(stopped)} again") from None
            raise

    def _stop_first(self, step: Step) -> list[str]:
        """Stop the old containers this step's new one needs the port or GPUs of (a swap:
        their own updates come later); returns those that were running."""
        stopped = []
        for name in step.frees:
            if self._running(name):
                self._stop(name)
                stopped.append(name)
                self.progress(f"stopped {name} first: it holds what {step.name} needs")
        return stopped

    # --- the actions ---------------------------------------------------------------

    def _create_step(self, step: Step, spec: ContainerSpec, secrets: Secrets) -> None:
        squatter_running = False
        aside = ""
        if step.displace:
            squatter_running = self._running(step.displace)
            aside = f"{spec.name}--displaced-{step.displace[:12]}"
            self._stop(step.displace)
            self._rename(step.displace, aside)
            self.progress(f"moved the foreign container {step.displace[:12]} aside as {aside}")
        try:
            self._start_new(spec, secrets)
        except StepFailed:
            if step.displace:
                self._rename(step.displace, spec.name)
                if squatter_running:
                    self._post(step.displace, "start")
            raise

    def _replace(self, step: Step, spec: ContainerSpec, secrets: Secrets) -> None:
        old = step.current
        was_running = self._running(old)
        self._stop(old)  # frees its GPUs and port before the new one starts
        aside = spec.name + PREVIOUS_SUFFIX
        self._rename(old, aside)
        try:
            self._start_new(spec, secrets)
        except StepFailed as error:
            self._rename(old, spec.name)
            if was_running:
                self._post(old, "start")
            raise StepFailed(f"{error.message}; rolled back to the previous container") from None
        self.remove(old)

    def launch(self, spec: ContainerSpec, secrets: Secrets) -> Started:
        """Create and start a new container; ``settle`` then watches it.

        Several new containers of a host are launched one after another and settled
        together, so a first deploy waits SETTLE_SECONDS once, not once per container.
        """
        self.ensure_image(spec.image)
        created = self._create(spec, secrets)
        try:
            self._post(created, "start")
        except EngineError as error:
            self.remove(created)
            raise StepFailed(f"container did not start: {error.message}") from None
        return Started(spec, created, time.monotonic())

    def settle(self, started: Started) -> None:
        """Fail (and remove it) unless the container stays up SETTLE_SECONDS after its start."""
        try:
            self._check_started(started.spec, started.container, started.at, new=True)
        except StepFailed:
            self.remove(started.container)
            raise

    def discard(self, started: Started) -> None:
        """Remove a launched container whose step is not to be done after all."""
        with contextlib.suppress(FleetformError):
            self.remove(started.container)

    def _start_new(self, spec: ContainerSpec, secrets: Secrets) -> None:
        self.settle(self.launch(spec, secrets))

    def _check_started(
        self, spec: ContainerSpec, container: str, since: float, *, new: bool = False
    ) -> None:
        deadline = since + SETTLE_SECONDS
        while True:
            details = self._inspect(container)
            state = details["State"]
            # A new container restarted by its policy has exited, however it looks now.
            restarted = new and details.get("RestartCount", 0) > 0
            if (
                state.get("Status") not in ("running", "restarting")
                or state.get("Restarting")
                or restarted
            ):
                raw = self.engine.read(f"/containers/{container}/logs", stdout=1, stderr=1, tail=5)
                logs = demultiplex(raw).decode("utf-8", "replace").strip()
                tail = f": {' | '.join(logs.splitlines()[-3:])}" if logs else ""
                how = (
                    f"restarted {details['RestartCount']}× by its restart policy"
                    if restarted and state.get("Running")
                    else f"exit code {state.get('ExitCode')}"
                )
                raise StepFailed(f"container exited at once ({how}){tail}")
            now = time.monotonic()
            if now >= deadline:
                break
            time.sleep(min(0.2, deadline - now))  # the last look at the deadline itself
        if self.options.wait and spec.health_check_path:
            self._wait_healthy(spec, container)

    def _wait_healthy(self, spec: ContainerSpec, container: str) -> None:
        def running() -> bool:
            return bool(self._inspect(container)["State"].get("Status") == "running")

        wait_healthy(spec, running, self.progress)

    # --- engine calls ----------------------------------------------------------------

    def ensure_image(self, image: str) -> None:
        if image in self._images:
            return
        try:
            self.engine.get(f"/images/{image}/json")
            self._images.add(image)
            return
        except EngineError as error:
            if error.status != 404:
                raise
        self.progress(f"pulling {image}")
        name, tag = split_reference(image)
        headers = registry_auth(name)
        try:
            shown = 0.0
            for event in self.engine.stream(
                "/images/create", fromImage=name, tag=tag, timeout=PULL_IDLE_SECONDS,
                headers=headers,
            ):  # fmt: skip
                if "error" in event:
                    raise StepFailed(f"cannot pull {image}: {event['error']}")
                now = time.monotonic()
                if now - shown > 5 and event.get("progress"):
                    self.progress(f"pulling {image}: {event.get('status', '')} {event['progress']}")
                    shown = now
        except FleetformError as error:
            if isinstance(error, StepFailed):
                raise
            raise StepFailed(f"cannot pull {image}: {error.message}") from None
        self._images.add(image)

    def _create(self, spec: ContainerSpec, secrets: Secrets) -> str:
        env = {**spec.env, **secrets.env}
        labels = dict(spec.labels)
        if spec.holds:  # what the next plan orders by (``compiler.targets.compose.plan.holds``)
            labels[label(self.options.label_prefix, HOLDS)] = ",".join(spec.holds)
        if secrets.env:
            labels[label(self.options.label_prefix, SECRET_HASH)] = secrets.hash
            # Which variables hold secrets: a later plan masks them, whatever the spec.
            labels[label(self.options.label_prefix, SECRET_VARS)] = ",".join(sorted(secrets.env))
        try:
            created = self.engine.post(
                "/containers/create", create_request(Wanted(spec, env, labels)), name=spec.name
            )
        except EngineError as error:
            raise StepFailed(f"cannot create the container: {error.message}") from None
        return str(created["Id"])

    def _inspect(self, container: str) -> dict[str, Any]:
        details: dict[str, Any] = self.engine.get(f"/containers/{container}/json")
        return details

    def _post(self, container: str, action: str, **query: Any) -> None:
        self.engine.post(f"/containers/{container}/{action}", **query)

    def _rename(self, container: str, name: str) -> None:
        self._post(container, "rename", name=name)

    def _running(self, container: str) -> bool:
        return bool(self._inspect(container)["State"].get("Running"))

    def _stop(self, container: str) -> None:
        """Stop with the grace time the container was made with (its deployment's
        stop_timeout, Config.StopTimeout), else ``apply --stop-timeout``. The engine
        answers once the container stopped: up to the grace time, then a kill."""
        own = (self._inspect(container).get("Config") or {}).get("StopTimeout")
        seconds = own if isinstance(own, int) and own >= 0 else self.options.stop_timeout
        self.engine.post(
            f"/containers/{container}/stop", t=seconds, timeout=seconds + self.engine.timeout
        )

    def remove(self, container: str) -> None:
        try:
            self.engine.delete(f"/containers/{container}", force=1)
        except EngineError as error:
            if error.status != 404:
                raise


def run_steps(
    executor: DockerExecutor,
    steps: Sequence[Step],
    specs: dict[str, ContainerSpec],
    secrets: dict[str, Secrets],
    done: list[Step],
    models: dict[str, HubModel] | None = None,
) -> None:
    """Carry out ``steps`` in order, adding each to ``done`` once it is done.

    New containers in a row (create steps that displace and free nothing) are launched
    one after another, then settled together, so a first deploy waits SETTLE_SECONDS
    once. When one of them fails, those launched after it are removed again: ``done``
    is always the plan's first N steps, and the step that failed is the next one.
    """
    total = len(steps)
    say = executor.progress
    launched: list[tuple[int, Step, Started, float]] = []

    def finish(number: int, step: Step, began: float) -> None:
        done.append(step)
        seconds = time.monotonic() - began
        say(f"[{number}/{total}] {step.action} {step.name}: done ({seconds:.1f} s)")

    def settle() -> None:
        while launched:
            number, step, started, began = launched.pop(0)
            try:
                executor.settle(started)
            except BaseException:
                for *_, later, _ in launched:
                    executor.discard(later)
                launched.clear()
                raise
            finish(number, step, began)

    for number, step in enumerate(steps, 1):
        say(f"[{number}/{total}] {step.action} {step.name} ...")
        began = time.monotonic()
        spec = specs.get(step.name) if step.action != "delete" else None
        secret = secrets.get(step.name, NO_SECRETS)
        if step.action == "create" and not (step.displace or step.frees) and spec is not None:
            try:
                launched.append((number, step, executor.launch(spec, secret), began))
            except BaseException:
                settle()  # the ones before it, so that `done` stays in order
                raise
            continue
        settle()
        if step.action == "fetch":
            model = (models or {})[step.model_key]
            fetch_model(executor, model, executor.project, step.current)
        else:
            executor.run(step, spec, secret)
        finish(number, step, began)
    settle()


def registry_auth(name: str) -> dict[str, str]:
    """The X-Registry-Auth header for pulling ``name``, from the credentials the docker CLI
    would use: ``$DOCKER_CONFIG/config.json`` (else ``~/.docker/config.json``): its
    ``auths``, ``credsStore`` and ``credHelpers`` (a ``docker-credential-*`` helper), read
    by the docker SDK's own auth and credentials modules. No credentials: no header (an
    anonymous pull). The values never leave this header: an error names the registry."""
    from docker import auth, errors

    registry, _ = auth.resolve_repository_name(name)
    try:
        found = auth.resolve_authconfig(auth.load_config(), registry)
    except (errors.DockerException, OSError, ValueError, RuntimeError) as error:
        kind = type(error).__name__
        raise StepFailed(
            f"cannot read the credentials for {registry} (docker's config.json): {kind}"
        ) from None
    if not found:
        return {}
    return {"X-Registry-Auth": auth.encode_header(found).decode("ascii")}


def split_reference(image: str) -> tuple[str, str]:
    """``name[:tag][@digest]`` as the pull API takes it: a name and a tag or digest.

    Without either, ``latest`` (as docker pulls): an empty tag would pull every tag."""
    name, at, digest = image.partition("@")
    if at:
        return name, digest
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, "latest"


def apply_host(
    host_plan: HostPlan,
    target: Target,
    project: str,
    options: Options,
    secrets: dict[str, Secrets],
    say: Report,
) -> HostResult:
    """The compose driver's apply: lock the engine, check the plan is current, run it."""
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
            executor = DockerExecutor(engine, options, lambda m: say(host, m), project)
            specs = {spec.name: spec for spec in target.desired.specs}
            models = {model.key: model for model in target.desired.models}
            in_steps = True
            run_steps(executor, host_plan.steps, specs, secrets, result.done, models)
            in_steps = False
        except BaseException:
            # What failed is the error; a release that fails after it (an engine that
            # went away) is said beside it, never swallowed: the lock stays behind.
            left = release_after_failure(lambda: host_lock.release(engine, lock_id))
            raise
        host_lock.release(engine, lock_id)
    except StepFailed as error:
        step = current_step(host_plan, result)
        result.status, result.error = "failed", f"{step}: {error.message}"
    except (EngineError, HostUnreachable) as error:  # this host's failure, in that step
        where = step_prefix(in_steps, host_plan, result)
        result.status, result.error = "failed", where + error.message
    except FleetformError as error:
        result.status, result.error = "failed", error.message
    except Exception as error:  # a bug's, or the transport's: this host's failure
        where = step_prefix(in_steps, host_plan, result)
        result.status, result.error = "failed", where + describe(error)
    finally:
        engine.close()
    return with_lock_left(result, left)
