"""Hub models on hosts: which model a replica needs fetched onto its host, as a plain
record the plan and apply share. Pure.

A deployment whose model comes from Hugging Face (``huggingface_repo_id``) is served from
``<model_dir>/<repo id>`` on its host. Unless it says ``model_provisioning: none``, apply
fetches that folder there first (``compiler/targets/compose/fetch.py``): once per host for
every replica and deployment that needs the same repository, revision and files.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict

from compiler.model import Settings

# The file a verified model folder holds: what was fetched, and from which commit.
MANIFEST = ".fleetform-model.json"


class HubModel(BaseModel):
    """One model folder a host must hold."""

    model_config = ConfigDict(frozen=True)

    source: str  # "huggingface"
    repo_id: str
    revision: str  # as written; "main" when none is
    patterns: tuple[str, ...]  # the files to fetch (fnmatch); () = every file
    model_dir: str  # the host's model_dir
    folder: str  # <model_dir>/<repo id>

    @property
    def key(self) -> str:
        """Same key, same download: the folder, the revision and the files asked for."""
        text = json.dumps([self.folder, self.revision, sorted(self.patterns)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def title(self) -> str:
        """How the plan names it: ``Qwen/Qwen3-8B@main``, plus the files when selected."""
        files = f" [{', '.join(self.patterns)}]" if self.patterns else ""
        return f"{self.repo_id}@{self.revision}{files}"


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


def hub_source(settings: Settings) -> str:
    """Where apply fetches from, and with what: part of every fetch step's reason, since
    a pull request that changes it decides where HF_TOKEN goes."""
    endpoint = settings.hub.endpoint or "https://huggingface.co"
    return f"from {endpoint} by {settings.hub.helper_image}"


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
    return first.folder == second.folder and first.revision != second.revision


def hub_model_of(values: dict[str, Any], model_dir: str) -> HubModel | None:
    """The hub model a deployment's merged ``values`` need fetched, or None (a local
    path, a ModelScope model — not fetched yet — or ``model_provisioning: none``)."""
    if values.get("model_provisioning") == "none":
        return None
    source = values.get("source")
    repo_id = values.get("huggingface_repo_id")
    if not repo_id or source not in (None, "huggingface"):
        return None
    if source is None and values.get("local_path"):
        return None
    single = values.get("huggingface_filename")
    patterns = (single,) if single else tuple(sorted(set(values.get("allow_patterns") or ())))
    return HubModel(
        source="huggingface",
        repo_id=repo_id,
        revision=values.get("revision") or "main",
        patterns=patterns,
        model_dir=model_dir,
        folder=posixpath.join(model_dir, repo_id),
    )
