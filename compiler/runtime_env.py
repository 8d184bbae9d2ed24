"""The environment variables GPUStack 2.3.0 acts on besides passing them on.

A deployment's env reaches its container as it is, and GPUStack's worker also reads
these from it (``gpustack/worker/backends/base.py``: ``_get_container_env_config``,
``_host_ipc_enabled``; ``worker/serve_manager.py`` for the health path):

=====================================  =============================================
``GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB``  the container's /dev/shm, in GiB (a float)
``GPUSTACK_MODEL_RUNTIME_UID`` / ``GID``  the user (and group) the server runs as
``GPUSTACK_HOST_IPC``                    joins the host's IPC namespace when true
``GPUSTACK_MODEL_HEALTH_CHECK_PATH``     the path the readiness probe asks
=====================================  =============================================

GPUStack logs a warning and goes on with its default for a value it cannot read;
fleetform refuses it, at the line that writes it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from compiler import fields

SHM_SIZE_GIB = "GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB"
UID = "GPUSTACK_MODEL_RUNTIME_UID"
GID = "GPUSTACK_MODEL_RUNTIME_GID"
HOST_IPC = "GPUSTACK_HOST_IPC"
HEALTH_CHECK_PATH = "GPUSTACK_MODEL_HEALTH_CHECK_PATH"
VARIABLES = frozenset({SHM_SIZE_GIB, UID, GID, HOST_IPC, HEALTH_CHECK_PATH})
# The largest /dev/shm accepted: far above any host's memory, and an int docker takes.
MAX_SHM_GIB = 1 << 20
_MAX_ID = (1 << 32) - 2  # Linux's highest uid/gid (2^32-1 is "no id")


class RuntimeEnvError(ValueError):
    """A value GPUStack would not read; ``variable`` is the one to blame."""

    def __init__(self, variable: str, message: str) -> None:
        super().__init__(message)
        self.variable = variable


@dataclass(frozen=True)
class RuntimeSettings:
    shm_size: str | None = None  # docker's size syntax
    user: str | None = None  # "uid" or "uid:gid"
    ipc: str | None = None  # "host"
    health_check_path: str | None = None  # "": none, over the backend's


def runtime_settings(
    env: Mapping[str, str], written: Mapping[str, str] | None = None
) -> RuntimeSettings:
    """What the variables above ask of the container. GPUStack reads the size and the
    ids from the env it renders, the IPC switch and the health path from the env as
    written (``written``, default ``env``): a placeholder there stays text."""
    raw = env if written is None else written
    return RuntimeSettings(
        shm_size=_shm_size(env[SHM_SIZE_GIB]) if SHM_SIZE_GIB in env else None,
        user=_user(env.get(UID), env.get(GID)),
        ipc="host" if HOST_IPC in raw and _truthy(raw[HOST_IPC]) else None,
        health_check_path=_health_path(raw[HEALTH_CHECK_PATH])
        if HEALTH_CHECK_PATH in raw
        else None,
    )


def _shm_size(text: str) -> str:
    try:
        gib = float(text)
    except ValueError:
        gib = math.nan
    if not (math.isfinite(gib) and 0 < gib <= MAX_SHM_GIB):
        raise RuntimeEnvError(
            SHM_SIZE_GIB, f"'{text[:40]}' is not a size in GiB (a number above 0, like 16 or 0.5)"
        )
    size = int(gib * (1 << 30))  # as GPUStack: int(shm_size_gib * (1 << 30)) bytes
    for unit, scale in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def _user(uid: str | None, gid: str | None) -> str | None:
    # GPUStack reads an empty value as unset.
    uid_number = _id(UID, uid) if uid else None
    gid_number = _id(GID, gid) if gid else None
    if gid_number is not None and uid_number is None:
        raise RuntimeEnvError(
            GID, f"{GID} needs {UID} beside it (fleetform sets the user as uid:gid)"
        )
    if uid_number is None:
        return None
    return str(uid_number) if gid_number is None else f"{uid_number}:{gid_number}"


def _id(variable: str, text: str) -> int:
    # GPUStack's int(): surrounding spaces, a '+' and '_' between digits are read.
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= _MAX_ID:
        raise RuntimeEnvError(variable, f"'{text[:40]}' is not a numeric user or group id")
    return number


def _truthy(text: str) -> bool:
    """gpustack_runtime's ``to_bool``."""
    return text.lower() in ("1", "true", "yes", "on")


def _health_path(text: str) -> str:
    if not text:
        return ""  # GPUStack: no path, ready as soon as it runs
    try:
        return fields.http_path(text)
    except ValueError as error:
        raise RuntimeEnvError(HEALTH_CHECK_PATH, str(error)) from None
