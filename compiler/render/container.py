"""A resolved workload as the Docker Engine API creates it: the container plan and
apply compare and converge. Pure; the same facts the compose and systemd artifacts
carry (image, argv, env, GPUs, mounts, user, IPC, labels), in the engine's own terms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compiler.model import Settings
from compiler.render import container_name, ownership_labels
from compiler.resolve import Workload


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


@dataclass(frozen=True)
class ContainerSpec:
    """What one replica's container must be. ``env`` holds plain values only; secret
    variables are named in ``secrets`` (variable → secret) and filled in at apply."""

    name: str
    deployment: str
    replica: int
    spec_hash: str
    image: str
    entrypoint: tuple[str, ...] | None  # None: the image's own
    command: tuple[str, ...]
    env: dict[str, str]
    secrets: dict[str, str]
    labels: dict[str, str]
    network_mode: str
    shm_size: str
    restart: str
    mounts: tuple[Mount, ...]  # the model folder (mount API: a path may hold ':')
    binds: tuple[str, ...]  # the deployment's volumes, as written (SRC:DST[:MODE])
    devices: tuple[str, ...]
    ports: tuple[str, ...]
    gpu_driver: str | None  # "nvidia" for cuda: a device request with explicit ids
    gpu_ids: tuple[str, ...]
    address: str
    port: int
    health_check_path: str | None
    health_timeout: float
    # "uid" or "uid:gid" the process runs as (the engine's Config.User); None: the image's.
    user: str | None = None
    # "host": the host's IPC namespace (HostConfig.IpcMode); None: the engine's default.
    ipc: Literal["host"] | None = None
    # What only one container on the host can have: "port N" (a host port), "<framework>
    # GPU i". Apply stamps it on the container, so that a plan knows what an old one holds.
    holds: tuple[str, ...] = ()
    # Seconds to stop before a kill (Config.StopTimeout); None: apply's --stop-timeout.
    stop_timeout: int | None = None


def container_spec(workload: Workload, settings: Settings, address: str) -> ContainerSpec:
    mounts: list[Mount] = []
    if workload.model_mount is not None:
        mounts.append(Mount(workload.model_mount, workload.model_mount, True))
    cuda = workload.framework == "cuda" and bool(workload.gpus)
    return ContainerSpec(
        name=container_name(workload, settings),
        deployment=workload.deployment,
        replica=workload.replica,
        spec_hash=workload.spec_hash(),
        image=workload.image,
        entrypoint=workload.entrypoint,
        command=workload.command,
        env=dict(workload.env),
        secrets=dict(workload.secrets),
        labels=ownership_labels(workload, settings),
        network_mode=workload.network_mode,
        shm_size=workload.shm_size,
        restart=workload.restart,
        mounts=tuple(mounts),
        binds=workload.volumes,
        devices=workload.devices,
        ports=workload.ports,
        gpu_driver="nvidia" if cuda else None,
        gpu_ids=tuple(str(i) for i in workload.gpus) if cuda else (),
        address=address,
        port=workload.port,
        health_check_path=workload.health_check_path,
        health_timeout=float(workload.health_timeout),
        user=workload.user,
        ipc=workload.ipc,
        holds=_holds(workload),
        stop_timeout=workload.stop_timeout,
    )


def _holds(workload: Workload) -> tuple[str, ...]:
    ports = {workload.port} if workload.network_mode == "host" and workload.port else set()
    ports.update(port for port in map(_host_port, workload.ports) if port)
    gpus = [f"{workload.framework} GPU {index}" for index in workload.gpus]
    return tuple(f"port {port}" for port in sorted(ports)) + tuple(gpus)


def _host_port(published: str) -> int | None:
    """The host port of ``[IP:]HOST:CONTAINER[/proto]``; None when the engine picks it."""
    parts = published.split("/", 1)[0].rsplit(":", 2)
    if len(parts) < 2 or not parts[-2].isdigit():
        return None
    return int(parts[-2])
