"""Observe a Docker host: one list and an inspect per relevant container, read-only.

What is read: every container fleetform owns (by its labels, for this project), plus
any container that carries a name fleetform must use (a squatter). Nothing else on
the engine is looked at. Each container is reduced to the fields a plan compares
(image, argv, env, GPUs, mounts, devices, network, shm size, user, IPC namespace,
restart policy, labels), in the same normal form :func:`desired_view` gives a spec.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from compiler.errors import FleetformError
from compiler.fields import size_in_bytes
from compiler.observed import ObservedContainer, ObservedHost
from compiler.remote.engine import Engine, EngineError

if TYPE_CHECKING:
    from compiler.render.container import ContainerSpec

LOCK_LABEL_SUFFIX = "lock"
CONTAINER_LIST = "/containers/json"


def open_engine(base_url: str) -> Engine:
    """A connection to ``base_url`` with the container list already asked for."""
    engine = Engine(base_url)
    engine.send(CONTAINER_LIST, all=1)
    return engine


def observe_docker_host(
    host: str,
    base_url: str,
    project: str,
    label_prefix: str,
    names: Iterable[str],
    engine: Engine | None = None,
) -> ObservedHost:
    """Everything a plan needs of one Docker host; an unreachable host is a result.

    ``engine``: a connection already opened to ``base_url`` (it is closed here)."""
    try:
        engine = engine or open_engine(base_url)
        try:
            return observe_engine(engine, host, project, label_prefix, names)
        finally:
            engine.close()
    except FleetformError as error:  # unreachable, or the engine answered with an error
        return ObservedHost(host=host, target="compose", error=error.message)


def observe_engine(
    engine: Engine, host: str, project: str, prefix: str, names: Iterable[str]
) -> ObservedHost:
    """What :func:`observe_docker_host` returns, over a connection the caller keeps;
    an unreachable host or an engine error is raised."""
    wanted = set(names)
    containers: list[ObservedContainer] = []
    images: dict[str, tuple[dict[str, str], str]] = {}
    for summary in engine.get(CONTAINER_LIST, all=1):
        labels = summary.get("Labels") or {}
        name = (summary.get("Names") or ["/"])[0].lstrip("/")
        owned = labels.get(f"{prefix}.managed-by") == "fleetform" and (
            labels.get(f"{prefix}.project") == project
        )
        if labels.get(f"{prefix}.{LOCK_LABEL_SUFFIX}"):
            continue
        if not owned and name not in wanted:
            continue
        try:
            details = engine.get(f"/containers/{summary['Id']}/json")
        except EngineError as error:
            if error.status == 404:
                continue  # removed since it was listed
            raise
        image = details["Config"].get("Image", "")
        if image not in images:
            images[image] = _image_config(engine, image)
        containers.append(_container(details, prefix, owned, *images[image]))
    containers.sort(key=lambda c: (c.name, c.id))
    return ObservedHost(host=host, target="compose", containers=tuple(containers))


def _image_config(engine: Engine, image: str) -> tuple[dict[str, str], str]:
    """The image's own env and user, which the engine copies into a container that sets
    none: so that only what was set on the container is compared."""
    try:
        details = engine.get(f"/images/{image}/json")
    except EngineError as error:
        if error.status == 404:
            return {}, ""
        raise
    config = details.get("Config") or {}
    return _env_map(config.get("Env") or []), config.get("User") or ""


def _container(
    details: dict[str, Any],
    prefix: str,
    owned: bool,
    image_env: dict[str, str],
    image_user: str = "",
) -> ObservedContainer:
    config = details.get("Config") or {}
    host_config = details.get("HostConfig") or {}
    labels = config.get("Labels") or {}
    state = (details.get("State") or {}).get("Status", "unknown")
    env = _env_map(config.get("Env") or [])
    replica = labels.get(f"{prefix}.replica", "")
    view = {
        "image": config.get("Image", ""),
        "entrypoint": config.get("Entrypoint"),
        "command": list(config.get("Cmd") or []),
        "env": dict(sorted(env.items())),
        "gpus": _gpus(host_config.get("DeviceRequests") or []),
        # A bind made through the mount API and one written as SRC:DST:ro are the same
        # bind (compose writes the long syntax as the latter): one normal form for both.
        "mounts": sorted(
            [
                _bind(m.get("Source", ""), m.get("Target", ""), bool(m.get("ReadOnly")))
                for m in host_config.get("Mounts") or []
                if m.get("Type", "bind") == "bind"
            ]
            + [_normal_bind(b) for b in host_config.get("Binds") or []]
        ),
        "devices": sorted(
            _device(
                d.get("PathOnHost", ""),
                d.get("PathInContainer", ""),
                d.get("CgroupPermissions", "rwm"),
            )
            for d in host_config.get("Devices") or []
        ),
        "network_mode": host_config.get("NetworkMode", ""),
        "shm_size": host_config.get("ShmSize") or 0,
        "stop_timeout": config.get("StopTimeout"),
        "user": config.get("User") or None,
        "ipc": ipc_view(host_config.get("IpcMode")),
        "restart": (host_config.get("RestartPolicy") or {}).get("Name") or "no",
        "labels": dict(sorted(labels.items())),
    }
    return ObservedContainer(
        id=details["Id"],
        name=details.get("Name", "").lstrip("/"),
        state=state,
        owned=owned,
        deployment=labels.get(f"{prefix}.deployment", "") if owned else "",
        replica=int(replica) if owned and replica.isdigit() else -1,
        spec_hash=labels.get(f"{prefix}.spec-hash", "") if owned else "",
        secret_hash=labels.get(f"{prefix}.secret-hash", "") if owned else "",
        view=view,
        image_env=image_env,
        image_user=image_user,
    )


def _env_map(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def _gpus(requests: list[dict[str, Any]]) -> list[str]:
    """Device requests as ``driver:id,id`` (``driver:all`` for a count)."""
    out = []
    for request in requests:
        ids = request.get("DeviceIDs")
        count = request.get("Count") or 0
        shown = ",".join(ids) if ids else ("all" if count == -1 else f"count={count}")
        out.append(f"{request.get('Driver') or 'default'}:{shown}")
    return sorted(out)


def desired_view(spec: ContainerSpec, secret_env: dict[str, str]) -> dict[str, Any]:
    """A spec in the same normal form as an observed container (secrets as given)."""
    env = {**spec.env, **secret_env}
    return {
        "image": spec.image,
        "entrypoint": list(spec.entrypoint) if spec.entrypoint is not None else None,
        "command": list(spec.command),
        "env": dict(sorted(env.items())),
        "gpus": [f"{spec.gpu_driver}:{','.join(spec.gpu_ids)}"] if spec.gpu_driver else [],
        "mounts": sorted(
            [_bind(m.source, m.target, m.read_only) for m in spec.mounts]
            + [_normal_bind(b) for b in spec.binds]
        ),
        "devices": sorted(_device(*device_parts(d)) for d in spec.devices),
        "network_mode": spec.network_mode,
        # Unset: the engine's default (its daemon's default-shm-size), not fleetform's.
        "shm_size": size_in_bytes(spec.shm_size) if spec.shm_size else None,
        "stop_timeout": spec.stop_timeout,
        "user": spec.user or None,  # as the engine: "" is no user of its own
        "ipc": ipc_view(spec.ipc),
        "restart": spec.restart,
        "labels": dict(sorted(spec.labels.items())),
    }


# The IPC modes an engine gives a container that asks for none: "private" or
# "shareable", as its daemon's default-ipc-mode says ("" on old engines).
_DEFAULT_IPC = frozenset({"", "private", "shareable"})


def ipc_view(mode: str | None) -> str | None:
    """HostConfig.IpcMode in one normal form: None for the engine's default, whichever
    the daemon is configured with, else the mode (``host``; by hand: ``none``, ...)."""
    return None if (mode or "") in _DEFAULT_IPC else mode


def _bind(source: str, target: str, read_only: bool) -> str:
    return f"{source}:{target}" + (":ro" if read_only else "")


def _normal_bind(text: str) -> str:
    """``SRC:DST[:MODE]`` with the default mode ``rw`` left out."""
    parts = text.split(":")
    if len(parts) >= 3 and parts[-1] == "rw":
        parts = parts[:-1]
    return ":".join(parts)


def device_parts(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    host = parts[0]
    container = parts[1] if len(parts) > 1 and parts[1] else host
    return host, container, parts[2] if len(parts) > 2 else "rwm"


def _device(host: str, container: str, permissions: str) -> str:
    text = host if container in ("", host) else f"{host}:{container}"
    return text if permissions in ("", "rwm") else f"{text}:{permissions}"
