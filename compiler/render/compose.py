"""A compose host's workloads → ``compose.yaml`` text (one project per host)."""

from __future__ import annotations

from typing import Any

from compiler.model import Settings
from compiler.render import HEADER, container_name, ownership_labels, yaml_text
from compiler.resolve import ResolvedHost, Workload


def render_compose(host: ResolvedHost, workloads: list[Workload], settings: Settings) -> str:
    marker = _MARKER
    text = _document_text(workloads, settings, marker)
    references = sum(len(w.secrets) for w in workloads)
    # A secret's value is written as a sentinel holding the marker twice. The marker
    # must occur nowhere else (in the user's own text): if it does, a longer one.
    while references and text.count(marker) != 2 * references:
        marker += "-"
        text = _document_text(workloads, settings, marker)
    # Every `$` doubled so compose's interpolation leaves each value as written. The
    # YAML writer never writes a `$` of its own, so doubling them in the text is the
    # same as doubling them in every key and value.
    body = text.replace("$", "$$")
    # Then the secrets' references: the only `$` compose is meant to interpolate.
    for secret in sorted({s for w in workloads for s in w.secrets.values()}):
        body = body.replace(_sentinel(secret, marker), yaml_text.scalar(secret_reference(secret)))
    return f"# {HEADER}\n# host: {host.name}\n{body}"


def _document_text(workloads: list[Workload], settings: Settings, marker: str) -> str:
    services = {w.name: _service(w, settings, marker) for w in workloads}
    return yaml_text.dump({"name": settings.project, "services": services})


def secret_reference(secret: str) -> str:
    """A secret's value in compose: the environment variable of the secret's name, which
    ``docker compose`` refuses to run without."""
    return f"${{{secret}:?secret {secret} is not set}}"


_MARKER = "fleetform-secret"


def _sentinel(secret: str, marker: str) -> str:
    """Plain YAML (written as is), without a `$`; the marker, which has the only `-`,
    cannot occur across its parts, so it occurs exactly twice in it."""
    return f"{marker}.{secret}.{marker}"


def _service(workload: Workload, settings: Settings, marker: str) -> dict[str, Any]:
    service: dict[str, Any] = {
        "image": workload.image,
        "container_name": container_name(workload, settings),
    }
    if workload.entrypoint is not None:
        service["entrypoint"] = list(workload.entrypoint)
    service["command"] = list(workload.command)
    if workload.secrets:
        environment = dict(workload.env)
        for variable, secret in workload.secrets.items():
            environment[variable] = _sentinel(secret, marker)
        service["environment"] = dict(sorted(environment.items()))
    elif workload.env:
        service["environment"] = dict(workload.env)
    if workload.user is not None:
        service["user"] = workload.user
    service["network_mode"] = workload.network_mode
    if workload.ports:
        service["ports"] = list(workload.ports)
    if workload.ipc is not None:
        service["ipc"] = workload.ipc
    # Kept with `ipc: host` too, though the container then shares the host's /dev/shm and
    # Docker ignores the size: as `docker run --ipc host --shm-size` does, the engine
    # still records it (HostConfig.ShmSize), so compose, the unit and apply make the same
    # container and a plan compares one value for all three.
    service["shm_size"] = workload.shm_size
    if workload.stop_timeout is not None:
        service["stop_grace_period"] = f"{workload.stop_timeout}s"
    service["restart"] = workload.restart
    volumes: list[Any] = []
    if workload.model_mount is not None:
        # The long syntax: a path may hold ':' without being split into fields.
        path = workload.model_mount
        volumes.append({"type": "bind", "source": path, "target": path, "read_only": True})
    volumes.extend(workload.volumes)
    if volumes:
        service["volumes"] = volumes
    if workload.devices:
        service["devices"] = list(workload.devices)
    service["labels"] = ownership_labels(workload, settings)
    if workload.framework == "cuda" and workload.gpus:
        service["deploy"] = {
            "resources": {
                "reservations": {
                    "devices": [
                        {
                            "driver": "nvidia",
                            "device_ids": [str(i) for i in workload.gpus],
                            "capabilities": ["gpu"],
                        }
                    ]
                }
            }
        }
    return service
