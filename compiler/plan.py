"""Stage 7: the Plan model — steps with their reasons and reason codes, per host — and
its one JSON form. Pure: no I/O. Each kind of host's driver makes its hosts' plans
(``compiler/targets/*/plan.py``: desired specs against what the host runs); deepdiff
only explains *what* differs (:func:`changes_between`).

Steps are ordered per host: deletes first (they free GPUs and ports), then updates,
creates and starts, each by container name; hosts by name. That order is the plan's
one text form and the order apply carries the steps out in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Literal

from compiler.hub import HubModel
from compiler.observed import ObservedHost, Target
from compiler.render.container import ContainerSpec

Action = Literal["fetch", "create", "update", "delete", "start"]
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
    "versions-released",  # update (GPUStack): a backend's versions removed after its models moved
    "drift",  # update: changed on the host, outside fleetform
    "drop-in",  # update (systemd): a drop-in changes what the unit runs
    "secret-changed",  # update: a secret's value changed in the applying environment
    "dead",  # update: the container is dead
    "not-loaded",  # update (systemd): systemd has not loaded the unit file on disk
    "not-restarted",  # update (systemd): the unit's container runs an older unit
    "stopped",  # start: the container or unit is not running
    "disabled",  # start (systemd): the unit is not enabled
    "frees",  # any: it first stops containers holding a port or GPU it needs
    "model-missing",  # fetch: the host has no such model folder
    "model-revision",  # fetch: the host's folder holds another revision or other files
    "model-changed",  # fetch: the folder was removed or changed since it was fetched
]
Reason = tuple[ReasonCode, str]
# Fetches come first: a model that cannot be fetched (no space, no access) fails the
# host before anything is stopped.
ACTION_ORDER: dict[str, int] = {"fetch": -1, "delete": 0, "update": 1, "create": 2, "start": 3}
PLAN_SCHEMA = "fleetform.plan/v1"
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
    # The id of the container acted on ("" for a create); for a fetch of a folder that
    # changed on the host, the commit it held: it is restored, not moved to a newer one.
    current: str = ""
    displace: str = ""  # the id of a foreign container squatting the name
    diff: tuple[str, ...] = ()  # systemd: the unit file's unified diff
    # Containers of later updates to stop before this one starts: they hold a port or
    # GPU it needs, and wait for one this step frees (a swap), so no order alone works.
    frees: tuple[str, ...] = ()
    model_key: str = ""  # fetch: the HubModel's key
    model_bytes: int | None = None  # fetch: what the hub says it will download
    # A GPUStack backend's first update: versions kept until the models on them move
    # (a second update, after the models', removes them).
    keep: tuple[str, ...] = ()

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
            "model_key": self.model_key,
            "model_bytes": self.model_bytes,
            **({"keep": list(self.keep)} if self.keep else {}),
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
            model_key=data.get("model_key", ""),
            model_bytes=data.get("model_bytes"),
            keep=tuple(data.get("keep", ())),
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
    # Hub models the host must hold before its replicas start (compose hosts).
    models: tuple[HubModel, ...] = ()
    # Where and with what they are fetched (the repository's hub settings): shown in the
    # plan, and a saved plan is stale once it changes.
    hub_source: str = ""
    # A GPUStack cluster: its artifacts (path below output/<host>/ → text), the
    # documents it must hold.
    documents: dict[str, str] | None = None

    def fingerprint(self) -> str:
        document = sorted((s.name, s.spec_hash) for s in self.specs)
        units = sorted((self.units or {}).items())
        state: dict[str, Any] = {"host": self.host, "specs": document, "units": units}
        if self.models:
            state["models"] = sorted(m.key for m in self.models)
            state["hub_source"] = self.hub_source
        if self.documents:
            state["documents"] = sorted(self.documents.items())
        return _digest(state)


def fetch_steps(desired: DesiredHost, observed: ObservedHost) -> list[Step]:
    """A fetch for each hub model folder the host must hold and its records do not show
    (the same folder, revision and files), by folder: before any other step."""
    present = {model.key: model for model in observed.models}
    by_folder = {model.folder: model for model in observed.models}
    steps: list[Step] = []
    for model in sorted(desired.models, key=lambda m: (m.folder, m.key)):
        record = present.get(model.key)
        there = by_folder.get(model.folder)
        code: ReasonCode
        if record is not None and record.now == record.stamp:
            continue
        if record is not None:
            code = "model-changed"
            where = (
                f"{model.folder} was removed from the host"
                if not record.now
                else f"{model.folder} changed on the host since it was fetched"
            )
        elif there is None:
            code, where = "model-missing", f"not in {model.folder} on the host"
        else:
            code, where = "model-revision", f"the host's folder holds {there.title}"
        steps.append(
            Step(
                desired.host,
                desired.target,
                "fetch",
                model.title,
                "",
                -1,
                (f"{where}; {desired.hub_source}",),
                codes=(code,),
                model_key=model.key,
                current=record.commit if record is not None else "",
            )
        )
    return steps


def with_model_sizes(plan: Plan, sizes: dict[str, int]) -> Plan:
    """``plan`` with each fetch step's size, where the hub said it (in its reason too)."""

    def sized(step: Step) -> Step:
        size = sizes.get(step.model_key) if step.action == "fetch" else None
        if size is None:
            return step
        where, _, source = step.reasons[0].partition("; ")
        shown = f"{size / 1e9:,.2f} GB" if size >= 1e9 else f"{size / 1e6:,.1f} MB"
        reason = f"{where} ({shown}); {source}" if source else where
        return replace(step, model_bytes=size, reasons=(reason, *step.reasons[1:]))

    hosts = tuple(replace(h, steps=tuple(sized(s) for s in h.steps)) for h in plan.hosts)
    return replace(plan, hosts=hosts)


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
    # What the host holds that is not this project's (a GPUStack cluster's other backends
    # and models): shown, never touched.
    foreign: tuple[str, ...] = ()


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
            "hosts": [_host_json(h) for h in self.hosts],
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
                    foreign=tuple(h.get("foreign", ())),
                    empties=h["empties"],
                    secrets_unknown=h["secrets_unknown"],
                )
                for h in data["hosts"]
            ),
            notes=tuple(data.get("notes", ())),
        )


def _host_json(h: HostPlan) -> dict[str, Any]:
    found: dict[str, Any] = {
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
    if h.foreign:  # only GPUStack clusters have any; other hosts' JSON stays as it was
        found["foreign"] = list(h.foreign)
    return found


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
