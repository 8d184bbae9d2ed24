"""The systemd driver: a host reached over SSH (or this machine, in agent mode) whose
replicas are systemd units running ``docker run`` (``output/<host>/systemd/``)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from compiler.model import MACHINE_FIELDS

if TYPE_CHECKING:
    from compiler.apply import HostResult, Options, Secrets, Target
    from compiler.model import Settings
    from compiler.observed import ObservedHost
    from compiler.plan import DesiredHost, HostPlan
    from compiler.remote.connections import Connections
    from compiler.render.container import ContainerSpec
    from compiler.resolve import Fleet, ResolvedHost, Workload

UNIT_SUFFIX = ".service"
_UNIT_PATH = re.compile(r"systemd/[A-Za-z0-9@_.:-]{1,200}\.service", re.ASCII)


class SystemdDriver:
    kind = "systemd"
    fetches_models = True  # through the host's docker, as on a compose host
    schedules_itself = False
    host_fields: tuple[str, ...] = MACHINE_FIELDS
    required_host_fields: tuple[str, ...] = ("address",)

    def render(self, host: ResolvedHost, fleet: Fleet) -> dict[str, str]:
        from compiler.render.systemd import render_unit

        settings = fleet.settings
        return {
            self.artifact_path(workload, settings): render_unit(workload, settings)
            for workload in fleet.on_host(host.name)
        }

    def artifact_path(self, workload: Workload, settings: Settings) -> str:
        from compiler.render.systemd import unit_name

        return f"systemd/{unit_name(workload, settings)}"

    def is_artifact_path(self, path: str) -> bool:
        return _UNIT_PATH.fullmatch(path) is not None

    def compared_file(
        self, workload: Workload, settings: Settings, files: Mapping[str, bytes]
    ) -> tuple[str, str] | None:
        from compiler.render.systemd import unit_name

        name = unit_name(workload, settings)
        text = files.get(f"{workload.host}/systemd/{name}")
        return None if text is None else (name, text.decode())

    def secrets_hash(self, spec: ContainerSpec, values: dict[str, str]) -> str:
        """The sha256 of the unit's env file, as the host has it."""
        from compiler.targets.systemd.apply import env_file_text

        text = env_file_text({var: values[secret] for var, secret in spec.secrets.items()})
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def observe(
        self, target: Target, settings: Settings, early: Connections | None
    ) -> ObservedHost:
        from compiler.remote.ssh import shell_for
        from compiler.targets.systemd.observe import observe_systemd_host

        desired = target.desired
        shell = shell_for(target.ssh)
        try:
            return observe_systemd_host(
                shell,
                desired.host,
                settings.project,
                desired.unit_dir,
                desired.units or {},
                label_prefix=settings.label_prefix,
                models=bool(desired.models),
            )
        finally:
            shell.close()

    def plan(
        self, desired: DesiredHost, observed: ObservedHost, project: str, prefix: str
    ) -> HostPlan:
        from compiler.targets.systemd.plan import plan_systemd_host

        return plan_systemd_host(desired, observed, project)

    def apply(
        self,
        host_plan: HostPlan,
        target: Target,
        project: str,
        options: Options,
        secrets: dict[str, Secrets],
        say: Callable[[str, str], None],
    ) -> HostResult:
        from compiler.targets.systemd.apply import apply_host

        return apply_host(host_plan, target, project, options, secrets, say)

    def unlock(self, target: Target, project: str) -> bool:
        from compiler.remote.ssh import shell_for
        from compiler.targets.systemd import lock

        shell = shell_for(target.ssh)
        try:
            return lock.break_lock(shell, project)
        finally:
            shell.close()

    def spec_name(self, step_name: str) -> str:
        return step_name.removesuffix(UNIT_SUFFIX)
