"""The steps from what a GPUStack cluster holds to what the repository says. Pure.

Order, as GPUStack needs it: models deleted first (a backend in use cannot be deleted:
400), then backends created and updated (before the models that name them), then
models created and updated, then backends deleted — and the second half of a backend
update that removes a version one of the project's models is still on (GPUStack
refuses to remove a version in use: the first update keeps it until the models moved).
A backend some other model on the server uses is never deleted.
"""

from __future__ import annotations

from typing import Any

import yaml

from compiler.observed import ObservedDocument, ObservedHost
from compiler.plan import DesiredHost, HostPlan, Reason, Step, changes_between
from compiler.remote.gpustack import untrusted
from compiler.targets.gpustack.documents import (
    BACKENDS,
    MODELS,
    backend_view,
    comparable,
    mark_of,
    model_view,
)

# Steps in GPUStack's order: (kind, action, second half) → phase.
_PHASE = {
    ("model", "delete", False): 0,
    ("backend", "create", False): 1,
    ("backend", "update", False): 1,
    ("model", "create", False): 2,
    ("model", "update", False): 2,
    ("backend", "update", True): 3,
    ("backend", "delete", False): 4,
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

    def failed(error: str) -> HostPlan:
        return HostPlan(host, "gpustack", (), (), *fingerprints, error=error)

    if observed.error is not None:
        return failed(observed.error)
    wanted = desired_documents(desired)
    mine: dict[tuple[str, str], ObservedDocument] = {}
    for seen in observed.documents:
        if seen.owner is None:
            continue
        twin = mine.setdefault((seen.kind, seen.owner), seen)
        if twin is not seen:
            return failed(
                f"the {seen.kind}s '{shown(twin.name)}' and '{shown(seen.name)}' on the server"
                f" both carry the mark of {seen.kind} {shown(seen.owner)}: delete the copy"
            )
    foreign = {(d.kind, d.name): d for d in observed.documents if d.owner is None}
    steps: list[Step] = []
    unchanged: list[str] = []
    for (kind, key), (_, document) in sorted(wanted.items()):
        name = document["backend_name"] if kind == "backend" else document["name"]
        if (kind, name) in foreign and (kind, key) not in mine:
            return failed(
                f"{kind} '{shown(name)}' exists on the server and is not this project's (it has no"
                f" fleetform mark): rename yours, or adopt it with `fleetform import gpustack`"
            )
        found = _steps(desired, kind, key, name, document, mine.get((kind, key)), observed)
        if not found:
            unchanged.append(f"{kind}/{name}")
        steps.extend(found)
    users: dict[str, list[str]] = {}
    for backend, model in observed.backend_users:
        users.setdefault(backend, []).append(model)
    kept: list[str] = []
    for (kind, owner), there in sorted(mine.items(), key=lambda item: str(item[0])):
        if (kind, owner) in wanted:
            continue
        if kind == "backend" and there.name in users:
            user = shown(users[there.name][0])
            kept.append(f"backend/{there.name} (kept: model {user} uses it)")
            continue
        why = (
            "its deployment is no longer on this cluster"
            if kind == "model"
            else "no deployment on this cluster uses it any more"
        )
        steps.append(_delete(desired, there, why))
    steps.sort(key=lambda s: (_PHASE[(s.name.split("/")[0], s.action, _second(s))], s.name))
    models_now = [d for d in observed.documents if d.kind == "model" and d.owner is not None]
    models_wanted = [key for kind, key in wanted if kind == "model"]
    return HostPlan(
        host,
        "gpustack",
        tuple(steps),
        tuple(sorted(unchanged)),
        *fingerprints,
        empties=bool(models_now) and not models_wanted,
        foreign=tuple(sorted(f"{kind}/{name}" for kind, name in foreign) + kept),
    )


def shown(name: str) -> str:
    return untrusted(name)[:200]


def _second(step: Step) -> bool:
    return step.action == "update" and step.codes[:1] == ("versions-released",)


def _view(kind: str, document: dict[str, Any]) -> dict[str, Any]:
    return comparable(backend_view(document) if kind == "backend" else model_view(document))


def _steps(
    desired: DesiredHost,
    kind: str,
    key: str,
    name: str,
    document: dict[str, Any],
    there: ObservedDocument | None,
    observed: ObservedHost,
) -> list[Step]:
    """The steps one wanted document needs: none, a create, an update, or (a backend
    whose removed versions the project's models are still on) two updates."""
    mark = mark_of(document.get("description"))
    spec = mark.spec if mark else ""
    if there is None:
        missing: Reason = ("missing", "not on the cluster")
        step = Step(desired.host, "gpustack", "create", f"{kind}/{name}", key, 0, (missing[1],))
        return [_with(step, codes=(missing[0],), spec_hash=spec)]
    before, after = comparable(there.view), _view(kind, document)
    if before == after and there.spec == spec:
        return []
    reason: Reason = (
        ("spec-changed", "the repository changed it")
        if there.spec != spec
        else ("drift", "changed on the server, outside fleetform")
    )
    update = Step(
        desired.host,
        "gpustack",
        "update",
        f"{kind}/{name}",
        key,
        0,
        (reason[1],),
        changes_between(before, after),
        (reason[0],),
        spec_hash=spec,
        current=str(there.id),
    )
    if kind != "backend":
        return [update]
    removed = set(before.get("version_configs", {})) - set(after.get("version_configs", {}))
    in_use = sorted(
        str(d.view.get("backend_version"))
        for d in observed.documents
        if d.kind == "model"
        and d.owner is not None
        and d.view.get("backend") == name
        and d.view.get("backend_version") in removed
    )
    if not in_use:
        return [update]
    keep = tuple(sorted(set(in_use)))
    released: Reason = (
        "versions-released",
        f"removes version(s) {', '.join(keep)} now that the models on them moved",
    )
    return [
        _with(update, keep=keep),
        _with(update, reasons=(released[1],), codes=(released[0],), changes=()),
    ]


def _with(step: Step, **fields: Any) -> Step:
    from dataclasses import replace

    return replace(step, **fields)


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
