"""The compose driver's planning: desired containers vs what one Docker host runs →
its steps. Pure: no I/O.

Change is detected by the spec hash fleetform stamps on what it creates, and by
comparing the container's own fields with the spec (:mod:`compiler.targets.compose.
fields`), so a container recreated by hand with other env, image or GPUs is drift even
when it kept fleetform's labels. deepdiff only explains *what* differs. Secrets are
compared through a hash label and never shown.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from compiler.labels import HOLDS, SECRET_VARS, STAMPED_BY_APPLY, label
from compiler.observed import ObservedContainer, ObservedHost
from compiler.plan import (
    ACTION_ORDER,
    MASK,
    Action,
    Change,
    DesiredHost,
    HostPlan,
    Reason,
    Step,
    changes_between,
    fetch_steps,
)
from compiler.render.container import ContainerSpec
from compiler.targets.compose.fields import desired_view, left_to_engine

PREVIOUS_SUFFIX = "--fleetform-previous"


def plan_host(desired: DesiredHost, observed: ObservedHost, prefix: str) -> HostPlan:
    if observed.error is not None:
        return HostPlan(
            desired.host,
            desired.target,
            (),
            (),
            observed.fingerprint(),
            desired.fingerprint(),
            error=observed.error,
        )
    owned = {c.name: c for c in observed.containers if c.owned}
    foreign = {c.name: c for c in observed.containers if not c.owned}
    steps: list[Step] = []
    unchanged: list[str] = []
    wanted_names = {spec.name for spec in desired.specs}

    for name, extra in sorted(owned.items()):
        if name in wanted_names:
            continue
        reason: Reason
        if name.endswith(PREVIOUS_SUFFIX):
            reason = ("interrupted", "left behind by an interrupted apply")
        elif any(spec.deployment == extra.deployment for spec in desired.specs):
            reason = ("replica-unwanted", f"replica {extra.replica} is no longer wanted")
        else:
            reason = ("orphan", f"deployment '{extra.deployment}' is no longer in the repository")
        steps.append(
            _step(
                desired,
                "delete",
                name,
                extra.deployment,
                extra.replica,
                (reason,),
                current=extra.id,
            )
        )

    for spec in sorted(desired.specs, key=lambda s: s.name):
        container = owned.get(spec.name)
        secret_hash = (desired.secret_hashes or {}).get(spec.name, "")
        if container is None:
            squatter = foreign.get(spec.name)
            why: Reason = (
                (
                    "squatter",
                    f"the name is taken by container {squatter.id[:12]}, which fleetform"
                    " does not own: it will be stopped and renamed, not deleted",
                )
                if squatter is not None
                else ("missing", "no such container on the host")
            )
            steps.append(
                _step(
                    desired,
                    "create",
                    spec.name,
                    spec.deployment,
                    spec.replica,
                    (why,),
                    spec_hash=spec.spec_hash,
                    displace=squatter.id if squatter is not None else "",
                )
            )
            continue
        changes = diff_container(spec, container, prefix)
        reasons_list: list[Reason] = []
        if container.spec_hash != spec.spec_hash:
            reasons_list.append(
                (
                    "spec-changed",
                    f"spec changed (hash {container.spec_hash or 'none'} -> {spec.spec_hash})",
                )
            )
        elif changes:
            reasons_list.append(("drift", "changed outside fleetform (drift)"))
        if (
            desired.secret_hashes is not None
            and spec.secrets
            and container.secret_hash != secret_hash
        ):
            names = ", ".join(sorted(spec.secrets.values()))
            reasons_list.append(("secret-changed", f"secret value changed: {names}"))
        if container.state == "dead":
            reasons_list.append(("dead", "container is dead"))
        if reasons_list:
            steps.append(
                _step(
                    desired,
                    "update",
                    spec.name,
                    spec.deployment,
                    spec.replica,
                    tuple(reasons_list),
                    spec_hash=spec.spec_hash,
                    current=container.id,
                    changes=changes,
                )
            )
        elif not container.running:
            reasons: tuple[Reason, ...] = (("stopped", f"container is {container.state}"),)
            steps.append(
                _step(
                    desired,
                    "start",
                    spec.name,
                    spec.deployment,
                    spec.replica,
                    reasons,
                    spec_hash=spec.spec_hash,
                    current=container.id,
                )
            )
        else:
            unchanged.append(spec.name)

    steps.sort(key=lambda s: (ACTION_ORDER[s.action], s.name))
    steps = [*fetch_steps(desired, observed), *_resource_order(steps, desired, owned, prefix)]
    deletes = sum(1 for s in steps if s.action == "delete")
    return HostPlan(
        desired.host,
        desired.target,
        tuple(steps),
        tuple(unchanged),
        observed.fingerprint(),
        desired.fingerprint(),
        empties=not desired.specs and deletes > 0,
        secrets_unknown=desired.secret_hashes is None
        and any(spec.secrets for spec in desired.specs),
    )


def _resource_order(
    steps: list[Step], desired: DesiredHost, owned: dict[str, ObservedContainer], prefix: str
) -> list[Step]:
    """Steps in an order where no new container starts while an old one still holds its
    port or GPU: deletes first, then each update or create after the updates whose old
    containers hold what it needs (else by action and name), then starts. In a cycle (two
    deployments swapping ports), the first step stops the others' old containers first.
    """
    specs = {spec.name: spec for spec in desired.specs}
    movers = [s for s in steps if s.action in ("update", "create")]
    held = {s.name: holds(owned[s.name], prefix) for s in movers if s.action == "update"}
    if not any(held.values()):
        return steps
    blockers = {
        step.name: {
            name: sorted(set(specs[step.name].holds) & held[name])
            for name in held
            if name != step.name and set(specs[step.name].holds) & held[name]
        }
        for step in movers
    }
    ordered: list[Step] = [s for s in steps if s.action == "delete"]
    pending = list(movers)  # in (action, name) order
    released: set[str] = set()  # updates done or whose old container is stopped first
    while pending:
        ready = next((s for s in pending if not set(blockers[s.name]) - released), None)
        if ready is None:  # every one left waits on another: a cycle
            ready = pending[0]
            frees = sorted(set(blockers[ready.name]) - released)
            why = "; ".join(f"{n} holds {', '.join(blockers[ready.name][n])}" for n in frees)
            ready = replace(
                ready,
                frees=tuple(frees),
                reasons=(*ready.reasons, f"stops {', '.join(frees)} first ({why})"),
                codes=(*ready.codes, "frees"),
            )
            released.update(frees)
        ordered.append(ready)
        pending = [s for s in pending if s.name != ready.name]
        released.add(ready.name)
    return ordered + [s for s in steps if s.action == "start"]


def holds(container: ObservedContainer, prefix: str) -> set[str]:
    """The ports and GPUs a container holds: what apply stamped on it, else the GPU ids
    of its device request (a container made by ``docker compose up`` from output/)."""
    labels = container.view.get("labels", {})
    stamped = labels.get(label(prefix, HOLDS))
    if stamped is not None:
        return set(filter(None, stamped.split(",")))
    return {
        f"cuda GPU {index}"
        for request in container.view.get("gpus", [])
        if request.startswith("nvidia:")
        for index in filter(None, request.removeprefix("nvidia:").split(","))
    }


def _step(
    desired: DesiredHost,
    action: Action,
    name: str,
    deployment: str,
    replica: int,
    reasons: tuple[Reason, ...],
    **extra: Any,
) -> Step:
    return Step(
        desired.host,
        desired.target,
        action,
        name,
        deployment,
        replica,
        tuple(text for _, text in reasons),
        codes=tuple(code for code, _ in reasons),
        **extra,
    )


# --- field diffs ----------------------------------------------------------------------


def diff_container(
    spec: ContainerSpec, container: ObservedContainer, prefix: str
) -> tuple[Change, ...]:
    """The compared fields that differ, with secrets masked, sorted by field."""
    wanted = desired_view(spec, {})
    seen = dict(container.view)
    for name in left_to_engine(spec, container):
        wanted.pop(name, None)
        seen.pop(name, None)
    secret_names = set(spec.secrets)
    # Variables that held secrets when the container was made: never shown.
    masked = set(filter(None, seen["labels"].get(label(prefix, SECRET_VARS), "").split(",")))
    wanted_env = {k: v for k, v in wanted["env"].items() if k not in secret_names}
    seen["env"] = {
        k: MASK if k in masked else v
        for k, v in seen["env"].items()
        if k not in secret_names and (k in wanted_env or container.image_env.get(k) != v)
    }
    wanted["env"] = wanted_env
    own_labels = {label(prefix, name) for name in STAMPED_BY_APPLY}
    wanted["labels"] = {k: v for k, v in wanted["labels"].items() if k not in own_labels}
    seen["labels"] = {
        k: v
        for k, v in seen["labels"].items()
        if k not in own_labels and (k in wanted["labels"] or k.startswith(prefix + "."))
    }
    return changes_between(seen, wanted)
