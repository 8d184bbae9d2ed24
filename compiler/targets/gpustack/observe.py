"""What a GPUStack cluster holds: the server's custom backends and the cluster's models,
each reduced to the fields fleetform manages and to whose mark it carries."""

from __future__ import annotations

from typing import Any

from compiler.errors import FleetformError
from compiler.observed import ObservedDocument, ObservedHost
from compiler.remote.gpustack import GPUStack
from compiler.targets.gpustack.documents import (
    LOCK_PREFIX,
    backend_view,
    mark_of,
    model_view,
)


def observe_cluster(server: GPUStack, host: str, cluster: str, project: str) -> ObservedHost:
    """The cluster as the server shows it; an unreachable or refusing server is a result."""
    try:
        cluster_id = server.cluster_id(cluster)
        backends = server.custom_backends()
        models = server.models(cluster_id)
    except FleetformError as error:
        return ObservedHost(host, "gpustack", error=error.message)
    documents = [_backend(item, project) for item in backends]
    documents += [
        _model(item, project)
        for item in models
        if not str(item.get("name", "")).startswith(LOCK_PREFIX)
    ]
    documents.sort(key=lambda d: (d.kind, d.name))
    return ObservedHost(host, "gpustack", cluster_id=cluster_id, documents=tuple(documents))


def _backend(item: dict[str, Any], project: str) -> ObservedDocument:
    mark = mark_of(item.get("description"))
    mine = mark is not None and mark.project == project and mark.deployment is None
    return ObservedDocument(
        kind="backend",
        name=str(item.get("backend_name")),
        id=int(item["id"]),
        view=backend_view(item),
        owner=str(item.get("backend_name")) if mine else None,
        spec=mark.spec if mine and mark else "",
    )


def _model(item: dict[str, Any], project: str) -> ObservedDocument:
    mark = mark_of(item.get("description"))
    mine = mark is not None and mark.project == project and mark.deployment is not None
    return ObservedDocument(
        kind="model",
        name=str(item.get("name")),
        id=int(item["id"]),
        view=model_view(item),
        owner=mark.deployment if mine and mark else None,
        spec=mark.spec if mine and mark else "",
    )
