"""The plan of a systemd host: desired unit files vs the units observed. Pure.

A unit is fleetform's when its file carries ``X-Fleetform-Project=<project>``; a
file of a name fleetform must use that does not is a conflict, reported and never
touched. A unit is updated when its file differs from the compiled one (the cause
says whether the spec changed or the file was edited by hand, with a unified diff),
when a drop-in changes what it runs, when its secrets changed, or when its container
was started from another file than the one on disk (its spec-hash label); it is
(re)started when it is disabled, not active, or its container is gone.
"""

from __future__ import annotations

import difflib

from compiler.observed import ObservedHost, ObservedUnit
from compiler.plan import ACTION_ORDER, DesiredHost, HostPlan, Reason, Step, fetch_steps
from compiler.render.container import ContainerSpec


def plan_systemd_host(desired: DesiredHost, observed: ObservedHost, project: str) -> HostPlan:
    fingerprint = observed.fingerprint()
    if observed.error is not None:
        return HostPlan(
            desired.host, "systemd", (), (), fingerprint, desired.fingerprint(), observed.error
        )
    units = desired.units or {}
    specs = {f"{spec.name}.service": spec for spec in desired.specs}
    seen = {unit.name: unit for unit in observed.units}
    conflicts = sorted(name for name in units if name in seen and not seen[name].owned)
    if conflicts:
        error = "; ".join(
            f"unit {name} ({seen[name].path}) exists and is not fleetform's (no"
            f" X-Fleetform-Project={project}): fleetform will not touch it; remove or"
            " rename it"
            for name in conflicts
        )
        return HostPlan(desired.host, "systemd", (), (), fingerprint, desired.fingerprint(), error)

    steps: list[Step] = []
    unchanged: list[str] = []
    for name, extra in sorted(seen.items()):
        if extra.owned and name not in units:
            steps.append(
                _step(desired, "delete", name, None, (("orphan", "no longer in the repository"),))
            )
    for name, text in sorted(units.items()):
        spec = specs[name]
        unit = seen.get(name)
        if unit is None:
            steps.append(
                _step(desired, "create", name, spec, (("missing", "no such unit on the host"),))
            )
            continue
        reasons = _update_reasons(desired, spec, text, unit)
        if reasons:
            diff = _diff(unit, text)
            steps.append(_step(desired, "update", name, spec, tuple(reasons), diff=diff))
        elif unit.unit_file_state != "enabled":
            steps.append(
                _step(
                    desired, "start", name, spec, (("disabled", f"unit is {unit.unit_file_state}"),)
                )
            )
        elif not unit.running:
            why = (
                f"its container is {unit.container}"
                if unit.active_state == "active"
                else f"unit is {unit.active_state} ({unit.sub_state})"
            )
            steps.append(_step(desired, "start", name, spec, (("stopped", why),)))
        else:
            unchanged.append(name)
    steps.sort(key=lambda s: (ACTION_ORDER[s.action], s.name))
    steps = [*fetch_steps(desired, observed), *steps]
    deletes = sum(1 for s in steps if s.action == "delete")
    return HostPlan(
        desired.host,
        "systemd",
        tuple(steps),
        tuple(unchanged),
        fingerprint,
        desired.fingerprint(),
        empties=not units and deletes > 0,
        secrets_unknown=desired.secret_hashes is None and any(s.secrets for s in desired.specs),
    )


def _update_reasons(
    desired: DesiredHost, spec: ContainerSpec, text: str, unit: ObservedUnit
) -> list[Reason]:
    reasons: list[Reason] = []
    if unit.text != text:
        if unit.spec_hash != spec.spec_hash:
            hashes = f"{unit.spec_hash or 'none'} -> {spec.spec_hash}"
            reasons.append(("spec-changed", f"spec changed (hash {hashes})"))
        else:
            reasons.append(("drift", "unit file edited outside fleetform (drift)"))
    for path, _ in unit.drop_ins:
        reasons.append(("drop-in", f"drop-in {path} changes what runs (drift)"))
    known = desired.secret_hashes
    if known is not None and spec.secrets and unit.env_hash != known.get(spec.name, ""):
        names = ", ".join(sorted(spec.secrets.values()))
        reasons.append(("secret-changed", f"secret value changed: {names}"))
    if reasons:
        return reasons
    if unit.need_daemon_reload:
        reasons.append(("not-loaded", "systemd has not loaded the unit file on disk"))
    elif unit.container == "running" and unit.container_hash not in ("", spec.spec_hash):
        # The file is right but the unit was not restarted since it changed (an apply
        # that died between writing the files and restarting the units).
        reasons.append(
            (
                "not-restarted",
                f"its container runs an older unit (hash {unit.container_hash} ->"
                f" {spec.spec_hash}): not restarted since the file changed",
            )
        )
    return reasons


def _diff(unit: ObservedUnit, text: str) -> tuple[str, ...]:
    lines = list(
        difflib.unified_diff(
            unit.text.splitlines(), text.splitlines(), unit.path, unit.path, lineterm=""
        )
    )
    for path, drop_in in unit.drop_ins:
        lines.append(f"--- {path} (removed)")
        lines.extend(f"-{line}" for line in drop_in.splitlines())
    return tuple(lines)


def _step(
    desired: DesiredHost,
    action: str,
    name: str,
    spec: ContainerSpec | None,
    reasons: tuple[Reason, ...],
    diff: tuple[str, ...] = (),
) -> Step:
    deployment, replica = ("", -1) if spec is None else (spec.deployment, spec.replica)
    return Step(
        host=desired.host,
        target="systemd",
        action=action,  # type: ignore[arg-type]
        name=name,
        deployment=deployment,
        replica=replica,
        reasons=tuple(text for _, text in reasons),
        codes=tuple(code for code, _ in reasons),
        spec_hash=spec.spec_hash if spec else "",
        diff=diff,
    )
