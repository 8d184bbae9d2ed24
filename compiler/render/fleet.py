"""Every artifact of a fleet, as relative path → bytes."""

from __future__ import annotations

from collections.abc import Callable

from compiler.render.index import INDEX_FILE, render_index
from compiler.resolve import Fleet
from compiler.targets import driver_for


def render_fleet(
    fleet: Fleet, sink: Callable[[str, bytes], None] | None = None
) -> dict[str, bytes]:
    """Every file; ``sink`` (if given) is handed each host's files as they are made."""
    files: dict[str, bytes] = {}
    for name, host in fleet.hosts.items():
        workloads = fleet.on_host(name)
        rendered = driver_for(host.target).render(host, fleet)
        texts = {f"{name}/{path}": text for path, text in rendered.items()}
        texts[f"{name}/{INDEX_FILE}"] = render_index(host, workloads, fleet.settings)
        for path, text in texts.items():
            files[path] = text.encode()
            if sink is not None:
                sink(path, files[path])
    return dict(sorted(files.items()))
