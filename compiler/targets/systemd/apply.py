"""Carry out one systemd host's steps over its shell (SSH or this machine).

Order: the host lock (a directory on the host, created atomically); deleted units
stopped, disabled and removed (freeing their GPUs and ports); every new or changed
unit file (and secrets env file, mode 0600) written atomically; one
``daemon-reload``; then, one unit at a time, ``enable`` + ``reset-failed`` +
``restart`` (create, update, start alike), each checked: the unit must stay active
with its container running (and, with ``--wait``, answer its health check), else its
previous file is put back and restarted (an update) or it is removed again (a
create), the files of the steps not yet carried out are put back as they were, and
the step fails.
"""

from __future__ import annotations

import json
import posixpath
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from compiler.apply import (
    HostResult,
    Options,
    Report,
    Secrets,
    StepFailed,
    Target,
    current_step,
    owner,
    release_after_failure,
    wait_healthy,
    with_lock_left,
)
from compiler.errors import FleetformError
from compiler.observed import ObservedUnit
from compiler.plan import HostPlan, Step
from compiler.remote.ssh import Shell, check, shell_for, write_file
from compiler.render.container import ContainerSpec
from compiler.targets.compose.fetch import fetch_on_host
from compiler.targets.systemd import lock as host_lock
from compiler.targets.systemd.observe import env_file, observe_systemd_host
from compiler.targets.systemd.plan import plan_systemd_host

SETTLE_SECONDS = 2.0
START_TIMEOUT = 1800.0  # the units' TimeoutStartSec=: docker run may be pulling
Say = Callable[[str], None]


def env_file_text(values: dict[str, str]) -> str:
    """``VAR="value"`` lines as systemd's EnvironmentFile= reads them back exactly.

    Inside double quotes systemd unescapes only ``\\"``, ``\\\\``, ``\\$`` and ``\\```
    (any other backslash stays, so ``\\n`` would be a backslash and an n) and keeps a
    raw newline: a newline is written as it is."""
    lines = []
    for key, value in sorted(values.items()):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
        lines.append(f'{key}="{escaped}"')
    return "\n".join(lines) + "\n"


@dataclass
class SystemdExecutor:
    shell: Shell
    project: str
    unit_dir: str
    options: Options
    say: Say

    def run(
        self,
        host_plan: HostPlan,
        units: dict[str, str],
        specs: dict[str, ContainerSpec],
        observed: dict[str, ObservedUnit],
        secret_env: dict[str, dict[str, str]],
        done: list[Step],
    ) -> None:
        steps = host_plan.steps
        total = len(steps)
        for number, step in enumerate(steps, 1):
            if step.action == "delete":
                # The same progress lines as every other step (and a Docker host's).
                self.say(f"[{number}/{total}] delete {step.name} ...")
                began = time.monotonic()
                self._delete(step.name, observed.get(step.name))
                done.append(step)
                self.say(
                    f"[{number}/{total}] delete {step.name}: done"
                    f" ({time.monotonic() - began:.1f} s)"
                )
        writes = [s for s in steps if s.action in ("create", "update")]
        for step in writes:
            self._write_unit(step.name, units[step.name])
            unit = observed.get(step.name)
            for path, _ in unit.drop_ins if unit else ():
                check(self.shell.run(["rm", "-f", "--", path]), f"removing {path}")
        if writes or any(s.action == "delete" for s in steps):
            check(self.shell.run(["systemctl", "daemon-reload"]), "systemctl daemon-reload")
        for number, step in enumerate(steps, 1):
            if step.action == "delete":
                continue
            self.say(f"[{number}/{total}] {step.action} {step.name} ...")
            began = time.monotonic()
            # A unit's secrets are written right before it restarts (an env file needs
            # no daemon-reload): the units not restarted keep the values they run with.
            secrets = secret_env.get(step.name) if step in writes else None
            try:
                if secrets:
                    self._write_secrets(step.name, secrets)
                self._activate(step)
                self._check_started(step.name, specs[step.name])
            except StepFailed as error:
                undone = {
                    "update": "rolled back to the previous unit",
                    "create": "the new unit was stopped and removed",
                }.get(step.action, "the unit was stopped")
                # The files of the steps not carried out go back too: else they would
                # wait on disk, unstarted, for the next reboot (or restart).
                later = [s for s in writes if s not in done and s is not step]
                try:
                    self._undo(step, observed.get(step.name), bool(secrets))
                    self._unwrite(later, observed)
                except FleetformError as undo_error:
                    undone = f"rolling back failed too: {undo_error.message}"
                raise StepFailed(f"{error.message}; {undone}") from None
            if secrets:
                self.shell.run(["rm", "-f", "--", _previous(env_file(self.project, step.name))])
            elif step in writes and (unit := observed.get(step.name)) and unit.env_hash:
                # Its secrets are gone from the repository: so are their values, from disk.
                env = env_file(self.project, step.name)
                check(self.shell.run(["rm", "-f", "--", env, _previous(env)]), f"removing {env}")
            done.append(step)
            self.say(
                f"[{number}/{total}] {step.action} {step.name}: done"
                f" ({time.monotonic() - began:.1f} s)"
            )

    # --- steps ---------------------------------------------------------------------

    def _activate(self, step: Step) -> None:
        # A restart, never a start (`enable --now`), for a create too: a unit whose file
        # was deleted while it ran is still active, running the old definition, and a
        # start would leave that running under the new file. A command that fails here
        # (say, its EnvironmentFile= or ExecStartPre= fails) fails the step: rolled back.
        name = step.name
        for verb in ("enable", "reset-failed", "restart"):
            result = self.shell.run(["systemctl", verb, name])
            if result.code != 0 and verb != "reset-failed":
                raise StepFailed(
                    f"systemctl {verb} {name} failed (exit {result.code}): {result.error}"
                    + self._log_tail(name)
                )

    def _check_started(self, name: str, spec: ContainerSpec) -> None:
        """The unit stays active (no restart) for the settle time, and its container
        runs (docker run may still be pulling the image: waited for, as long as the
        unit's own start timeout)."""
        before = self._show(name).get("NRestarts", "0")
        time.sleep(SETTLE_SECONDS)
        deadline = time.monotonic() + START_TIMEOUT
        waiting = False
        while True:
            state = self._show(name)
            if state.get("ActiveState") != "active" or state.get("NRestarts", "0") != before:
                raise StepFailed(
                    f"{name} did not stay active ({state.get('ActiveState')}/"
                    f"{state.get('SubState')}, exit status {state.get('ExecMainStatus')})"
                    + self._log_tail(name, state.get("ExecMainPID", ""))
                )
            running = self.shell.run(
                ["docker", "inspect", "--type", "container", "-f", "{{.State.Running}}", spec.name]
            )
            if running.text.strip() == "true":
                break
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"{name} is active but its container {spec.name} did not start within"
                    f" {START_TIMEOUT:.0f} s" + self._log_tail(name)
                )
            if not waiting:
                self.say(f"waiting for container {spec.name} (pulling its image?)")
                waiting = True
            time.sleep(1.0)
        if self.options.wait and spec.health_check_path:
            wait_healthy(spec, lambda: self._show(name).get("ActiveState") == "active", self.say)

    def _log_tail(self, name: str, main_pid: str = "") -> str:
        """The last lines the unit logged; with ``main_pid``, only its main process's
        (docker run: its error, or the server's output), not systemd's nor those of
        ExecStartPre= and ExecStop=."""
        log = self.shell.run(["journalctl", "-u", name, "-n", "30", "--no-pager", "-o", "json"])
        said = []
        for line in log.text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message = entry.get("MESSAGE")
            if main_pid not in ("", "0") and entry.get("_PID") != main_pid:
                continue
            if isinstance(message, str) and message.strip():
                said.append(" ".join(message.split()))
        tail = " | ".join(said[-3:])
        return f": {tail}" if tail else ""

    def _undo(self, step: Step, previous: ObservedUnit | None, secrets: bool) -> None:
        name = step.name
        if step.action == "update" and previous is not None:
            self._write_unit(name, previous.text)
            if secrets:
                self._restore_secrets(name)
            check(self.shell.run(["systemctl", "daemon-reload"]), "systemctl daemon-reload")
            check(self.shell.run(["systemctl", "restart", name]), f"restart {name}")
        elif step.action == "create":
            self._delete(name, None)
            check(self.shell.run(["systemctl", "daemon-reload"]), "systemctl daemon-reload")
        else:
            self.shell.run(["systemctl", "stop", name])

    def _unwrite(self, steps: list[Step], observed: dict[str, ObservedUnit]) -> None:
        """Put back the files of written but not activated units (their units still run
        what the previous file said)."""
        for step in steps:
            previous = observed.get(step.name)
            if step.action == "update" and previous is not None:
                self._write_unit(step.name, previous.text)
            elif step.action == "create":
                self._delete(step.name, None)
        if steps:
            check(self.shell.run(["systemctl", "daemon-reload"]), "systemctl daemon-reload")

    def _delete(self, name: str, unit: ObservedUnit | None) -> None:
        self.shell.run(["systemctl", "disable", "--now", name])
        path = unit.path if unit else posixpath.join(self.unit_dir, name)
        env = env_file(self.project, name)
        check(
            self.shell.run(["rm", "-rf", "--", path, f"{path}.d", env, _previous(env)]),
            f"removing {path}",
        )

    def _write_unit(self, name: str, text: str) -> None:
        write_file(self.shell, posixpath.join(self.unit_dir, name), text.encode(), "0644")

    def _write_secrets(self, name: str, secrets: dict[str, str]) -> None:
        """The unit's env file, the previous one kept beside it (on the host, mode
        kept) until the step succeeds, for a rollback to put back."""
        path = env_file(self.project, name)
        check(self.shell.run(["rm", "-f", "--", _previous(path)]), f"writing {path}")
        self.shell.run(["cp", "-p", "--", path, _previous(path)])  # fails when there is none
        write_file(self.shell, path, env_file_text(secrets).encode(), "0600")

    def _restore_secrets(self, name: str) -> None:
        path = env_file(self.project, name)
        if self.shell.run(["test", "-e", _previous(path)]).code == 0:
            check(self.shell.run(["mv", "-f", "--", _previous(path), path]), f"restoring {path}")
        else:
            check(self.shell.run(["rm", "-f", "--", path]), f"restoring {path}")

    def _show(self, name: str) -> dict[str, str]:
        result = self.shell.run(
            [
                "systemctl",
                "show",
                "-p",
                "ActiveState,SubState,NRestarts,ExecMainPID,ExecMainStatus",
                name,
            ]
        )
        return dict(line.partition("=")[::2] for line in result.text.splitlines())


def _previous(path: str) -> str:
    return f"{path}.fleetform-previous"


def apply_host(
    host_plan: HostPlan,
    target: Target,
    project: str,
    options: Options,
    secrets: dict[str, Secrets],
    say: Report,
) -> HostResult:
    host = host_plan.host
    desired = target.desired
    result = HostResult(host, "converged")
    left: str | None = None  # why the lock could not be released after a failure
    shell = shell_for(target.ssh)
    try:
        host_lock.acquire(shell, host, project, owner())
        try:
            units = desired.units or {}
            seen = observe_systemd_host(
                shell,
                host,
                project,
                desired.unit_dir,
                units,
                label_prefix=options.label_prefix,
                models=bool(desired.models),
            )
            if seen.fingerprint() != host_plan.observed:
                fresh = plan_systemd_host(desired, seen, project)
                raise FleetformError(
                    "the host changed since the plan was made (stale plan): plan again"
                    + (f" ({len(fresh.steps)} steps now)" if fresh.error is None else "")
                )
            fetches = [step for step in host_plan.steps if step.action == "fetch"]
            if fetches:  # first in the plan: through the host's docker, as compose hosts
                engine = f"ssh://{target.ssh}" if target.ssh else "unix:///var/run/docker.sock"
                models = {model.key: model for model in desired.models}
                fetch_on_host(engine, fetches, models, project, options, lambda m: say(host, m))
                result.done.extend(fetches)
            executor = SystemdExecutor(
                shell, project, desired.unit_dir, options, lambda m: say(host, m)
            )
            executor.run(
                replace(host_plan, steps=host_plan.steps[len(fetches) :]),
                units,
                {f"{spec.name}.service": spec for spec in desired.specs},
                {unit.name: unit for unit in seen.units},
                {f"{name}.service": s.env for name, s in secrets.items()},
                result.done,
            )
        except BaseException:
            # What failed is the error; a release that fails after it (a host that went
            # away) is said beside it, never swallowed: the lock stays behind.
            left = release_after_failure(lambda: host_lock.release(shell, project))
            raise
        host_lock.release(shell, project)
    except StepFailed as error:
        step = current_step(host_plan, result)
        result.status, result.error = "failed", f"{step}: {error.message}"
    except FleetformError as error:
        result.status, result.error = "failed", error.message
    finally:
        shell.close()
    return with_lock_left(result, left)
