"""A per-host lock held on the host's engine itself, so that two applies from
different machines cannot both change a host.

The lock is a container named ``fleetform-lock-<project>`` that is created, never
started, and removed at the end: the engine refuses a second container of that name,
which makes taking it atomic. Its labels say who holds it and since when. A lock
left by a crashed apply stays until ``fleetform unlock HOST`` removes it.
"""

from __future__ import annotations

import getpass
import io
import os
import socket
import tarfile
import time
from dataclasses import dataclass
from typing import Any

from compiler.errors import FleetformError
from compiler.observe.docker import LOCK_LABEL_SUFFIX, describe

LOCK_IMAGE = "fleetform/lock:1"


class HostLocked(FleetformError):
    """Another apply holds the host's lock."""


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


def owner() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a bare container
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def acquire(api: Any, host: str, project: str, prefix: str) -> str:
    """Take the lock; its container id. Raises HostLocked naming the holder."""
    import docker

    _ensure_lock_image(api)
    labels = {
        f"{prefix}.{LOCK_LABEL_SUFFIX}": project,
        f"{prefix}.lock-owner": owner(),
        f"{prefix}.lock-since": f"{time.time():.0f}",
    }
    try:
        created = api.create_container(
            LOCK_IMAGE,
            command=["fleetform-lock"],
            name=lock_name(project),
            labels=labels,
            network_disabled=True,
        )
    except docker.errors.APIError as error:
        if error.status_code == 409:
            held = holder(api, project, prefix)
            if held is not None:
                raise HostLocked(held.describe(host)) from None
        raise FleetformError(f"cannot lock host '{host}': {describe(error)}") from None
    return str(created["Id"])


def release(api: Any, lock_id: str) -> None:
    api.remove_container(lock_id, force=True)


def holder(api: Any, project: str, prefix: str) -> LockInfo | None:
    import docker

    try:
        labels = api.inspect_container(lock_name(project))["Config"].get("Labels") or {}
    except docker.errors.NotFound:
        return None
    since = labels.get(f"{prefix}.lock-since", "0")
    return LockInfo(
        owner=labels.get(f"{prefix}.lock-owner", "unknown"),
        since=float(since) if since.isdigit() else 0.0,
    )


def break_lock(api: Any, project: str) -> bool:
    """Remove the lock, whoever holds it; False when there was none."""
    import docker

    try:
        api.remove_container(lock_name(project), force=True)
    except docker.errors.NotFound:
        return False
    return True


def _ensure_lock_image(api: Any) -> None:
    """An empty image to make the lock container from (imported, never pulled)."""
    import docker

    try:
        api.inspect_image(LOCK_IMAGE)
        return
    except docker.errors.ImageNotFound:
        pass
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("fleetform-lock")
        info.size = 0
        archive.addfile(info, io.BytesIO(b""))
    repository, tag = LOCK_IMAGE.split(":")
    api.import_image_from_data(buffer.getvalue(), repository=repository, tag=tag)
