"""Kinds of host: one driver each, registered in :data:`DRIVERS`.

A driver is everything fleetform does that depends on the kind of host: which artifact
text a plan compares, how a secret's current value shows on the host, how the host is
observed, planned, applied (locked, converged, unlocked) and unlocked by hand. Outside
the drivers nothing branches on the kind: ``api``, ``plan``, ``apply`` and ``diff`` ask
:func:`driver_for`. A new kind of host is a module beside these and one line in
:data:`DRIVERS` (as pre-commit registers its languages in ``all_languages.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from compiler.errors import FleetformError

if TYPE_CHECKING:
    from compiler.apply import HostResult, Options, Secrets, Target
    from compiler.model import Settings
    from compiler.observed import ObservedHost
    from compiler.plan import DesiredHost, HostPlan
    from compiler.remote.connections import Connections
    from compiler.render.container import ContainerSpec
    from compiler.resolve import Fleet, ResolvedHost, Workload


class Driver(Protocol):
    """One kind of host, from its artifacts to its apply."""

    kind: str
    # Whether apply fetches hub models onto this kind of host (the plan's fetch steps).
    fetches_models: bool
    # Whether the host schedules replicas itself (a cluster): placement then gives it
    # whole deployments by worker_selector, and no GPUs or ports
    # (compiler/resolve/clusters.py).
    schedules_itself: bool
    # The fields of a hosts.d entry this kind reads (any other written is an error), and
    # those it cannot do without.
    host_fields: tuple[str, ...]
    required_host_fields: tuple[str, ...]

    def render(self, host: ResolvedHost, fleet: Fleet) -> dict[str, str]:
        """The host's artifacts: path below ``output/<host>/`` → text."""
        ...

    def artifact_path(self, workload: Workload, settings: Settings) -> str:
        """Where below ``output/<host>/`` a replica is written (for ``index.json``)."""
        ...

    def is_artifact_path(self, path: str) -> bool:
        """Whether ``path`` (below ``output/<host>/``) is one :meth:`artifact_path` makes:
        an ``index.json`` read back may name only those as fleetform's own."""
        ...

    def compared_file(
        self, workload: Workload, settings: Settings, files: Mapping[str, bytes]
    ) -> tuple[str, str] | None:
        """The compiled file a plan and a diff compare for this replica, if any: its
        name on the host and its text."""
        ...

    def secrets_hash(self, spec: ContainerSpec, values: dict[str, str]) -> str:
        """What the host shows for a replica's current secret values."""
        ...

    def observe(
        self, target: Target, settings: Settings, early: Connections | None
    ) -> ObservedHost:
        """What the host runs; an unreachable host is a result, not an exception."""
        ...

    def plan(
        self, desired: DesiredHost, observed: ObservedHost, project: str, prefix: str
    ) -> HostPlan:
        """The steps from what the host runs to what it must (pure)."""
        ...

    def apply(
        self,
        host_plan: HostPlan,
        target: Target,
        project: str,
        options: Options,
        secrets: dict[str, Secrets],
        say: Callable[[str, str], None],
    ) -> HostResult:
        """Lock the host, check the plan is current, carry it out, unlock."""
        ...

    def unlock(self, target: Target, project: str) -> bool:
        """Break the host's apply lock; whether there was one."""
        ...

    def spec_name(self, step_name: str) -> str:
        """The replica (container spec) name a step's name stands for."""
        ...


def _registry() -> dict[str, Driver]:
    from compiler.targets.compose import ComposeDriver
    from compiler.targets.gpustack import GPUStackDriver
    from compiler.targets.systemd import SystemdDriver

    return {
        "compose": ComposeDriver(),
        "systemd": SystemdDriver(),
        "gpustack": GPUStackDriver(),
    }


DRIVERS: dict[str, Driver] = _registry()


def driver_for(kind: str) -> Driver:
    found = DRIVERS.get(kind)
    if found is None:
        raise FleetformError(f"no driver for hosts of kind {kind!r} (known: {', '.join(DRIVERS)})")
    return found
