"""Hub models fetched onto hosts by ``fleetform apply``, against real components.

The hub is olah (a Hugging Face mirror) on loopback serving repositories the tests make
(testing/hub_server.py), behind a gate that checks tokens, slows files down and logs
what it served. ModelScope, which no offline server imitates, is a stand-in serving its
API's list and download endpoints as the real client reads them
(testing/modelscope_server.py). Hosts are real engines (testing/engines.py). The helper
that downloads on each host is Debian's python3 with the real huggingface_hub and
modelscope-hub (testing/hub.py), built offline once; fleetform runs it as it would run
``hub.helper_image`` anywhere.

Each replica serves its model folder over HTTP (busybox httpd with the folder as its
document root), so a test reads back what the server sees.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testing.engines import TEST_IMAGE, EngineFactory
from testing.hub import HELPER_IMAGE, helper_rootfs, load_helper_image
from testing.hub_server import Gate, HubServer, add_commit, make_model_repo
from testing.modelscope_server import ModelScopeServer
from testing.systemd_hosts import SystemdHostFactory

REPO = "testorg/tiny"
MOVING = "testorg/moving"  # the same files; a test adds a commit to its main
BIG = "testorg/big"
TOKEN = "hf_fleetformtestsecret0123456789"
FILES = {
    "config.json": json.dumps({"model_type": "tiny"}).encode(),
    "tokenizer.json": json.dumps({"vocab": {"a": 0, "b": 1}}).encode(),
    "model-00001-of-00002.safetensors": os.urandom(300_000),
    "model-00002-of-00002.safetensors": os.urandom(200_000),
    "tiny-Q4_K_M.gguf": b"GGUF" + os.urandom(100_000),
    "tiny-Q8_0.gguf": b"GGUF" + os.urandom(150_000),
}
BIG_FILES = {
    "config.json": b'{"model_type": "big"}',
    "a.safetensors": os.urandom(400_000),
    "b.safetensors": os.urandom(3_000_000),
}
LFS = (".safetensors", ".gguf")
PORTS = "41300-41319"
# Serves the model folder (for one file: its folder) as the document root; a model path
# that is not there makes httpd exit at once, and so fails the step.
SERVE = (
    "sh -c \"trap 'exit 0' TERM; d={{model_path}}; test -d $d || d=$(dirname $d);"
    ' httpd -f -p {{worker_ip}}:{{port}} -h $d & wait"'
)
BACKEND = {
    "backend_name": "bb",
    "default_version": "v1",
    "default_run_command": SERVE,
    "version_configs": {
        "v1": {"image_name": TEST_IMAGE, "custom_framework": "cpu", "entrypoint": "busybox"},
    },
}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    work = tmp_path_factory.mktemp("hub")
    mirrors = work / "mirrors"
    make_model_repo(mirrors, REPO, FILES, LFS)
    make_model_repo(mirrors, BIG, BIG_FILES, LFS)
    make_model_repo(mirrors, MOVING, FILES, LFS)
    server = HubServer(work, mirrors)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def gate(hub: HubServer) -> Iterator[Gate]:
    """The hub's gate, reset for each test: no token needed, full speed, nothing served."""
    hub.gate.token, hub.gate.rate = None, None
    hub.gate.served.clear()
    hub.gate.seen_tokens.clear()
    yield hub.gate


def address(index: int) -> str:
    pid = os.getpid()
    return f"127.{43 + index}.{(pid >> 8) & 255}.{(pid & 255) or 1}"


class Fleet:
    """A repository whose hosts are real engines, each with its own model_dir."""

    def __init__(
        self,
        root: Path,
        engines: EngineFactory,
        hub: HubServer | None,
        count: int,
        ports: tuple[str, ...] = (),
        modelscope: ModelScopeServer | None = None,
    ) -> None:
        self.root = root
        self.repo = root / "repo"
        self.hosts: list[dict[str, Any]] = []
        self.engines = []
        for index in range(count):
            engine = engines(f"m{index}")
            load_helper_image(engine)
            self.engines.append(engine)
            self.hosts.append(
                {
                    "name": f"h{index + 1}",
                    "address": address(index),
                    "docker_host": engine.base_url,
                    "gpus": {"framework": "cuda", "count": 0},
                    "port_range": ports[index] if ports else PORTS,
                    "model_dir": str(root / f"models-h{index + 1}"),
                    "labels": {"pool": "p"},
                }
            )
        settings: dict[str, Any] = {"hub": {"helper_image": HELPER_IMAGE}}
        if hub is not None:
            settings["hub"]["endpoint"] = hub.endpoint
        if modelscope is not None:
            settings["hub"]["modelscope_endpoint"] = modelscope.endpoint
        self.write("fleetform.yaml", [settings])
        self.write("backends.d/b.yaml", [BACKEND])
        self.write("hosts.d/h.yaml", self.hosts)

    def write(self, relative: str, documents: list[dict[str, Any]]) -> None:
        path = self.repo / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")

    def deploy(self, *deployments: dict[str, Any]) -> None:
        self.write("deployments.d/d.yaml", list(deployments))
        done = self.ff("compile")
        assert done.returncode == 0, done.stderr

    def model_dir(self, host: int) -> Path:
        return Path(self.hosts[host]["model_dir"])

    def ff(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, env=self.env(env), timeout=300
        )

    def argv(self, *args: str) -> list[str]:
        cli = [sys.executable, "-c", "from compiler.cli import main; main()"]
        return [*cli, *args, "--repo", str(self.repo)]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        tokens = ("HF_TOKEN", "MODELSCOPE_API_TOKEN", "NO_COLOR")
        environment = {k: v for k, v in os.environ.items() if k not in tokens}
        return {**environment, **(extra or {})}

    def apply(self, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.ff("apply", "--auto-approve", "--stop-timeout", "1", env=env)

    def apply_killed_when(self, name: str, ready: Callable[[int], bool]) -> None:
        """Start an apply and SIGKILL it once the partial download of file ``name`` on
        the first host has a size ``ready`` accepts (within 60 s, or the test fails)."""
        partial = self.model_dir(0) / ".fleetform-partial"
        apply = subprocess.Popen(
            self.argv("apply", "--auto-approve"),
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                found = list(partial.glob(f"*/{name}")) if partial.exists() else []
                if found and ready(found[0].stat().st_size):
                    break
                assert time.monotonic() < deadline and apply.poll() is None
                time.sleep(0.1)
            apply.send_signal(signal.SIGKILL)
        finally:
            apply.kill()
            apply.wait()

    def plan(self, env: dict[str, str] | None = None) -> dict[str, Any]:
        done = self.ff("plan", "--format", "json", env=env)
        assert done.returncode == 0, done.stderr
        plan: dict[str, Any] = json.loads(done.stdout)
        return plan

    def containers(self, host: int) -> list[dict[str, Any]]:
        client = self.engines[host].client()
        try:
            return [client.api.inspect_container(c["Id"]) for c in client.api.containers(all=1)]
        finally:
            client.close()

    def served(self, host: int, port_index: int, path: str) -> bytes:
        port = int(PORTS.split("-")[0]) + port_index
        url = f"http://{self.hosts[host]['address']}:{port}/{path}"
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    return bytes(answer.read())
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def hub_deployment(name: str = "chat", **fields: Any) -> dict[str, Any]:
    document = {"name": name, "backend": "bb", "huggingface_repo_id": REPO, "replicas": 1}
    document.update(fields)
    return {k: v for k, v in document.items() if v is not None}


def fetches(plan: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    return [
        (h["host"], s["name"], s["reason_codes"])
        for h in plan["hosts"]
        for s in h["steps"]
        if s["action"] == "fetch"
    ]


def test_a_hub_model_is_fetched_once_per_host_verified_and_served(
    tmp_path: Path, engines: EngineFactory, hub: HubServer, gate: Gate
) -> None:
    # Two ports on h1, one on h2: the three replicas are placed two and one.
    fleet = Fleet(tmp_path, engines, hub, 2, ports=("41300-41301", "41300-41300"))
    fleet.deploy(hub_deployment("chat", replicas=3, huggingface_repo_id=MOVING))
    plan = fleet.plan()
    on_host = {
        h["host"]: [s["name"] for s in h["steps"] if s["action"] == "create"] for h in plan["hosts"]
    }
    assert [len(on_host["h1"]), len(on_host["h2"])] == [2, 1], on_host
    # One fetch per host, whatever the number of replicas and deployments there.
    assert fetches(plan) == [
        ("h1", f"{MOVING}@main", ["model-missing"]),
        ("h2", f"{MOVING}@main", ["model-missing"]),
    ]
    assert plan["summary"]["fetch"] == 2
    # What the hub says they weigh (asked without a token, from where plan runs).
    total = sum(len(content) for content in FILES.values())
    assert [s["model_bytes"] for h in plan["hosts"] for s in h["steps"] if s["model_key"]] == [
        total,
        total,
    ]
    markdown = fleet.ff("plan", "--format", "markdown").stdout
    source = f"from {hub.endpoint} by {HELPER_IMAGE}"  # where HF_TOKEN would go: shown
    where = f"not in {fleet.model_dir(0)}/{MOVING} on the host ({total / 1e6:.1f} MB)"
    row = f"| v fetch | `{MOVING}@main` | {where}; {source} |"
    assert row in markdown, markdown
    text = fleet.ff("plan").stdout
    assert text.startswith("Plan: 2 model(s) to fetch, 3 to create"), text

    applied = fleet.apply()
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"fetched {MOVING}@main" in applied.stderr
    # Every file came from the hub once per host, and is what the hub holds.
    assert sorted(gate.served) == sorted([*FILES] * 2)
    for host in (0, 1):
        folder = fleet.model_dir(host) / MOVING
        for name, content in FILES.items():
            assert (folder / name).read_bytes() == content
        manifest = json.loads((folder / ".fleetform-model.json").read_text())
        assert manifest["files"] == sorted(FILES)
        leftovers = list((fleet.model_dir(host) / ".fleetform-partial").iterdir())
        assert leftovers == []
        # The helper is gone; a record (never started) says what the folder holds.
        names = {c["Name"].lstrip("/"): c for c in fleet.containers(host)}
        assert not [n for n in names if n.startswith("fleetform-fetch-")]
        (record,) = [c for n, c in names.items() if n.startswith("fleetform-model-")]
        assert record["Config"]["Labels"]["io.fleetform.model"] == f"{MOVING}@main"
        assert record["State"]["Status"] == "created"
    # The servers see the files: each replica serves its host's model folder.
    served = [
        fleet.served(host, index, "config.json")
        for host, count in ((0, len(on_host["h1"])), (1, len(on_host["h2"])))
        for index in range(count)
    ]
    assert served == [FILES["config.json"]] * 3

    # A second apply fetches nothing: the plan has no step, the hub serves nothing.
    gate.served.clear()
    assert fetches(fleet.plan()) == []
    again = fleet.apply()
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout
    assert gate.served == []

    # Behind fleetform's back: a file removed on h1, the whole folder on h2. reconcile
    # reports both; --heal fetches again (the files still whole are kept).
    (fleet.model_dir(0) / MOVING / "tokenizer.json").unlink()
    shutil.rmtree(fleet.model_dir(1) / MOVING)
    drift = fleet.ff("reconcile", "--format", "json")
    assert drift.returncode == 2, drift.stdout + drift.stderr
    found = json.loads(drift.stdout)
    assert fetches(found) == [
        ("h1", f"{MOVING}@main", ["model-changed"]),
        ("h2", f"{MOVING}@main", ["model-changed"]),
    ]
    reasons = [s["reasons"][0] for h in found["hosts"] for s in h["steps"]]
    assert reasons[0].startswith(f"{fleet.model_dir(0)}/{MOVING} changed on the host"), reasons
    assert reasons[1].startswith(f"{fleet.model_dir(1)}/{MOVING} was removed from the host")
    # Meanwhile main moved on: healing restores the commit the hosts had, not a newer one.
    before = json.loads((fleet.model_dir(0) / MOVING / ".fleetform-model.json").read_text())
    newer = add_commit(hub.mirrors, MOVING, {"tokenizer.json": b'{"vocab": {}}'})
    healed = fleet.ff("reconcile", "--heal")
    assert healed.returncode == 2, healed.stdout + healed.stderr  # found, and healed
    assert "2 of 2 hosts converged" in healed.stdout, healed.stdout
    assert sorted(gate.served) == sorted(["tokenizer.json", *FILES])
    assert (fleet.model_dir(0) / MOVING / "tokenizer.json").read_bytes() == FILES["tokenizer.json"]
    assert fetches(fleet.plan()) == []
    for host in (0, 1):
        after = json.loads((fleet.model_dir(host) / MOVING / ".fleetform-model.json").read_text())
        assert after["commit"] == before["commit"] != newer
    # ...while the hub's main is the newer commit now (what an unpinned fetch would take).
    url = f"{hub.endpoint}/api/models/{MOVING}/revision/main"
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert json.loads(answer.read())["sha"] == newer


def test_one_gguf_file_of_a_repository(
    tmp_path: Path, engines: EngineFactory, hub: HubServer, gate: Gate
) -> None:
    fleet = Fleet(tmp_path, engines, hub, 1)
    fleet.deploy(hub_deployment(huggingface_filename="tiny-Q4_K_M.gguf"))
    assert fetches(fleet.plan()) == [("h1", f"{REPO}@main [tiny-Q4_K_M.gguf]", ["model-missing"])]
    applied = fleet.apply()
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert gate.served == ["tiny-Q4_K_M.gguf"]
    folder = fleet.model_dir(0) / REPO
    assert sorted(p.name for p in folder.iterdir()) == [".fleetform-model.json", "tiny-Q4_K_M.gguf"]
    # {{model_path}} is the file; the server (its folder as document root) sees it.
    assert fleet.served(0, 0, "tiny-Q4_K_M.gguf") == FILES["tiny-Q4_K_M.gguf"]


def test_a_gated_model_with_a_token_that_is_never_shown(
    tmp_path: Path, engines: EngineFactory, hub: HubServer, gate: Gate
) -> None:
    gate.token = TOKEN
    fleet = Fleet(tmp_path, engines, hub, 1)
    fleet.deploy(hub_deployment())
    wrong = fleet.apply(env={"HF_TOKEN": "hf_wrong"})
    assert wrong.returncode == 1
    failed = [line for line in wrong.stdout.splitlines() if "FAILED" in line]
    assert failed == [
        f"  h1: FAILED after 0 step(s): fetch {REPO}@main:"
        f" {REPO}: no such repository, or HF_TOKEN is missing or wrong (401)"
    ], wrong.stdout
    assert not (fleet.model_dir(0) / REPO).exists()

    right = {"HF_TOKEN": TOKEN}
    gate.seen_tokens.clear()
    plan = fleet.ff("plan", "--format", "json", env=right)
    # The plan asked the hub for sizes without the token (the gate refused: no size).
    assert gate.seen_tokens == []
    (step,) = [s for h in json.loads(plan.stdout)["hosts"] for s in h["steps"] if s["model_key"]]
    assert step["model_bytes"] is None
    applied = fleet.apply(env=right)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert TOKEN in gate.seen_tokens  # the helper did send it
    assert (fleet.model_dir(0) / REPO / "config.json").read_bytes() == FILES["config.json"]
    # Nowhere else: output/, the plan, apply's output, any container on the host.
    shown = [plan.stdout, plan.stderr, applied.stdout, applied.stderr, wrong.stderr]
    shown += [p.read_text() for p in (fleet.repo / "output").rglob("*") if p.is_file()]
    shown += [json.dumps(c) for c in fleet.containers(0)]
    assert not [text for text in shown if TOKEN in text]


def test_not_enough_space_is_refused_before_anything_is_stopped(
    tmp_path: Path, engines: EngineFactory, hub: HubServer, gate: Gate
) -> None:
    fleet = Fleet(tmp_path, engines, hub, 1)
    small = fleet.model_dir(0)
    small.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        (small / "local").mkdir()
        (small / "local" / "config.json").write_text("{}")
        fleet.deploy(hub_deployment(huggingface_repo_id=None, local_path=str(small / "local")))
        first = fleet.apply()
        assert first.returncode == 0, first.stdout + first.stderr
        (before,) = [c for c in fleet.containers(0) if c["Name"] == "/fleetform-chat-0"]

        fleet.deploy(hub_deployment())  # the same deployment, now from the hub: 750 KB
        refused = fleet.apply()
        assert refused.returncode == 1
        assert (
            "not enough free space under the host's model_dir for testorg/tiny" in refused.stdout
        ), refused.stdout
        (after,) = [c for c in fleet.containers(0) if c["Name"] == "/fleetform-chat-0"]
        assert (after["Id"], after["State"]["Running"]) == (before["Id"], True)
        assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
        assert gate.served == []
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_an_interrupted_fetch_resumes_and_no_partial_model_is_served(
    tmp_path: Path, engines: EngineFactory, hub: HubServer, gate: Gate
) -> None:
    fleet = Fleet(tmp_path, engines, hub, 1)
    fleet.deploy(hub_deployment(huggingface_repo_id=BIG))
    gate.rate = 400_000  # bytes per second: b.safetensors takes about 8 s
    # Killed once a.safetensors is complete in the partial folder.
    fleet.apply_killed_when("a.safetensors", lambda size: size == len(BIG_FILES["a.safetensors"]))
    # Killed half way: nothing is in place, no server runs on a partial model.
    assert not (fleet.model_dir(0) / BIG).exists()
    assert not [c for c in fleet.containers(0) if c["Name"] == "/fleetform-chat-0"]
    served_before = list(gate.served)
    assert served_before.count("a.safetensors") == 1

    # The killed apply left its lock, as any killed apply does; then apply again.
    unlocked = fleet.ff("unlock", "h1")
    assert unlocked.returncode == 0, unlocked.stdout + unlocked.stderr
    again = fleet.apply()  # still slowly (b.safetensors: 3 MB at 400 kB/s)
    assert again.returncode == 0, again.stdout + again.stderr
    # Progress while it downloads: bytes, total and rate, every 5 s.
    progress = [line for line in again.stderr.splitlines() if ": fetching " in line]
    assert progress and re.match(
        rf"^h1: fetching {BIG}@main: [0-9.,]+ MB of 3\.4 MB", progress[0]
    ), again.stderr
    # Resumed: the file that was complete was not fetched again.
    assert gate.served.count("a.safetensors") == 1
    folder = fleet.model_dir(0) / BIG
    for name, content in BIG_FILES.items():
        assert hashlib.sha256((folder / name).read_bytes()).digest() == (
            hashlib.sha256(content).digest()
        )
    assert fleet.served(0, 0, "config.json") == BIG_FILES["config.json"]


def test_files_already_on_the_host_are_kept_not_fetched_again(
    tmp_path: Path, engines: EngineFactory, hub: HubServer, gate: Gate
) -> None:
    fleet = Fleet(tmp_path, engines, hub, 1)
    # Staged by hand before fleetform fetched models: two files right, one corrupt.
    folder = fleet.model_dir(0) / REPO
    folder.mkdir(parents=True)
    for name in ("config.json", "model-00001-of-00002.safetensors"):
        (folder / name).write_bytes(FILES[name])
    (folder / "tiny-Q8_0.gguf").write_bytes(b"not the file")
    fleet.deploy(hub_deployment())
    applied = fleet.apply()
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert sorted(gate.served) == sorted(
        set(FILES) - {"config.json", "model-00001-of-00002.safetensors"}
    )
    for name, content in FILES.items():
        assert (folder / name).read_bytes() == content


def test_a_saved_plan_is_stale_once_the_hub_settings_change() -> None:
    from compiler.hub import hub_model_of
    from compiler.plan import DesiredHost

    model = hub_model_of({"huggingface_repo_id": REPO}, "/m")
    assert model is not None
    one, other = (
        DesiredHost("h1", "compose", "10.0.0.1", (), models=(model,), hub_source=source)
        for source in ("from https://huggingface.co by a", "from http://evil by a")
    )
    assert one.fingerprint() != other.fingerprint()


def test_a_systemd_host_fetches_through_its_own_docker(
    tmp_path: Path, systemd_hosts: SystemdHostFactory, hub: HubServer, gate: Gate
) -> None:
    host = systemd_hosts("s1")
    host.reach(int(hub.endpoint.rsplit(":", 1)[1]))  # the hub, as on the host's network
    host.exec(
        ["docker", "import", "--change", 'CMD ["python3"]', "-", HELPER_IMAGE],
        input=helper_rootfs().read_bytes(),
        timeout=300,
    )
    model_dir = "/srv/fleetform-models"  # on the host's own disk
    repo = tmp_path / "repo"
    documents = {
        "fleetform.yaml": [{"hub": {"endpoint": hub.endpoint, "helper_image": HELPER_IMAGE}}],
        "backends.d/b.yaml": [BACKEND],
        "hosts.d/h.yaml": [
            {
                "name": "s1",
                "address": "127.0.0.1",
                "target": "systemd",
                "ssh": host.ssh_target,
                "model_dir": model_dir,
                "port_range": PORTS,
            }
        ],
        "deployments.d/d.yaml": [hub_deployment(huggingface_filename="tiny-Q4_K_M.gguf")],
    }
    for relative, content in documents.items():
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_text(yaml.safe_dump_all(content, sort_keys=False))
    cli = [sys.executable, "-c", "from compiler.cli import main; main()"]
    env = {**{k: v for k, v in os.environ.items() if k != "HF_TOKEN"}, **host.env}

    def ff(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [*cli, *args, "--repo", str(repo)]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)

    assert ff("compile").returncode == 0
    planned = json.loads(ff("plan", "--format", "json").stdout)
    assert fetches(planned) == [("s1", f"{REPO}@main [tiny-Q4_K_M.gguf]", ["model-missing"])]
    applied = ff("apply", "--auto-approve", "--stop-timeout", "1")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert gate.served == ["tiny-Q4_K_M.gguf"]
    # The replica (a unit running a container) sees the verified file.
    path = f"{model_dir}/{REPO}/tiny-Q4_K_M.gguf"
    seen = host.exec(["docker", "exec", "fleetform-chat-0", "sha256sum", path]).stdout.split()[0]
    assert seen == hashlib.sha256(FILES["tiny-Q4_K_M.gguf"]).hexdigest()
    assert host.exec(["systemctl", "is-active", "fleetform-chat-0.service"]).stdout.strip() == (
        "active"
    )
    again = ff("apply", "--auto-approve")
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout
    assert gate.served == ["tiny-Q4_K_M.gguf"]
    # The file removed on the host: reconcile reports the folder changed.
    host.exec(["rm", path])
    drift = ff("reconcile", "--format", "json")
    assert drift.returncode == 2, drift.stdout + drift.stderr
    assert fetches(json.loads(drift.stdout)) == [
        ("s1", f"{REPO}@main [tiny-Q4_K_M.gguf]", ["model-changed"])
    ]


# --- ModelScope --------------------------------------------------------------------------

MS_PRIVATE = "msorg/tiny"  # private: needs MODELSCOPE_API_TOKEN
MS_PUBLIC = "msorg/gguf"  # tag v1, then master moved on
MS_BIG = "msorg/big"
MS_TOKEN = "ms-fleetformtestsecret0123456789"
MS_NEWER_GGUF = b"GGUF" + os.urandom(120_000)


@pytest.fixture(scope="module")
def modelscope_server() -> Iterator[ModelScopeServer]:
    with ModelScopeServer(token=MS_TOKEN) as server:
        server.add_repo(MS_PRIVATE, FILES, private=True)
        server.add_repo(MS_PUBLIC, FILES)
        server.add_tag(MS_PUBLIC, "v1")
        server.commit(MS_PUBLIC, {"tiny-Q4_K_M.gguf": MS_NEWER_GGUF})
        server.add_repo(MS_BIG, BIG_FILES)
        yield server
        # The client asked for nothing the stand-in does not serve.
        assert server.unexpected == []


@pytest.fixture
def modelscope(modelscope_server: ModelScopeServer) -> ModelScopeServer:
    """The ModelScope stand-in, reset for each test: full speed, nothing logged."""
    modelscope_server.rate = None
    for log in (
        modelscope_server.served,
        modelscope_server.authorizations,
        modelscope_server.cookies,
        modelscope_server.requests,
    ):
        log.clear()
    return modelscope_server


def ms_deployment(name: str = "chat", **fields: Any) -> dict[str, Any]:
    document = {"name": name, "backend": "bb", "model_scope_model_id": MS_PRIVATE, "replicas": 1}
    document.update(fields)
    return {k: v for k, v in document.items() if v is not None}


def served_files(server: ModelScopeServer) -> list[str]:
    return sorted(s.path for s in server.served)


def test_a_modelscope_model_is_fetched_once_per_host_with_a_token_never_shown(
    tmp_path: Path, engines: EngineFactory, modelscope: ModelScopeServer
) -> None:
    fleet = Fleet(
        tmp_path, engines, None, 2, ports=("41300-41301", "41300-41300"), modelscope=modelscope
    )
    fleet.deploy(ms_deployment(replicas=3))
    title = f"modelscope:{MS_PRIVATE}@master"
    right = {"MODELSCOPE_API_TOKEN": MS_TOKEN}
    planned = fleet.ff("plan", "--format", "json", env=right)
    plan = json.loads(planned.stdout)
    assert fetches(plan) == [("h1", title, ["model-missing"]), ("h2", title, ["model-missing"])]
    # Asked for sizes without the token (a private model: no size), and the reason says
    # where the token would go.
    assert modelscope.authorizations == [] and modelscope.cookies == []
    steps = [s for h in plan["hosts"] for s in h["steps"] if s["model_key"]]
    assert [s["model_bytes"] for s in steps] == [None, None]
    assert steps[0]["reasons"][0].endswith(f"from {modelscope.endpoint} by {HELPER_IMAGE}")

    wrong = fleet.apply(env={"MODELSCOPE_API_TOKEN": "ms-wrong"})
    assert wrong.returncode == 1
    failed = [line for line in wrong.stdout.splitlines() if "FAILED" in line]
    assert failed[0] == (
        f"  h1: FAILED after 0 step(s): fetch {title}: {MS_PRIVATE}: MODELSCOPE_API_TOKEN is"
        " wrong (401)"
    ), wrong.stdout
    none = fleet.apply()
    assert none.returncode == 1
    assert "it is private and MODELSCOPE_API_TOKEN is missing (404)" in none.stdout, none.stdout
    assert modelscope.served == [] and not (fleet.model_dir(0) / MS_PRIVATE).exists()

    applied = fleet.apply(env=right)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert f"fetched {title}" in applied.stderr
    # Each file once per host, verified, and nothing but the files and the manifest.
    assert served_files(modelscope) == sorted([*FILES] * 2)
    for host in (0, 1):
        folder = fleet.model_dir(host) / MS_PRIVATE
        assert sorted(p.name for p in folder.iterdir()) == sorted([*FILES, ".fleetform-model.json"])
        for name, content in FILES.items():
            assert (folder / name).read_bytes() == content
        manifest = json.loads((folder / ".fleetform-model.json").read_text())
        assert manifest["commit"] == modelscope.resolve(MS_PRIVATE)
        assert list((fleet.model_dir(host) / ".fleetform-partial").iterdir()) == []
    assert [fleet.served(0, i, "config.json") for i in (0, 1)] == [FILES["config.json"]] * 2
    assert fleet.served(1, 0, "config.json") == FILES["config.json"]
    # The token went to the hub from the helpers, and nowhere else.
    assert set(modelscope.authorizations) == {"Bearer ms-wrong", f"Bearer {MS_TOKEN}"}
    shown = [planned.stdout, planned.stderr, applied.stdout, applied.stderr, wrong.stderr]
    shown += [p.read_text() for p in (fleet.repo / "output").rglob("*") if p.is_file()]
    shown += [json.dumps(c) for host in (0, 1) for c in fleet.containers(host)]
    assert not [text for text in shown if MS_TOKEN in text]

    modelscope.served.clear()
    again = fleet.apply(env=right)
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout
    assert modelscope.served == []


def test_one_gguf_of_a_modelscope_repository_at_a_tag(
    tmp_path: Path, engines: EngineFactory, modelscope: ModelScopeServer
) -> None:
    fleet = Fleet(tmp_path, engines, None, 1, modelscope=modelscope)
    gguf = "tiny-Q4_K_M.gguf"
    fleet.deploy(ms_deployment(model_scope_model_id=MS_PUBLIC, model_scope_file_path=gguf))
    pinned = ms_deployment(
        model_scope_model_id=MS_PUBLIC, model_scope_file_path=gguf, revision="v1"
    )
    latest = fleet.plan()
    assert fetches(latest) == [("h1", f"modelscope:{MS_PUBLIC}@master [{gguf}]", ["model-missing"])]
    (step,) = [s for h in latest["hosts"] for s in h["steps"] if s["model_key"]]
    assert step["model_bytes"] == len(MS_NEWER_GGUF)  # a public model: the hub says its size
    fleet.deploy(pinned)
    plan = fleet.plan()
    assert fetches(plan) == [("h1", f"modelscope:{MS_PUBLIC}@v1 [{gguf}]", ["model-missing"])]
    (step,) = [s for h in plan["hosts"] for s in h["steps"] if s["model_key"]]
    assert step["model_bytes"] == len(FILES[gguf])
    # Staged by hand before: the right file (kept, not fetched again) and notes of the
    # user's own, which the fetch keeps aside rather than deleting.
    folder = fleet.model_dir(0) / MS_PUBLIC
    folder.mkdir(parents=True)
    (folder / gguf).write_bytes(FILES[gguf])
    (folder / "notes.txt").write_text("mine")
    applied = fleet.apply()
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert served_files(modelscope) == []
    (aside,) = (fleet.model_dir(0) / ".fleetform-replaced").iterdir()
    assert (aside / "notes.txt").read_text() == "mine"
    assert f"not fetched by fleetform, is kept as /models/.fleetform-replaced/{aside.name}" in (
        applied.stderr
    ), applied.stderr
    assert sorted(p.name for p in folder.iterdir()) == [".fleetform-model.json", gguf]
    assert fleet.served(0, 0, gguf) == FILES[gguf]  # the tag's file, not master's
    manifest = json.loads((folder / ".fleetform-model.json").read_text())
    assert manifest["commit"] == modelscope.resolve(MS_PUBLIC, "v1")

    # Unpinned now: master's file replaces it, in one step (the fetched folder is not
    # kept aside: fleetform made it).
    fleet.deploy(ms_deployment(model_scope_model_id=MS_PUBLIC, model_scope_file_path=gguf))
    assert fetches(fleet.plan()) == [
        ("h1", f"modelscope:{MS_PUBLIC}@master [{gguf}]", ["model-revision"])
    ]
    moved = fleet.apply()
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert served_files(modelscope) == [gguf]
    assert fleet.served(0, 0, gguf) == MS_NEWER_GGUF
    assert len(list((fleet.model_dir(0) / ".fleetform-replaced").iterdir())) == 1


def test_an_interrupted_modelscope_fetch_resumes_with_a_range_request(
    tmp_path: Path, engines: EngineFactory, modelscope: ModelScopeServer
) -> None:
    fleet = Fleet(tmp_path, engines, None, 1, modelscope=modelscope)
    fleet.deploy(ms_deployment(model_scope_model_id=MS_BIG))
    modelscope.rate = 300_000  # bytes per second: b.safetensors takes about 10 s
    # Killed once a third of b.safetensors is there.
    fleet.apply_killed_when("b.safetensors.incomplete", lambda size: size > 1_000_000)
    assert not (fleet.model_dir(0) / MS_BIG).exists()
    assert not [c for c in fleet.containers(0) if c["Name"] == "/fleetform-chat-0"]

    modelscope.rate = None
    assert fleet.ff("unlock", "h1").returncode == 0
    again = fleet.apply()
    assert again.returncode == 0, again.stdout + again.stderr
    # The helper left running was removed; the next one asked for the rest only.
    resumed = [s for s in modelscope.served if s.path == "b.safetensors" and s.start > 0]
    assert resumed and resumed[-1].status == 206, modelscope.served
    assert [s.path for s in modelscope.served].count("a.safetensors") == 1
    folder = fleet.model_dir(0) / MS_BIG
    assert sorted(p.name for p in folder.iterdir()) == sorted([*BIG_FILES, ".fleetform-model.json"])
    for name, content in BIG_FILES.items():
        assert (folder / name).read_bytes() == content
    assert fleet.served(0, 0, "config.json") == BIG_FILES["config.json"]


def test_a_hostile_modelscope_listing_is_refused_and_touches_nothing(
    tmp_path: Path, engines: EngineFactory, modelscope: ModelScopeServer
) -> None:
    fleet = Fleet(tmp_path, engines, None, 1, modelscope=modelscope)
    fleet.deploy(ms_deployment(model_scope_model_id=MS_PUBLIC))
    victim = fleet.model_dir(0) / "Other" / "Model"
    victim.mkdir(parents=True)
    (victim / "model.safetensors").write_bytes(b"the other model")

    def lists(path: str) -> Any:
        def tamper(repo_id: str, what: str, data: Any) -> Any:
            if what == "files":
                entry = {**data["Files"][0], "Path": path, "Name": "x"}
                return {"Files": [*data["Files"], entry]}
            return data

        return tamper

    def names_commit(commit: str | None) -> Any:
        def tamper(repo_id: str, what: str, data: Any) -> Any:
            if what == "revisions":
                for ref in data["RevisionMap"]["Branches"]:
                    ref.pop("CommitId")
                    if commit is not None:
                        ref["CommitId"] = commit
            return data

        return tamper

    cases = [
        (lists("../../Other/Model/model.safetensors"), "a file '../../Other/Model/"),
        (lists("/models/Other/Model/model.safetensors"), "a file '/models/Other/Model/"),
        (lists(".fleetform-partial/x"), "a file '.fleetform-partial/x'"),
        (names_commit("x/../../Other/Model"), "a commit 'x/../../Other/Model' that is not"),
    ]
    try:
        for tamper, said in cases:
            modelscope.tamper = tamper
            refused = fleet.apply()
            assert refused.returncode == 1, refused.stdout
            (line,) = [line for line in refused.stdout.splitlines() if "FAILED" in line]
            assert said in line and "outside the model's folder" in line or "not a commit" in line
            assert (victim / "model.safetensors").read_bytes() == b"the other model"
            assert not (fleet.model_dir(0) / MS_PUBLIC).exists()
            assert fleet.ff("unlock", "h1").returncode in (0, 1)
        # A hub that names no commit for the branch: the newest commit its files name.
        modelscope.tamper = names_commit(None)
        applied = fleet.apply()
        assert applied.returncode == 0, applied.stdout + applied.stderr
    finally:
        modelscope.tamper = None
    manifest = json.loads((fleet.model_dir(0) / MS_PUBLIC / ".fleetform-model.json").read_text())
    assert manifest["commit"] == modelscope.resolve(MS_PUBLIC, "master")
    assert sorted(p.name for p in (fleet.model_dir(0) / "Other" / "Model").iterdir()) == [
        "model.safetensors"
    ]


def test_the_helper_never_prints_a_token_or_the_servers_words() -> None:
    from compiler.targets.compose import fetch_helper

    token = "ms-0123456789abcdef0123456789"
    page = f"502 Bad Gateway: Authorization: Bearer {token[:-6]}... cookie m_session_id={token}"
    shown = fetch_helper.redact(page, token)
    assert "0123456789" not in shown and shown.count("(secret)") == 2, shown
    assert fetch_helper.redact("nothing of it", token) == "nothing of it"

    class Failed(Exception):
        status_code = None

        def __init__(self) -> None:
            cause = Exception(page)
            cause.status_code = 502  # type: ignore[attr-defined]
            self.failed_files = {"b.safetensors": cause}

    hub = object.__new__(fetch_helper.ModelScope)
    hub.repo = MS_PRIVATE
    said = hub.describe(Failed(), "master")
    assert said == f"{MS_PRIVATE}: 1 file(s) failed, 'b.safetensors' first (HTTP 502)"


@pytest.mark.parametrize(
    ("path", "size", "digest"),
    [
        ("../x", 1, ""),
        ("/abs", 1, ""),
        ("a//b", 1, ""),
        ("a/./b", 1, ""),
        ("a\\..\\b", 1, ""),
        ("a\nb", 1, ""),
        (".fleetform-model.json", 1, ""),
        ("ok.bin", -5, ""),
        ("ok.bin", 1, "not-hex"),
    ],
)
def test_the_helper_refuses_files_a_hub_should_not_list(path: str, size: int, digest: str) -> None:
    from compiler.targets.compose import fetch_helper

    entry = fetch_helper.Remote(path, size, "sha256" if digest else "", digest)
    with pytest.raises(SystemExit):
        fetch_helper.checked("o/m", entry)
    fine = fetch_helper.Remote("sub/model-00001.safetensors", 3, "sha256", "ab" * 32)
    assert fetch_helper.checked("o/m", fine) == fine


def test_the_helper_installs_only_the_verified_files(tmp_path: Path) -> None:
    from compiler.targets.compose import fetch_helper

    partial = tmp_path / "partial"
    (partial / "sub").mkdir(parents=True)
    (partial / ".cache" / "huggingface").mkdir(parents=True)
    for name in ("config.json", "sub/w.safetensors", "w2.safetensors.incomplete", ".cache/x"):
        (partial / name).write_text(name)
    fetch_helper.prune(str(partial), {"config.json": 11, "sub/w.safetensors": 17})
    left = sorted(p.relative_to(partial).as_posix() for p in partial.rglob("*"))
    assert left == ["config.json", "sub", "sub/w.safetensors"]


# --- what a deployment asks for (pure: no hub, no engine) --------------------------------


@pytest.mark.parametrize(
    ("fields", "title"),
    [
        ({"huggingface_repo_id": REPO}, f"{REPO}@main"),
        ({"huggingface_repo_id": REPO, "revision": "v1.0"}, f"{REPO}@v1.0"),
        ({"huggingface_repo_id": REPO, "huggingface_filename": "a.gguf"}, f"{REPO}@main [a.gguf]"),
        (
            {"huggingface_repo_id": REPO, "allow_patterns": ["*.json", "*.safetensors"]},
            f"{REPO}@main [*.json, *.safetensors]",
        ),
        ({"huggingface_repo_id": REPO, "model_provisioning": "none"}, None),
        ({"local_path": "/srv/m"}, None),
        ({"source": "model_scope", "model_scope_model_id": REPO}, f"modelscope:{REPO}@master"),
        ({"model_scope_model_id": REPO, "revision": "v2"}, f"modelscope:{REPO}@v2"),
        (
            {"model_scope_model_id": REPO, "model_scope_file_path": "a.gguf"},
            f"modelscope:{REPO}@master [a.gguf]",
        ),
        # As GPUStack picks a source when none is written: local, Hugging Face, ModelScope.
        ({"huggingface_repo_id": REPO, "model_scope_model_id": "o/other"}, f"{REPO}@main"),
        ({"local_path": "/srv/m", "model_scope_model_id": REPO}, None),
        ({"source": "huggingface", "model_scope_model_id": REPO}, None),
        ({"model_scope_model_id": REPO, "model_provisioning": "none"}, None),
    ],
)
def test_which_model_a_deployment_needs_fetched(fields: dict[str, Any], title: str | None) -> None:
    from compiler.hub import hub_model_of

    model = hub_model_of(fields, "/var/lib/models")
    assert (model.title if model else None) == title
    if model is not None:
        assert model.folder == f"/var/lib/models/{REPO}"


def test_same_folder_revision_and_files_is_one_fetch() -> None:
    from compiler.hub import hub_model_of

    base = {"huggingface_repo_id": REPO}
    one = hub_model_of(base, "/m")
    assert one is not None and one.key == hub_model_of(dict(base), "/m").key  # type: ignore[union-attr]
    others = [
        hub_model_of({**base, "revision": "v2"}, "/m"),
        hub_model_of({**base, "huggingface_filename": "a.gguf"}, "/m"),
        hub_model_of(base, "/other"),
        hub_model_of({"model_scope_model_id": REPO, "revision": "main"}, "/m"),
    ]
    assert len({one.key, *(m.key for m in others if m)}) == 5
    # A Hugging Face model's key is what it was before ModelScope models were fetched:
    # the records on hosts keep matching.
    assert one.key == "07240f6aadf35b70"


def compile_error(tmp_path: Path, deployments: list[dict[str, Any]]) -> tuple[str, str]:
    """Compile a one-host repository of ``deployments`` that must fail: its one error
    line, and the deployments' YAML text."""
    repo = tmp_path / "repo"
    host = {"name": "h1", "address": "10.0.0.1", "port_range": PORTS}
    text = yaml.safe_dump_all(deployments)
    for relative, content in (
        ("backends.d/b.yaml", yaml.safe_dump(BACKEND)),
        ("hosts.d/h.yaml", yaml.safe_dump(host)),
        ("deployments.d/d.yaml", text),
    ):
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_text(content)
    cli = [sys.executable, "-c", "from compiler.cli import main; main()"]
    done = subprocess.run(
        [*cli, "compile", "--repo", str(repo)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert not (repo / "output").exists()
    (error,) = done.stderr.strip().splitlines()
    return error, text


@pytest.mark.parametrize(
    ("document", "field", "fragment"),
    [
        ({"revision": "../main"}, "revision", "is not a revision"),
        ({"allow_patterns": ["../*"]}, "allow_patterns", "is not a file pattern"),
        ({"model_provisioning": "lazy"}, "model_provisioning", "auto"),
    ],
)
def test_bad_model_fields_are_compile_errors_at_their_line(
    tmp_path: Path, document: dict[str, Any], field: str, fragment: str
) -> None:
    error, text = compile_error(tmp_path, [hub_deployment(**document)])
    bad = str(next(iter(document.values()))).strip("[]'")
    line = next(n for n, row in enumerate(text.splitlines(), 1) if bad in row)  # the value's
    assert error.startswith(f"deployments.d/d.yaml:{line}:"), error
    assert field in error and fragment in error, error


def test_a_hub_endpoint_with_credentials_is_refused(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from compiler.model import Settings

    for endpoint in ("https://user:pw@mirror.example.com", "ftp://mirror", "http://a b"):
        with pytest.raises(ValidationError, match="is not a hub endpoint"):
            Settings.model_validate({"hub": {"endpoint": endpoint}})
    assert Settings.model_validate(
        {"hub": {"endpoint": "http://127.0.0.1:8090/"}}
    ).hub.endpoint == ("http://127.0.0.1:8090")
    for endpoint in ("https://user:pw@modelscope.example.com", "file:///x"):
        with pytest.raises(ValidationError, match="MODELSCOPE_API_TOKEN at apply time"):
            Settings.model_validate({"hub": {"modelscope_endpoint": endpoint}})


def test_deployments_sharing_a_folder_share_one_fetch_of_all_they_need() -> None:
    from compiler.hub import hub_model_of, per_folder

    def model(**fields: Any) -> Any:
        return hub_model_of({"huggingface_repo_id": REPO, **fields}, "/m")

    one_file = model(huggingface_filename="a.gguf")
    other = model(allow_patterns=["*.json"])
    (merged,) = per_folder([one_file, other])
    assert merged.patterns == ("*.json", "a.gguf")
    (everything,) = per_folder([one_file, model(), other])
    assert everything.patterns == ()  # one of them needs the whole repository


def test_two_revisions_in_one_folder_on_a_host_is_a_compile_error(tmp_path: Path) -> None:
    deployments = [hub_deployment("a"), hub_deployment("b", revision="v2")]
    error, _ = compile_error(tmp_path, deployments)
    assert error.startswith("deployments.d/d.yaml:"), error
    assert "deployment 'b' needs testorg/tiny at revision 'v2'" in error, error
    assert "where deployment 'a' needs revision 'main'" in error, error


def test_one_folder_from_two_hubs_on_a_host_is_a_compile_error(tmp_path: Path) -> None:
    deployments = [
        hub_deployment("a"),
        hub_deployment("b", huggingface_repo_id=None, model_scope_model_id=REPO),
    ]
    error, text = compile_error(tmp_path, deployments)
    line = next(n for n, row in enumerate(text.splitlines(), 1) if "model_scope_model_id" in row)
    assert error.startswith(f"deployments.d/d.yaml:{line}:"), error
    assert "deployment 'b' needs modelscope:testorg/tiny@master" in error, error
    assert "deployment 'a' needs testorg/tiny@main" in error, error


def test_one_model_folder_inside_another_on_a_host_is_a_compile_error(tmp_path: Path) -> None:
    deployments = [
        hub_deployment("a", huggingface_repo_id="Qwen"),
        hub_deployment("b", huggingface_repo_id=None, model_scope_model_id="Qwen/Qwen3-8B"),
    ]
    error, _ = compile_error(tmp_path, deployments)
    assert error.startswith("deployments.d/d.yaml:"), error
    assert "deployment 'b' needs modelscope:Qwen/Qwen3-8B@master" in error, error
    assert "one model's folder would hold the other's" in error, error


def test_a_hostile_hub_costs_the_plan_no_more_than_its_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The plan's size requests (no token): a hub that nests its JSON too deep, or sends
    a byte a second, gives no size, within the budget; the plan goes on."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from compiler.hub import hub_model_of
    from compiler.model import Settings
    from compiler.remote import hub as remote

    class Hostile(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            if "/api/models/" in self.path:  # Hugging Face's tree API: nested too deep
                self.wfile.write(b"[" * 200_000)
                return
            with contextlib.suppress(OSError):  # until the client gives up
                while not done.wait(1):  # ModelScope's file list: a byte a second
                    self.wfile.write(b" ")
                    self.wfile.flush()

    done = threading.Event()  # the test is over: the drip stops
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        settings = Settings.model_validate(
            {"hub": {"endpoint": endpoint, "modelscope_endpoint": endpoint}}
        )
        models = [
            hub_model_of({"huggingface_repo_id": REPO}, "/m"),
            hub_model_of({"model_scope_model_id": MS_PUBLIC}, "/m"),
        ]
        monkeypatch.setattr(remote, "BUDGET", 3.0)
        started = time.monotonic()
        assert remote.model_sizes([m for m in models if m], settings) == {}
        assert time.monotonic() - started < 3.0 + remote.TIMEOUT
    finally:
        done.set()
        server.shutdown()
        server.server_close()
