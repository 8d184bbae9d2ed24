"""Carry out one systemd host's steps over its shell (SSH or this machine).

Order: the host lock (a directory on the host, created atomically); deleted units
stopped, disabled and removed (freeing their GPUs and ports); every new or changed
unit file (and secrets env file, mode 0600) written atomically; one
``daemon-reload``; then, one unit at a time, ``enable --now`` (create), ``restart``
(update) or ``reset-failed`` + ``restart`` (start), each checked: the unit must stay
active with its container running (and, with ``--wait``, answer its health check),
else its previous file is put back and restarted (an update) or it is removed again
(a create), and the step fails.
"""

from __future__ import annotations

import posixpath
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass

from compiler.apply.docker import Options, StepFailed
from compiler.errors import FleetformError
from compiler.observe import ObservedUnit
from compiler.observe.systemd import env_file
from compiler.plan import HostPlan, Step
from compiler.render.container import ContainerSpec
from compiler.transport import Shell, check

SETTLE_SECONDS = 2.0
Say = Callable[[str], None]


class HostLocked(FleetformError):
    """Another apply holds the host's lock."""


def lock_dir(project: str) -> str:
    return f"/run/lock/fleetform-{project}.lock"


def acquire(shell: Shell, host: str, project: str, owner: str) -> None:
    path = lock_dir(project)
    made = shell.run(["mkdir", path])
    if made.code != 0:
        held = shell.run(["cat", f"{path}/owner"])
        if held.code == 0:
            owner_line, _, since = held.text.strip().rpartition(" since ")
            age = int(time.time() - float(since)) if since.isdigit() else 0
            raise HostLocked(
                f"host '{host}' is locked by {owner_line or 'unknown'} ({age // 60} min"
                f" {age % 60} s ago); if that apply is gone, `fleetform unlock {host}`"
                " breaks the lock"
            )
        raise HostLocked(f"cannot lock host '{host}': {made.error}")
    _write(shell, f"{path}/owner", f"{owner} since {time.time():.0f}\n".encode(), "0644")


def release(shell: Shell, project: str) -> None:
    shell.run(["rm", "-rf", "--", lock_dir(project)])


def break_lock(shell: Shell, project: str) -> bool:
    found = shell.run(["test", "-d", lock_dir(project)]).code == 0
    release(shell, project)
    return found


def env_file_text(values: dict[str, str]) -> str:
    """``VAR="value"`` lines as systemd's EnvironmentFile= reads them back exactly."""
    lines = []
    for key, value in sorted(values.items()):
        escaped = (
            value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("$", "\\$")
        )
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
        for step in steps:
            if step.action == "delete":
                self._delete(step.name, observed.get(step.name))
                done.append(step)
                self.say(f"delete {step.name}: done")
        writes = [s for s in steps if s.action in ("create", "update")]
        for step in writes:
            self._write_unit(step.name, units[step.name], secret_env.get(step.name))
            unit = observed.get(step.name)
            for path, _ in unit.drop_ins if unit else ():
                check(self.shell.run(["rm", "-f", "--", path]), f"removing {path}")
        if writes or any(s.action == "delete" for s in steps):
            check(self.shell.run(["systemctl", "daemon-reload"]), "systemctl daemon-reload")
        total = len(steps)
        for number, step in enumerate(steps, 1):
            if step.action == "delete":
                continue
            self.say(f"[{number}/{total}] {step.action} {step.name} ...")
            began = time.monotonic()
            try:
                self._activate(step)
                self._check_started(step.name, specs[step.name])
            except StepFailed as error:
                self._undo(step, observed.get(step.name))
                undone = {
                    "update": "rolled back to the previous unit",
                    "create": "the new unit was stopped and removed",
                }.get(step.action, "the unit was stopped")
                raise StepFailed(f"{error.message}; {undone}") from None
            done.append(step)
            self.say(
                f"[{number}/{total}] {step.action} {step.name}: done"
                f" ({time.monotonic() - began:.1f} s)"
            )

    # --- steps ---------------------------------------------------------------------

    def _activate(self, step: Step) -> None:
        name = step.name
        if step.action == "create":
            check(self.shell.run(["systemctl", "enable", "--now", name]), f"enable --now {name}")
            return
        check(self.shell.run(["systemctl", "enable", name]), f"enable {name}")
        self.shell.run(["systemctl", "reset-failed", name])
        check(self.shell.run(["systemctl", "restart", name]), f"restart {name}")

    def _check_started(self, name: str, spec: ContainerSpec) -> None:
        before = self._restarts(name)
        time.sleep(SETTLE_SECONDS)
        state = self._show(name)
        if state.get("ActiveState") != "active" or self._restarts(name) != before:
            log = self.shell.run(["journalctl", "-u", name, "-n", "3", "--no-pager", "-o", "cat"])
            tail = " | ".join(log.text.strip().splitlines()[-3:])
            raise StepFailed(
                f"{name} did not stay active ({state.get('ActiveState')}/"
                f"{state.get('SubState')}, exit status {state.get('ExecMainStatus')})"
                + (f": {tail}" if tail else "")
            )
        if self.options.wait and spec.health_check_path:
            from compiler.apply.docker import wait_healthy

            wait_healthy(spec, lambda: self._show(name).get("ActiveState") == "active", self.say)

    def _undo(self, step: Step, previous: ObservedUnit | None) -> None:
        name = step.name
        if step.action == "update" and previous is not None:
            self._write_unit(name, previous.text, None)
            self.shell.run(["systemctl", "daemon-reload"])
            self.shell.run(["systemctl", "restart", name])
        elif step.action == "create":
            self._delete(name, None)
            self.shell.run(["systemctl", "daemon-reload"])
        else:
            self.shell.run(["systemctl", "stop", name])

    def _delete(self, name: str, unit: ObservedUnit | None) -> None:
        self.shell.run(["systemctl", "disable", "--now", name])
        path = unit.path if unit else posixpath.join(self.unit_dir, name)
        env = env_file(self.project, name)
        check(
            self.shell.run(["rm", "-rf", "--", path, f"{path}.d", env]),
            f"removing {path}",
        )

    def _write_unit(self, name: str, text: str, secrets: dict[str, str] | None) -> None:
        _write(self.shell, posixpath.join(self.unit_dir, name), text.encode(), "0644")
        if secrets:
            _write(
                self.shell, env_file(self.project, name), env_file_text(secrets).encode(), "0600"
            )

    def _show(self, name: str) -> dict[str, str]:
        result = self.shell.run(
            ["systemctl", "show", "-p", "ActiveState,SubState,NRestarts,ExecMainStatus", name]
        )
        return dict(line.partition("=")[::2] for line in result.text.splitlines())

    def _restarts(self, name: str) -> str:
        return self._show(name).get("NRestarts", "0")


def _write(shell: Shell, path: str, content: bytes, mode: str) -> None:
    """``content`` to ``path`` atomically: a temporary file beside it, then a rename."""
    temp = f"{path}.fleetform-tmp"
    check(
        shell.run(["install", "-D", "-m", mode, "/dev/stdin", temp], data=content),
        f"writing {shlex.quote(path)}",
    )
    check(shell.run(["mv", "-f", "--", temp, path]), f"writing {shlex.quote(path)}")
