"""Stage 3: inheritance, env precedence, placeholders and placement → frozen workloads.

The result, a :class:`Fleet`, is the single intermediate form both renderers consume:
one :class:`Workload` per deployment replica, with the exact image, argv, env, GPUs,
mounts and port, plus where each value came from (for ``explain``). A module per
concern: :mod:`.workload` (the result), :mod:`.layers` (values and their origins),
:mod:`.backends`, :mod:`.hosts` and :mod:`.draft` (a deployment, then its replicas).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from compiler import inheritance
from compiler.errors import ErrorList, FleetformError, Mark, ResolveError
from compiler.hub import HubModel, revision_conflict
from compiler.model import Repo
from compiler.placement import HostSlots, Placed, Prior, place
from compiler.resolve.backends import resolve_backends
from compiler.resolve.clusters import resolve_clusters
from compiler.resolve.draft import Draft, draft_deployment
from compiler.resolve.hosts import check_unique, port_range, resolve_hosts
from compiler.resolve.layers import LazyLayers
from compiler.resolve.workload import (
    MAX_ARGUMENT_BYTES,
    MAX_CONTAINER_BYTES,
    MAX_FLEET_GPUS,
    MAX_WORKLOADS,
    Explanation,
    Fleet,
    Origin,
    ResolvedHost,
    Workload,
)

__all__ = [
    "MAX_ARGUMENT_BYTES",
    "MAX_CONTAINER_BYTES",
    "MAX_FLEET_GPUS",
    "MAX_WORKLOADS",
    "Explanation",
    "Fleet",
    "Origin",
    "ResolvedHost",
    "Workload",
    "resolve_fleet",
]


def resolve_fleet(repo: Repo, prior: dict[tuple[str, int], Prior] | None = None) -> Fleet:
    """Resolve the whole repository; every independent error is reported at once."""
    errors: list[FleetformError] = []
    settings = repo.settings
    hosts = resolve_hosts(repo, errors)
    backends = resolve_backends(repo, errors)
    deployments = {d.name: (d, doc) for d, doc in repo.deployments}
    check_unique([(d.name, doc) for d, doc in repo.deployments], "deployment", "name", errors)
    if errors:
        raise ErrorList(errors)

    parents = {name: list(d.extends or []) for name, (d, _) in deployments.items()}
    docs = {name: doc for name, (_, doc) in deployments.items()}
    concrete = sorted(name for name, (d, _) in deployments.items() if not d.abstract)
    chains = inheritance.chains(concrete, parents, docs, "deployment", errors)
    own_layers = LazyLayers(deployments)
    drafts: list[Draft] = []
    for name, chain in chains.items():
        try:
            drafts.append(draft_deployment(name, chain, deployments, backends, own_layers))
        except FleetformError as error:
            errors.append(error)
    if errors:
        raise ErrorList(errors)

    from compiler.targets import driver_for

    clusters = {
        name: host for name, (host, _) in hosts.items() if driver_for(host.target).schedules_itself
    }
    every_draft = drafts
    marks = {name: hosts[name][1] for name in clusters}
    machines = {name: h.labels for name, (h, _) in hosts.items() if name not in clusters}
    states, drafts = resolve_clusters(
        drafts, clusters, own_layers, settings.project, marks, machines, errors
    )
    if errors:
        raise ErrorList(errors)
    _check_workload_count(drafts)
    slots = [
        HostSlots(
            host.name,
            host.labels,
            dict(host.gpus),
            port_range(host.port_range),
            repo_host_mark,
        )
        for host, repo_host_mark in ((hosts[name][0], hosts[name][1]) for name in sorted(hosts))
        if host.name not in clusters
    ]
    placed = place(slots, [draft.request for draft in drafts], prior or {})
    by_deployment: dict[str, list[Placed]] = {}
    for item in placed:
        by_deployment.setdefault(item.deployment, []).append(item)

    workloads: list[Workload] = []
    for draft in drafts:
        try:
            for item in by_deployment.get(draft.name, []):
                workloads.append(draft.workload(item, hosts[item.host][0], settings))
        except FleetformError as error:
            errors.append(error)
    if errors:
        raise ErrorList(errors)
    workloads.sort(key=lambda w: (w.host, w.deployment, w.replica))
    _check_model_folders(workloads, {d.name: d for d in drafts})
    explained = {d.name: d for d in every_draft}
    return Fleet(
        settings=settings,
        hosts={name: value[0] for name, value in sorted(hosts.items())},
        workloads=tuple(workloads),
        explanations=_Explanations(explained, by_deployment, hosts),
        clusters=states,
    )


def _check_model_folders(workloads: list[Workload], drafts: dict[str, Draft]) -> None:
    """A host's model folder holds one revision of one hub's repository: two deployments
    that fetch into the same folder must ask for the same hub and revision; and no model
    folder may hold another's (``Qwen`` and ``Qwen/Qwen3-8B``): each fetch would replace
    or change the other's."""
    seen: dict[tuple[str, str], Workload] = {}
    # (host, folder) of every folder that holds a model folder below it.
    holding: dict[tuple[str, str], Workload] = {}
    for workload in workloads:
        model = workload.hub_model
        if model is None:
            continue
        host, folder = workload.host, model.folder
        first = seen.setdefault((host, folder), workload)
        if first is workload:
            parents = [folder.rsplit("/", n)[0] for n in range(1, folder.count("/"))]
            other = holding.get((host, folder)) or next(
                (seen[(host, p)] for p in parents if (host, p) in seen), None
            )
            if other is not None:
                raise _nested(workload, other, drafts)
            for parent in parents:
                holding.setdefault((host, parent), workload)
            continue
        other_model = first.hub_model
        if other_model is None or not revision_conflict(other_model, model):
            continue
        if other_model.source != model.source:
            raise drafts[workload.deployment].fail(
                _model_key(model),
                f"deployment '{workload.deployment}' needs {model.title} in {folder} on"
                f" host '{host}', where deployment '{first.deployment}' needs"
                f" {other_model.title}: a folder holds one hub's repository (place them on"
                " different hosts, or use one hub)",
            )
        raise drafts[workload.deployment].fail(
            "revision",
            f"deployment '{workload.deployment}' needs {model.repo_id} at revision"
            f" '{model.revision}' in {folder} on host '{host}', where"
            f" deployment '{first.deployment}' needs revision"
            f" '{other_model.revision}': a folder holds one revision (write the"
            " same revision, or place them on different hosts)",
        )


def _nested(workload: Workload, other: Workload, drafts: dict[str, Draft]) -> ResolveError:
    model, theirs = workload.hub_model, other.hub_model
    assert model is not None and theirs is not None
    return drafts[workload.deployment].fail(
        _model_key(model),
        f"deployment '{workload.deployment}' needs {model.title} in {model.folder} on host"
        f" '{workload.host}', and deployment '{other.deployment}' needs {theirs.title} in"
        f" {theirs.folder}: one model's folder would hold the other's (place them on"
        " different hosts)",
    )


def _model_key(model: HubModel) -> str:
    return "model_scope_model_id" if model.source == "model_scope" else "huggingface_repo_id"


def _check_workload_count(drafts: list[Draft]) -> None:
    total = 0
    for draft in drafts:
        total += draft.request.replicas
        if total > MAX_WORKLOADS:
            raise ResolveError(
                f"the fleet has more than {MAX_WORKLOADS} replicas in all",
                draft.request.locate("replicas"),
                "replicas",
            )


class _Explanations(Mapping[str, Explanation]):
    """Each deployment's explanation, built only when ``explain`` asks for it."""

    def __init__(
        self,
        drafts: dict[str, Draft],
        placed: dict[str, list[Placed]],
        hosts: dict[str, tuple[ResolvedHost, Mark]],
    ) -> None:
        self._drafts = drafts
        self._placed = placed
        self._hosts = hosts

    def __getitem__(self, name: str) -> Explanation:
        return self._drafts[name].explanation(self._placed.get(name, []), self._hosts)

    def __iter__(self) -> Iterator[str]:
        return iter(self._drafts)

    def __len__(self) -> int:
        return len(self._drafts)
