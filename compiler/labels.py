"""The label keys fleetform stamps on the containers it creates, defined once, as compose
keeps its own (``pkg/api/labels.go``). A key is ``<label_prefix>.<name>``, the prefix
being the settings' ``label_prefix`` (``io.fleetform`` by default): render writes them,
observe reads them, plan compares by them, apply and the lock stamp them."""

from __future__ import annotations

MANAGED_BY = "managed-by"  # always MANAGER: the container is fleetform's
MANAGER = "fleetform"
PROJECT = "project"
DEPLOYMENT = "deployment"
REPLICA = "replica"
SPEC_HASH = "spec-hash"  # the hash of the desired spec it was created from
SECRET_HASH = "secret-hash"  # the hash of its secret values (never the values)
SECRET_VARS = "secret-vars"  # the variables that hold secrets: never shown
HOLDS = "holds"  # the ports and GPUs it holds, for the order of a plan's steps
LOCK = "lock"  # the lock container of a project: its value is the project
LOCK_OWNER = "lock-owner"
LOCK_SINCE = "lock-since"
# A model folder's record on a Docker host: a container never started, like the lock.
MODEL_KEY = "model-key"  # the HubModel's key: same folder, revision and files
MODEL = "model"  # repo@revision, as the plan names it
MODEL_COMMIT = "model-commit"  # the commit the hub resolved the revision to
MODEL_FOLDER = "model-folder"
MODEL_REPO = "model-repo"
MODEL_STAMP = "model-stamp"  # the folder's and its manifest's mtimes when it was fetched
FETCH = "fetch"  # the helper container fetching a model: its value is the model's key

# Stamped by apply, not written in the spec: never compared as the spec's own labels.
STAMPED_BY_APPLY = (SPEC_HASH, SECRET_HASH, SECRET_VARS, HOLDS)


def label(prefix: str, name: str) -> str:
    """The full key of label ``name``: ``label("io.fleetform", SPEC_HASH)``."""
    return f"{prefix}.{name}"
