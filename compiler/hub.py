"""Hub models on hosts: which model a replica needs fetched onto its host, as a plain
record the plan and apply share. Pure.

A deployment whose model comes from Hugging Face (``huggingface_repo_id``) or ModelScope
(``model_scope_model_id``) is served from ``<model_dir>/<repo id>`` on its host. Unless it
says ``model_provisioning: none``, apply fetches that folder there first
(``compiler/targets/compose/fetch.py``): once per host for every replica and deployment
that needs the same repository, revision and files.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from compiler.model import Settings

# The file a verified model folder holds: what was fetched, and from which commit.
MANIFEST = ".fleetform-model.json"

HubName = Literal["huggingface", "model_scope"]
# Each hub's default branch, fetched when a deployment names no revision.
DEFAULT_REVISION: dict[str, str] = {"huggingface": "main", "model_scope": "master"}
# Where each hub is when the repository's settings name no mirror.
DEFAULT_ENDPOINT: dict[str, str] = {
    "huggingface": "https://huggingface.co",
    "model_scope": "https://modelscope.cn",  # modelscope-hub's own
}
# The variable of apply's environment that holds each hub's token (the helper's only).
TOKEN_VARIABLE: dict[str, str] = {"huggingface": "HF_TOKEN", "model_scope": "MODELSCOPE_API_TOKEN"}


class HubModel(BaseModel):
    """One model folder a host must hold."""

    model_config = ConfigDict(frozen=True)

    source: HubName
    repo_id: str
    revision: str  # as written; the hub's default branch when none is
    patterns: tuple[str, ...]  # the files to fetch (fnmatch); () = every file
    model_dir: str  # the host's model_dir
    folder: str  # <model_dir>/<repo id>

    @property
    def key(self) -> str:
        """Same key, same download: the folder, the revision and the files asked for."""
        where: list[Any] = [self.folder, self.revision, sorted(self.patterns)]
        if self.source != "huggingface":  # Hugging Face's keys stay as they were
            where.append(self.source)
        return hashlib.sha256(json.dumps(where).encode()).hexdigest()[:16]

    @property
    def title(self) -> str:
        """How the plan names it: ``Qwen/Qwen3-8B@main`` (``modelscope:Qwen/Qwen3-8B@master``
        from ModelScope), plus the files when selected."""
        files = f" [{', '.join(self.patterns)}]" if self.patterns else ""
        hub = "modelscope:" if self.source == "model_scope" else ""
        return f"{hub}{self.repo_id}@{self.revision}{files}"


def stamp(folder_mtime: str, manifest_mtime: str) -> str:
    """How a fetched folder looks, from its and its manifest's mtimes (seconds since the
    epoch with nine decimals, as ``stat -c %.9Y`` prints them, or RFC 3339 as the Engine
    API does): a file added, removed or renamed in it, or the folder replaced, changes it."""
    return f"{_epoch(folder_mtime)}|{_epoch(manifest_mtime)}"


def _epoch(mtime: str) -> str:
    if "T" not in mtime:
        seconds, _, fraction = mtime.partition(".")
        return f"{seconds}.{fraction.ljust(9, '0')[:9]}"
    from datetime import datetime

    head, rest = mtime[:19], mtime[19:]  # YYYY-MM-DDTHH:MM:SS, then .fraction and zone
    digits = ""
    if rest.startswith("."):
        rest = rest[1:]
        while rest[:1].isdigit():
            digits, rest = digits + rest[0], rest[1:]
    whole = int(datetime.fromisoformat(head + (rest or "Z")).timestamp())
    return f"{whole}.{digits.ljust(9, '0')[:9]}"


def endpoint_of(settings: Settings, source: str) -> str:
    """The hub (or the mirror the settings name) that ``source``'s models come from."""
    named = settings.hub.modelscope_endpoint if source == "model_scope" else settings.hub.endpoint
    return named or DEFAULT_ENDPOINT[source]


def hub_source(settings: Settings, models: Iterable[HubModel] = ()) -> str:
    """Where apply fetches ``models`` from, and with what: part of every fetch step's
    reason, since a pull request that changes it decides where the token goes."""
    sources = sorted({model.source for model in models}) or ["huggingface"]
    endpoints = " and ".join(endpoint_of(settings, source) for source in sources)
    return f"from {endpoints} by {settings.hub.helper_image}"


def per_folder(models: Iterable[HubModel]) -> tuple[HubModel, ...]:
    """One fetch per model folder: the files every deployment there asks for (all of the
    repository when one asks for all). Resolution has made sure they agree on the
    revision (:func:`revision_conflict`), so that no two fetches take turns replacing
    the same folder."""
    merged: dict[str, HubModel] = {}
    for model in models:
        before = merged.get(model.folder)
        if before is not None:
            every = not before.patterns or not model.patterns
            patterns = () if every else tuple(sorted({*before.patterns, *model.patterns}))
            model = model.model_copy(update={"patterns": patterns})
        merged[model.folder] = model
    return tuple(merged[folder] for folder in sorted(merged))


def revision_conflict(first: HubModel, second: HubModel) -> bool:
    """Whether two models would take turns replacing one folder: another revision, or the
    same name on the other hub."""
    return first.folder == second.folder and (
        first.revision != second.revision or first.source != second.source
    )


def hub_model_of(values: dict[str, Any], model_dir: str) -> HubModel | None:
    """The hub model a deployment's merged ``values`` need fetched, or None (a local
    path, or ``model_provisioning: none``). The source is chosen as GPUStack chooses it:
    ``source`` when written, else the first of local_path, huggingface_repo_id,
    model_scope_model_id that is set."""
    if values.get("model_provisioning") == "none":
        return None
    source = values.get("source")
    if source is None:
        if values.get("local_path"):
            return None
        source = "huggingface" if values.get("huggingface_repo_id") else "model_scope"
    if source == "huggingface":
        repo_id, single = values.get("huggingface_repo_id"), values.get("huggingface_filename")
    elif source == "model_scope":
        repo_id, single = values.get("model_scope_model_id"), values.get("model_scope_file_path")
    else:
        return None
    if not repo_id:
        return None
    patterns = (single,) if single else tuple(sorted(set(values.get("allow_patterns") or ())))
    return HubModel(
        source=source,
        repo_id=repo_id,
        revision=values.get("revision") or DEFAULT_REVISION[source],
        patterns=patterns,
        model_dir=model_dir,
        folder=posixpath.join(model_dir, repo_id),
    )
