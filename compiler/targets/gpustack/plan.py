"""The steps from what a GPUStack cluster holds to what the repository says. Pure.

Order, as GPUStack needs it: models deleted first (a backend in use cannot be deleted:
400), then backends created and updated (before the models that name them), then
models created and updated, then backends deleted.
"""

from __future__ import annotations

from typing import Any

import yaml

from compiler.observed import ObservedDocument, ObservedHost
from compiler.plan import DesiredHost, HostPlan, Reason, Step, changes_between
from compiler.targets.gpustack.documents import (
    backend_view,
    comparable,
    mark_of,
    model_view,
)

BACKENDS = "gpustack/backends/"
MODELS = "gpustack/models/"
# Steps in GPUStack's order: (kind, action) → phase.
_PHASE = {
    ("model", "delete"): 0,
    ("backend", "create"): 1,
    ("backend", "update"): 1,
    ("model", "create"): 2,
    ("model", "update"): 2,
    ("backend", "delete"): 3,
}


def desired_documents(desired: DesiredHost) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    """(kind, key) → the artifact's text and document: backends by their name on the
    server, models by deployment."""
    found: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for path, text in sorted((desired.documents or {}).items()):
        document = yaml.safe_load(text)
        if path.startswith(BACKENDS):
            found[("backend", document["backend_name"])] = (text, document)
        elif path.startswith(MODELS):
            found[("model", path[len(MODELS) :].removesuffix(".yaml"))] = (text, document)
    return found


def plan_cluster(desired: DesiredHost, observed: ObservedHost, project: str) -> HostPlan:
    host = desired.host
    fingerprints = (observed.fingerprint(), desired.fingerprint())
    if observed.error is not None:
        return HostPlan(host, "gpustack", (), (), *fingerprints, error=observed.error)
    wanted = desired_documents(desired)
    mine = {(d.kind, d.owner): d for d in observed.documents if d.owner is not None}
    foreign = {(d.kind, d.name): d for d in observed.documents if d.owner is None}
    steps: list[Step] = []
    unchanged: list[str] = []
    for (kind, key), (_, document) in sorted(wanted.items()):
        name = document["backend_name"] if kind == "backend" else document["name"]
        squatter = foreign.get((kind, name))
        if squatter is not None and (kind, key) not in mine:
            error = (
                f"{kind} '{name}' exists on the server and is not this project's (it has no"
                f" fleetform mark): rename yours, or adopt it with `fleetform import gpustack`"
            )
            return HostPlan(host, "gpustack", (), (), *fingerprints, error=error)
        step = _step(desired, kind, key, name, document, mine.get((kind, key)))
        if step is None:
            unchanged.append(f"{kind}/{name}")
        else:
            steps.append(step)
    for (kind, owner), there in sorted(mine.items(), key=lambda item: str(item[0])):
        if (kind, owner) not in wanted:
            why = (
                "its deployment is no longer on this cluster"
                if kind == "model"
                else "no deployment on this cluster uses it any more"
            )
            steps.append(_delete(desired, there, why))
    steps.sort(key=lambda s: (_PHASE[(s.name.split("/")[0], s.action)], s.name))
    models_now = [d for d in observed.documents if d.kind == "model" and d.owner is not None]
    models_wanted = [key for kind, key in wanted if kind == "model"]
    return HostPlan(
        host,
        "gpustack",
        tuple(steps),
        tuple(sorted(unchanged)),
        *fingerprints,
        empties=bool(models_now) and not models_wanted,
        foreign=tuple(sorted(f"{kind}/{name}" for kind, name in foreign)),
    )


def _view(kind: str, document: dict[str, Any]) -> dict[str, Any]:
    return comparable(backend_view(document) if kind == "backend" else model_view(document))


def _step(
    desired: DesiredHost,
    kind: str,
    key: str,
    name: str,
    document: dict[str, Any],
    there: ObservedDocument | None,
) -> Step | None:
    mark = mark_of(document.get("description"))
    spec = mark.spec if mark else ""
    deployment = key  # a model's deployment; a backend's name on the server
    if there is None:
        missing: Reason = ("missing", "not on the cluster")
        return Step(
            desired.host,
            "gpustack",
            "create",
            f"{kind}/{name}",
            deployment,
            0,
            (missing[1],),
            codes=(missing[0],),
            spec_hash=spec,
        )
    before, after = comparable(there.view), _view(kind, document)
    if before == after and there.spec == spec:
        return None
    reason: Reason
    if there.spec != spec:
        reason = ("spec-changed", "the repository changed it")
    else:
        reason = ("drift", "changed on the server, outside fleetform")
    return Step(
        desired.host,
        "gpustack",
        "update",
        f"{kind}/{name}",
        deployment,
        0,
        (reason[1],),
        changes_between(before, after),
        (reason[0],),
        spec_hash=spec,
        current=str(there.id),
    )


def _delete(desired: DesiredHost, there: ObservedDocument, why: str) -> Step:
    reason: Reason = ("orphan", why)
    return Step(
        desired.host,
        "gpustack",
        "delete",
        f"{there.kind}/{there.name}",
        there.owner or "",
        0,
        (reason[1],),
        codes=(reason[0],),
        current=str(there.id),
    )
