"""A compose host's workloads → ``compose.yaml`` text (one project per host)."""

from __future__ import annotations

from typing import Any

from compiler.model import Settings
from compiler.render import HEADER, container_name, ownership_labels, yaml_text
from compiler.resolve import ResolvedHost, Workload


def render_compose(host: ResolvedHost, workloads: list[Workload], settings: Settings) -> str:
    services = {w.name: _service(w, settings) for w in workloads}
    document = {"name": settings.project, "services": services}
    # Every `$` doubled so compose's interpolation leaves each value as written. The
    # YAML writer never writes a `$` of its own, so doubling them in the text is the
    # same as doubling them in every key and value.
    body = yaml_text.dump(document).replace("$", "$$")
    return f"# {HEADER}\n# host: {host.name}\n{body}"


def _service(workload: Workload, settings: Settings) -> dict[str, Any]:
    service: dict[str, Any] = {
        "image": workload.image,
        "container_name": container_name(workload, settings),
    }
    if workload.entrypoint is not None:
        service["entrypoint"] = list(workload.entrypoint)
    service["command"] = list(workload.command)
    if workload.env:
        service["environment"] = dict(workload.env)
    service["network_mode"] = workload.network_mode
    if workload.ports:
        service["ports"] = list(workload.ports)
    service["shm_size"] = workload.shm_size
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
