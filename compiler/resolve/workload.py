"""What resolution makes: a :class:`Fleet` of frozen :class:`Workload` objects (one
per deployment replica, with the exact image, argv, env, GPUs, mounts and port), the
hosts they run on, and where each value came from (:class:`Origin`, for ``explain``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from compiler.errors import Mark
from compiler.hub import HubModel
from compiler.model import Settings

# Linux refuses an execve() argument (with its NUL) over MAX_ARG_STRLEN, 128 KiB.
MAX_ARGUMENT_BYTES = 131_071
# All of one container's arguments, env and labels: a systemd unit holds them in one
# ExecStart line, which systemd caps at 1 MiB; quoting makes a text at most four times
# longer (a noncharacter's 3 bytes become 12 characters of escapes).
MAX_CONTAINER_BYTES = 196_608
# Replicas, and GPUs, in one fleet.
MAX_WORKLOADS = 100_000
MAX_FLEET_GPUS = 262_144


class ResolvedHost(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    address: str
    target: str  # a kind of host: a registered driver's (compiler/targets)
    docker_host: str | None
    ssh: str | None
    model_dir: str
    port_range: str
    unit_dir: str
    gpus: tuple[tuple[int, str], ...]
    labels: dict[str, str]
    # A GPUStack cluster's server, cluster name and API key variable (else None).
    url: str | None = None
    cluster: str | None = None
    api_key_env: str | None = None


class Workload(BaseModel):
    """One replica of one deployment, fully resolved: what a host must run."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    replica: int
    host: str
    target: str  # a kind of host: a registered driver's (compiler/targets)
    image: str
    entrypoint: tuple[str, ...] | None
    command: tuple[str, ...]
    env: dict[str, str]
    framework: str
    gpus: tuple[int, ...]
    port: int
    network_mode: str
    shm_size: str
    restart: str
    model_mount: str | None  # bind-mounted read-only at the same path
    volumes: tuple[str, ...]
    devices: tuple[str, ...]
    ports: tuple[str, ...]
    labels: dict[str, str]
    health_check_path: str | None
    # Seconds `apply --wait` gives the health check; not part of what runs.
    health_timeout: int = 600
    # Environment variables filled at apply time from secrets: variable → secret name.
    secrets: dict[str, str] = {}
    # "uid" or "uid:gid" the server runs as (GPUStack's GPUSTACK_MODEL_RUNTIME_UID/GID);
    # None keeps the image's own user.
    user: str | None = None
    # "host" joins the host's IPC namespace (GPUStack's GPUSTACK_HOST_IPC); None keeps a
    # private one (with shm_size).
    ipc: Literal["host"] | None = None
    # Seconds to stop before a kill (the deployment's stop_timeout); None: each
    # artifact's default. Counts in the hash only when set.
    stop_timeout: int | None = None
    # The hub model apply fetches onto the host first (not part of what runs: the
    # revision is, below, when one is written).
    hub_model: HubModel | None = None
    # The model's revision as written; counts in the hash only when set, so that a new
    # revision restarts the replicas on the new files.
    model_revision: str | None = None

    @property
    def name(self) -> str:
        return f"{self.deployment}-{self.replica}"

    def spec(self) -> dict[str, Any]:
        """The canonical desired spec: what the content hash covers."""
        # Fields left at their default (no secrets) do not count: adding a field to
        # fleetform must not change, and so recreate, every existing container.
        return self.model_dump(
            mode="json", exclude={"health_timeout", "hub_model"}, exclude_defaults=True
        )

    def spec_hash(self) -> str:
        return self._spec_hash

    @cached_property
    def _spec_hash(self) -> str:
        canonical = CANONICAL_JSON.encode(self.spec())
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a resolved value was written: position, layer, and its key as written."""

    mark: Mark
    via: str
    key: str = ""

    def __str__(self) -> str:
        return f"{self.mark} ({self.via})"


@dataclass
class Explanation:
    """How one deployment was resolved, for ``fleetform explain``."""

    deployment: str
    backend: str
    version: str
    version_reason: str
    chain: list[str]
    origins: dict[str, Origin] = field(default_factory=dict)
    # Per merged key, where a layer wrote it null or "" and so fell back to the next.
    fallbacks: dict[str, list[Origin]] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterState:
    """What one cluster must hold: backend documents by their name on the server, model
    documents by deployment."""

    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Fleet:
    settings: Settings
    hosts: dict[str, ResolvedHost]
    workloads: tuple[Workload, ...]
    explanations: Mapping[str, Explanation]
    # What each host that schedules itself (a GPUStack cluster) must hold.
    clusters: Mapping[str, ClusterState] = field(default_factory=dict)

    def on_host(self, host: str) -> list[Workload]:
        return list(self._by_host.get(host, ()))

    @cached_property
    def _by_host(self) -> dict[str, list[Workload]]:
        grouped: dict[str, list[Workload]] = {}
        for workload in self.workloads:
            grouped.setdefault(workload.host, []).append(workload)
        return grouped
