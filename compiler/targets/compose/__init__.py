"""The compose driver: a Docker host, reached through its Engine API (unix://, ssh://,
tcp://), whose replicas are containers fleetform creates itself (``output/<host>/
compose.yaml`` is the same fleet for ``docker compose``)."""

from __future__ import annotations

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


class ComposeDriver:
    kind = "compose"
    fetches_models = True
    schedules_itself = False
    host_fields: tuple[str, ...] = MACHINE_FIELDS
    required_host_fields: tuple[str, ...] = ("address",)

    def render(self, host: ResolvedHost, fleet: Fleet) -> dict[str, str]:
        from compiler.render.compose import render_compose

        return {"compose.yaml": render_compose(host, fleet.on_host(host.name), fleet.settings)}

    def artifact_path(self, workload: Workload, settings: Settings) -> str:
        return "compose.yaml"

    def is_artifact_path(self, path: str) -> bool:
        return path == "compose.yaml"

    def compared_file(
        self, workload: Workload, settings: Settings, files: Mapping[str, bytes]
    ) -> tuple[str, str] | None:
        return None  # the container's fields are compared, not a file

    def secrets_hash(self, spec: ContainerSpec, values: dict[str, str]) -> str:
        from compiler.plan import secret_hash

        return secret_hash(spec, values)

    def observe(
        self, target: Target, settings: Settings, early: Connections | None
    ) -> ObservedHost:
        from compiler.targets.compose.observe import observe_docker_host

        desired = target.desired
        names = [spec.name for spec in desired.specs]
        engine = early.take(target.base_url) if early else None
        return observe_docker_host(
            desired.host, target.base_url, settings.project, settings.label_prefix, names, engine
        )

    def plan(
        self, desired: DesiredHost, observed: ObservedHost, project: str, prefix: str
    ) -> HostPlan:
        from compiler.targets.compose.plan import plan_host

        return plan_host(desired, observed, prefix)

    def apply(
        self,
        host_plan: HostPlan,
        target: Target,
        project: str,
        options: Options,
        secrets: dict[str, Secrets],
        say: Callable[[str, str], None],
    ) -> HostResult:
        from compiler.targets.compose.apply import apply_host

        return apply_host(host_plan, target, project, options, secrets, say)

    def unlock(self, target: Target, project: str) -> bool:
        from compiler.remote.engine import Engine
        from compiler.targets.compose import lock

        engine = Engine(target.base_url)
        try:
            return lock.break_lock(engine, project)
        finally:
            engine.close()

    def spec_name(self, step_name: str) -> str:
        return step_name
