"""A compose host's workloads → ``compose.yaml`` text (one project per host)."""

from __future__ import annotations

from typing import Any

import yaml

from compiler.model import Settings
from compiler.render import HEADER, container_name, ownership_labels
from compiler.resolve import ResolvedHost, Workload


def render_compose(host: ResolvedHost, workloads: list[Workload], settings: Settings) -> str:
    services = {w.name: _escape(_service(w, settings)) for w in workloads}
    document = {"name": settings.project, "services": services}
    body = yaml.safe_dump(
        document, sort_keys=False, allow_unicode=True, width=1_000_000, default_flow_style=False
    )
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
    if workload.volumes:
        service["volumes"] = list(workload.volumes)
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


def _escape(value: Any) -> Any:
    """Double every ``$`` so compose's interpolation leaves each value as written."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_escape(item) for item in value]
    if isinstance(value, dict):
        return {_escape(key): _escape(item) for key, item in value.items()}
    return value
