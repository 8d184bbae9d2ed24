"""Placement: which host, GPUs and port each deployment replica gets.

The rule, in order (documented in the README):

1. Explicit ``gpu_selector.gpu_ids`` are taken as written, split into replicas of
   ``gpus_per_replica`` consecutive ids.
2. Automatic replicas keep the host and GPUs the previous compile gave them (read
   from ``output/<host>/index.json``) while that placement is still valid, so adding
   or removing an unrelated deployment never moves an existing one.
3. Remaining automatic replicas are placed in name order on the matching host with
   the most free GPUs of their framework (CPU workloads: the fewest workloads), ties
   broken by host name, taking the lowest free GPU indices.
4. Ports: explicit ports first; then each automatic port is kept from the previous
   compile if still free and in range, else the lowest free port of the host's range.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from compiler.errors import Mark, ResolveError


@dataclass(frozen=True)
class HostSlots:
    """What placement needs to know of a host."""

    name: str
    labels: dict[str, str]
    gpus: dict[int, str]  # index → framework
    port_range: tuple[int, int]
    mark: Mark

    @cached_property
    def gpus_of(self) -> dict[str, list[int]]:
        """The host's GPU indices per framework, lowest first."""
        found: dict[str, list[int]] = {}
        for index, framework in sorted(self.gpus.items()):
            found.setdefault(framework, []).append(index)
        return found


@dataclass(frozen=True, slots=True)
class Request:
    """One deployment's placement needs, after inheritance."""

    deployment: str
    replicas: int
    framework: str
    gpus_per_replica: int
    gpu_ids: tuple[tuple[str, str, int], ...] | None  # (host, framework, index)
    worker_selector: dict[str, str]
    port: int | None
    mark: Mark
    per_explicit: bool
    # Where a merged key (dotted) was written. Asked only to report an error, so the
    # deployment's origin table is built for the few deployments that have one.
    locate: Callable[[str], Mark]

    @property
    def gpu_ids_mark(self) -> Mark:
        return self.locate("gpu_selector.gpu_ids")

    @property
    def port_mark(self) -> Mark:
        return self.locate("port")

    @property
    def selector_mark(self) -> Mark:
        return self.locate("worker_selector")

    @property
    def per_mark(self) -> Mark:
        return self.locate("gpu_selector.gpus_per_replica")


@dataclass(frozen=True, slots=True)
class Prior:
    """Where the previous compile put one replica."""

    host: str
    gpus: tuple[int, ...]
    port: int | None


@dataclass(frozen=True, slots=True)
class Placed:
    deployment: str
    replica: int
    host: str
    gpus: tuple[int, ...]
    port: int
    gpus_kept: bool
    port_kept: bool


_Rank = tuple[int, str]


@dataclass
class _State:
    gpu_owner: dict[tuple[str, int], str] = field(default_factory=dict)
    port_owner: dict[tuple[str, int], str] = field(default_factory=dict)
    load: dict[str, int] = field(default_factory=dict)
    # Candidate hosts per (selector, framework, GPUs needed), best first. Ranks only
    # ever get worse as GPUs are claimed, so a stale entry is re-ranked when it surfaces.
    heaps: dict[tuple[object, ...], list[_Rank]] = field(default_factory=dict)
    # The hosts that carry each label (key, value), in host order.
    labelled: dict[tuple[str, str], list[HostSlots]] = field(default_factory=dict)


def place(
    hosts: list[HostSlots],
    requests: list[Request],
    prior: dict[tuple[str, int], Prior],
) -> list[Placed]:
    by_name = {host.name: host for host in hosts}
    state = _State(labelled=_by_label(hosts))
    assigned: dict[tuple[str, int], tuple[str, tuple[int, ...], bool]] = {}
    requests = sorted(requests, key=lambda r: r.deployment)

    for request in requests:
        if request.gpu_ids is not None:
            for replica, (host, gpus) in enumerate(_explicit(request, by_name)):
                _claim(state, request, replica, host, gpus, request.gpu_ids_mark)
                assigned[(request.deployment, replica)] = (host, gpus, True)

    automatic = [r for r in requests if r.gpu_ids is None]
    for request in automatic:
        for replica in range(request.replicas):
            old = prior.get((request.deployment, replica))
            if old is not None and _prior_fits(request, old, by_name, state):
                _claim(state, request, replica, old.host, old.gpus, request.mark)
                assigned[(request.deployment, replica)] = (old.host, old.gpus, True)
    for request in automatic:
        for replica in range(request.replicas):
            if (request.deployment, replica) in assigned:
                continue
            host, gpus = _choose(request, replica, hosts, by_name, state)
            _claim(state, request, replica, host, gpus, request.mark)
            assigned[(request.deployment, replica)] = (host, gpus, False)

    return _ports(requests, assigned, by_name, prior, state)


def _by_label(hosts: list[HostSlots]) -> dict[tuple[str, str], list[HostSlots]]:
    labelled: dict[tuple[str, str], list[HostSlots]] = {}
    for host in hosts:
        for label in host.labels.items():
            labelled.setdefault(label, []).append(host)
    return labelled


def _explicit(request: Request, hosts: dict[str, HostSlots]) -> list[tuple[str, tuple[int, ...]]]:
    assert request.gpu_ids is not None
    ids = request.gpu_ids
    where = request.gpu_ids_mark
    seen: set[tuple[str, str, int]] = set()
    for host_name, framework, index in ids:
        text = f"{host_name}:{framework}:{index}"
        if (host_name, framework, index) in seen:
            raise ResolveError(f"GPU '{text}' is listed twice", where, "gpu_selector.gpu_ids")
        seen.add((host_name, framework, index))
        host = hosts.get(host_name)
        if host is None:
            raise ResolveError(
                f"GPU '{text}' names host '{host_name}', which is not in hosts.d"
                f" (hosts: {', '.join(sorted(hosts)) or 'none'})",
                where,
                "gpu_selector.gpu_ids",
            )
        if index not in host.gpus:
            raise ResolveError(
                f"GPU '{text}': host '{host_name}' ({host.mark}) has no GPU {index}",
                where,
                "gpu_selector.gpu_ids",
            )
        if host.gpus[index] != framework:
            raise ResolveError(
                f"GPU '{text}': GPU {index} of host '{host_name}' ({host.mark})"
                f" is {host.gpus[index]}, not {framework}",
                where,
                "gpu_selector.gpu_ids",
            )
        if request.framework not in ("cpu", framework):
            raise ResolveError(
                f"GPU '{text}' is {framework} but deployment '{request.deployment}'"
                f" runs a {request.framework} backend version",
                where,
                "gpu_selector.gpu_ids",
            )
    per = request.gpus_per_replica
    if request.replicas == 0:
        return []
    if per * request.replicas != len(ids):
        message = (
            f"{len(ids)} GPU ids do not make {request.replicas} replicas of {per} GPUs"
            if request.per_explicit
            else f"{len(ids)} GPU ids do not split evenly into {request.replicas} replicas"
        )
        raise ResolveError(message, where, "gpu_selector.gpu_ids")
    chunks = []
    for replica in range(request.replicas):
        chunk = ids[replica * per : (replica + 1) * per]
        hosts_in_chunk = sorted({item[0] for item in chunk})
        if len(hosts_in_chunk) > 1:
            raise ResolveError(
                f"replica {replica} would span hosts {', '.join(hosts_in_chunk)};"
                " a replica's GPUs must be on one host",
                where,
                "gpu_selector.gpu_ids",
            )
        chunks.append((chunk[0][0], tuple(item[2] for item in chunk)))
    return chunks


def _claim(
    state: _State, request: Request, replica: int, host: str, gpus: tuple[int, ...], mark: Mark
) -> None:
    me = _who(request.deployment, replica)
    for index in gpus:
        owner = state.gpu_owner.get((host, index))
        if owner is not None:
            raise ResolveError(
                f"GPU {index} of host '{host}' is given to both {owner} and {me}",
                mark,
                "gpu_selector.gpu_ids",
            )
    for index in gpus:
        state.gpu_owner[(host, index)] = me
    state.load[host] = state.load.get(host, 0) + 1


def _who(deployment: str, replica: int) -> str:
    return f"'{deployment}' (replica {replica})"


def _matches(request: Request, host: HostSlots) -> bool:
    return all(host.labels.get(key) == value for key, value in request.worker_selector.items())


def _free(request: Request, host: HostSlots, state: _State) -> list[int]:
    owner = state.gpu_owner
    return [
        index
        for index in host.gpus_of.get(request.framework, ())
        if (host.name, index) not in owner
    ]


def _prior_fits(request: Request, old: Prior, hosts: dict[str, HostSlots], state: _State) -> bool:
    host = hosts.get(old.host)
    if host is None or not _matches(request, host):
        return False
    if len(old.gpus) != request.gpus_per_replica:
        return False
    free = set(_free(request, host, state))
    return all(index in free for index in old.gpus)


def _choose(
    request: Request,
    replica: int,
    hosts: list[HostSlots],
    by_name: dict[str, HostSlots],
    state: _State,
) -> tuple[str, tuple[int, ...]]:
    need = request.gpus_per_replica

    def rank(host: HostSlots) -> _Rank:
        if need:
            return (-len(_free(request, host, state)), host.name)
        return (state.load.get(host.name, 0), host.name)

    key = (tuple(sorted(request.worker_selector.items())), request.framework, need)
    heap = state.heaps.get(key)
    if heap is None:
        heap = [rank(host) for host in _matching(request, hosts, state)]
        heapq.heapify(heap)
        state.heaps[key] = heap
    while heap:
        stored, name = heap[0]
        current = rank(by_name[name])
        if (stored, name) != current:
            heapq.heapreplace(heap, current)
            continue
        free = _free(request, by_name[name], state)
        if len(free) < need:
            heap.clear()  # the host with the most free GPUs lacks them: so does every host
            break
        return name, tuple(free[:need])
    matching = [h for h in hosts if _matches(request, h)]
    selector = _selector_text(request.worker_selector)
    if not matching:
        raise ResolveError(
            f"no host matches worker_selector {selector}",
            request.selector_mark,
            "worker_selector",
        )
    free_text = ", ".join(f"{h.name}: {len(_free(request, h, state))}" for h in matching)
    raise ResolveError(
        f"replica {replica} needs {need} free {request.framework} GPU(s) on a host"
        f" matching {selector}; free: {free_text}",
        request.per_mark,
        "gpu_selector.gpus_per_replica",
    )


def _matching(request: Request, hosts: list[HostSlots], state: _State) -> list[HostSlots]:
    """The hosts that match ``request``'s worker_selector, in host order."""
    if not request.worker_selector:
        return hosts
    # Only hosts that carry the selector's rarest label can match all of it.
    fewest = min(
        (state.labelled.get(label, []) for label in request.worker_selector.items()), key=len
    )
    return [host for host in fewest if _matches(request, host)]


def _selector_text(selector: dict[str, str]) -> str:
    if not selector:
        return "{} (any host)"
    return "{" + ", ".join(f"{k}: {v}" for k, v in sorted(selector.items())) + "}"


def _ports(
    requests: list[Request],
    assigned: dict[tuple[str, int], tuple[str, tuple[int, ...], bool]],
    hosts: dict[str, HostSlots],
    prior: dict[tuple[str, int], Prior],
    state: _State,
) -> list[Placed]:
    ports: dict[tuple[str, int], tuple[int, bool]] = {}
    for request in requests:
        if request.port is None:
            continue
        for replica in range(request.replicas):
            host = assigned[(request.deployment, replica)][0]
            _claim_port(state, host, request.port, request, replica, request.port_mark)
            ports[(request.deployment, replica)] = (request.port, False)
    automatic = [r for r in requests if r.port is None]
    for request in automatic:
        for replica in range(request.replicas):
            host = assigned[(request.deployment, replica)][0]
            old = prior.get((request.deployment, replica))
            low, high = hosts[host].port_range
            if (
                old is not None
                and old.host == host
                and old.port is not None
                and low <= old.port <= high
                and (host, old.port) not in state.port_owner
            ):
                _claim_port(state, host, old.port, request, replica, request.mark)
                ports[(request.deployment, replica)] = (old.port, True)
    for request in automatic:
        for replica in range(request.replicas):
            if (request.deployment, replica) in ports:
                continue
            host = assigned[(request.deployment, replica)][0]
            low, high = hosts[host].port_range
            port = next(
                (p for p in range(low, high + 1) if (host, p) not in state.port_owner), None
            )
            if port is None:
                raise ResolveError(
                    f"port range {low}-{high} of host '{host}' ({hosts[host].mark}) is"
                    f" exhausted; no port left for {_who(request.deployment, replica)}",
                    request.mark,
                    "port",
                )
            _claim_port(state, host, port, request, replica, request.mark)
            ports[(request.deployment, replica)] = (port, False)

    placed = []
    for (deployment, replica), (host, gpus, gpus_kept) in sorted(assigned.items()):
        port, port_kept = ports[(deployment, replica)]
        placed.append(Placed(deployment, replica, host, gpus, port, gpus_kept, port_kept))
    return placed


def _claim_port(
    state: _State, host: str, port: int, request: Request, replica: int, mark: Mark
) -> None:
    me = _who(request.deployment, replica)
    owner = state.port_owner.get((host, port))
    if owner is not None:
        raise ResolveError(
            f"port {port} on host '{host}' is used by both {owner} and {me}", mark, "port"
        )
    state.port_owner[(host, port)] = me
