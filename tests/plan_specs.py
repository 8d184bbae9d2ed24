"""The literal desired containers of the pure plan tests (tests/test_plan.py), shared with
the script that recorded what a real engine made of them (tests/record_inspect.py)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from compiler.render.container import ContainerSpec, Mount

PROJECT = "fleetform"
PREFIX = "io.fleetform"
# The busybox test image with an env of its own (``docker commit --change ENV``), so
# that the image's env is in each container's Config.Env but not in any spec.
IMAGE = "fleetform-test/busybox-env:1"
IMAGE_ENV_CHANGE = "ENV PATH=/bin IMAGE_LEVEL=info"
SLEEP = ("sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait")
SECRET_VALUE = "hf_recorded_secret_value"
SQUATTER = "fleetform-squat-0"


def spec(deployment: str, replica: int, spec_hash: str, **fields: Any) -> ContainerSpec:
    """A container fleetform wants, as ``container_spec`` makes it from a workload."""
    values: dict[str, Any] = {
        "image": IMAGE,
        "entrypoint": ("busybox",),
        "command": SLEEP,
        "env": {"A": "1"},
        "secrets": {},
        "network_mode": "host",
        "shm_size": "64m",
        "restart": "unless-stopped",
        "mounts": (Mount("/srv", "/srv", True),),
        "binds": (),
        "devices": (),
        "ports": (),
        "gpu_driver": None,
        "gpu_ids": (),
        "address": "127.0.0.1",
        "port": 41100 + replica,
        "health_check_path": "/health",
        "health_timeout": 600.0,
    }
    user_labels = fields.pop("user_labels", {})
    values.update(fields)
    labels = {
        **user_labels,
        f"{PREFIX}.deployment": deployment,
        f"{PREFIX}.managed-by": "fleetform",
        f"{PREFIX}.project": PROJECT,
        f"{PREFIX}.replica": str(replica),
        f"{PREFIX}.spec-hash": spec_hash,
    }
    return ContainerSpec(
        name=f"{PROJECT}-{deployment}-{replica}",
        deployment=deployment,
        replica=replica,
        spec_hash=spec_hash,
        labels=dict(sorted(labels.items())),
        **values,
    )


def changed(base: ContainerSpec, **fields: Any) -> ContainerSpec:
    """``base`` with some fields changed and, as a compile would give it, a new hash."""
    user_labels = fields.pop("user_labels", None)
    new_hash = hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()[:16]
    labels = {**base.labels, **(user_labels or {}), f"{PREFIX}.spec-hash": new_hash}
    return dataclasses.replace(
        base, spec_hash=new_hash, labels=dict(sorted(labels.items())), **fields
    )


# What the recorded engine ran (tests/fixtures/inspect/<name>.json), and how each got so:
WEB0 = spec("web", 0, "4f1c2a9e8b7d6c05", gpu_driver="nvidia", gpu_ids=("0",))  # applied
WEB1 = spec("web", 1, "0b3e5d7f9a1c2e4d", gpu_driver="nvidia", gpu_ids=("1",))  # then stopped
API0 = spec("api", 0, "9d8c7b6a5f4e3d2c")  # recreated by hand with env A=by-hand
OLD0 = spec("old", 0, "a0b1c2d3e4f5a6b7")  # its deployment is gone from the repository
# An apply killed mid-replace: web-0's previous container, renamed aside and stopped.
PREVIOUS = dataclasses.replace(
    spec("web", 0, "77e6d5c4b3a29180", env={"A": "0"}, gpu_driver="nvidia", gpu_ids=("0",)),
    name="fleetform-web-0--fleetform-previous",
)
TOK0 = spec("tok", 0, "c3d2e1f0a9b8c7d6", secrets={"HF_TOKEN": "HF_TOKEN"})  # a secret env
SQUAT0 = spec("squat", 0, "e5f4a3b2c1d0e9f8")  # its name is taken by a foreign container

RECORDED = (
    "fleetform-api-0",
    "fleetform-old-0",
    "fleetform-squat-0",
    "fleetform-tok-0",
    "fleetform-web-0",
    "fleetform-web-0--fleetform-previous",
    "fleetform-web-1",
)
