"""Kinds of host are drivers in one table (compiler/targets): a third one is registered
here, in the test alone, and the whole pipeline — validate, compile, index, plan, apply,
unlock — uses it with no other change; and no module outside the drivers branches on a
kind's name."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from compiler import api
from compiler.apply import HostResult, Options, Secrets, Target, apply_plan
from compiler.model import Settings
from compiler.observed import ObservedHost
from compiler.plan import DesiredHost, HostPlan, Step
from compiler.remote.connections import Connections
from compiler.render.container import ContainerSpec
from compiler.resolve import Fleet, ResolvedHost, Workload
from compiler.targets import DRIVERS
from tests.helpers_repo import make_repo

ROOT = Path(__file__).resolve().parent.parent


class FakeDriver:
    """A kind of host that keeps its replicas in a dict: what a driver must answer."""

    kind = "fake"
    fetches_models = False
    schedules_itself = False
    host_fields: tuple[str, ...] = ("address", "labels", "gpus", "port_range")
    required_host_fields: tuple[str, ...] = ("address",)

    def __init__(self) -> None:
        self.running: dict[str, str] = {}  # replica -> spec hash
        self.calls: list[str] = []
        self.locked = False

    def render(self, host: ResolvedHost, fleet: Fleet) -> dict[str, str]:
        lines = [f"{w.name} {w.image} {w.spec_hash()}" for w in fleet.on_host(host.name)]
        return {"fake.txt": "\n".join(lines) + "\n"}

    def artifact_path(self, workload: Workload, settings: Settings) -> str:
        return "fake.txt"

    def is_artifact_path(self, path: str) -> bool:
        return path == "fake.txt"

    def compared_file(
        self, workload: Workload, settings: Settings, files: Mapping[str, bytes]
    ) -> tuple[str, str] | None:
        return None

    def secrets_hash(self, spec: ContainerSpec, values: dict[str, str]) -> str:
        return ""

    def observe(
        self, target: Target, settings: Settings, early: Connections | None
    ) -> ObservedHost:
        self.calls.append(f"observe {target.desired.host}")
        return ObservedHost(target.desired.host, "fake")

    def plan(
        self, desired: DesiredHost, observed: ObservedHost, project: str, prefix: str
    ) -> HostPlan:
        self.calls.append(f"plan {desired.host}")
        running = self.running  # what observe saw: the fake host is this dict
        steps = tuple(
            Step(desired.host, "fake", "create", s.name, s.deployment, s.replica,
                 ("not on the fake host",), codes=("missing",), spec_hash=s.spec_hash)
            for s in desired.specs
            if running.get(s.name) != s.spec_hash
        )  # fmt: skip
        return HostPlan(
            desired.host, "fake", steps, (), observed.fingerprint(), desired.fingerprint()
        )

    def apply(
        self,
        host_plan: HostPlan,
        target: Target,
        project: str,
        options: Options,
        secrets: dict[str, Secrets],
        say: Callable[[str, str], None],
    ) -> HostResult:
        self.calls.append(f"apply {host_plan.host}")
        self.locked = True
        result = HostResult(host_plan.host, "converged")
        for step in host_plan.steps:
            self.running[step.name] = step.spec_hash
            result.done.append(step)
        self.locked = False
        return result

    def unlock(self, target: Target, project: str) -> bool:
        self.calls.append(f"unlock {target.desired.host}")
        return False

    def spec_name(self, step_name: str) -> str:
        return step_name


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDriver]:
    driver = FakeDriver()
    monkeypatch.setitem(DRIVERS, "fake", driver)  # the one line a new kind adds
    yield driver


def test_a_registered_third_kind_runs_the_whole_pipeline(tmp_path: Path, fake: FakeDriver) -> None:
    hosts = "- {name: f1, address: 10.9.0.7, target: fake, gpus: {framework: cuda, count: 2}}\n"
    make_repo(
        tmp_path,
        {
            "hosts.d/h.yaml": hosts,
            "deployments.d/d.yaml": "- {name: d, backend: srv, local_path: /m/a, replicas: 2}\n",
        },
    )
    api.compile_repo(tmp_path)
    text = (tmp_path / "output" / "f1" / "fake.txt").read_text()
    assert [line.split()[0] for line in text.splitlines()] == ["d-0", "d-1"]
    index = json.loads((tmp_path / "output" / "f1" / "index.json").read_text())
    assert index["target"] == "fake"
    assert {w["artifact"] for w in index["workloads"]} == {"fake.txt"}

    planned = api.plan_repo(tmp_path)
    assert [(s.action, s.name, s.codes) for s in planned.plan.steps] == [
        ("create", "fleetform-d-0", ("missing",)),
        ("create", "fleetform-d-1", ("missing",)),
    ]
    result = apply_plan(planned.plan, planned.targets, "fleetform", Options())
    assert result.ok
    assert not api.plan_repo(tmp_path).plan.steps  # converged
    assert api.unlock(tmp_path, "f1") is False
    assert fake.calls == [
        "observe f1", "plan f1", "apply f1", "observe f1", "plan f1", "unlock f1"
    ]  # fmt: skip


def test_an_unregistered_kind_is_a_validation_error(tmp_path: Path) -> None:
    make_repo(tmp_path, {"hosts.d/h.yaml": "- {name: f1, address: 10.9.0.7, target: fake}\n"})
    with pytest.raises(Exception) as caught:
        api.build(tmp_path)
    expected = "'fake' is not a kind of host fleetform drives ('compose', 'systemd' or 'gpustack')"
    assert expected in str(caught.value)


# Modules that are one kind's own (its driver and the stages only it uses).
_KIND_MODULES = {"targets", "render/compose.py", "render/systemd.py"}


def test_nothing_outside_the_drivers_branches_on_a_kind() -> None:
    compiler = ROOT / "compiler"
    branching = re.compile(r"""(==|!=|\bin)\s*\(?["'](compose|systemd|gpustack)["']""")
    found = []
    for path in sorted(compiler.rglob("*.py")):
        relative = path.relative_to(compiler).as_posix()
        if relative.split("/")[0] in _KIND_MODULES or relative in _KIND_MODULES:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if branching.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert found == []


def test_an_index_may_claim_only_its_kinds_artifacts(tmp_path: Path) -> None:
    """A pull request's index.json that names another file of the host's folder as a
    replica's artifact (so that compile would treat it as fleetform's) is ignored."""
    import warnings

    from compiler.output import IndexIgnored

    make_repo(tmp_path, {"deployments.d/d.yaml": "- {name: d, backend: srv, local_path: /m}\n"})
    api.compile_repo(tmp_path)
    index_path = tmp_path / "output" / "h1" / "index.json"
    index = json.loads(index_path.read_text())
    index["workloads"][0]["artifact"] = "notes.txt"
    index_path.write_text(json.dumps(index))
    (tmp_path / "output" / "h1" / "notes.txt").write_text("a person's notes\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        api.build(tmp_path)
    messages = [str(w.message) for w in caught if issubclass(w.category, IndexIgnored)]
    assert messages == [
        "warning: output/h1/index.json: ignored ('notes.txt' is not a compose host's"
        " artifact); placement starts fresh for its replicas"
    ]
