"""The Docker container fields fleetform manages: one row per field, in one table.

For each field the row says, in one place, how it is

* **read** from ``docker inspect`` (the container's ``Config`` and ``HostConfig``),
* **wanted**: taken from the spec (with the secret values, when applying),
* **written** into the create request (``POST /containers/create``), and
* **left to the engine**: when the spec does not set it, the observed value is whatever
  the engine, its daemon or the image put there, and is not compared.

Both sides of a comparison are in one normal form (the *view*): a bind made through the
mount API and one written as ``SRC:DST:ro`` are the same string, a device's default
permissions are left out, GPUs are ``driver:id,id``. The plan compares the views field
by field and shows them; observe makes the observed view, apply the create request, all
from this table. As community.docker's ``docker_container`` keeps one option per field.

Sizes, ports and devices are read by the parsers Docker's own tools use
(:func:`compiler.fields.size_in_bytes`, the docker SDK's ``split_port``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compiler.fields import size_in_bytes

if TYPE_CHECKING:
    from compiler.observed import ObservedContainer
    from compiler.render.container import ContainerSpec

Inspect = dict[str, Any]  # docker inspect of a container: Config, HostConfig, ...
Body = dict[str, Any]  # the create request; its HostConfig is body["HostConfig"]


@dataclass(frozen=True)
class Wanted:
    """What a container is created from: its spec, its environment with the secret
    values (only when applying: the plan compares without them) and its labels."""

    spec: ContainerSpec
    env: dict[str, str]
    labels: dict[str, str]


@dataclass(frozen=True)
class Field:
    name: str  # as the plan shows it: "env", "shm_size", ...
    read: Callable[[Inspect], Any]
    want: Callable[[Wanted], Any]
    write: Callable[[Wanted, Body], None]
    # The spec leaves the field to the engine (or the image): not compared.
    left_to_engine: Callable[[ContainerSpec, ObservedContainer], bool] | None = None


def _config(details: Inspect) -> Inspect:
    return details.get("Config") or {}


def _host(details: Inspect) -> Inspect:
    return details.get("HostConfig") or {}


def _set_host(key: str, value: Any, body: Body) -> None:
    body.setdefault("HostConfig", {})[key] = value


# --- normal forms --------------------------------------------------------------------------


def env_map(items: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in items:
        key, _, value = item.partition("=")
        env[key] = value
    return env


def bind(source: str, target: str, read_only: bool) -> str:
    return f"{source}:{target}" + (":ro" if read_only else "")


def normal_bind(text: str) -> str:
    """``SRC:DST[:MODE]`` with the default mode ``rw`` left out."""
    parts = text.split(":")
    if len(parts) >= 3 and parts[-1] == "rw":
        parts = parts[:-1]
    return ":".join(parts)


def device_parts(text: str) -> tuple[str, str, str]:
    """``HOST[:CONTAINER[:PERMISSIONS]]`` as docker reads ``--device``."""
    parts = text.split(":")
    host = parts[0]
    container = parts[1] if len(parts) > 1 and parts[1] else host
    return host, container, parts[2] if len(parts) > 2 else "rwm"


def device(host: str, container: str, permissions: str) -> str:
    text = host if container in ("", host) else f"{host}:{container}"
    return text if permissions in ("", "rwm") else f"{text}:{permissions}"


DEVICE_KEYS = ("PathOnHost", "PathInContainer", "CgroupPermissions")


def gpus_view(requests: list[dict[str, Any]]) -> list[str]:
    """Device requests as ``driver:id,id`` (``driver:all`` for a count of -1)."""
    out = []
    for request in requests:
        ids = request.get("DeviceIDs")
        count = request.get("Count") or 0
        shown = ",".join(ids) if ids else ("all" if count == -1 else f"count={count}")
        out.append(f"{request.get('Driver') or 'default'}:{shown}")
    return sorted(out)


# The IPC modes an engine gives a container that asks for none: "private" or
# "shareable", as its daemon's default-ipc-mode says ("" on old engines).
_DEFAULT_IPC = frozenset({"", "private", "shareable"})


def ipc_view(mode: str | None) -> str | None:
    """HostConfig.IpcMode in one normal form: None for the engine's default, whichever
    the daemon is configured with, else the mode (``host``; by hand: ``none``, ...)."""
    return None if (mode or "") in _DEFAULT_IPC else mode


def published_ports(ports: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """compose's short port syntax → the API's exposed ports and port bindings, read by
    the docker SDK's own parser (``docker.utils.ports.split_port``, as ``docker run -p``
    reads it): ranges give a binding per port (``9000-9001:80-81``) or a host range for
    one port (``9000-9001:80``); ``[::1]:8080:80`` binds ``::1``; ``80`` publishes on a
    port the engine picks."""
    from docker.utils.ports import split_port

    exposed: dict[str, Any] = {}
    bindings: dict[str, list[Any]] = {}
    for text in ports:
        internal, external = split_port(text)
        for index, port in enumerate(internal):
            key = port if "/" in port else f"{port}/tcp"
            exposed[key] = {}
            # No host side ("80"): published on a port the engine picks, as `-p 80`.
            published = "" if external is None else external[index]
            host_ip, host_port = published if isinstance(published, tuple) else ("", published)
            bindings.setdefault(key, []).append(
                {"HostIp": host_ip or "", "HostPort": host_port or ""}
            )
    return exposed, bindings


# --- the rows --------------------------------------------------------------------------------


def _write_mounts(wanted: Wanted, body: Body) -> None:
    spec = wanted.spec
    _set_host(
        "Mounts",
        [
            {"Target": m.target, "Source": m.source, "Type": "bind", "ReadOnly": m.read_only}
            for m in spec.mounts
        ],
        body,
    )
    if spec.binds:
        _set_host("Binds", list(spec.binds), body)


def _write_devices(wanted: Wanted, body: Body) -> None:
    if wanted.spec.devices:
        devices = [
            dict(zip(DEVICE_KEYS, device_parts(d), strict=True)) for d in wanted.spec.devices
        ]
        _set_host("Devices", devices, body)


def _write_gpus(wanted: Wanted, body: Body) -> None:
    spec = wanted.spec
    if spec.gpu_driver:
        request = {
            "Driver": spec.gpu_driver,
            "Count": 0,
            "DeviceIDs": list(spec.gpu_ids),
            "Capabilities": [["gpu"]],
            "Options": {},
        }
        _set_host("DeviceRequests", [request], body)


def _write_ports(wanted: Wanted, body: Body) -> None:
    exposed, bindings = published_ports(wanted.spec.ports)
    if bindings:
        _set_host("PortBindings", bindings, body)
    if exposed:
        body["ExposedPorts"] = exposed


def _shm_size(spec: ContainerSpec) -> int | None:
    return size_in_bytes(spec.shm_size) if spec.shm_size else None


def _write_shm_size(wanted: Wanted, body: Body) -> None:
    if size := _shm_size(wanted.spec):
        _set_host("ShmSize", size, body)  # with IpcMode host too, as `docker run` sends it


def _write_restart(wanted: Wanted, body: Body) -> None:
    if wanted.spec.restart != "no":
        _set_host("RestartPolicy", {"Name": wanted.spec.restart}, body)


def _write_if_set(
    key: str, value: Callable[[ContainerSpec], Any]
) -> Callable[[Wanted, Body], None]:
    def write(wanted: Wanted, body: Body) -> None:
        if (given := value(wanted.spec)) is not None:
            body[key] = given

    return write


FIELDS: tuple[Field, ...] = (
    Field(
        "image",
        read=lambda d: _config(d).get("Image", ""),
        want=lambda w: w.spec.image,
        write=lambda w, body: body.update(Image=w.spec.image),
    ),
    Field(
        "entrypoint",
        read=lambda d: _config(d).get("Entrypoint"),
        want=lambda w: list(w.spec.entrypoint) if w.spec.entrypoint is not None else None,
        write=lambda w, body: body.update(
            Entrypoint=list(w.spec.entrypoint) if w.spec.entrypoint is not None else None
        ),
        left_to_engine=lambda spec, seen: spec.entrypoint is None,  # the image's
    ),
    Field(
        "command",
        read=lambda d: list(_config(d).get("Cmd") or []),
        want=lambda w: list(w.spec.command),
        write=lambda w, body: body.update(Cmd=list(w.spec.command) or None),
        left_to_engine=lambda spec, seen: not spec.command,  # the image's
    ),
    Field(
        "env",
        read=lambda d: dict(sorted(env_map(_config(d).get("Env") or []).items())),
        want=lambda w: dict(sorted(w.env.items())),
        write=lambda w, body: body.update(Env=[f"{k}={v}" for k, v in sorted(w.env.items())]),
    ),
    Field(
        "gpus",
        read=lambda d: gpus_view(_host(d).get("DeviceRequests") or []),
        want=lambda w: (
            [f"{w.spec.gpu_driver}:{','.join(w.spec.gpu_ids)}"] if w.spec.gpu_driver else []
        ),
        write=_write_gpus,
    ),
    Field(
        "mounts",
        # A bind made through the mount API and one written as SRC:DST:ro are the same
        # bind (compose writes the long syntax as the latter): one normal form for both.
        read=lambda d: sorted(
            [
                bind(m.get("Source", ""), m.get("Target", ""), bool(m.get("ReadOnly")))
                for m in _host(d).get("Mounts") or []
                if m.get("Type", "bind") == "bind"
            ]
            + [normal_bind(b) for b in _host(d).get("Binds") or []]
        ),
        want=lambda w: sorted(
            [bind(m.source, m.target, m.read_only) for m in w.spec.mounts]
            + [normal_bind(b) for b in w.spec.binds]
        ),
        write=_write_mounts,
    ),
    Field(
        "devices",
        read=lambda d: sorted(
            device(
                x.get("PathOnHost", ""),
                x.get("PathInContainer", ""),
                x.get("CgroupPermissions", "rwm"),
            )
            for x in _host(d).get("Devices") or []
        ),
        want=lambda w: sorted(device(*device_parts(x)) for x in w.spec.devices),
        write=_write_devices,
    ),
    Field(
        "network_mode",
        read=lambda d: _host(d).get("NetworkMode", ""),
        want=lambda w: w.spec.network_mode,
        write=lambda w, body: _set_host("NetworkMode", w.spec.network_mode or "default", body),
    ),
    Field(
        "shm_size",
        read=lambda d: _host(d).get("ShmSize") or 0,
        want=lambda w: _shm_size(w.spec),
        write=_write_shm_size,
        # Unset: the engine's default (its daemon's default-shm-size), not fleetform's.
        left_to_engine=lambda spec, seen: not spec.shm_size,
    ),
    Field(
        "stop_timeout",
        read=lambda d: _config(d).get("StopTimeout"),
        want=lambda w: w.spec.stop_timeout,
        write=_write_if_set("StopTimeout", lambda spec: spec.stop_timeout),
        # Unset: whatever the engine or compose put there.
        left_to_engine=lambda spec, seen: spec.stop_timeout is None,
    ),
    Field(
        "user",
        read=lambda d: _config(d).get("User") or None,
        want=lambda w: w.spec.user or None,  # as the engine: "" is no user of its own
        write=_write_if_set("User", lambda spec: spec.user),
        # Unset: the image's own user, which the engine filled in.
        left_to_engine=lambda spec, seen: (
            spec.user is None and seen.view.get("user") == (seen.image_user or None)
        ),
    ),
    Field(
        "ipc",
        read=lambda d: ipc_view(_host(d).get("IpcMode")),
        want=lambda w: ipc_view(w.spec.ipc),
        write=lambda w, body: (
            _set_host("IpcMode", w.spec.ipc, body) if w.spec.ipc is not None else None
        ),
    ),
    Field(
        "restart",
        read=lambda d: (_host(d).get("RestartPolicy") or {}).get("Name") or "no",
        want=lambda w: w.spec.restart,
        write=_write_restart,
    ),
    Field(
        "labels",
        read=lambda d: dict(sorted((_config(d).get("Labels") or {}).items())),
        want=lambda w: dict(sorted(w.labels.items())),
        write=lambda w, body: body.update(Labels=w.labels),
    ),
)
# Written, not compared: a published port's change is a change of the spec (its hash).
WRITE_ONLY: tuple[Callable[[Wanted, Body], None], ...] = (_write_ports,)


def desired_view(spec: ContainerSpec, secret_env: dict[str, str]) -> dict[str, Any]:
    """A spec in the normal form of an observed container (secrets as given)."""
    return wanted_view(Wanted(spec, {**spec.env, **secret_env}, spec.labels))


def observed_view(details: Inspect) -> dict[str, Any]:
    """A container's fields as ``docker inspect`` shows them, in the normal form."""
    return {field.name: field.read(details) for field in FIELDS}


def wanted_view(wanted: Wanted) -> dict[str, Any]:
    """What the spec wants, in the same normal form as :func:`observed_view`."""
    return {field.name: field.want(wanted) for field in FIELDS}


def create_request(wanted: Wanted) -> Body:
    """The Engine API's container config (``POST /containers/create``)."""
    body: Body = {"HostConfig": {}}
    for field in FIELDS:
        field.write(wanted, body)
    for write in WRITE_ONLY:
        write(wanted, body)
    return body


def left_to_engine(spec: ContainerSpec, seen: ObservedContainer) -> set[str]:
    """The fields the spec leaves to the engine or the image: not compared."""
    return {f.name for f in FIELDS if f.left_to_engine is not None and f.left_to_engine(spec, seen)}
