"""``fleetform explain``: a resolved deployment and where each value came from."""

from __future__ import annotations

import shlex

from compiler.resolve import Fleet, Origin


def explain_deployment(fleet: Fleet, name: str) -> str:
    info = fleet.explanations[name]
    replicas = [w for w in fleet.workloads if w.deployment == name]
    lines = [
        f"deployment {name}",
        f"  extends chain: {' -> '.join(info.chain)}",
        f"  backend: {info.backend}",
        f"  version: {info.version} ({info.version_reason})",
        f"  replicas: {len(replicas)}",
    ]

    def row(label: str, value: str, key: str) -> None:
        origin: Origin | None = info.origins.get(key)
        where = f"  <- {origin}" if origin else ""
        lines.append(f"    {label}: {value}{where}")

    for workload in replicas:
        lines.append("")
        host = fleet.hosts[workload.host]
        lines.append(
            f"  replica {workload.replica} on host {host.name} ({host.target}, {host.address})"
        )
        row("host", host.name, f"replica {workload.replica}.host")
        row("port", str(workload.port), f"replica {workload.replica}.port")
        gpus = ",".join(str(i) for i in workload.gpus) or "none"
        row("gpus", f"{workload.framework} {gpus}", "framework")
        row("image", workload.image, "image_name")
        if workload.entrypoint is not None:
            row("entrypoint", shlex.join(workload.entrypoint), "entrypoint")
        else:
            lines.append("    entrypoint: (the image's own)")
        row("command", shlex.join(workload.command), "run_command")
        for key in ("default_backend_param", "backend_parameters"):
            if key in info.origins:
                row(f"  + {key}", "(appended)", key)
        shown = {**workload.env, **{k: f"(secret {v})" for k, v in workload.secrets.items()}}
        for key, value in sorted(shown.items()):
            row(f"env {key}", value, f"env.{key}")
        for volume in workload.volumes:
            lines.append(f"    volume: {volume}")
        for device in workload.devices:
            lines.append(f"    device: {device}")
        lines.append(f"    spec hash: {workload.spec_hash()}")
    return "\n".join(lines) + "\n"
