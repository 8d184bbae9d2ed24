"""``fleetform import gpustack``: a GPUStack cluster's custom backends and models as
repository files, adopted by the project so that the next plan shows no changes.

Import reads the server, writes ``backends.d/``, ``deployments.d/`` (and the cluster's
``hosts.d/`` entry when the repository has none), compiles the repository to check that
every imported object reads back as exactly what the server holds, and only then puts
fleetform's mark on those objects (their description's last line; nothing else of them
changes). Anything that cannot be written faithfully is left out with one line saying
why. What the server sends is untrusted: file names are made from ``[a-z0-9-]`` only,
files are created exclusively (never overwritten, never through a link), and text is
written by fleetform's own YAML writer.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from compiler.errors import FleetformError
from compiler.model import DNS_LABEL, Backend, Deployment
from compiler.remote.gpustack import GPUStack, object_id, untrusted
from compiler.targets.gpustack import file_names
from compiler.targets.gpustack.documents import (
    BACKEND_KEYS,
    LOCK_PREFIX,
    SOURCE_KEYS,
    backend_view,
    comparable,
    mark_of,
    model_body,
    model_view,
    same_server,
    unmarked,
)

CLUSTER_LABEL = "gpustack-cluster"
# A GPUStack model's fields fleetform does not manage, with their defaults where one is
# not null, false or empty: a model that sets one is left out (recreated by fleetform,
# it would lose it).
UNMANAGED: dict[str, object] = {
    "placement_strategy": "spread",
    "restart_on_error": True,
    "distributed_inference_across_workers": True,
    "access_policy": "authed",
    "cpu_offloading": None,
    "gpu_type_selector": None,
    "native_anthropic_api": None,
    "extended_kv_cache": None,
    "speculative_config": None,
    "scaling_schedule": None,
    "generic_proxy": None,
    "lora_list": None,
    "roles": None,
    "disaggregation": None,
    "gather": None,
}


@dataclass
class Imported:
    written: list[str] = field(default_factory=list)  # repository paths
    left_out: list[str] = field(default_factory=list)  # one line each: what, and why
    adopted: list[str] = field(default_factory=list)  # backend/…, model/…


def import_cluster(
    root: Path, url: str, cluster: str, host: str | None, key_env: str | None
) -> Imported:
    from compiler import api

    repo = api.load(root)
    project = repo.settings.project
    server = GPUStack.from_env(url, key_env)
    cluster_id = server.cluster_id(cluster)
    host = host or _slug(cluster)
    if not host or not DNS_LABEL.match(host) or len(host) > 63:
        raise FleetformError(
            f"{host!r} is not a host name (a DNS label: lowercase letters, digits and '-'):"
            " pass --host"
        )
    result = Imported()
    files: dict[str, dict[str, Any]] = {}

    known = {h.name: h for h, _ in repo.hosts}
    entry = known.get(host)
    if entry is None:
        labels = {CLUSTER_LABEL: host}
        files[f"hosts.d/{host}.yaml"] = {
            "name": host,
            "target": "gpustack",
            "url": url,
            "cluster": cluster,
            **({"api_key_env": key_env} if key_env else {}),
            "labels": labels,
        }
    elif entry.target != "gpustack" or not entry.labels:
        raise FleetformError(
            f"host '{host}' is in the repository but is not a gpustack host with labels:"
            " pass another --host"
        )
    elif not same_server(entry.url or "", url) or entry.cluster != cluster:
        raise FleetformError(
            f"host '{host}' in the repository is cluster '{entry.cluster}' at {entry.url},"
            f" not '{cluster}' at {url}: pass another --host"
        )
    else:
        labels = dict(entry.labels)

    have_backends = {b.backend_name for b, _ in repo.backends}
    backends: dict[str, dict[str, Any]] = {}
    for item in server.custom_backends():
        name = str(item.get("backend_name"))
        if not _theirs_or_ours(item, project, "backend", name, result):
            continue
        if name in have_backends:
            result.left_out.append(f"backend/{name}: the repository has a backend of that name")
            continue
        why = _not_writable(Backend, _backend_file(item))
        if why:
            result.left_out.append(f"backend/{untrusted(name)}: {why}")
            continue
        backends[name] = item

    deployments = {d.name for d, _ in repo.deployments}
    models: dict[str, dict[str, Any]] = {}
    for item in server.models(cluster_id):
        name = str(item.get("name"))
        if name.startswith(LOCK_PREFIX) or not _theirs_or_ours(
            item, project, "model", name, result
        ):
            continue
        document, why = _deployment_file(item, labels, set(backends) | have_backends)
        deployment = document.get("name", "") if document else ""
        why = why or (_not_writable(Deployment, document) if document else "")
        if document is None or why:
            result.left_out.append(f"model/{untrusted(name)}: {why}")
            continue
        if deployment in deployments or deployment in models:
            result.left_out.append(
                f"model/{name}: the repository already has a deployment '{deployment}'"
            )
            continue
        models[deployment] = item
        files[f"deployments.d/{deployment}.yaml"] = document

    used = {str(item.get("backend")) for item in models.values()}
    named = file_names({name: None for name in backends if name in used})
    for name in sorted(backends):
        if name in used:
            files[f"backends.d/{named[name]}.yaml"] = _backend_file(backends[name])
        else:
            result.left_out.append(f"backend/{untrusted(name)}: no model of the cluster uses it")
    backends = {name: item for name, item in backends.items() if name in used}
    _write(root, files)
    result.written = sorted(files)
    try:
        adopt = _check_round_trip(root, host, backends, models, cluster_id)
    except BaseException:
        _remove(root, files)
        raise
    _adopt(server, adopt, root, files)
    result.adopted = sorted(
        [f"backend/{name}" for name in backends] + [f"model/{m['name']}" for m in models.values()]
    )
    return result


def _adopt(
    server: GPUStack,
    calls: list[tuple[str, dict[str, Any], dict[str, Any]]],
    root: Path,
    files: dict[str, dict[str, Any]],
) -> None:
    """Mark each imported object as the project's; if one cannot be, the ones marked
    get their description back and the files go: an import is whole or nothing."""
    done: list[tuple[str, dict[str, Any]]] = []
    try:
        for path, body, before in calls:
            server.call("PUT", path, body)
            done.append((path, before))
    except FleetformError as error:
        for path, before in reversed(done):
            with contextlib.suppress(FleetformError):
                server.call("PUT", path, before)
        _remove(root, files)
        raise FleetformError(f"{error.message}; nothing was imported") from None


def _not_writable(model: type[BaseModel], document: dict[str, Any]) -> str:
    """Why fleetform could not read ``document`` back as written, or ""."""
    try:
        model.model_validate(document)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return untrusted(f"{where}: {first['msg']}")[:200]
    return ""


def _theirs_or_ours(
    item: dict[str, Any], project: str, kind: str, name: str, result: Imported
) -> bool:
    mark = mark_of(item.get("description"))
    if mark is not None and mark.project != project:
        result.left_out.append(f"{kind}/{name}: fleetform project {mark.project}'s")
        return False
    return True


def _backend_file(item: dict[str, Any]) -> dict[str, Any]:
    view = backend_view({**item, "description": unmarked(item.get("description"))})
    return {key: view[key] for key in BACKEND_KEYS if key in view}


def _deployment_file(
    item: dict[str, Any], labels: dict[str, str], backends: set[str]
) -> tuple[dict[str, Any] | None, str]:
    view = model_view(item)
    name = str(item.get("name"))
    deployment = _slug(name)
    if not deployment or not DNS_LABEL.match(deployment):
        return None, "its name gives no deployment name"
    backend = view.get("backend")
    if backend not in backends:
        return None, (
            f"its backend '{untrusted(str(backend))}' is not one import writes (a GPUStack"
            " built-in backend, or another project's)"
            if backend
            else "it names no backend"
        )
    unmanaged = sorted(
        key for key in UNMANAGED if item.get(key) not in (None, False, [], {}, UNMANAGED.get(key))
    )
    if unmanaged:
        return None, (
            f"it sets {unmanaged[0]}, which fleetform does not manage (a model it recreates"
            " would lose it)"
        )
    selector = view.get("gpu_selector") or {}
    if selector.get("gpu_ids"):
        return None, "it pins GPUs by id (gpu_ids), which a cluster deployment cannot say"
    workers = view.get("worker_selector") or {}
    clash = sorted(k for k in workers if k in labels and workers[k] != labels[k])
    if clash:
        return None, f"its worker_selector uses the cluster's label {clash[0]}"
    document: dict[str, Any] = {"name": deployment}
    if deployment != name:
        document["served_name"] = name
    document.update((key, view[key]) for key in SOURCE_KEYS if key in view)
    for key in ("backend", "backend_version", "backend_parameters", "image_name"):
        if key in view:
            document[key] = view[key]
    if "run_command" in view:
        document["run_command"] = view["run_command"]
    if "env" in view:
        document["env"] = view["env"]
    document["replicas"] = item.get("replicas", 1)
    if selector.get("gpus_per_replica"):
        document["gpu_selector"] = {"gpus_per_replica": selector["gpus_per_replica"]}
    document["worker_selector"] = {**labels, **workers}
    if unmarked(item.get("description")):
        return None, "it has a description, which a deployment cannot carry"
    return document, ""


def _check_round_trip(
    root: Path,
    host: str,
    backends: dict[str, dict[str, Any]],
    models: dict[str, dict[str, Any]],
    cluster_id: int,
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Compile the repository and check every imported object reads back as the server
    holds it; the calls that then adopt them (the same object, with the mark), each with
    the body that puts it back as it was."""
    from compiler import api
    from compiler.render.yaml_text import dump

    compiled = api.build(root)
    state = compiled.fleet.clusters.get(host)
    if state is None:
        raise FleetformError(f"host '{host}' is not a gpustack cluster after import")
    calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for name, item in sorted(backends.items()):
        document = state.backends[name]
        _same(f"backend/{name}", backend_view(item), backend_view(document))
        content = dump({k: v for k, v in document.items() if v is not None})
        original = dump(backend_view(item))
        path = f"/v2/inference-backends/{object_id(item, '')}/from-yaml"
        calls.append((path, {"content": content}, {"content": original}))
    for deployment, item in sorted(models.items()):
        document = state.models[deployment]
        _same(f"model/{item['name']}", model_view(item), model_view(document))
        path = f"/v2/models/{object_id(item, '')}"
        calls.append((path, model_body(document, cluster_id), model_body(item, cluster_id)))
    return calls


def _same(what: str, there: dict[str, Any], written: dict[str, Any]) -> None:
    before, after = comparable(there), comparable(written)
    if before != after:
        fields = sorted(k for k in {*before, *after} if before.get(k) != after.get(k))
        raise FleetformError(
            f"{what} does not read back as the server holds it ({', '.join(fields)} differ):"
            " nothing was imported"
        )


def _slug(name: str) -> str:
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return text[:63].rstrip("-")


def _write(root: Path, files: dict[str, dict[str, Any]]) -> None:
    from compiler.render.yaml_text import dump

    taken = [path for path in files if os.path.lexists(root / path)]
    if taken:
        raise FleetformError(f"{taken[0]} exists: import writes only new files")
    written: list[str] = []
    try:
        for path, document in sorted(files.items()):
            folder, name = path.split("/")
            directory = root / folder
            if not directory.exists():
                directory.mkdir()
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                out = os.open(name, flags, 0o644, dir_fd=fd)
                with os.fdopen(out, "w", encoding="utf-8") as handle:
                    handle.write(dump(document))
            finally:
                os.close(fd)
            written.append(path)
    except OSError as error:
        _remove(root, dict.fromkeys(written, {}))
        raise FleetformError(f"cannot write the imported files: {error.strerror}") from None


def _remove(root: Path, files: dict[str, Any]) -> None:
    for path in files:
        with contextlib.suppress(OSError):
            os.unlink(root / path)
