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
    body = yaml.dump(
        document,
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=1_000_000,
        default_flow_style=False,
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


# Line breaks YAML readers fold into spaces unless written as escapes.
_FOLDED = ("\x85", "\u2028", "\u2029")


class _Dumper(yaml.SafeDumper):
    """Safe YAML, with strings holding Unicode line breaks double-quoted and escaped."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if any(char in value for char in _FOLDED) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _escape(value: Any) -> Any:
    """Double every ``$`` so compose's interpolation leaves each value as written."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_escape(item) for item in value]
    if isinstance(value, dict):
        return {_escape(key): _escape(item) for key, item in value.items()}
    return value
