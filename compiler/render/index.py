"""A host's machine-readable index: what it should run, by name and hash."""

from __future__ import annotations

import json
from typing import Any

from compiler.model import Settings
from compiler.render import container_name
from compiler.resolve import ResolvedHost, Workload

INDEX_SCHEMA = "fleetform.index/v1"
INDEX_FILE = "index.json"


def render_index(host: ResolvedHost, workloads: list[Workload], settings: Settings) -> str:
    from compiler.targets import driver_for

    driver = driver_for(host.target)
    entries: list[dict[str, Any]] = []
    for workload in workloads:
        artifact = driver.artifact_path(workload, settings)
        entry: dict[str, Any] = {
            "name": workload.name,
            "deployment": workload.deployment,
            "replica": workload.replica,
            "spec_hash": workload.spec_hash(),
            "container": container_name(workload, settings),
            "artifact": artifact,
            "image": workload.image,
            "framework": workload.framework,
            "gpus": list(workload.gpus),
            "port": workload.port,
        }
        if workload.secrets:
            # Variable names only: the values are given at apply time.
            entry["secrets"] = list(workload.secrets)
        entries.append(entry)
    header = {
        "schema": INDEX_SCHEMA,
        "project": settings.project,
        "host": host.name,
        "target": host.target,
        "address": host.address,
    }
    # One workload a line: a reviewer's diff shows exactly which replicas changed.
    lines = [f"  {_json(key)}: {_json(value)}," for key, value in header.items()]
    rows = ",\n".join(f"    {_json(entry)}" for entry in entries)
    lines.append(f'  "workloads": [\n{rows}\n  ]' if entries else '  "workloads": []')
    return "{\n" + "\n".join(lines) + "\n}\n"


def _json(value: Any) -> str:
    return _ENCODER.encode(value)


_ENCODER = json.JSONEncoder(ensure_ascii=False)  # json.dumps(value, ensure_ascii=False)
