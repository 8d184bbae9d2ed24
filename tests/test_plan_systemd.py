"""The plan of a systemd host, from literal observations: no host needed."""

from __future__ import annotations

import dataclasses

from compiler.observed import ObservedHost, ObservedUnit
from compiler.plan import DesiredHost, make_plan
from compiler.render.container import ContainerSpec

UNIT_DIR = "/etc/systemd/system"


def spec(name: str, spec_hash: str = "h1", secrets: dict[str, str] | None = None) -> ContainerSpec:
    return ContainerSpec(
        name=name,
        deployment=name.rsplit("-", 1)[0].removeprefix("fleet-"),
        replica=int(name.rsplit("-", 1)[1]),
        spec_hash=spec_hash,
        image="img:1",
        entrypoint=None,
        command=("serve",),
        env={},
        secrets=secrets or {},
        labels={},
        network_mode="host",
        shm_size="1g",
        restart="always",
        mounts=(),
        binds=(),
        devices=(),
        ports=(),
        gpu_driver=None,
        gpu_ids=(),
        address="127.0.0.1",
        port=40000,
        health_check_path=None,
        health_timeout=10.0,
    )


def unit_text(name: str, spec_hash: str = "h1", extra: str = "") -> str:
    return (
        f"[Service]\nX-Fleetform-Project=fleet\nX-Fleetform-Spec-Hash={spec_hash}\n"
        f"ExecStart=/usr/bin/docker run --name {name} img:1{extra}\n"
    )


def observed_unit(name: str, text: str, **changes: object) -> ObservedUnit:
    unit = ObservedUnit(
        name=f"{name}.service",
        path=f"{UNIT_DIR}/{name}.service",
        owned="X-Fleetform-Project=fleet" in text,
        text=text,
        spec_hash=text.split("X-Fleetform-Spec-Hash=")[1].split("\n")[0] if "Hash=" in text else "",
        load_state="loaded",
        active_state="active",
        sub_state="running",
        unit_file_state="enabled",
        need_daemon_reload=False,
        container="running",
    )
    return dataclasses.replace(unit, **changes)  # type: ignore[arg-type]


def plan_of(
    specs: list[ContainerSpec], units: list[ObservedUnit], texts: dict[str, str]
) -> list[str]:
    desired = DesiredHost(
        "h", "systemd", "127.0.0.1", tuple(specs), {}, units=texts, unit_dir=UNIT_DIR
    )
    observed = {"h": ObservedHost("h", "systemd", units=tuple(units))}
    plan = make_plan("fleet", [desired], observed, "io.fleetform")
    if plan.hosts[0].error:
        return [f"error: {plan.hosts[0].error}"]
    assert all(len(s.codes) == len(s.reasons) for s in plan.steps)
    last_codes[:] = [f"{s.name}: {','.join(s.codes)}" for s in plan.steps]
    return [f"{s.action} {s.name}: {'; '.join(s.reasons)}" for s in plan.steps]


# The reason codes of the steps plan_of listed last (plan JSON's "reason_codes").
last_codes: list[str] = []


def test_steps_for_each_unit_state() -> None:
    names = ["fleet-a-0", "fleet-b-0", "fleet-c-0", "fleet-d-0", "fleet-e-0", "fleet-f-0"]
    texts = {f"{n}.service": unit_text(n) for n in names}
    units = [
        observed_unit("fleet-a-0", unit_text("fleet-a-0")),  # as desired
        observed_unit("fleet-b-0", unit_text("fleet-b-0", extra=" --privileged")),  # edited
        observed_unit("fleet-c-0", unit_text("fleet-c-0"), unit_file_state="disabled"),
        observed_unit(
            "fleet-d-0", unit_text("fleet-d-0"), active_state="failed", sub_state="failed"
        ),
        observed_unit("fleet-e-0", unit_text("fleet-e-0"), container="missing"),
        observed_unit("fleet-old-0", unit_text("fleet-old-0")),  # gone from the repo
    ]
    assert plan_of([spec(n) for n in names], units, texts) == [
        "delete fleet-old-0.service: no longer in the repository",
        "update fleet-b-0.service: unit file edited outside fleetform (drift)",
        "create fleet-f-0.service: no such unit on the host",
        "start fleet-c-0.service: unit is disabled",
        "start fleet-d-0.service: unit is failed (failed)",
        "start fleet-e-0.service: its container is missing",
    ]
    assert last_codes == [
        "fleet-old-0.service: orphan",
        "fleet-b-0.service: drift",
        "fleet-f-0.service: missing",
        "fleet-c-0.service: disabled",
        "fleet-d-0.service: stopped",
        "fleet-e-0.service: stopped",
    ]


def test_spec_change_and_drop_in_show_a_unified_diff() -> None:
    name = "fleet-a-0"
    texts = {f"{name}.service": unit_text(name, "h2")}
    drop_in = (f"{UNIT_DIR}/{name}.service.d/x.conf", "[Service]\nEnvironment=X=1\n")
    units = [observed_unit(name, unit_text(name, "h1"), drop_ins=(drop_in,))]
    desired = DesiredHost("h", "systemd", "127.0.0.1", (spec(name, "h2"),), {}, texts, UNIT_DIR)
    plan = make_plan(
        "fleet", [desired], {"h": ObservedHost("h", "systemd", units=tuple(units))}, "p"
    )
    (step,) = plan.steps
    assert step.action == "update"
    assert step.reasons == (
        "spec changed (hash h1 -> h2)",
        f"drop-in {drop_in[0]} changes what runs (drift)",
    )
    assert step.codes == ("spec-changed", "drop-in")
    assert "-X-Fleetform-Spec-Hash=h1" in step.diff
    assert "+X-Fleetform-Spec-Hash=h2" in step.diff
    assert f"--- {drop_in[0]} (removed)" in step.diff
    assert "-Environment=X=1" in step.diff


def test_an_unowned_unit_with_our_name_is_a_conflict_never_a_step() -> None:
    name = "fleet-a-0"
    foreign = observed_unit(name, "[Service]\nExecStart=/bin/true\n")
    assert plan_of([spec(name)], [foreign], {f"{name}.service": unit_text(name)}) == [
        f"error: unit {name}.service ({UNIT_DIR}/{name}.service) exists and is not fleetform's"
        " (no X-Fleetform-Project=fleet): fleetform will not touch it; remove or rename it"
    ]


def test_secret_change_is_an_update_without_the_value() -> None:
    name = "fleet-a-0"
    texts = {f"{name}.service": unit_text(name)}
    desired = DesiredHost(
        "h",
        "systemd",
        "127.0.0.1",
        (spec(name, secrets={"HF_TOKEN": "hf"}),),
        {name: "newhash"},
        texts,
        UNIT_DIR,
    )
    units = (observed_unit(name, unit_text(name), env_hash="oldhash"),)
    plan = make_plan("fleet", [desired], {"h": ObservedHost("h", "systemd", units=units)}, "p")
    (step,) = plan.steps
    assert (step.action, step.reasons) == ("update", ("secret value changed: hf",))
    assert step.codes == ("secret-changed",)
    assert step.diff == ()


def test_unreachable_host_is_an_error_with_no_steps() -> None:
    desired = DesiredHost("h", "systemd", "127.0.0.1", (), {}, {}, UNIT_DIR)
    observed = {"h": ObservedHost("h", "systemd", error="cannot reach root@h over ssh")}
    plan = make_plan("fleet", [desired], observed, "p")
    assert plan.hosts[0].error == "cannot reach root@h over ssh"
    assert plan.steps == []


def test_a_unit_running_an_older_container_than_its_file_is_an_update() -> None:
    # An apply that died after writing the files, before restarting the units.
    name = "fleet-a-0"
    texts = {f"{name}.service": unit_text(name, "h2")}
    stale = observed_unit(name, unit_text(name, "h2"), container_hash="h1")
    assert plan_of([spec(name, "h2")], [stale], texts) == [
        f"update {name}.service: its container runs an older unit (hash h1 -> h2): not"
        " restarted since the file changed"
    ]
    assert last_codes == [f"{name}.service: not-restarted"]
    current = observed_unit(name, unit_text(name, "h2"), container_hash="h2")
    assert plan_of([spec(name, "h2")], [current], texts) == []


def test_a_file_systemd_has_not_loaded_is_an_update_with_secrets_too() -> None:
    name = "fleet-a-0"
    texts = {f"{name}.service": unit_text(name)}
    desired = DesiredHost(
        "h",
        "systemd",
        "127.0.0.1",
        (spec(name, secrets={"HF_TOKEN": "hf"}),),
        {name: "same"},
        texts,
        UNIT_DIR,
    )
    units = (observed_unit(name, unit_text(name), env_hash="same", need_daemon_reload=True),)
    plan = make_plan("fleet", [desired], {"h": ObservedHost("h", "systemd", units=units)}, "p")
    (step,) = plan.steps
    assert (step.action, step.reasons) == (
        "update",
        ("systemd has not loaded the unit file on disk",),
    )
    assert step.codes == ("not-loaded",)
