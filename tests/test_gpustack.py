"""Acceptance: a GPUStack cluster as a target, against a real GPUStack 2.3.0 server on
loopback (testing/gpustack_server.py; no worker: models are accepted and scheduled,
and stay pending).

- Every backend of GPUStack's own catalogue, of the shared corpus and of the example
  fleet is accepted through from-yaml and read back equal.
- The six steps for backends and models; drift made through the API (a backend edited,
  a model scaled by hand, a model deleted) found by ``reconcile`` and healed; foreign
  backends and models untouched; the lock; a stale plan; a wrong API key.
- ``fleetform import gpustack`` on a cluster populated through the API, then a plan with
  no changes.

Each test works in a cluster of its own (models belong to a cluster; backends are the
server's, so each test's backends have names of their own).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from compiler import api
from compiler.targets.gpustack.documents import (
    backend_view,
    comparable,
    gpustack_backend_name,
    mark_of,
    model_view,
)
from testing.gpustack_server import GPUStackServer
from tests.gpustack_oracle import catalogue
from tests.helpers import REPO_ROOT, corpus_dir

T = TypeVar("T")
KEY_ENV = "GPUSTACK_API_KEY"
_clusters = itertools.count(1)


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return f"$ {' '.join(self.args)} -> {self.returncode}\n{self.stdout}\n{self.stderr}"


class ClusterRepo:
    """A repository whose one host is a cluster of the test's own on the server."""

    def __init__(self, root: Path, server: GPUStackServer, project: str) -> None:
        self.root, self.server, self.project = root, server, project
        self.cluster = f"{project}-{next(_clusters)}"
        status, made = server.request("POST", "/v2/clusters", {"name": self.cluster})
        assert status == 200, made
        self.cluster_id = int(made["id"])
        root.mkdir(parents=True, exist_ok=True)
        (root / "fleetform.yaml").write_text(f"project: {project}\n")
        self.write(
            "hosts.d/gs.yaml",
            [
                {
                    "name": "gs",
                    "target": "gpustack",
                    "url": server.url,
                    "cluster": self.cluster,
                    "labels": {"pool": "gs"},
                }
            ],
        )

    def write(self, relative: str, documents: list[dict[str, Any]]) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if documents:
            path.write_text(yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8")
        else:
            path.unlink(missing_ok=True)

    def ff(self, *args: str, key: str | None = None) -> Run:
        """The CLI, as CI runs it: the API key in the environment."""
        env = {
            **os.environ,
            KEY_ENV: self.server.api_key if key is None else key,
            "GPUSTACK_URL": self.server.url,
        }
        done = subprocess.run(
            [sys.executable, "-c", "from compiler.cli import main; main()", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        return Run(["fleetform", *args], done.returncode, done.stdout, done.stderr)

    def compile(self) -> None:
        api.compile_repo(self.root)

    def plan(self) -> tuple[int, dict[str, Any]]:
        run = self.ff("plan", "--detailed-exitcode", "--format", "json")
        assert run.returncode in (0, 2), str(run)
        return run.returncode, json.loads(run.stdout)

    def steps(self) -> list[str]:
        code, plan = self.plan()
        found = [
            f"{s['action']} {s['name']} {','.join(s['reason_codes'])}"
            for h in plan["hosts"]
            for s in h["steps"]
        ]
        assert (code == 2) == bool(found)
        return found

    def apply(self, *extra: str, expect: int = 0) -> Run:
        run = self.ff("apply", "--auto-approve", *extra)
        assert run.returncode == expect, str(run)
        return run

    # --- the server, read directly ---

    def hand_made_model(self, name: str, backend: str | None, **fields: Any) -> None:
        """A model made on the cluster by someone else than fleetform (no mark)."""
        model = {"name": name, "source": "local_path", "local_path": "/m", "replicas": 0}
        if backend is not None:
            model["backend"] = backend
        status, made = self.server.request(
            "POST", "/v2/models", {**model, **fields, "cluster_id": self.cluster_id}
        )
        assert status == 200, made

    def models(self) -> dict[str, dict[str, Any]]:
        status, found = self.server.request(
            "GET", f"/v2/models?cluster_id={self.cluster_id}&perPage=100"
        )
        assert status == 200, found
        return {m["name"]: m for m in found["items"] if m["cluster_id"] == self.cluster_id}

    def backends(self) -> dict[str, dict[str, Any]]:
        status, found = self.server.request("GET", "/v2/inference-backends?perPage=100")
        assert status == 200, found
        return {b["backend_name"]: b for b in found["items"]}


def on_cluster(name: str, backend: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "backend": backend,
        "local_path": f"/models/{name}",
        "worker_selector": {"pool": "gs"},
        **fields,
    }


# --- every backend fleetform accepts, accepted by GPUStack -------------------------------


def _catalogue_files() -> dict[str, str]:
    return {
        f"catalogue-{index}.yaml": yaml.safe_dump(backend, sort_keys=False)
        for index, backend in enumerate(catalogue())
    }


def _corpus_files() -> dict[str, str]:
    found = {}
    for path in sorted(corpus_dir().rglob("*.yaml")):
        found[f"{path.parent.name}-{path.name}"] = path.read_text(encoding="utf-8")
    assert len(found) == 6, found
    return found


def _example_files() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(REPO_ROOT.glob("backends.d/*"))}


def _batches(
    *groups: tuple[str, dict[str, str]],
) -> Iterator[tuple[str, dict[str, str], list[str]]]:
    """Each group's backends in batches whose GPUStack names differ: the corpus has both
    ``MinerU`` and ``MinerU-custom``, the same custom backend on a GPUStack server."""
    for group, files in groups:
        root = Path(tempfile.mkdtemp())
        try:
            (root / "backends.d").mkdir()
            for name, text in files.items():
                (root / "backends.d" / name).write_text(text, encoding="utf-8")
            names = sorted(backend.backend_name for backend, _ in load_repo_backends(root))
        finally:
            shutil.rmtree(root)
        batches: list[list[str]] = []
        for name in names:
            for batch in batches:
                if gpustack_backend_name(name) not in map(gpustack_backend_name, batch):
                    batch.append(name)
                    break
            else:
                batches.append([name])
        for batch in batches:
            yield group, files, batch


def load_repo_backends(root: Path) -> list[Any]:
    from compiler.load import load_repo
    from compiler.model import validate_repo

    return list(validate_repo(load_repo(root)).backends)


def test_every_known_backend_is_accepted_by_gpustack_and_read_back_equal(
    gpustack: GPUStackServer, tmp_path: Path
) -> None:
    """GPUStack's catalogue, the shared corpus and the example fleet in turn (their names
    overlap), each backend written as is into backends.d/ and used by one deployment on
    the cluster: apply creates them all, each reads back from GET as sent, and a plan
    then shows no changes; removing the deployments removes them again."""
    counted: Counter[str] = Counter()
    for group, files, batch in _batches(
        ("catalogue", _catalogue_files()),
        ("corpus", _corpus_files()),
        ("example", _example_files()),
    ):
        repo = ClusterRepo(tmp_path / f"{group}-{batch[0]}", gpustack, f"compat-{group}")
        for name, text in files.items():
            (repo.root / "backends.d").mkdir(exist_ok=True)
            (repo.root / "backends.d" / name).write_text(text, encoding="utf-8")
        names = batch
        repo.write(
            "deployments.d/d.yaml",
            [on_cluster(f"d{i}", name, replicas=0) for i, name in enumerate(names)],
        )
        repo.compile()
        repo.apply()
        assert repo.steps() == []
        sent = {
            path.name: yaml.safe_load(path.read_text(encoding="utf-8"))
            for path in (repo.root / "output/gs/gpustack/backends").iterdir()
        }
        held = repo.backends()
        for document in sent.values():
            there = held[document["backend_name"]]
            assert comparable(backend_view(there)) == comparable(backend_view(document)), (
                group,
                document["backend_name"],
            )
            assert mark_of(there["description"]) == mark_of(document["description"])
        counted[group] += len(sent)
        assert len(sent) == len(names)

        # Gone again (models first: GPUStack refuses to delete a backend in use).
        repo.write("deployments.d/d.yaml", [])
        repo.compile()
        refused = repo.apply(expect=1)
        assert "refused without --allow-empty" in refused.stdout, str(refused)
        repo.apply("--allow-empty")
        assert repo.models() == {}
        assert not {d["backend_name"] for d in sent.values()} & set(repo.backends())
    assert counted["catalogue"] >= 5 and counted["corpus"] == 13 and counted["example"] == 5


# --- the six steps, drift, foreign objects, the lock ---------------------------------


BACKEND = {
    "backend_name": "six",
    "description": "a test backend",
    "default_run_command": "serve {{model_path}} --port {{port}}",
    "default_env": {"LEVEL": "info"},
    "version_configs": {
        "v1": {"image_name": "example/srv:1", "custom_framework": "cuda"},
        "v2": {"image_name": "example/srv:2", "custom_framework": "cuda"},
    },
}


def test_six_steps_drift_heal_foreign_lock_and_a_wrong_key(
    gpustack: GPUStackServer, tmp_path: Path
) -> None:
    repo = ClusterRepo(tmp_path, gpustack, "six")
    # Someone else's backend and model in the same cluster: shown, never touched.
    foreign_backend = "backend_name: hand-made-custom\nversion_configs:\n  x: {image_name: a:1}\n"
    status, made = gpustack.request(
        "POST", "/v2/inference-backends/from-yaml", {"content": foreign_backend}
    )
    assert status == 200, made
    repo.hand_made_model("hand-made", "hand-made-custom")
    before = (repo.backends()["hand-made-custom"], repo.models()["hand-made"])

    repo.write("backends.d/b.yaml", [BACKEND])
    chat = on_cluster(
        "chat",
        "six",
        backend_version="v1",
        replicas=1,
        env={"A": "1"},
        backend_parameters=["--max-model-len", "4096"],
    )
    embed = on_cluster(
        "embed",
        "six",
        served_name="Embed Model",
        source="huggingface",
        huggingface_repo_id="BAAI/bge-m3",
        replicas=2,
        gpu_selector={"gpus_per_replica": 1},
        worker_selector={"pool": "gs", "gpu": "a100"},
    )
    del embed["local_path"]
    repo.write("deployments.d/d.yaml", [chat, embed])
    repo.compile()

    # 1. plan: everything to create, the foreign objects listed; 2. apply; 3. nothing.
    text = repo.ff("plan")
    assert "foreign, left alone: backend/hand-made-custom, model/hand-made" in text.stdout
    assert repo.steps() == [
        "create backend/six-custom missing",
        "create model/Embed Model missing",
        "create model/chat missing",
    ]
    markdown = repo.ff("plan", "--format", "markdown").stdout
    assert "| + create | `model/chat` | not on the cluster |" in markdown, markdown
    assert "| action | backend or model | why |" in markdown, markdown
    repo.apply()
    assert repo.steps() == []
    # The server fills some fields itself soon after a create (a model's categories):
    # what an apply with nothing to do must leave alone is the state once it settled.
    untouched = settled(lambda: (repo.backends()["six-custom"], repo.models()))
    again = repo.apply()  # 4. an apply with nothing to do changes nothing
    assert "(3 unchanged)" in again.stdout and "Apply:" not in again.stdout, str(again)
    assert (repo.backends()["six-custom"], repo.models()) == untouched
    models = repo.models()
    assert models["Embed Model"]["replicas"] == 2
    assert models["Embed Model"]["worker_selector"] == {"gpu": "a100"}
    assert models["chat"]["backend_parameters"] == ["--max-model-len", "4096"]

    # 4. a change in the repository; 5. apply; 6. nothing.
    chat["replicas"], chat["backend_version"] = 3, "v2"
    repo.write("deployments.d/d.yaml", [chat, embed])
    repo.write("backends.d/b.yaml", [{**BACKEND, "default_env": {"LEVEL": "debug"}}])
    repo.compile()
    assert repo.steps() == [
        "update backend/six-custom spec-changed",
        "update model/chat spec-changed",
    ]
    repo.apply()
    assert repo.steps() == []
    assert repo.models()["chat"]["replicas"] == 3

    # Drift through the API: a model scaled by hand, a backend edited, a model deleted.
    scaled = {**repo.models()["Embed Model"], "replicas": 5}
    model_id = scaled["id"]
    status, _ = gpustack.request("PUT", f"/v2/models/{model_id}", _writable(scaled))
    assert status == 200
    backend = repo.backends()["six-custom"]
    edited = backend_view(backend)
    edited["version_configs"]["v2"]["image_name"] = "evil/srv:2"
    path = f"/v2/inference-backends/{backend['id']}/from-yaml"
    status, answer = gpustack.request("PUT", path, {"content": yaml.safe_dump(edited)})
    assert status == 200, answer
    status, _ = gpustack.request("DELETE", f"/v2/models/{repo.models()['chat']['id']}")
    assert status == 200

    drift = repo.ff("reconcile", "--format", "json")
    assert drift.returncode == 2, str(drift)
    found = json.loads(drift.stdout)
    assert [
        (s["action"], s["name"], s["reason_codes"]) for h in found["hosts"] for s in h["steps"]
    ] == [
        ("update", "backend/six-custom", ["drift"]),
        ("update", "model/Embed Model", ["drift"]),
        ("create", "model/chat", ["missing"]),
    ]
    healed = repo.ff("reconcile", "--heal")
    assert healed.returncode == 2, str(healed)  # drift was found (and healed)
    assert repo.steps() == []
    assert repo.models()["Embed Model"]["replicas"] == 2
    assert repo.models()["chat"]["replicas"] == 3
    assert repo.backends()["six-custom"]["version_configs"]["v2"]["image_name"] == "example/srv:2"

    # The foreign objects were never touched.
    assert (repo.backends()["hand-made-custom"], repo.models()["hand-made"]) == before

    # A stale plan file is refused once the cluster changed.
    planned = repo.ff("plan", "--out", "plan.json")
    assert planned.returncode == 0, str(planned)
    scaled = {**repo.models()["chat"], "replicas": 1}
    gpustack.request("PUT", f"/v2/models/{scaled['id']}", _writable(scaled))
    stale = repo.ff("apply", "plan.json", "--auto-approve")
    assert stale.returncode == 1 and "stale" in stale.stdout + stale.stderr, str(stale)

    # The lock: a second apply is refused with the holder; unlock breaks a left one.
    repo.hand_made_model(
        "fleetform-lock-six",
        None,
        local_path="/x",
        description="fleetform apply lock: held by ci@runner pid 7 since 2026-12-04T00:00:00+00:00",
    )
    locked = repo.apply(expect=1)
    assert "locked by ci@runner pid 7 since 2026-12-04T00:00:00+00:00" in locked.stdout, str(locked)
    unlocked = repo.ff("unlock", "gs")
    assert unlocked.returncode == 0 and "gs: lock removed" in unlocked.stdout, str(unlocked)
    repo.apply()
    assert repo.models()["chat"]["replicas"] == 3
    assert "fleetform-lock-six" not in repo.models()

    # A wrong API key: one line naming the server, the key itself nowhere.
    wrong = repo.ff("plan", key="gpustack_0000_not-the-key")
    assert wrong.returncode == 1, str(wrong)
    assert (
        f"gs (gpustack): error: GPUStack at {gpustack.url} refused the API key (401"
        " Unauthorized): check the key in the environment"
    ) in wrong.stdout, str(wrong)
    assert "not-the-key" not in wrong.stdout + wrong.stderr
    for path in (repo.root / "output").rglob("*"):
        if path.is_file():
            assert gpustack.api_key not in path.read_text(encoding="utf-8")


def test_a_backend_version_is_removed_after_its_model_moves_and_a_used_backend_stays(
    gpustack: GPUStackServer, tmp_path: Path
) -> None:
    """GPUStack refuses to remove a version a model is on, and to delete a backend in
    use: the version goes in a second update once the model moved, and a backend another
    model on the server uses stays when the repository no longer needs it."""
    repo = ClusterRepo(tmp_path, gpustack, "versions")
    backend = {**BACKEND, "backend_name": "ver"}
    repo.write("backends.d/b.yaml", [backend])
    repo.write("deployments.d/d.yaml", [on_cluster("m", "ver", backend_version="v1")])
    repo.compile()
    repo.apply()
    backend["version_configs"] = {"v2": BACKEND["version_configs"]["v2"]}
    repo.write("backends.d/b.yaml", [backend])
    repo.write("deployments.d/d.yaml", [on_cluster("m", "ver", backend_version="v2")])
    repo.compile()
    assert repo.steps() == [
        "update backend/ver-custom spec-changed",
        "update model/m spec-changed",
        "update backend/ver-custom versions-released",
    ]
    repo.apply()
    assert repo.steps() == []
    assert list(repo.backends()["ver-custom"]["version_configs"]) == ["v2"]

    # Someone else's model on the project's backend: the backend outlives the repository's
    # last use of it.
    repo.hand_made_model("on-our-backend", "ver-custom")
    repo.write("deployments.d/d.yaml", [])
    repo.compile()
    assert repo.steps() == ["delete model/m orphan"]
    plan = repo.ff("plan").stdout
    assert "backend/ver-custom (kept: model on-our-backend uses it)" in plan, plan
    repo.apply("--allow-empty")
    assert "ver-custom" in repo.backends() and "m" not in repo.models()


def _writable(model: dict[str, Any]) -> dict[str, Any]:
    """A model as GET returns it, as PUT takes it (the UI sends the whole object)."""
    keys = {
        "name", "source", "local_path", "huggingface_repo_id", "replicas", "cluster_id",
        "backend", "backend_version", "description", "env", "worker_selector",
        "gpu_selector", "backend_parameters",
    }  # fmt: skip
    return {k: v for k, v in model.items() if k in keys}


# --- import: a cluster made through the API, written into a repository ---------------


def test_import_writes_a_cluster_that_then_plans_no_changes(
    gpustack: GPUStackServer, tmp_path: Path
) -> None:
    source = ClusterRepo(tmp_path / "unused", gpustack, "imported")
    shutil.rmtree(source.root)  # only its cluster: the import makes the repository
    backend = (
        "backend_name: made-by-hand-custom\n"
        "description: from the UI\n"
        "default_version: '1.10'\n"
        "default_run_command: srv --model {{model_path}} --port {{port}}\n"
        "default_backend_param: [--ctx=4096]\n"
        "health_check_path: /health\n"
        "default_env: {A: b}\n"
        "version_configs:\n"
        "  '1.10': {image_name: 'example/srv:1.10', custom_framework: cuda, env: {X: '1'}}\n"
        "  '1.9': {image_name: 'example/srv:1.9', custom_framework: rocm}\n"
    )
    status, made = gpustack.request(
        "POST", "/v2/inference-backends/from-yaml", {"content": backend}
    )
    assert status == 200, made
    models = [
        {
            "name": "Qwen3 Chat",
            "source": "huggingface",
            "huggingface_repo_id": "Qwen/Qwen3-8B",
            "backend": "made-by-hand-custom",
            "backend_version": "1.9",
            "replicas": 2,
            "env": {"HF_HUB_OFFLINE": "1"},
            "backend_parameters": ["--max-model-len=8192"],
            "gpu_selector": {"gpus_per_replica": 2},
            "worker_selector": {"gpu": "h100"},
        },
        {
            "name": "embed",
            "source": "local_path",
            "local_path": "/models/bge",
            "backend": "made-by-hand-custom",
            "replicas": 0,
        },
        {  # a field fleetform does not manage: recreated, it would be lost; left out
            "name": "binpacked",
            "source": "local_path",
            "local_path": "/models/y",
            "backend": "made-by-hand-custom",
            "replicas": 0,
            "placement_strategy": "binpack",
        },
        {  # GPUStack's built-in backend: not a repository backend, left out
            "name": "builtin",
            "source": "local_path",
            "local_path": "/models/x",
            "backend": "vLLM",
            "replicas": 0,
        },
    ]
    for model in models:
        status, made = gpustack.request(
            "POST", "/v2/models", {**model, "cluster_id": source.cluster_id}
        )
        assert status == 200, made

    root = tmp_path / "repo"
    root.mkdir()
    (root / "fleetform.yaml").write_text("project: imported\n")
    repo = ClusterRepo.__new__(ClusterRepo)
    repo.root, repo.server, repo.project = root, gpustack, "imported"
    repo.cluster, repo.cluster_id = source.cluster, source.cluster_id
    run = repo.ff(
        "import", "gpustack", "--url", gpustack.url, "--cluster", source.cluster, "--host", "gs"
    )
    assert run.returncode == 0, str(run)
    assert run.stdout.splitlines()[:4] == [
        "wrote backends.d/made-by-hand-custom.yaml",
        "wrote deployments.d/embed.yaml",
        "wrote deployments.d/qwen3-chat.yaml",
        "wrote hosts.d/gs.yaml",
    ], str(run)
    assert (
        "left out model/builtin: its backend 'vLLM' is not one import writes (a GPUStack"
        " built-in backend, or another project's)"
    ) in run.stdout, str(run)
    assert (
        "left out model/binpacked: it sets placement_strategy, which fleetform does not"
        " manage (a model it recreates would lose it)"
    ) in run.stdout, str(run)
    assert yaml.safe_load((root / "deployments.d/qwen3-chat.yaml").read_text()) == {
        "name": "qwen3-chat",
        "served_name": "Qwen3 Chat",
        "source": "huggingface",
        "huggingface_repo_id": "Qwen/Qwen3-8B",
        "backend": "made-by-hand-custom",
        "backend_version": "1.9",
        "backend_parameters": ["--max-model-len=8192"],
        "env": {"HF_HUB_OFFLINE": "1"},
        "replicas": 2,
        "gpu_selector": {"gpus_per_replica": 2},
        "worker_selector": {"gpustack-cluster": "gs", "gpu": "h100"},
    }
    repo.compile()
    assert repo.steps() == []  # the round trip

    # Adopted: the repository now drives them.
    doc = yaml.safe_load((root / "deployments.d/embed.yaml").read_text())
    repo.write("deployments.d/embed.yaml", [{**doc, "replicas": 1}])
    repo.compile()
    assert repo.steps() == ["update model/embed spec-changed"]
    repo.apply()
    assert repo.models()["embed"]["replicas"] == 1
    assert repo.models()["builtin"]["description"] is None  # never touched
    # A second import writes nothing over the repository.
    again = repo.ff(
        "import", "gpustack", "--url", gpustack.url, "--cluster", source.cluster, "--host", "gs"
    )
    assert again.returncode == 0, str(again)
    assert not [line for line in again.stdout.splitlines() if line.startswith("wrote ")]


def test_model_view_drops_what_gpustack_writes_for_unset() -> None:
    assert model_view({"name": "a", "env": None, "gpu_selector": {"gpu_ids": None}}) == {
        "name": "a"
    }


@pytest.mark.parametrize("url", ["ftp://x", "http://user:pw@host", "http://h/ a"])
def test_import_refuses_a_url_that_is_not_a_server(tmp_path: Path, url: str) -> None:
    (tmp_path / "fleetform.yaml").write_text("project: p\n")
    done = subprocess.run(
        [sys.executable, "-c", "from compiler.cli import main; main()", "import", "gpustack"]
        + ["--url", url, "--cluster", "c"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "is not a server URL" in done.stderr, done.stderr


def settled(read: Callable[[], T], seconds: float = 20.0) -> T:
    """What ``read`` returns once two reads a second apart agree (the server has finished
    what it does on its own after a change); the last read after ``seconds``."""
    last = read()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = read()
        if now == last:
            return now
        last = now
    return last
