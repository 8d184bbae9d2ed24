"""Carry out a GPUStack cluster's plan through the server's API, under the project's lock.

The lock is on the server: a model named ``fleetform-lock-<project>`` (no replicas, no
backend) in the cluster. GPUStack keeps model names unique in a database constraint, so
of two applies only one creates it; the other is refused with the holder and its age.
It is deleted when the apply ends; one a crashed apply left is removed by
``fleetform unlock HOST``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from compiler.apply import (
    HostLocked,
    HostResult,
    Report,
    StepFailed,
    Target,
    current_step,
    owner,
    release_after_failure,
    with_lock_left,
)
from compiler.errors import FleetformError
from compiler.observed import ObservedHost
from compiler.plan import HostPlan, Step
from compiler.remote.gpustack import GPUStack, GPUStackError
from compiler.render.yaml_text import dump
from compiler.targets.gpustack.documents import lock_name, model_body
from compiler.targets.gpustack.observe import observe_cluster
from compiler.targets.gpustack.plan import desired_documents, plan_cluster

_LOCK_TEXT = "fleetform apply lock: held by "


def server_for(target: Target) -> GPUStack:
    return GPUStack.from_env(target.base_url, target.api_key_env)


def apply_cluster(host_plan: HostPlan, target: Target, project: str, say: Report) -> HostResult:
    host = host_plan.host
    result = HostResult(host, "converged")
    left: str | None = None
    try:
        server = server_for(target)
        cluster = target.cluster or ""
        seen = observe_cluster(server, host, cluster, project)
        if seen.error is not None:
            raise FleetformError(seen.error)
        cluster_id = seen.cluster_id or 0
        acquire(server, project, cluster_id)
        try:
            seen = observe_cluster(server, host, cluster, project)
            if seen.fingerprint() != host_plan.observed:
                fresh = plan_cluster(target.desired, seen, project)
                raise FleetformError(
                    "the cluster changed since the plan was made (stale plan): plan again"
                    + (f" ({len(fresh.steps)} steps now)" if fresh.error is None else "")
                )
            documents = desired_documents(target.desired)
            total = len(host_plan.steps)
            for number, step in enumerate(host_plan.steps, 1):
                started = time.monotonic()
                say(host, f"[{number}/{total}] {step.action} {step.name} ...")
                _run(server, step, documents, cluster_id, seen)
                result.done.append(step)
                took = time.monotonic() - started
                say(host, f"[{number}/{total}] {step.action} {step.name}: done ({took:.1f} s)")
        except BaseException:
            left = release_after_failure(lambda: _release(server, project))
            raise
        release(server, project)
    except StepFailed as error:
        result.status, result.error = "failed", f"{current_step(host_plan, result)}: {error}"
    except FleetformError as error:
        result.status, result.error = "failed", error.message
    return with_lock_left(result, left)


def _run(
    server: GPUStack,
    step: Step,
    documents: dict[tuple[str, str], tuple[str, dict[str, Any]]],
    cluster_id: int,
    seen: ObservedHost,
) -> None:
    kind = step.name.partition("/")[0]
    try:
        if kind == "backend":
            if step.action == "delete":
                server.call("DELETE", f"/v2/inference-backends/{int(step.current)}")
                return
            text, document = documents[("backend", step.deployment)]
            if step.keep:  # the versions the project's models are still on, as they are
                there = next(d for d in seen.documents if d.id == int(step.current))
                kept = {v: there.view["version_configs"][v] for v in step.keep}
                configs = {**document.get("version_configs", {}), **kept}
                text = dump({**document, "version_configs": configs})
            if step.action == "create":
                server.call("POST", "/v2/inference-backends/from-yaml", {"content": text})
            else:
                path = f"/v2/inference-backends/{int(step.current)}/from-yaml"
                server.call("PUT", path, {"content": text})
            return
        if step.action == "delete":
            server.call("DELETE", f"/v2/models/{int(step.current)}")
            return
        body = model_body(documents[("model", step.deployment)][1], cluster_id)
        if step.action == "create":
            server.call("POST", "/v2/models", body)
        else:
            server.call("PUT", f"/v2/models/{int(step.current)}", body)
    except GPUStackError as error:
        raise StepFailed(error.message) from None


def acquire(server: GPUStack, project: str, cluster_id: int) -> None:
    since = datetime.now(UTC).replace(microsecond=0).isoformat()
    body = {
        "name": lock_name(project),
        "source": "local_path",
        "local_path": "/fleetform-apply-lock",
        "replicas": 0,
        "cluster_id": cluster_id,
        "description": f"{_LOCK_TEXT}{owner()} since {since}",
    }
    try:
        server.call("POST", "/v2/models", body)
    except GPUStackError as error:
        if error.status != 409:
            raise
        raise HostLocked(_holder(server, project)) from None


def _holder(server: GPUStack, project: str) -> str:
    found = _lock_model(server, project)
    text = str((found or {}).get("description") or "")
    who = text.removeprefix(_LOCK_TEXT) if text.startswith(_LOCK_TEXT) else "another apply"
    return (
        f"locked by {who} (the model {lock_name(project)} on the server): wait for it,"
        " or `fleetform unlock HOST` if that apply is gone"
    )


def _lock_model(server: GPUStack, project: str) -> dict[str, Any] | None:
    for item in server.items("/v2/models", search=lock_name(project)):
        if item.get("name") == lock_name(project):
            return item
    return None


def _release(server: GPUStack, project: str) -> None:
    release(server, project)


def release(server: GPUStack, project: str) -> bool:
    """Delete the lock; whether there was one."""
    found = _lock_model(server, project)
    if found is None:
        return False
    server.call("DELETE", f"/v2/models/{int(found['id'])}")
    return True
