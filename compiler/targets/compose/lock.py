"""A per-host lock held on the host's engine itself, so that two applies from
different machines cannot both change a host.

The lock is a container named ``fleetform-lock-<project>`` that is created, never
started, and removed at the end: the engine refuses a second container of that name,
which makes taking it atomic. Its labels say who holds it and since when. A lock
left by a crashed apply stays until ``fleetform unlock HOST`` removes it.
"""

from __future__ import annotations

import io
import tarfile
import time
from dataclasses import dataclass

from compiler.apply import HostLocked, owner
from compiler.errors import FleetformError
from compiler.labels import LOCK, LOCK_OWNER, LOCK_SINCE, label
from compiler.remote.engine import Engine, EngineError

LOCK_IMAGE = "fleetform/lock:1"


@dataclass(frozen=True)
class LockInfo:
    owner: str
    since: float

    def describe(self, host: str) -> str:
        age = max(0, int(time.time() - self.since))
        return (
            f"host '{host}' is locked by {self.owner} since"
            f" {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(self.since))}"
            f" ({age // 60} min {age % 60} s ago); if that apply is gone,"
            f" `fleetform unlock {host}` breaks the lock"
        )


def lock_name(project: str) -> str:
    return f"fleetform-lock-{project}"


def acquire(engine: Engine, host: str, project: str, prefix: str) -> str:
    """Take the lock; its container id. Raises HostLocked naming the holder."""
    ensure_lock_image(engine)
    labels = {
        label(prefix, LOCK): project,
        label(prefix, LOCK_OWNER): owner(),
        label(prefix, LOCK_SINCE): f"{time.time():.0f}",
    }
    body = {
        "Image": LOCK_IMAGE,
        "Cmd": ["fleetform-lock"],
        "Labels": labels,
        "NetworkDisabled": True,
    }
    try:
        created = engine.post("/containers/create", body, name=lock_name(project))
    except EngineError as error:
        if error.status == 409:
            held = holder(engine, project, prefix)
            if held is not None:
                raise HostLocked(held.describe(host)) from None
        raise FleetformError(f"cannot lock host '{host}': {error.message}") from None
    return str(created["Id"])


def release(engine: Engine, lock_id: str) -> None:
    engine.delete(f"/containers/{lock_id}", force=1)


def holder(engine: Engine, project: str, prefix: str) -> LockInfo | None:
    try:
        details = engine.get(f"/containers/{lock_name(project)}/json")
    except EngineError as error:
        if error.status == 404:
            return None
        raise
    labels = details["Config"].get("Labels") or {}
    since = labels.get(label(prefix, LOCK_SINCE), "0")
    return LockInfo(
        owner=labels.get(label(prefix, LOCK_OWNER), "unknown"),
        since=float(since) if since.isdigit() else 0.0,
    )


def break_lock(engine: Engine, project: str) -> bool:
    """Remove the lock, whoever holds it; False when there was none."""
    try:
        engine.delete(f"/containers/{lock_name(project)}", force=1)
    except EngineError as error:
        if error.status == 404:
            return False
        raise
    return True


def ensure_lock_image(engine: Engine) -> None:
    """An empty image to make the lock container (and model records) from: imported,
    never pulled."""
    try:
        engine.get(f"/images/{LOCK_IMAGE}/json")
        return
    except EngineError as error:
        if error.status != 404:
            raise
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("fleetform-lock")
        info.size = 0
        archive.addfile(info, io.BytesIO(b""))
    repository, tag = LOCK_IMAGE.split(":")
    for event in engine.stream(
        "/images/create", data=buffer.getvalue(), fromSrc="-", repo=repository, tag=tag
    ):
        if "error" in event:
            raise FleetformError(f"cannot import the lock image {LOCK_IMAGE}: {event['error']}")
