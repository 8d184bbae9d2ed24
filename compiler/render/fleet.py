"""Every artifact of a fleet, as relative path → bytes."""

from __future__ import annotations

from compiler.render.compose import render_compose
from compiler.render.index import INDEX_FILE, render_index
from compiler.render.systemd import render_unit, unit_name
from compiler.resolve import Fleet


def render_fleet(fleet: Fleet) -> dict[str, bytes]:
    files: dict[str, str] = {}
    for name, host in fleet.hosts.items():
        workloads = fleet.on_host(name)
        if host.target == "compose":
            files[f"{name}/compose.yaml"] = render_compose(host, workloads, fleet.settings)
        else:
            for workload in workloads:
                unit = unit_name(workload, fleet.settings)
                files[f"{name}/systemd/{unit}"] = render_unit(workload, fleet.settings)
        files[f"{name}/{INDEX_FILE}"] = render_index(host, workloads, fleet.settings)
    return {path: text.encode() for path, text in sorted(files.items())}
