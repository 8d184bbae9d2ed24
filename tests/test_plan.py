"""compiler/plan.py without a daemon: literal desired specs (tests/plan_specs.py) against
what a real engine reported for them — ``docker ps`` and ``docker inspect`` output
recorded from Docker Engine 20.10.24 (Debian 12's docker.io) by tests/record_inspect.py
into tests/fixtures/inspect/ — through observe.docker's own reduction, then
``plan_host`` and the three report formats."""

from __future__ import annotations

import dataclasses
import difflib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from compiler import report
from compiler.observed import ObservedContainer, ObservedHost
from compiler.plan import (
    Change,
    DesiredHost,
    HostPlan,
    Plan,
    secret_hash,
)
from compiler.render.container import ContainerSpec, Mount
from compiler.targets.compose.observe import _container, observe_engine
from compiler.targets.compose.plan import plan_host
from tests import plan_specs as specs
from tests.plan_specs import API0, PREFIX, PROJECT, SQUAT0, TOK0, WEB0, WEB1, changed

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RECORDED = {
    path.stem: json.loads(path.read_text(encoding="utf-8"))
    for path in sorted((FIXTURES / "inspect").glob("*.json"))
}
TOKEN = {"HF_TOKEN": specs.SECRET_VALUE}


class RecordedEngine:
    """The recorded engine at the Engine API boundary: the three reads observe makes.
    Any other request fails loudly."""

    def __init__(self, names: list[str] | None = None) -> None:
        chosen = list(RECORDED) if names is None else names
        self.records = [RECORDED[name] for name in chosen]

    def get(self, path: str, **query: Any) -> Any:
        if path == "/containers/json":
            assert query == {"all": 1}, "observe must see stopped containers too"
            return [record["summary"] for record in self.records]
        kind, _, rest = path.strip("/").partition("/")
        name, _, tail = rest.rpartition("/")
        assert tail == "json" and not query, f"unexpected request: GET {path} {query}"
        if kind == "containers":
            (found,) = [r["inspect"] for r in self.records if r["inspect"]["Id"] == name]
            return dict(found)
        assert kind == "images", f"unexpected request: GET {path}"
        envs = {
            json.dumps(r["image_env"])
            for r in self.records
            if r["inspect"]["Config"]["Image"] == name
        }
        (env,) = envs
        return {"Config": {"Env": json.loads(env)}}


def observed(names: list[str] | None = None, wanted: tuple[str, ...] = ()) -> ObservedHost:
    """The recorded host as observe.docker reduces it (``wanted``: names fleetform
    needs, so that a foreign container holding one is seen)."""
    engine: Any = RecordedEngine(names)
    return observe_engine(engine, "h1", PROJECT, PREFIX, wanted)


def reduced(name: str) -> ObservedContainer:
    record = RECORDED[name]
    labels = record["inspect"]["Config"]["Labels"] or {}
    owned = labels.get(f"{PREFIX}.managed-by") == "fleetform"
    image_env = dict(item.split("=", 1) for item in record["image_env"] or [])
    return _container(record["inspect"], PREFIX, owned, image_env)


def plan_of(
    *wanted: ContainerSpec,
    seen: ObservedHost | None = None,
    secrets: dict[str, str] | None = TOKEN,
) -> HostPlan:
    """The plan of host h1 for ``wanted`` against ``seen`` (by default, the recorded
    containers of the same names); ``secrets``: the values the applying environment
    has, None when it has none."""
    hashes = None
    if secrets is not None:
        hashes = {s.name: secret_hash(s, secrets) for s in wanted if s.secrets}
    desired = DesiredHost("h1", "compose", "127.0.0.1", tuple(wanted), hashes)
    if seen is None:  # the recorded containers of these names, and no others
        names = [s.name for s in wanted if s.name in RECORDED]
        seen = observed(names, tuple(s.name for s in wanted))
    return plan_host(desired, seen, PREFIX)


def steps(host: HostPlan) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(s.action, s.name, s.reasons) for s in host.steps]


def text(host: HostPlan) -> str:
    return report.plan_text(Plan(PROJECT, (host,)))


def assert_same(actual: str, expected: str) -> None:
    if actual != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            "expected",
            "actual",
        )
        pytest.fail("".join(diff))


# --- the recording ---------------------------------------------------------------------------


def test_the_recording_is_of_the_engine_the_notes_say() -> None:
    assert sorted(RECORDED) == sorted(specs.RECORDED)
    for record in RECORDED.values():
        assert record["recorded_with"].startswith("Docker Engine 20.10.24+dfsg1 (API 1.41,")


def test_reduction_of_a_recorded_gpu_container() -> None:
    container = reduced("fleetform-web-1")
    assert (container.name, container.state, container.owned) == (
        "fleetform-web-1",
        "exited",
        True,
    )
    assert (container.deployment, container.replica, container.spec_hash) == (
        "web",
        1,
        WEB1.spec_hash,
    )
    assert container.secret_hash == ""
    assert container.image_env == {"PATH": "/bin", "IMAGE_LEVEL": "info"}
    assert container.view == {
        "image": specs.IMAGE,
        "entrypoint": ["busybox"],
        "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"],
        # The engine puts the image's env into the container's: kept here, and left
        # out of the comparison unless the spec sets the same variable.
        "env": {"A": "1", "IMAGE_LEVEL": "info", "PATH": "/bin"},
        "gpus": ["nvidia:1"],
        # Mount-API binds and SRC:DST[:ro] binds in one normal form.
        "mounts": ["/srv:/srv:ro"],
        "devices": [],
        "network_mode": "host",
        "shm_size": 64 * 1024**2,
        "stop_timeout": None,  # no Config.StopTimeout: the engine's default
        # Config.User "" (the image's own, none) and IpcMode "private" (the engine's
        # default): both as a spec without them.
        "user": None,
        "ipc": None,
        "restart": "unless-stopped",
        "labels": {
            "io.fleetform.deployment": "web",
            "io.fleetform.managed-by": "fleetform",
            "io.fleetform.project": "fleetform",
            "io.fleetform.replica": "1",
            "io.fleetform.spec-hash": WEB1.spec_hash,
        },
    }


def test_reduction_of_a_foreign_container_keeps_nothing_of_ownership() -> None:
    squatter = reduced("fleetform-squat-0")
    assert (squatter.owned, squatter.deployment, squatter.replica, squatter.spec_hash) == (
        False,
        "",
        -1,
        "",
    )
    assert squatter.view["labels"] == {}
    assert squatter.view["gpus"] == []


def test_observe_sees_owned_containers_and_only_squatters_of_wanted_names() -> None:
    everything = observed(wanted=(SQUAT0.name,))
    assert [c.name for c in everything.containers] == sorted(specs.RECORDED)
    owned_only = observed()
    assert SQUAT0.name not in [c.name for c in owned_only.containers]
    assert all(c.owned for c in owned_only.containers)
    # The same containers listed in another order are the same observation.
    shuffled = list(RECORDED)
    random.Random(7).shuffle(shuffled)
    assert observed(shuffled, (SQUAT0.name,)) == everything
    assert observed(shuffled, (SQUAT0.name,)).fingerprint() == everything.fingerprint()


# --- single causes ---------------------------------------------------------------------------


def test_a_container_as_specified_is_unchanged_though_its_image_adds_env() -> None:
    host = plan_of(WEB0)
    assert host.steps == ()
    assert host.unchanged == ("fleetform-web-0",)
    # web-0's recorded env holds PATH and IMAGE_LEVEL from the image; the spec does not.
    assert set(reduced("fleetform-web-0").view["env"]) == {"A", "IMAGE_LEVEL", "PATH"}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"env": {"A": "2"}}, [Change("env.A", "1", "2")]),
        ({"env": {"A": "1", "B": "new"}}, [Change("env.B", None, "new")]),
        ({"env": {}}, [Change("env.A", "1", None)]),
        # An image variable counts once the spec sets it.
        (
            {"env": {"A": "1", "IMAGE_LEVEL": "debug"}},
            [Change("env.IMAGE_LEVEL", "info", "debug")],
        ),
        (
            {"image": "fleetform-test/busybox:2"},
            [Change("image", specs.IMAGE, "fleetform-test/busybox:2")],
        ),
        ({"entrypoint": ("/bin/busybox",)}, [Change("entrypoint", ["busybox"], ["/bin/busybox"])]),
        (
            {"command": ("sleep", "60")},
            [Change("command", list(specs.SLEEP), ["sleep", "60"])],
        ),
        ({"gpu_ids": ("2", "3")}, [Change("gpus", ["nvidia:0"], ["nvidia:2,3"])]),
        ({"gpu_driver": None, "gpu_ids": ()}, [Change("gpus", ["nvidia:0"], [])]),
        (
            {"mounts": (Mount("/srv/models", "/srv/models", True),)},
            [Change("mounts", ["/srv:/srv:ro"], ["/srv/models:/srv/models:ro"])],
        ),
        # The same bind written as a volume: nothing differs but the hash.
        ({"mounts": (), "binds": ("/srv:/srv:ro",)}, []),
        (
            {"binds": ("/data:/data",)},
            [Change("mounts", ["/srv:/srv:ro"], ["/data:/data", "/srv:/srv:ro"])],
        ),
        ({"shm_size": "1g"}, [Change("shm_size", 64 * 1024**2, 1024**3)]),
        ({"restart": "always"}, [Change("restart", "unless-stopped", "always")]),
        ({"user_labels": {"team": "inference"}}, [Change("labels.team", None, "inference")]),
        ({"devices": ("/dev/null",)}, [Change("devices", [], ["/dev/null"])]),
        ({"user": "1000:1000"}, [Change("user", None, "1000:1000")]),
        ({"ipc": "host"}, [Change("ipc", None, "host")]),
        (
            {"env": {"A": "2"}, "restart": "no"},
            [Change("env.A", "1", "2"), Change("restart", "unless-stopped", "no")],
        ),
    ],
)
def test_a_changed_spec_updates_with_the_field_diff(
    fields: dict[str, Any], expected: list[Change]
) -> None:
    wanted = changed(WEB0, **fields)
    host = plan_of(wanted)
    (step,) = host.steps
    assert step.action == "update"
    assert step.reasons == (f"spec changed (hash {WEB0.spec_hash} -> {wanted.spec_hash})",)
    assert step.codes == ("spec-changed",)
    assert list(step.changes) == expected
    assert step.current == RECORDED["fleetform-web-0"]["inspect"]["Id"]
    assert step.spec_hash == wanted.spec_hash


def recorded_as(
    wanted: ContainerSpec,
    name: str = "fleetform-web-0",
    *,
    image_user: str = "",
    **config: dict[str, Any],
) -> ObservedHost:
    """The recorded container ``name`` with ``wanted``'s hash label and some of its
    inspect changed (``Config={...}``, ``HostConfig={...}``): made from ``wanted``, then
    changed by hand, or by an engine configured otherwise."""
    details = json.loads(json.dumps(RECORDED[name]["inspect"]))
    details["Config"]["Labels"][f"{PREFIX}.spec-hash"] = wanted.spec_hash
    for part, values in config.items():
        details[part].update(values)
    image_env = dict(item.split("=", 1) for item in RECORDED[name]["image_env"] or [])
    return ObservedHost(
        "h1", "compose", (_container(details, PREFIX, True, image_env, image_user),)
    )


def test_user_and_ipc_compare_with_the_engine_defaults_as_none() -> None:
    # "shareable" is the other default IpcMode (the daemon's default-ipc-mode).
    assert plan_of(WEB0, seen=recorded_as(WEB0, HostConfig={"IpcMode": "shareable"})).steps == ()
    # The engine copies the image's USER into Config.User when the container sets none.
    seen = recorded_as(WEB0, Config={"User": "1001"}, image_user="1001")
    assert plan_of(WEB0, seen=seen).steps == ()
    # A spec that names the image's own user: the same container.
    wanted = changed(WEB0, user="1001", ipc="host")
    seen = recorded_as(wanted, Config={"User": "1001"}, HostConfig={"IpcMode": "host"})
    assert plan_of(wanted, seen=seen).steps == ()


def test_user_and_ipc_changed_by_hand_are_drift() -> None:
    seen = recorded_as(
        WEB0, Config={"User": "0"}, HostConfig={"IpcMode": "host"}, image_user="1001"
    )
    host = plan_of(WEB0, seen=seen)
    (step,) = host.steps
    assert (step.action, step.reasons, step.changes) == (
        "update",
        ("changed outside fleetform (drift)",),
        (Change("ipc", "host", None), Change("user", "0", None)),
    )
    shown = [line for line in text(host).splitlines() if line.startswith("      ")]
    assert shown == ['      ipc: "host" -> (none)', '      user: "0" -> (none)']
    # Another IPC mode than the defaults is kept as it is, and so is drift too.
    wanted = changed(WEB0, user="1000:1000", ipc="host")
    (step,) = plan_of(wanted, seen=recorded_as(wanted, HostConfig={"IpcMode": "none"})).steps
    assert step.changes == (Change("ipc", "none", "host"), Change("user", None, "1000:1000"))


def test_a_new_hash_alone_updates_with_no_field_diff() -> None:
    """What changed is in the spec but not in the container's config (the health check
    path): the hash alone says so, and the update shows no field diff."""
    wanted = changed(WEB0, health_check_path="/ready")
    (step,) = plan_of(wanted).steps
    assert (step.action, step.changes) == ("update", ())


def test_drift_keeps_the_hash_but_not_the_config() -> None:
    """api-0 was recreated by hand with fleetform's labels and other env."""
    (step,) = plan_of(API0).steps
    assert (step.action, step.reasons, step.changes) == (
        "update",
        ("changed outside fleetform (drift)",),
        (Change("env.A", "by-hand", "1"),),
    )
    assert step.codes == ("drift",)


def test_an_exited_container_is_started_not_recreated() -> None:
    (step,) = plan_of(WEB1).steps
    assert (step.action, step.reasons, step.codes) == (
        "start",
        ("container is exited",),
        ("stopped",),
    )
    assert step.current == RECORDED["fleetform-web-1"]["inspect"]["Id"]
    # A stopped container whose spec also changed is recreated instead.
    (step,) = plan_of(changed(WEB1, env={"A": "2"})).steps
    assert step.action == "update"


def test_a_missing_container_is_created() -> None:
    fresh = dataclasses.replace(SQUAT0, name="fleetform-fresh-0", deployment="fresh")
    (step,) = plan_of(fresh).steps
    assert (step.action, step.name, step.reasons, step.displace) == (
        "create",
        "fleetform-fresh-0",
        ("no such container on the host",),
        "",
    )
    assert step.codes == ("missing",)


def test_a_foreign_container_on_the_name_is_displaced_never_deleted() -> None:
    squatter = RECORDED["fleetform-squat-0"]["inspect"]["Id"]
    (step,) = plan_of(SQUAT0).steps
    assert (step.action, step.current, step.displace) == ("create", "", squatter)
    assert step.reasons == (
        f"the name is taken by container {squatter[:12]}, which fleetform does not own:"
        " it will be stopped and renamed, not deleted",
    )
    assert step.codes == ("squatter",)
    # Unless its name is wanted, a foreign container is not even looked at.
    host = plan_of(WEB0, seen=observed(wanted=(WEB0.name,)))
    assert squatter not in [s.current for s in host.steps] + [s.displace for s in host.steps]


def test_leftovers_and_unwanted_containers_are_deleted() -> None:
    host = plan_of(WEB0, API0, seen=observed())
    assert steps(host) == [
        ("delete", "fleetform-old-0", ("deployment 'old' is no longer in the repository",)),
        ("delete", "fleetform-tok-0", ("deployment 'tok' is no longer in the repository",)),
        (
            "delete",
            "fleetform-web-0--fleetform-previous",
            ("left behind by an interrupted apply",),
        ),
        ("delete", "fleetform-web-1", ("replica 1 is no longer wanted",)),
        ("update", "fleetform-api-0", ("changed outside fleetform (drift)",)),
    ]
    assert [s.codes for s in host.steps] == [
        ("orphan",), ("orphan",), ("interrupted",), ("replica-unwanted",), ("drift",)
    ]  # fmt: skip
    previous = RECORDED["fleetform-web-0--fleetform-previous"]["inspect"]["Id"]
    assert host.steps[2].current == previous
    assert not host.empties


def test_deleting_every_owned_container_is_flagged() -> None:
    host = plan_of(seen=observed())
    assert [s.action for s in host.steps] == ["delete"] * 6
    assert host.empties
    assert text(host).splitlines()[2] == (
        "h1 (compose): would remove every container fleetform runs here: needs --allow-empty"
    )


def test_an_unreachable_host_plans_nothing_and_says_why() -> None:
    seen = ObservedHost("h1", "compose", error="cannot reach unix:///nowhere: refused")
    host = plan_of(WEB0, seen=seen)
    assert (host.steps, host.error) == ((), "cannot reach unix:///nowhere: refused")
    assert text(host).splitlines()[2] == (
        "h1 (compose): error: cannot reach unix:///nowhere: refused"
    )


# --- secrets ---------------------------------------------------------------------------------


def test_a_secret_is_compared_by_hash_and_never_shown() -> None:
    container = reduced("fleetform-tok-0")
    assert container.view["env"]["HF_TOKEN"] == specs.SECRET_VALUE  # what the engine has
    assert container.secret_hash == secret_hash(TOK0, TOKEN)

    # The same value: nothing to do.
    assert plan_of(TOK0).steps == ()

    # Another value: an update naming the secret, with no field diff.
    rotated = plan_of(TOK0, secrets={"HF_TOKEN": "hf_rotated"})
    (step,) = rotated.steps
    assert (step.action, step.reasons, step.changes) == (
        "update",
        ("secret value changed: HF_TOKEN",),
        (),
    )
    assert step.codes == ("secret-changed",)

    # No value here (a pull request's plan): not detected, and the plan says so.
    unknown = plan_of(TOK0, secrets=None)
    assert (unknown.steps, unknown.secrets_unknown) == ((), True)
    assert "secret values not available here: their changes are not detected" in text(unknown)

    # No longer a secret: the old value still never appears.
    plain = plan_of(changed(TOK0, secrets={}, env={"A": "1", "HF_TOKEN": "now-plain"}))
    (step,) = plain.steps
    assert step.changes == (Change("env.HF_TOKEN", "(secret)", "now-plain"),)
    dropped = plan_of(changed(TOK0, secrets={}, env={"A": "1"}))
    (step,) = dropped.steps
    assert step.changes == (Change("env.HF_TOKEN", "(secret)", None),)

    for host in (rotated, unknown, plain, dropped):
        plan = Plan(PROJECT, (host,))
        for shown in (report.plan_text(plan), report.plan_markdown(plan), report.plan_json(plan)):
            assert specs.SECRET_VALUE not in shown


# --- order and formats -----------------------------------------------------------------------

WANTED = (WEB0, WEB1, API0, TOK0, SQUAT0)


def combined() -> Plan:
    return Plan(PROJECT, (plan_of(*WANTED, seen=observed(wanted=(SQUAT0.name,))),))


def test_the_plan_is_sorted_whatever_the_order_things_come_in() -> None:
    """Deletes first (they free GPUs and ports), then updates, creates and starts, each
    by name — not the order the engine listed containers or the repository held specs."""
    fresh = dataclasses.replace(SQUAT0, name="fleetform-aaa-0", deployment="aaa")
    wanted = [changed(WEB0, env={"A": "2"}), WEB1, fresh, API0]
    expected = [
        ("delete", "fleetform-old-0"),
        ("delete", "fleetform-tok-0"),
        ("delete", "fleetform-web-0--fleetform-previous"),
        ("update", "fleetform-api-0"),
        ("update", "fleetform-web-0"),
        ("create", "fleetform-aaa-0"),
        ("start", "fleetform-web-1"),
    ]
    first = plan_of(*wanted, seen=observed())
    assert [(s.action, s.name) for s in first.steps] == expected
    names = list(RECORDED)
    for seed in range(5):
        rng = random.Random(seed)
        rng.shuffle(names)
        rng.shuffle(wanted)
        host = plan_of(*wanted, seen=observed(names))
        assert text(host) == text(first)
        assert host == first


def test_text_format() -> None:
    squatter = RECORDED["fleetform-squat-0"]["inspect"]["Id"][:12]
    assert_same(
        report.plan_text(combined()),
        "Plan: 1 to create, 1 to update, 2 to delete, 1 to start (2 unchanged) on 1 host\n"
        "\n"
        "h1 (compose): 2 unchanged\n"
        "  - delete fleetform-old-0  (deployment 'old' is no longer in the repository)\n"
        "  - delete fleetform-web-0--fleetform-previous  (left behind by an interrupted apply)\n"
        "  ~ update fleetform-api-0  (changed outside fleetform (drift))\n"
        '      env.A: "by-hand" -> "1"\n'
        f"  + create fleetform-squat-0  (the name is taken by container {squatter}, which"
        " fleetform does not own: it will be stopped and renamed, not deleted)\n"
        "  > start  fleetform-web-1  (container is exited)\n",
    )
    colored = report.plan_text(combined(), color=True)
    assert "\x1b[31m- delete\x1b[0m fleetform-old-0" in colored
    assert "\x1b[33m~ update\x1b[0m fleetform-api-0" in colored
    assert "\x1b[32m+ create\x1b[0m fleetform-squat-0" in colored
    assert "\x1b[36m> start \x1b[0m fleetform-web-1" in colored


def test_markdown_format() -> None:
    squatter = RECORDED["fleetform-squat-0"]["inspect"]["Id"][:12]
    assert_same(
        report.plan_markdown(combined()),
        "### fleetform plan: fleetform\n"
        "\n"
        "**Plan: 1 to create, 1 to update, 2 to delete, 1 to start (2 unchanged) on 1 host**\n"
        "\n"
        "#### `h1` (compose)\n"
        "\n"
        "| action | container | why |\n"
        "|---|---|---|\n"
        "| - delete | `fleetform-old-0` | deployment 'old' is no longer in the repository |\n"
        "| - delete | `fleetform-web-0--fleetform-previous` | left behind by an interrupted"
        " apply |\n"
        "| ~ update | `fleetform-api-0` | changed outside fleetform (drift) |\n"
        f"| + create | `fleetform-squat-0` | the name is taken by container {squatter}, which"
        " fleetform does not own: it will be stopped and renamed, not deleted |\n"
        "| > start | `fleetform-web-1` | container is exited |\n"
        "\n"
        "<details><summary><code>fleetform-api-0</code>: what changes</summary>\n"
        "\n"
        "```diff\n"
        '- env.A: "by-hand"\n'
        '+ env.A: "1"\n'
        "```\n"
        "</details>\n"
        "\n"
        "2 unchanged.\n",
    )


def test_json_format(update_goldens: bool) -> None:
    golden = FIXTURES / "plan" / "combined.json"
    actual = report.plan_json(combined())
    if update_goldens:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(actual, encoding="utf-8")
    assert_same(actual, golden.read_text(encoding="utf-8"))
    document = json.loads(actual)
    assert document["schema"] == "fleetform.plan/v1"
    assert document["summary"] == {
        "fetch": 0,
        "delete": 2,
        "update": 1,
        "create": 1,
        "start": 1,
        "unchanged": 2,
    }
    # Each reason has its code, for bots: a drift is told from a change without prose.
    for step in (s for h in document["hosts"] for s in h["steps"]):
        assert len(step["reason_codes"]) == len(step["reasons"]) > 0, step
    codes = {s["name"]: s["reason_codes"] for h in document["hosts"] for s in h["steps"]}
    assert codes["fleetform-api-0"] == ["drift"]
    # A saved plan reads back as the same plan.
    again = Plan.from_json(document)
    assert report.plan_json(again) == actual
    assert again.fingerprint() == combined().fingerprint() == document["fingerprint"]


# --- ports and GPUs that move between deployments ------------------------------------------


def running_as(old: ContainerSpec, *, stamped: bool = True) -> ObservedContainer:
    """A container apply made from ``old``: its view, and the holds label apply stamps."""
    from compiler.targets.compose.fields import desired_view

    view = desired_view(old, {})
    if stamped:
        view["labels"] = {**view["labels"], f"{PREFIX}.holds": ",".join(old.holds)}
    return ObservedContainer(
        id=f"id-{old.name}",
        name=old.name,
        state="running",
        owned=True,
        deployment=old.deployment,
        replica=old.replica,
        spec_hash=old.spec_hash,
        secret_hash="",
        view=view,
    )


def on_port(deployment: str, port: int) -> ContainerSpec:
    return specs.spec(
        deployment, 0, f"{deployment}{port}".ljust(16, "0"), port=port, holds=(f"port {port}",)
    )


def test_an_update_waits_for_the_update_that_frees_its_port() -> None:
    # a moves onto b's port, b moves on: by name a would start first and find it taken.
    a, b = on_port("a", 41101), on_port("b", 41102)
    a2, b2 = on_port("a", 41102), on_port("b", 41103)
    seen = ObservedHost("h1", "compose", (running_as(a), running_as(b)))
    host = plan_of(a2, b2, seen=seen)
    assert [(s.action, s.name, s.frees) for s in host.steps] == [
        ("update", "fleetform-b-0", ()),
        ("update", "fleetform-a-0", ()),
    ]
    # Unrelated steps keep their order: deletes first, starts last.
    gone = on_port("gone", 41150)
    c, c2 = on_port("c", 41104), dataclasses.replace(on_port("c", 41104), spec_hash="c" * 16)
    stopped = dataclasses.replace(running_as(on_port("z", 41160)), state="exited")
    seen = ObservedHost(
        "h1", "compose", (running_as(a), running_as(b), running_as(gone), stopped, running_as(c))
    )
    host = plan_of(a2, b2, c2, on_port("z", 41160), on_port("new", 41101), seen=seen)
    assert [(s.action, s.name) for s in host.steps] == [
        ("delete", "fleetform-gone-0"),
        ("update", "fleetform-b-0"),
        ("update", "fleetform-a-0"),
        ("update", "fleetform-c-0"),
        ("create", "fleetform-new-0"),  # a's old port: after a's update, as by name anyway
        ("start", "fleetform-z-0"),
    ]


def test_an_update_waits_for_the_update_that_frees_its_gpu() -> None:
    def on_gpu(deployment: str, index: int, spec_hash: str) -> ContainerSpec:
        return specs.spec(
            deployment,
            0,
            spec_hash,
            gpu_driver="nvidia",
            gpu_ids=(str(index),),
            holds=(f"cuda GPU {index}",),
        )

    # a moves onto b's GPU 1, b moves on to GPU 2. b was made by `docker compose up`
    # (no holds label): its device request tells which GPU it holds.
    a, b = on_gpu("a", 0, "a" * 16), on_gpu("b", 1, "b" * 16)
    seen = ObservedHost("h1", "compose", (running_as(a), running_as(b, stamped=False)))
    host = plan_of(on_gpu("a", 1, "c" * 16), on_gpu("b", 2, "d" * 16), seen=seen)
    assert [(s.action, s.name, s.frees) for s in host.steps] == [
        ("update", "fleetform-b-0", ()),
        ("update", "fleetform-a-0", ()),
    ]


def test_a_swap_stops_the_other_old_container_first() -> None:
    a, b = on_port("a", 41101), on_port("b", 41102)
    a2, b2 = on_port("a", 41102), on_port("b", 41101)
    seen = ObservedHost("h1", "compose", (running_as(a), running_as(b)))
    host = plan_of(b2, a2, seen=seen)
    assert [(s.action, s.name, s.frees) for s in host.steps] == [
        ("update", "fleetform-a-0", ("fleetform-b-0",)),
        ("update", "fleetform-b-0", ()),
    ]
    assert host.steps[0].reasons[-1] == "stops fleetform-b-0 first (fleetform-b-0 holds port 41102)"
    assert host.steps[0].codes[-1] == "frees"
    assert len(host.steps[0].codes) == len(host.steps[0].reasons)
    assert "stops fleetform-b-0 first (fleetform-b-0 holds port 41102)" in text(host)
    saved = Plan.from_json(json.loads(json.dumps(Plan(PROJECT, (host,)).to_json())))
    assert saved.hosts[0].steps == host.steps
