"""Observe a Docker host: one list and an inspect per relevant container, read-only.

What is read: every container fleetform owns (by its labels, for this project), plus
any container that carries a name fleetform must use (a squatter). Nothing else on
the engine is looked at. Each container is reduced to the fields a plan compares, as
the table of container fields reads them (:mod:`compiler.targets.compose.fields`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from compiler.errors import FleetformError
from compiler.labels import (
    DEPLOYMENT,
    FETCH,
    LOCK,
    MANAGED_BY,
    MANAGER,
    MODEL_KEY,
    PROJECT,
    REPLICA,
    SECRET_HASH,
    SPEC_HASH,
    label,
)
from compiler.observed import ObservedContainer, ObservedHost, ObservedModel
from compiler.remote.engine import Engine, EngineError
from compiler.targets.compose.fields import env_map, observed_view

CONTAINER_LIST = "/containers/json"


def open_engine(base_url: str) -> Engine:
    """A connection to ``base_url`` with the container list already asked for."""
    engine = Engine(base_url)
    engine.send(CONTAINER_LIST, all=1)
    return engine


def observe_docker_host(
    host: str,
    base_url: str,
    project: str,
    label_prefix: str,
    names: Iterable[str],
    engine: Engine | None = None,
) -> ObservedHost:
    """Everything a plan needs of one Docker host; an unreachable host is a result.

    ``engine``: a connection already opened to ``base_url`` (it is closed here)."""
    try:
        engine = engine or open_engine(base_url)
        try:
            return observe_engine(engine, host, project, label_prefix, names)
        finally:
            engine.close()
    except FleetformError as error:  # unreachable, or the engine answered with an error
        return ObservedHost(host=host, target="compose", error=error.message)


def observe_engine(
    engine: Engine, host: str, project: str, prefix: str, names: Iterable[str]
) -> ObservedHost:
    """What :func:`observe_docker_host` returns, over a connection the caller keeps;
    an unreachable host or an engine error is raised."""
    wanted = set(names)
    containers: list[ObservedContainer] = []
    images: dict[str, tuple[dict[str, str], str]] = {}
    models: list[ObservedModel] = []
    for summary in engine.get(CONTAINER_LIST, all=1):
        labels = summary.get("Labels") or {}
        name = (summary.get("Names") or ["/"])[0].lstrip("/")
        ours = labels.get(label(prefix, PROJECT)) == project
        owned = labels.get(label(prefix, MANAGED_BY)) == MANAGER and ours
        if labels.get(label(prefix, LOCK)) or labels.get(label(prefix, FETCH)):
            continue
        if labels.get(label(prefix, MODEL_KEY)):
            if ours:
                models.append(ObservedModel.from_record(summary["Id"], labels, prefix))
            continue
        if not owned and name not in wanted:
            continue
        try:
            details = engine.get(f"/containers/{summary['Id']}/json")
        except EngineError as error:
            if error.status == 404:
                continue  # removed since it was listed
            raise
        image = details["Config"].get("Image", "")
        if image not in images:
            images[image] = _image_config(engine, image)
        containers.append(_container(details, prefix, owned, *images[image]))
    containers.sort(key=lambda c: (c.name, c.id))
    models = [_looked_at(engine, model) for model in models]
    models.sort(key=lambda m: (m.folder, m.key, m.record))
    return ObservedHost(
        host=host, target="compose", containers=tuple(containers), models=tuple(models)
    )


def _looked_at(engine: Engine, model: ObservedModel) -> ObservedModel:
    """The record, with how its folder looks now (two HEAD requests, through the record's
    own bind of model_dir)."""
    from compiler.targets.compose.fetch import engine_stamp

    if not model.repo:  # a record of an older fleetform: nothing to look at
        return model
    return replace(model, now=engine_stamp(engine, model.record, model.repo))


def _image_config(engine: Engine, image: str) -> tuple[dict[str, str], str]:
    """The image's own env and user, which the engine copies into a container that sets
    none: so that only what was set on the container is compared."""
    try:
        details = engine.get(f"/images/{image}/json")
    except EngineError as error:
        if error.status == 404:
            return {}, ""
        raise
    config = details.get("Config") or {}
    return env_map(config.get("Env") or []), config.get("User") or ""


def _container(
    details: dict[str, Any],
    prefix: str,
    owned: bool,
    image_env: dict[str, str],
    image_user: str = "",
) -> ObservedContainer:
    labels = (details.get("Config") or {}).get("Labels") or {}
    state = (details.get("State") or {}).get("Status", "unknown")
    replica = labels.get(label(prefix, REPLICA), "")
    view = observed_view(details)
    return ObservedContainer(
        id=details["Id"],
        name=details.get("Name", "").lstrip("/"),
        state=state,
        owned=owned,
        deployment=labels.get(label(prefix, DEPLOYMENT), "") if owned else "",
        replica=int(replica) if owned and replica.isdigit() else -1,
        spec_hash=labels.get(label(prefix, SPEC_HASH), "") if owned else "",
        secret_hash=labels.get(label(prefix, SECRET_HASH), "") if owned else "",
        view=view,
        image_env=image_env,
        image_user=image_user,
    )
