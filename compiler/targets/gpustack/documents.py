"""What a GPUStack cluster must hold, as the documents its API takes and returns. Pure.

A backend of the repository becomes a GPUStack custom backend (the from-yaml document:
``POST /v2/inference-backends/from-yaml``); a deployment placed on the cluster becomes a
GPUStack model (``POST /v2/models``). Both carry fleetform's ownership mark in their
``description`` — the one field GPUStack keeps as written on both — so that observe
tells what this project made from what others made (foreign: shown, never touched).

A document is compared through its *view*: the fields fleetform sets, with GPUStack's
ways of writing "not set" (null, "", [], {}) dropped. The view of what fleetform sends
and of what the server returns are equal when the server holds what was sent; that is
the whole of drift detection here, and what the compat test checks for every backend.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

# The keys the from-yaml endpoint keeps (gpustack/routes/inference_backend.py,
# create_inference_backend_from_yaml's allowed_keys, less the ones it sets itself).
BACKEND_KEYS = (
    "backend_name",
    "description",
    "default_version",
    "default_backend_param",
    "default_run_command",
    "default_entrypoint",
    "default_env",
    "health_check_path",
    "parameter_format",
    "version_configs",
)
VERSION_KEYS = ("image_name", "run_command", "entrypoint", "custom_framework", "env")

# The model fields fleetform manages; every other field of a GPUStack model (placement
# strategy, categories, speculative decoding, …) is left as the server has it.
# Where a model comes from (a deployment's fields of the same names).
SOURCE_KEYS = (
    "source",
    "huggingface_repo_id",
    "huggingface_filename",
    "model_scope_model_id",
    "model_scope_file_path",
    "local_path",
)
MODEL_KEYS = (
    "name",
    "description",
    *SOURCE_KEYS,
    "backend",
    "backend_version",
    "backend_parameters",
    "image_name",
    "run_command",
    "env",
    "replicas",
    "gpu_selector",
    "worker_selector",
)

# Where below output/<cluster>/ the documents are (render writes them, plan reads them).
BACKENDS = "gpustack/backends/"
MODELS = "gpustack/models/"

# GPUStack's from-yaml refuses a custom backend whose name does not end so.
CUSTOM_SUFFIX = "-custom"
LOCK_PREFIX = "fleetform-lock-"


def same_server(first: str, second: str) -> bool:
    return normal_url(first) == normal_url(second)


def normal_url(url: str) -> str:
    """A server URL compared as HTTP does: scheme and host in lower case, the scheme's
    default port dropped, no trailing slash."""
    parts = urllib.parse.urlsplit(url.strip())
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = parts.port
    if port is not None and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    return f"{scheme}://{host}{parts.path.rstrip('/')}"


def gpustack_backend_name(name: str) -> str:
    """The name a repository backend has on the server: its own when it already ends in
    ``-custom`` (so an imported backend keeps its name), else with the suffix added."""
    return name if name.endswith(CUSTOM_SUFFIX) else name + CUSTOM_SUFFIX


# fleetform's mark: the last line of a description. ``spec`` hashes the document as the
# repository made it, so a plan tells a change in the repository (another spec) from a
# change made on the server (the same spec, other values).
_MARK = re.compile(
    r"\[managed by fleetform: project (?P<project>[^,\]\n]+)"
    r"(?:, deployment (?P<deployment>[^,\]\n]+))?, spec (?P<spec>[0-9a-f]{16})\]"
)


@dataclass(frozen=True)
class Mark:
    project: str
    deployment: str | None  # models: the deployment; backends: None
    spec: str


def mark_of(description: str | None) -> Mark | None:
    """fleetform's mark on a backend or model, if it has one."""
    last = (description or "").rpartition("\n")[2]
    found = _MARK.fullmatch(last)
    if found is None:
        return None
    return Mark(found["project"], found["deployment"], found["spec"])


def unmarked(description: str | None) -> str | None:
    """A description without fleetform's mark (what the repository writes)."""
    if not description:
        return None
    head, _, last = description.rpartition("\n")
    if _MARK.fullmatch(last):
        return head.rstrip() or None
    return description


def stamped(
    document: dict[str, Any], project: str, deployment: str | None = None
) -> dict[str, Any]:
    """The document with fleetform's mark (and its spec hash) ending its description."""
    view = comparable(backend_view(document) if deployment is None else model_view(document))
    spec = hashlib.sha256(canonical(view).encode()).hexdigest()[:16]
    who = f"project {project}" + (f", deployment {deployment}" if deployment else "")
    mark = f"[managed by fleetform: {who}, spec {spec}]"
    own = unmarked(document.get("description"))
    return {**document, "description": f"{own}\n{mark}" if own else mark}


def comparable(view: dict[str, Any]) -> dict[str, Any]:
    """A view as plans compare and show it: the description without the mark."""
    own = unmarked(view.get("description"))
    rest = {k: v for k, v in view.items() if k != "description"}
    return {**rest, "description": own} if own else rest


def lock_name(project: str) -> str:
    """The model that is the project's apply lock on a server: GPUStack keeps model names
    unique (a database constraint), so only one apply creates it."""
    return f"{LOCK_PREFIX}{project}"


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == [] or value == {}


def backend_view(document: dict[str, Any]) -> dict[str, Any]:
    """A backend's comparable fields, from a from-yaml document or a server answer."""
    view: dict[str, Any] = {}
    for key in BACKEND_KEYS:
        value = document.get(key)
        if key == "version_configs" and isinstance(value, dict):
            value = {
                str(version): {k: config.get(k) for k in VERSION_KEYS if not _empty(config.get(k))}
                for version, config in value.items()
                if isinstance(config, dict)
            }
        if not _empty(value):
            view[key] = value
    return view


def model_view(document: dict[str, Any]) -> dict[str, Any]:
    """A model's comparable fields, from a create document or a server answer."""
    view: dict[str, Any] = {}
    for key in MODEL_KEYS:
        value = document.get(key)
        if key == "gpu_selector" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if not _empty(v)}
        if not _empty(value):
            view[key] = value
    return view


def model_body(document: dict[str, Any], cluster_id: int) -> dict[str, Any]:
    """The body of a model's create or update: every managed field, unset ones as null
    (a PUT keeps what it is not sent), and the cluster."""
    body: dict[str, Any] = {key: document.get(key) for key in MODEL_KEYS}
    body["cluster_id"] = cluster_id
    return body


def canonical(document: dict[str, Any]) -> str:
    """One text per document: what the plan hashes and the artifact shows."""
    return json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
