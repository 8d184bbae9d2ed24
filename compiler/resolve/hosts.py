"""Hosts: their GPUs, port ranges and labels, checked; the GPU ids deployments name; one
name per host, backend and deployment."""

from __future__ import annotations

import re

from compiler.errors import FleetformError, Mark, ResolveError
from compiler.load import Document
from compiler.model import Host, Repo
from compiler.resolve.workload import MAX_FLEET_GPUS, ResolvedHost


def check_unique(
    items: list[tuple[str, Document]], what: str, key: str, errors: list[FleetformError]
) -> None:
    """Each name once; ``key`` is the field that holds it in each document."""
    first: dict[str, Document] = {}
    for name, doc in items:
        if name in first:
            where = first[name].source.mark((key,))
            errors.append(
                ResolveError(
                    f"duplicate {what} '{name}' (first defined at {where})",
                    doc.source.mark((key,)),
                    key,
                )
            )
        else:
            first[name] = doc


def port_range(text: str) -> tuple[int, int]:
    low, high = text.split("-")
    return int(low), int(high)


def resolve_hosts(repo: Repo, errors: list[FleetformError]) -> dict[str, tuple[ResolvedHost, Mark]]:
    defaults = repo.settings.defaults
    check_unique([(h.name, doc) for h, doc in repo.hosts], "host", "name", errors)
    hosts: dict[str, tuple[ResolvedHost, Mark]] = {}
    fleet_gpus = 0
    for host, doc in repo.hosts:
        gpus = host.gpu_list()
        fleet_gpus += len(gpus)
        if fleet_gpus > MAX_FLEET_GPUS:
            errors.append(
                ResolveError(
                    f"the fleet has more than {MAX_FLEET_GPUS} GPUs in all",
                    doc.source.mark(("gpus",)),
                    "gpus",
                )
            )
            break
        seen: set[int] = set()
        for position, gpu in enumerate(gpus):
            if gpu.index in seen:
                # Only a list of {index, …} can repeat an index (a count continues
                # after the highest), so the position is that list's item.
                errors.append(
                    ResolveError(
                        f"GPU index {gpu.index} is listed twice",
                        doc.source.mark(("gpus", position, "index")),
                        f"gpus[{position}].index",
                    )
                )
            seen.add(gpu.index)
        _check_fields(host, doc, host.target or defaults.target, errors)
        if host.ssh is not None and not re.match(r"^[^@\s]+@[^@\s:]+(:\d+)?$", host.ssh):
            errors.append(
                ResolveError(
                    f"'{host.ssh}' is not user@host[:port]", doc.source.mark(("ssh",)), "ssh"
                )
            )
        hosts.setdefault(
            host.name,
            (
                ResolvedHost(
                    name=host.name,
                    address=host.address or "",
                    target=host.target or defaults.target,
                    docker_host=host.docker_host,
                    ssh=host.ssh,
                    model_dir=host.model_dir or defaults.model_dir,
                    port_range=host.port_range or defaults.port_range,
                    unit_dir=host.unit_dir or defaults.unit_dir,
                    gpus=tuple(sorted((g.index, g.framework) for g in gpus)),
                    labels=dict(host.labels or {}),
                    url=host.url,
                    cluster=host.cluster,
                    api_key_env=host.api_key_env,
                ),
                doc.mark,
            ),
        )
    return hosts


def _check_fields(host: Host, doc: Document, kind: str, errors: list[FleetformError]) -> None:
    """The fields this kind of host needs are there, and none it would ignore is."""
    from compiler.targets import driver_for

    driver = driver_for(kind)
    written = host.model_fields_set - {"name", "target"}
    for key in sorted(written - set(driver.host_fields)):
        errors.append(
            ResolveError(
                f"a {kind} host has no '{key}' (its fields: {', '.join(driver.host_fields)})",
                doc.source.mark((key,)),
                key,
            )
        )
    for key in driver.required_host_fields:
        if getattr(host, key) is None:
            errors.append(ResolveError("required key is missing", doc.mark, key))


def parse_gpu_id(text: str, mark: Mark) -> tuple[str, str, int]:
    parts = text.split(":")
    if len(parts) != 3 or not re.fullmatch(r"[0-9]{1,5}", parts[2], re.ASCII):
        raise ResolveError(
            f"'{text}' is not a GPU id of the form <host>:<framework>:<index>",
            mark,
            "gpu_selector.gpu_ids",
        )
    return parts[0], parts[1], int(parts[2])
