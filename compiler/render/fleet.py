"""Every artifact of a fleet, as relative path → bytes."""

from __future__ import annotations

from collections.abc import Callable

from compiler.render.compose import render_compose
from compiler.render.index import INDEX_FILE, render_index
from compiler.render.systemd import render_unit, unit_name
from compiler.resolve import Fleet


def render_fleet(
    fleet: Fleet, sink: Callable[[str, bytes], None] | None = None
) -> dict[str, bytes]:
    """Every file; ``sink`` (if given) is handed each host's files as they are made."""
    files: dict[str, bytes] = {}
    for name, host in fleet.hosts.items():
        workloads = fleet.on_host(name)
        texts: dict[str, str] = {}
        if host.target == "compose":
            texts[f"{name}/compose.yaml"] = render_compose(host, workloads, fleet.settings)
        else:
            for workload in workloads:
                unit = unit_name(workload, fleet.settings)
                texts[f"{name}/systemd/{unit}"] = render_unit(workload, fleet.settings)
        texts[f"{name}/{INDEX_FILE}"] = render_index(host, workloads, fleet.settings)
        for path, text in texts.items():
            files[path] = text.encode()
            if sink is not None:
                sink(path, files[path])
    return dict(sorted(files.items()))
