"""Stage 6: what the live hosts run, as plain, frozen records. Each driver's observer
(``compiler/targets/*/observe.py``, the only code that reads hosts) returns them; a plan
is computed from them and the desired specs alone, so plan tests need no daemon
(observations can be written as literals, or recorded from a real engine and replayed).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

# A kind of host: a registered driver's (compiler/targets).
Target = str


@dataclass(frozen=True)
class ObservedContainer:
    """One container on a host, reduced to what a plan compares.

    ``owned``: it carries fleetform's ownership labels for this project. ``view`` has
    the compared fields in the normal form of ``compiler.targets.compose.fields``;
    ``image_env`` is the image's own env (not set on the container, so not compared
    unless the spec sets the same variable); ``image_user`` the image's own user, which
    the engine puts in Config.User when the container sets none (so not compared unless
    the spec sets a user).
    """

    id: str
    name: str
    state: str  # docker's State.Status: running, exited, created, paused, dead, ...
    owned: bool
    deployment: str
    replica: int
    spec_hash: str
    secret_hash: str
    view: dict[str, Any]
    image_env: dict[str, str] = field(default_factory=dict)
    image_user: str = ""

    @property
    def running(self) -> bool:
        return self.state in ("running", "restarting")


@dataclass(frozen=True)
class ObservedUnit:
    """One systemd unit on a host: its file, drop-ins and state (``systemctl show``).

    ``owned``: its file carries fleetform's ``X-Fleetform-Project=`` marker for this
    project. ``container``: the state of the container it runs (docker's
    State.Status), or "missing"; ``container_hash``: that container's spec-hash label,
    which differs from the file's while the unit runs what an older file said.
    """

    name: str
    path: str
    owned: bool
    text: str
    spec_hash: str
    load_state: str
    active_state: str
    sub_state: str
    unit_file_state: str
    need_daemon_reload: bool
    drop_ins: tuple[tuple[str, str], ...] = ()  # (path, text)
    container: str = "missing"
    env_hash: str = ""  # sha256 of its secrets env file, "" when there is none
    container_hash: str = ""  # the spec-hash label of the container it runs

    @property
    def running(self) -> bool:
        return self.active_state == "active" and self.container == "running"


@dataclass(frozen=True)
class ObservedModel:
    """A model folder apply fetched and verified on a host, as its record says."""

    key: str
    title: str  # repo@revision [files]
    folder: str
    commit: str
    record: str  # the record's container id
    repo: str = ""  # the repository id: the folder is <model_dir>/<repo>
    stamp: str = ""  # the folder's mtimes when fetched (the record's label)
    # The folder's mtimes now: "" when it is gone; as ``stamp`` while untouched (a file
    # added, removed or renamed in it, or the folder replaced, changes it).
    now: str = ""

    @classmethod
    def from_record(cls, record: str, labels: dict[str, str], prefix: str) -> ObservedModel:
        from compiler.labels import (
            MODEL,
            MODEL_COMMIT,
            MODEL_FOLDER,
            MODEL_KEY,
            MODEL_REPO,
            MODEL_STAMP,
            label,
        )

        return cls(
            key=labels.get(label(prefix, MODEL_KEY), ""),
            title=labels.get(label(prefix, MODEL), ""),
            folder=labels.get(label(prefix, MODEL_FOLDER), ""),
            commit=labels.get(label(prefix, MODEL_COMMIT), ""),
            record=record,
            repo=labels.get(label(prefix, MODEL_REPO), ""),
            stamp=labels.get(label(prefix, MODEL_STAMP), ""),
        )


@dataclass(frozen=True)
class ObservedDocument:
    """A backend or model on a GPUStack server, reduced to the fields fleetform manages."""

    kind: str  # "backend" | "model"
    name: str  # its name on the server
    id: int
    view: dict[str, Any]  # compiler/targets/gpustack/documents.py's view of it
    owner: str | None  # the deployment (models) or backend whose mark it has; None: foreign
    spec: str = ""  # the spec hash in its mark


@dataclass(frozen=True)
class ObservedHost:
    host: str
    target: Target
    containers: tuple[ObservedContainer, ...] = ()
    error: str | None = None  # unreachable, or the engine answered with an error
    units: tuple[ObservedUnit, ...] = ()
    models: tuple[ObservedModel, ...] = ()
    # A GPUStack cluster: its id, and the server's backends and the cluster's models.
    cluster_id: int | None = None
    documents: tuple[ObservedDocument, ...] = ()
    # Which backend each model that is not this project's uses (the server's other
    # clusters' too): a backend they use is never deleted.
    backend_users: tuple[tuple[str, str], ...] = ()

    def fingerprint(self) -> str:
        """A hash of everything observed: a saved plan is stale once this changes."""
        document = {
            "host": self.host,
            "error": self.error,
            "containers": [asdict(c) for c in self.containers],
            "units": [asdict(u) for u in self.units],
        }
        extra: dict[str, Any] = {}
        if self.models:  # absent, as before models were fetched: old plans stay valid
            extra["models"] = [asdict(m) for m in self.models]
        if self.cluster_id is not None:
            extra["cluster"] = [
                self.cluster_id,
                [asdict(d) for d in self.documents],
                [list(user) for user in self.backend_users],
            ]
        document.update(extra)
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
