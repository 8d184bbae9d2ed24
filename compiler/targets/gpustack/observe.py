"""What a GPUStack cluster holds: the server's custom backends and the cluster's models,
each reduced to the fields fleetform manages and to whose mark it carries.

The server's answers are untrusted: an object whose id or name is not what GPUStack
writes makes the observation an error, never a crash; the other projects' objects are
kept by name only (and a model's backend), so their activity does not make this
project's saved plans stale.
"""

from __future__ import annotations

from typing import Any

from compiler.errors import FleetformError
from compiler.observed import ObservedDocument, ObservedHost
from compiler.remote.gpustack import GPUStack, GPUStackError, object_id
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
        models = server.models()
        documents = [_backend(item, project, server.url) for item in backends]
        users: list[tuple[str, str]] = []
        for item in models:
            name = _text(item, "name", server.url)
            if name.startswith(LOCK_PREFIX):
                continue
            model = _model(item, project, server.url)
            if item.get("cluster_id") == cluster_id:
                documents.append(model)
            if model.owner is None and isinstance(item.get("backend"), str):
                users.append((item["backend"], name))
    except FleetformError as error:
        return ObservedHost(host, "gpustack", error=error.message)
    documents.sort(key=lambda d: (d.kind, d.name, d.id))
    return ObservedHost(
        host,
        "gpustack",
        cluster_id=cluster_id,
        documents=tuple(documents),
        backend_users=tuple(sorted(set(users))),
    )


def _text(item: dict[str, Any], key: str, url: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise GPUStackError(f"GPUStack at {url} answered an object whose {key} is {value!r}")
    return value


def _description(item: dict[str, Any]) -> str | None:
    value = item.get("description")
    return value if isinstance(value, str) else None


def _backend(item: dict[str, Any], project: str, url: str) -> ObservedDocument:
    name = _text(item, "backend_name", url)
    mark = mark_of(_description(item))
    if mark is None or mark.project != project or mark.deployment is not None:
        return ObservedDocument("backend", name, object_id(item, url), {}, None)
    return ObservedDocument(
        "backend", name, object_id(item, url), backend_view(item), name, mark.spec
    )


def _model(item: dict[str, Any], project: str, url: str) -> ObservedDocument:
    name = _text(item, "name", url)
    mark = mark_of(_description(item))
    if mark is None or mark.project != project or mark.deployment is None:
        return ObservedDocument("model", name, object_id(item, url), {}, None)
    return ObservedDocument(
        "model", name, object_id(item, url), model_view(item), mark.deployment, mark.spec
    )
