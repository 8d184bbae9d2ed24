"""Clusters: deployments a GPUStack cluster schedules itself, as the documents it takes.

A host whose driver schedules replicas itself (``target: gpustack``) is not given
replicas, GPUs or ports by placement. It takes whole deployments instead: those whose
``worker_selector`` shares a label with the cluster's ``labels`` and agrees with it on
every label the cluster has. The selector's other labels are the cluster's business
(GPUStack matches them against its workers' labels). What the cluster gets is the
deployment as written (after ``extends``), not a rendered container: GPUStack renders
its backends' commands itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compiler.errors import FleetformError, Mark, ResolveError
from compiler.model import SecretRef
from compiler.resolve.backends import BackendLayers
from compiler.resolve.draft import Draft
from compiler.resolve.layers import Layer, merge, set_fields
from compiler.resolve.workload import ClusterState, ResolvedHost
from compiler.targets.gpustack.documents import (
    LOCK_PREFIX,
    gpustack_backend_name,
    normal_url,
    stamped,
)
from compiler.template import UndefinedPlaceholder, names_in

# Deployment fields that describe a container fleetform runs itself; a GPUStack model
# has no such field (its worker decides them), so on a cluster they are errors.
NOT_ON_CLUSTERS = (
    "entrypoint",
    "port",
    "volumes",
    "devices",
    "ports",
    "shm_size",
    "labels",
    "network_mode",
    "restart",
    "health_check_path",
    "health_timeout",
    "stop_timeout",
    "revision",
    "allow_patterns",
    "model_provisioning",
)


def cluster_of(draft: Draft, clusters: Mapping[str, ResolvedHost], mark: Mark) -> str | None:
    """The cluster a deployment goes to, or None (placement places it on hosts)."""
    selector = draft.request.worker_selector
    found = [
        name
        for name, host in sorted(clusters.items())
        if any(host.labels.get(k) == v for k, v in selector.items())
        and all(selector[k] == v for k, v in host.labels.items() if k in selector)
    ]
    if len(found) > 1:
        raise ResolveError(
            f"worker_selector matches the GPUStack clusters {', '.join(found)}: a deployment"
            " runs on one cluster",
            mark,
            "worker_selector",
        )
    return found[0] if found else None


def resolve_clusters(
    drafts: list[Draft],
    clusters: Mapping[str, ResolvedHost],
    own_layers: Mapping[str, Layer],
    project: str,
    marks: Mapping[str, Mark],
    machines: Mapping[str, dict[str, str]],
    errors: list[FleetformError],
) -> tuple[dict[str, ClusterState], list[Draft]]:
    """Each cluster's documents, and the drafts left for placement on hosts
    (``machines``: the other hosts' labels)."""
    states = {name: ClusterState() for name in clusters}
    if not clusters:
        return states, drafts
    by_url: dict[str, str] = {}
    for name, host in sorted(clusters.items()):
        first = by_url.setdefault(normal_url(host.url or ""), name)
        if first != name:  # a server's backends are all its clusters': one entry drives them
            errors.append(
                ResolveError(
                    f"hosts {first} and {name} are the same GPUStack server ({host.url}): one"
                    " hosts.d entry per server",
                    marks[name],
                    "url",
                )
            )
    left: list[Draft] = []
    served: dict[tuple[str, str], str] = {}
    as_named: dict[tuple[str, str], str] = {}
    for draft in drafts:
        try:
            cluster = cluster_of(draft, clusters, draft.origin("worker_selector").mark)
            if cluster is None:
                left.append(draft)
                continue
            _check_not_on_a_host(draft, cluster, machines)
            _check_placeholders(draft)
            values = merge([own_layers[link] for link in draft.chain])
            model = model_document(draft, values, clusters[cluster], project)
            other = served.setdefault((cluster, model["name"]), draft.name)
            if other != draft.name:
                raise ResolveError(
                    f"deployments '{other}' and '{draft.name}' are both served as"
                    f" '{model['name']}' on cluster {cluster} (a GPUStack model name is unique)",
                    draft.origin("served_name").mark,
                    "served_name",
                )
            backend = backend_document(draft.backend, project)
            named = backend["backend_name"]
            first = as_named.setdefault((cluster, named), draft.backend.name)
            if first != draft.backend.name:
                raise ResolveError(
                    f"backends '{first}' and '{draft.backend.name}' would both be '{named}' on"
                    f" cluster {cluster} (GPUStack's custom backend names end in -custom):"
                    " rename one",
                    draft.origin("backend").mark,
                    "backend",
                )
            states[cluster].models[draft.name] = model
            states[cluster].backends[named] = backend
        except FleetformError as error:
            errors.append(error)
    return states, left


def _check_not_on_a_host(
    draft: Draft, cluster: str, machines: Mapping[str, dict[str, str]]
) -> None:
    """A selector a cluster and a host both match is a question, not a choice to make."""
    selector = draft.request.worker_selector
    for name, labels in sorted(machines.items()):
        if all(labels.get(k) == v for k, v in selector.items()):
            raise ResolveError(
                f"worker_selector matches GPUStack cluster {cluster} and host {name}: add a"
                " label that tells them apart",
                draft.origin("worker_selector").mark,
                "worker_selector",
            )


# The placeholders GPUStack's worker fills in itself (gpustack/worker/backends/custom.py
# and base.py): a cluster deployment may use these and its env's names, no other.
GPUSTACK_BUILTINS = ("gpu_count", "gpu_ids", "model_name", "model_path", "port", "worker_ip")


def _check_placeholders(draft: Draft) -> None:
    """What fleetform checks on hosts, for a command GPUStack renders: every placeholder
    of the command, its parameters and env values is defined (GPUStack would leave an
    undefined one in the command)."""
    values = draft.values
    env = values.get("env") or {}
    defined = sorted({*GPUSTACK_BUILTINS, *env})
    texts: list[tuple[str, str]] = [("run_command", values.get("run_command") or "")]
    texts += [("backend_parameters", p) for p in values.get("backend_parameters") or ()]
    texts += [("default_backend_param", p) for p in values.get("default_backend_param") or ()]
    texts += [(f"env.{k}", v) for k, v in env.items() if isinstance(v, str)]
    for key, text in texts:
        missing = [name for name in names_in(text) if name not in defined]
        if missing:
            raise ResolveError(
                str(UndefinedPlaceholder(missing, defined)), draft.origin(key).mark, key
            )


def model_document(
    draft: Draft, values: dict[str, Any], cluster: ResolvedHost, project: str
) -> dict[str, Any]:
    """The GPUStack model a deployment is (the fields fleetform manages)."""
    for key in NOT_ON_CLUSTERS:
        if values.get(key) not in (None, [], {}):
            raise ResolveError(
                f"'{key}' is not a GPUStack model field; on cluster {cluster.name} GPUStack's"
                " worker decides it (remove it, or place the deployment on a host)",
                draft.origin(key).mark,
                key,
            )
    selector = values.get("gpu_selector") or {}
    if selector.get("gpu_ids"):
        raise ResolveError(
            f"gpu_ids name fleetform hosts' GPUs; on cluster {cluster.name} use"
            " gpus_per_replica, or worker_selector for GPUStack's workers",
            draft.origin("gpu_selector.gpu_ids").mark,
            "gpu_selector.gpu_ids",
        )
    env = values.get("env") or {}
    for name, value in env.items():
        if isinstance(value, SecretRef | dict):
            raise ResolveError(
                f"env {name} is a secret; a GPUStack cluster stores a model's env as"
                " written, so secrets are not sent to clusters yet",
                draft.origin(f"env.{name}").mark,
                f"env.{name}",
            )
    workers = {
        k: v for k, v in (values.get("worker_selector") or {}).items() if k not in cluster.labels
    }
    source = values.get("source") or (
        "huggingface"
        if values.get("huggingface_repo_id")
        else "model_scope"
        if values.get("model_scope_model_id")
        else "local_path"
    )
    per_replica = selector.get("gpus_per_replica")
    replicas = values.get("replicas")
    served = values.get("served_name") or draft.name
    if served.startswith(LOCK_PREFIX):
        raise ResolveError(
            f"'{served}' starts with {LOCK_PREFIX}, the name of fleetform's apply lock on a"
            " GPUStack server: choose another served_name",
            draft.origin("served_name").mark,
            "served_name",
        )
    document = {
        "name": served,
        "description": None,
        "source": source,
        "huggingface_repo_id": values.get("huggingface_repo_id"),
        "huggingface_filename": values.get("huggingface_filename"),
        "model_scope_model_id": values.get("model_scope_model_id"),
        "model_scope_file_path": values.get("model_scope_file_path"),
        "local_path": values.get("local_path"),
        "backend": gpustack_backend_name(draft.backend.name),
        "backend_version": values.get("backend_version") or None,
        "backend_parameters": list(values["backend_parameters"])
        if values.get("backend_parameters")
        else None,
        "image_name": values.get("image_name") or None,
        "run_command": values.get("run_command") or None,
        "env": {k: str(v) for k, v in sorted(env.items())} or None,
        "replicas": 1 if replicas is None else replicas,
        "gpu_selector": {"gpus_per_replica": per_replica} if per_replica else None,
        "worker_selector": dict(sorted(workers.items())) or None,
    }
    return stamped(document, project, draft.name)


def backend_document(backend: BackendLayers, project: str) -> dict[str, Any]:
    """A repository backend as GPUStack's from-yaml takes it: its ``extends`` chain
    merged by the resolution's own rule (maps key by key, lists and scalars replaced),
    GPUStack's name, the mark."""
    layers = [
        Layer(set_fields(model), doc, (), f"backend '{model.backend_name}'")
        for model, doc in backend.layers
    ]
    merged = {k: v for k, v in merge(layers).items() if v is not None}
    merged["backend_name"] = gpustack_backend_name(backend.name)
    return stamped(merged, project)
