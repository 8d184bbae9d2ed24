"""The gpustack driver: a GPUStack cluster, driven through its server's REST API.

The cluster schedules replicas itself, so it is given whole deployments (see
``compiler/resolve/clusters.py``), not containers. Its artifacts
(``output/<host>/gpustack/``) are what the server is sent: each backend as the YAML
``POST /v2/inference-backends/from-yaml`` takes, each deployment as the model
``POST /v2/models`` takes. Plan compares them with what the server returns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compiler.apply import HostResult, Options, Secrets, Target
    from compiler.model import Settings
    from compiler.observed import ObservedHost
    from compiler.plan import DesiredHost, HostPlan
    from compiler.remote.connections import Connections
    from compiler.render.container import ContainerSpec
    from compiler.resolve import Fleet, ResolvedHost, Workload

_ARTIFACT = re.compile(r"gpustack/(?:backends|models)/[A-Za-z0-9._-]{1,200}\.yaml", re.ASCII)


class GPUStackDriver:
    kind = "gpustack"
    fetches_models = False  # GPUStack's workers download their models themselves
    schedules_itself = True
    host_fields: tuple[str, ...] = ("url", "cluster", "api_key_env", "labels")
    required_host_fields: tuple[str, ...] = ("url", "cluster")

    def render(self, host: ResolvedHost, fleet: Fleet) -> dict[str, str]:
        from compiler.render.yaml_text import dump
        from compiler.targets.gpustack.documents import BACKENDS, MODELS

        state = fleet.clusters.get(host.name)
        if state is None:
            return {}
        files = {
            f"{BACKENDS}{file}.yaml": dump(_set(state.backends[name]))
            for name, file in file_names(state.backends).items()
        }
        files.update(
            (f"{MODELS}{deployment}.yaml", dump(_set(document)))
            for deployment, document in state.models.items()
        )
        return dict(sorted(files.items()))

    def artifact_path(self, workload: Workload, settings: Settings) -> str:
        raise AssertionError("a GPUStack cluster has no workloads of fleetform's")

    def is_artifact_path(self, path: str) -> bool:
        return _ARTIFACT.fullmatch(path) is not None

    def compared_file(
        self, workload: Workload, settings: Settings, files: Mapping[str, bytes]
    ) -> tuple[str, str] | None:
        return None

    def secrets_hash(self, spec: ContainerSpec, values: dict[str, str]) -> str:
        return ""

    def observe(
        self, target: Target, settings: Settings, early: Connections | None
    ) -> ObservedHost:
        from compiler.errors import FleetformError
        from compiler.observed import ObservedHost
        from compiler.targets.gpustack.apply import server_for
        from compiler.targets.gpustack.observe import observe_cluster

        try:
            server = server_for(target)
        except FleetformError as error:
            return ObservedHost(target.desired.host, self.kind, error=error.message)
        return observe_cluster(server, target.desired.host, target.cluster or "", settings.project)

    def plan(
        self, desired: DesiredHost, observed: ObservedHost, project: str, prefix: str
    ) -> HostPlan:
        from compiler.targets.gpustack.plan import plan_cluster

        return plan_cluster(desired, observed, project)

    def apply(
        self,
        host_plan: HostPlan,
        target: Target,
        project: str,
        options: Options,
        secrets: dict[str, Secrets],
        say: Callable[[str, str], None],
    ) -> HostResult:
        from compiler.targets.gpustack.apply import apply_cluster

        return apply_cluster(host_plan, target, project, say)

    def unlock(self, target: Target, project: str) -> bool:
        from compiler.targets.gpustack.apply import release, server_for

        return release(server_for(target), project)

    def spec_name(self, step_name: str) -> str:
        return step_name


def file_names(backends: Mapping[str, object]) -> dict[str, str]:
    """A file name for each backend (any text GPUStack takes is a backend name: spaces,
    slashes): its name with what a path must not hold made '-', and its hash's start
    when two names come out the same."""
    import hashlib

    slugs = {name: re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-")[:120] for name in backends}
    seen = list(slugs.values())
    return {
        name: slug
        if slug and seen.count(slug) == 1
        else f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}".lstrip("-")
        for name, slug in slugs.items()
    }


def _set(document: dict[str, object]) -> dict[str, object]:
    """A document without its unset fields, as the artifact shows it."""
    return {key: value for key, value in document.items() if value is not None}
