"""Stage 7: desired containers vs what the hosts run → a Plan. Pure: no I/O.

Change is detected by the spec hash fleetform stamps on what it creates, and by
comparing the container's own config with the spec (so a container recreated by
hand with other env, image or GPUs is drift even when it kept fleetform's labels).
deepdiff only explains *what* differs. Secrets are compared through a hash label and
never shown.

Steps are ordered per host: deletes first (they free GPUs and ports), then updates,
creates and starts, each by container name; hosts by name. That order is the plan's
one text form and the order apply carries the steps out in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Literal

from compiler.observe import ObservedContainer, ObservedHost, Target
from compiler.render.container import ContainerSpec

Action = Literal["create", "update", "delete", "start"]
# Why a step is planned, for machines (plan JSON's "reason_codes", one per reason, in the
# order of "reasons"): bots tell a drift from a change in the repository without reading
# the prose, as Terraform's ActionReason.
ReasonCode = Literal[
    "missing",  # create: no such container or unit on the host
    "squatter",  # create: a container fleetform does not own holds the name
    "orphan",  # delete: its deployment is no longer in the repository
    "replica-unwanted",  # delete: its deployment has fewer replicas now
    "interrupted",  # delete: left behind by an interrupted apply
    "spec-changed",  # update: the repository says something else now
    "drift",  # update: changed on the host, outside fleetform
    "drop-in",  # update (systemd): a drop-in changes what the unit runs
    "secret-changed",  # update: a secret's value changed in the applying environment
    "dead",  # update: the container is dead
    "not-loaded",  # update (systemd): systemd has not loaded the unit file on disk
    "not-restarted",  # update (systemd): the unit's container runs an older unit
    "stopped",  # start: the container or unit is not running
    "disabled",  # start (systemd): the unit is not enabled
    "frees",  # any: it first stops containers holding a port or GPU it needs
]
Reason = tuple[ReasonCode, str]
ACTION_ORDER: dict[str, int] = {"delete": 0, "update": 1, "create": 2, "start": 3}
PLAN_SCHEMA = "fleetform.plan/v1"
PREVIOUS_SUFFIX = "--fleetform-previous"
MASK = "(secret)"


@dataclass(frozen=True)
class Change:
    """One field that differs: ``before`` is what runs, ``after`` what will."""

    field: str
    before: Any
    after: Any


@dataclass(frozen=True)
class Step:
    host: str
    target: Target
    action: Action
    name: str  # the container (or unit) name
    deployment: str
    replica: int
    reasons: tuple[str, ...]
    changes: tuple[Change, ...] = ()
    codes: tuple[ReasonCode, ...] = ()  # one per reason
    spec_hash: str = ""  # the desired spec's hash ("" for a delete)
    current: str = ""  # the id of the container acted on ("" for a create)
    displace: str = ""  # the id of a foreign container squatting the name
    diff: tuple[str, ...] = ()  # systemd: the unit file's unified diff
    # Containers of later updates to stop before this one starts: they hold a port or
    # GPU it needs, and wait for one this step frees (a swap), so no order alone works.
    frees: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "target": self.target,
            "action": self.action,
            "name": self.name,
            "deployment": self.deployment,
            "replica": self.replica,
            "reasons": list(self.reasons),
            "reason_codes": list(self.codes),
            "changes": [
                {"field": c.field, "before": c.before, "after": c.after} for c in self.changes
            ],
            "spec_hash": self.spec_hash,
            "current": self.current,
            "displace": self.displace,
            "diff": list(self.diff),
            "frees": list(self.frees),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Step:
        return cls(
            host=data["host"],
            target=data["target"],
            action=data["action"],
            name=data["name"],
            deployment=data["deployment"],
            replica=int(data["replica"]),
            reasons=tuple(data["reasons"]),
            codes=tuple(data.get("reason_codes", ())),
            changes=tuple(Change(c["field"], c["before"], c["after"]) for c in data["changes"]),
            spec_hash=data["spec_hash"],
            current=data["current"],
            displace=data["displace"],
            diff=tuple(data.get("diff", ())),
            frees=tuple(data.get("frees", ())),
        )


@dataclass(frozen=True)
class DesiredHost:
    """What one host must run. ``secret_hashes``: per container name, the hash of its
    secret values as the applying environment has them; None when they are not all
    available (a plan in a pull request), and then secret changes are not detected."""

    host: str
    target: Target
    address: str
    specs: tuple[ContainerSpec, ...]
    secret_hashes: dict[str, str] | None = None
    # systemd hosts: each replica's unit (file name → text) and where units live.
    units: dict[str, str] | None = None
    unit_dir: str = "/etc/systemd/system"

    def fingerprint(self) -> str:
        document = sorted((s.name, s.spec_hash) for s in self.specs)
        units = sorted((self.units or {}).items())
        return _digest({"host": self.host, "specs": document, "units": units})


@dataclass(frozen=True)
class HostPlan:
    host: str
    target: Target
    steps: tuple[Step, ...]
    unchanged: tuple[str, ...]  # containers already as desired
    observed: str  # fingerprint of the observation
    desired: str  # fingerprint of the desired specs
    error: str | None = None
    empties: bool = False  # the plan deletes every container fleetform owns here
    secrets_unknown: bool = False


@dataclass(frozen=True)
class Plan:
    project: str
    hosts: tuple[HostPlan, ...]
    notes: tuple[str, ...] = ()

    @property
    def steps(self) -> list[Step]:
        return [step for host in self.hosts for step in host.steps]

    @property
    def has_changes(self) -> bool:
        return any(host.steps for host in self.hosts)

    @property
    def errors(self) -> list[HostPlan]:
        return [host for host in self.hosts if host.error]

    def counts(self) -> dict[str, int]:
        counts = {action: 0 for action in ACTION_ORDER}
        for step in self.steps:
            counts[step.action] += 1
        counts["unchanged"] = sum(len(host.unchanged) for host in self.hosts)
        return counts

    def fingerprint(self) -> str:
        """What the plan was computed from: apply refuses it once this differs."""
        return _digest([[h.host, h.observed, h.desired] for h in self.hosts])

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PLAN_SCHEMA,
            "project": self.project,
            "fingerprint": self.fingerprint(),
            "summary": self.counts(),
            "hosts": [
                {
                    "host": h.host,
                    "target": h.target,
                    "error": h.error,
                    "observed": h.observed,
                    "desired": h.desired,
                    "empties": h.empties,
                    "secrets_unknown": h.secrets_unknown,
                    "unchanged": list(h.unchanged),
                    "steps": [s.to_json() for s in h.steps],
                }
                for h in self.hosts
            ],
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        if data.get("schema") != PLAN_SCHEMA:
            raise ValueError(f"not a fleetform plan (schema {data.get('schema')!r})")
        return cls(
            project=data["project"],
            hosts=tuple(
                HostPlan(
                    host=h["host"],
                    target=h["target"],
                    steps=tuple(Step.from_json(s) for s in h["steps"]),
                    unchanged=tuple(h["unchanged"]),
                    observed=h["observed"],
                    desired=h["desired"],
                    error=h["error"],
                    empties=h["empties"],
                    secrets_unknown=h["secrets_unknown"],
                )
                for h in data["hosts"]
            ),
            notes=tuple(data.get("notes", ())),
        )


def make_plan(
    project: str, desired: list[DesiredHost], observed: dict[str, ObservedHost], prefix: str
) -> Plan:
    """The plan for every desired host, from the observation of each."""
    from compiler.targets import driver_for

    hosts = []
    for wanted in sorted(desired, key=lambda d: d.host):
        seen = observed.get(wanted.host)
        if seen is None:
            seen = ObservedHost(wanted.host, wanted.target, error="not observed")
        hosts.append(driver_for(wanted.target).plan(wanted, seen, project, prefix))
    return Plan(project=project, hosts=tuple(hosts))


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
    steps = _resource_order(steps, desired, owned, prefix)
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
    stamped = labels.get(f"{prefix}.holds")
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
    from compiler.observe.docker import desired_view

    wanted = desired_view(spec, {})
    seen = dict(container.view)
    secret_names = set(spec.secrets)
    # Variables that held secrets when the container was made: never shown.
    masked = set(filter(None, seen["labels"].get(f"{prefix}.secret-vars", "").split(",")))
    wanted_env = {k: v for k, v in wanted["env"].items() if k not in secret_names}
    seen["env"] = {
        k: MASK if k in masked else v
        for k, v in seen["env"].items()
        if k not in secret_names and (k in wanted_env or container.image_env.get(k) != v)
    }
    wanted["env"] = wanted_env
    own_labels = {
        f"{prefix}.spec-hash",
        f"{prefix}.secret-hash",
        f"{prefix}.secret-vars",
        f"{prefix}.holds",
    }
    wanted["labels"] = {k: v for k, v in wanted["labels"].items() if k not in own_labels}
    seen["labels"] = {
        k: v
        for k, v in seen["labels"].items()
        if k not in own_labels and (k in wanted["labels"] or k.startswith(prefix + "."))
    }
    if not spec.shm_size:
        seen["shm_size"] = None  # the engine's default size, whatever its daemon says
    if spec.stop_timeout is None:
        seen["stop_timeout"] = None  # unset: whatever the engine or compose put there
    if spec.user is None and seen.get("user") == (container.image_user or None):
        seen["user"] = None  # the image's own user, which the engine filled in
    if spec.entrypoint is None:
        wanted.pop("entrypoint")
        seen.pop("entrypoint", None)
    if not spec.command:
        wanted.pop("command")
        seen.pop("command", None)
    return changes_between(seen, wanted)


def changes_between(before: dict[str, Any], after: dict[str, Any]) -> tuple[Change, ...]:
    """deepdiff's findings, reported per field (per key for maps such as env)."""
    if before == after:
        return ()  # the common case: no need to load deepdiff (and numpy) at all
    from deepdiff import DeepDiff

    found: dict[str, Change] = {}
    tree = DeepDiff(before, after, view="tree", verbose_level=2)
    for levels in tree.values():
        for level in levels:
            path = level.path(output_format="list")
            if not path:
                continue
            top = str(path[0])
            is_map = isinstance(before.get(top), dict) or isinstance(after.get(top), dict)
            if is_map and len(path) >= 2:
                key = str(path[1])
                name = f"{top}.{key}"
                found[name] = Change(
                    name, before.get(top, {}).get(key), after.get(top, {}).get(key)
                )
                continue
            found[top] = Change(top, before.get(top), after.get(top))
    return tuple(found[name] for name in sorted(found))


def secret_hash(spec: ContainerSpec, values: dict[str, str]) -> str:
    """A hash of a container's secret values, salted with its spec hash: stamped as a
    label so that a changed secret is detected without the value ever being shown."""
    document = {var: values[secret] for var, secret in sorted(spec.secrets.items())}
    return _digest({"salt": spec.spec_hash, "secrets": document})


def _digest(document: Any) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
