"""A GPUStack cluster as a host, without a server: which deployments it takes, the
documents it is sent, what its hosts.d entry may say, and the plan from literal
observations (order, spec change against drift, foreign objects, orphans)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler import api
from compiler.errors import FleetformError
from compiler.observed import ObservedDocument, ObservedHost
from compiler.plan import DesiredHost
from compiler.targets.gpustack.documents import (
    backend_view,
    comparable,
    gpustack_backend_name,
    mark_of,
    model_view,
    stamped,
    unmarked,
)
from compiler.targets.gpustack.plan import plan_cluster
from tests.helpers_repo import make_repo

CLUSTER = """\
name: gs
target: gpustack
url: http://127.0.0.1:9
cluster: main
labels: {pool: gs}
"""
ON_CLUSTER = """\
name: chat
backend: srv
backend_version: v2
huggingface_repo_id: Qwen/Qwen3-0.6B
replicas: 2
worker_selector: {pool: gs, gpu: a100}
gpu_selector: {gpus_per_replica: 1}
env: {A: "1"}
backend_parameters: [--max-model-len, "4096"]
"""
BACKEND_V2 = """\
backend_name: srv
default_env: {LEVEL: info}
default_run_command: serve {{model_path}} --port {{port}}
version_configs:
  v2: {image_name: "example/srv:2", custom_framework: cuda, env: {LEVEL: warn}}
"""
ON_HOST = """\
name: embed
backend: srv
local_path: /models/e5
gpu_selector: {gpus_per_replica: 1}
"""


def repo(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    base = {
        "hosts.d/gs.yaml": CLUSTER,
        "deployments.d/chat.yaml": ON_CLUSTER,
        "deployments.d/embed.yaml": ON_HOST,
    }
    return make_repo(tmp_path, {**base, **(files or {})})


def errors_of(root: Path) -> list[str]:
    with pytest.raises(FleetformError) as caught:
        api.build(root)
    return str(caught.value).splitlines()


def test_the_cluster_takes_whole_deployments_by_selector_and_hosts_keep_the_rest(
    tmp_path: Path,
) -> None:
    compiled = api.build(repo(tmp_path))
    assert [w.name for w in compiled.fleet.workloads] == ["embed-0"]  # on h1, not gs
    assert sorted(compiled.files) == [
        "gs/gpustack/backends/srv-custom.yaml",
        "gs/gpustack/models/chat.yaml",
        "gs/index.json",
        "h1/compose.yaml",
        "h1/index.json",
    ]
    model = yaml.safe_load(compiled.files["gs/gpustack/models/chat.yaml"])
    mark = mark_of(model.pop("description"))
    assert mark is not None and (mark.project, mark.deployment) == ("fleetform", "chat")
    # The deployment as written (GPUStack renders its backend's command itself); the
    # cluster's own label selects the cluster and is not sent on.
    assert model == {
        "name": "chat",
        "source": "huggingface",
        "huggingface_repo_id": "Qwen/Qwen3-0.6B",
        "backend": "srv-custom",
        "backend_version": "v2",
        "backend_parameters": ["--max-model-len", "4096"],
        "env": {"A": "1"},
        "replicas": 2,
        "gpu_selector": {"gpus_per_replica": 1},
        "worker_selector": {"gpu": "a100"},
    }
    backend = yaml.safe_load(compiled.files["gs/gpustack/backends/srv-custom.yaml"])
    assert backend["backend_name"] == "srv-custom"
    assert sorted(backend["version_configs"]) == ["v1", "v2"]
    assert mark_of(backend["description"]) is not None


def test_a_backend_chain_is_sent_merged(tmp_path: Path) -> None:
    child = """\
    backend_name: srv2
    extends: srv
    default_env: {EXTRA: "1"}
    version_configs:
      v3: {image_name: "example/srv:3", custom_framework: cuda}
    """
    chat = ON_CLUSTER.replace("backend: srv\n", "backend: srv2\n").replace(": v2", ": v3")
    compiled = api.build(
        repo(tmp_path, {"backends.d/c.yaml": child, "deployments.d/chat.yaml": chat})
    )
    backend = yaml.safe_load(compiled.files["gs/gpustack/backends/srv2-custom.yaml"])
    assert backend["default_env"] == {"LEVEL": "info", "EXTRA": "1"}
    assert sorted(backend["version_configs"]) == ["v1", "v2", "v3"]
    assert "extends" not in backend


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "port: 8000\n",
            "deployments.d/chat.yaml:9:7: port: 'port' is not a GPUStack model field; on"
            " cluster gs GPUStack's worker decides it (remove it, or place the deployment"
            " on a host)",
        ),
        (
            "env: {T: {secret: HF_TOKEN}}\n",
            "deployments.d/chat.yaml:9:10: env.T: env T is a secret; a GPUStack cluster"
            " stores a model's env as written, so secrets are not sent to clusters yet",
        ),
    ],
)
def test_container_fields_on_a_cluster_deployment_are_errors(
    tmp_path: Path, extra: str, message: str
) -> None:
    text = ON_CLUSTER.replace('env: {A: "1"}\n', "") + extra
    assert errors_of(repo(tmp_path, {"deployments.d/chat.yaml": text})) == [message]


def test_gpu_ids_and_two_matching_clusters_are_errors(tmp_path: Path) -> None:
    text = ON_CLUSTER.replace(
        "gpu_selector: {gpus_per_replica: 1}", "gpu_selector: {gpu_ids: [h1:cuda:0]}"
    )
    other = CLUSTER.replace("name: gs", "name: gs2").replace(":9", ":10")
    found = errors_of(repo(tmp_path, {"deployments.d/chat.yaml": text}))
    assert found == [
        "deployments.d/chat.yaml:7:25: gpu_selector.gpu_ids: gpu_ids name fleetform hosts'"
        " GPUs; on cluster gs use gpus_per_replica, or worker_selector for GPUStack's workers"
    ]
    found = errors_of(repo(tmp_path, {"hosts.d/gs2.yaml": other}))
    assert found == [
        "deployments.d/chat.yaml:6:18: worker_selector: worker_selector matches the GPUStack"
        " clusters gs, gs2: a deployment runs on one cluster"
    ]


def test_a_cluster_entry_says_what_a_cluster_needs(tmp_path: Path) -> None:
    bad = CLUSTER.replace("url: http://127.0.0.1:9\n", "docker_host: unix:///run/d.sock\n")
    assert errors_of(repo(tmp_path, {"hosts.d/gs.yaml": bad})) == [
        "hosts.d/gs.yaml:1:1: url: required key is missing",
        "hosts.d/gs.yaml:3:14: docker_host: a gpustack host has no 'docker_host' (its"
        " fields: url, cluster, api_key_env, labels)",
    ]
    compose = "name: h2\naddress: 10.9.0.2\nurl: http://127.0.0.1:9\n"
    (tmp_path / "hosts.d/gs.yaml").write_text(CLUSTER)
    assert errors_of(repo(tmp_path, {"hosts.d/h2.yaml": compose}))[0].startswith(
        "hosts.d/h2.yaml:3:6: url: a compose host has no 'url'"
    )
    (tmp_path / "hosts.d/h2.yaml").unlink()
    twice = CLUSTER.replace("name: gs", "name: gs2").replace("pool: gs", "pool: other")
    assert errors_of(repo(tmp_path, {"hosts.d/gs2.yaml": twice})) == [
        "hosts.d/gs2.yaml:1:1: url: hosts gs and gs2 are the same GPUStack server"
        " (http://127.0.0.1:9): one hosts.d entry per server"
    ]


def test_the_mark_and_names() -> None:
    assert gpustack_backend_name("vllm") == "vllm-custom"
    assert gpustack_backend_name("vllm-custom") == "vllm-custom"
    document = stamped({"backend_name": "a-custom", "description": "mine"}, "p")
    assert unmarked(document["description"]) == "mine"
    mark = mark_of(document["description"])
    assert mark is not None and mark.project == "p" and mark.deployment is None
    # Nothing in a description a user wrote passes for a mark.
    assert mark_of("[managed by fleetform: project p, spec nothex]") is None
    # GPUStack's ways of saying "not set" compare equal to not saying it.
    assert backend_view({"backend_name": "a", "default_env": None, "version_configs": {}}) == {
        "backend_name": "a"
    }


# --- plans from literal observations -------------------------------------------------


def desired(tmp_path: Path, files: dict[str, str] | None = None) -> DesiredHost:
    compiled = api.build(repo(tmp_path, files))
    return api.targets_of(compiled, ["gs"])["gs"].desired


def documents(host: DesiredHost) -> dict[str, dict[str, Any]]:
    return {path: yaml.safe_load(text) for path, text in (host.documents or {}).items()}


def observed(*items: ObservedDocument) -> ObservedHost:
    return ObservedHost("gs", "gpustack", cluster_id=1, documents=items)


def as_there(kind: str, document: dict[str, Any], id: int, **change: Any) -> ObservedDocument:
    """The document as the server would return it, owned, with ``change`` made."""
    server = {**document, **change}
    mark = mark_of(document["description"])
    assert mark is not None
    view = backend_view(server) if kind == "backend" else model_view(server)
    name = server["backend_name"] if kind == "backend" else server["name"]
    owner = name if kind == "backend" else mark.deployment
    return ObservedDocument(kind, name, id, view, owner, mark.spec)


def test_plan_creates_in_gpustack_order_then_shows_nothing(tmp_path: Path) -> None:
    host = desired(tmp_path)
    plan = plan_cluster(host, observed(), "fleetform")
    assert [(s.action, s.name, s.codes) for s in plan.steps] == [
        ("create", "backend/srv-custom", ("missing",)),
        ("create", "model/chat", ("missing",)),
    ]
    docs = documents(host)
    there = observed(
        as_there("backend", docs["gpustack/backends/srv-custom.yaml"], 7),
        as_there("model", docs["gpustack/models/chat.yaml"], 3),
    )
    again = plan_cluster(host, there, "fleetform")
    assert again.steps == () and again.unchanged == ("backend/srv-custom", "model/chat")


def test_drift_and_spec_change_are_told_apart(tmp_path: Path) -> None:
    host = desired(tmp_path)
    docs = documents(host)
    model = docs["gpustack/models/chat.yaml"]
    scaled = observed(
        as_there("backend", docs["gpustack/backends/srv-custom.yaml"], 7),
        as_there("model", model, 3, replicas=5),
    )
    (step,) = plan_cluster(host, scaled, "fleetform").steps
    assert (step.action, step.name, step.codes, step.current) == (
        "update",
        "model/chat",
        ("drift",),
        "3",
    )
    assert [(c.field, c.before, c.after) for c in step.changes] == [("replicas", 5, 2)]

    changed = desired(
        tmp_path, {"deployments.d/chat.yaml": ON_CLUSTER.replace("replicas: 2", "replicas: 4")}
    )
    (step,) = plan_cluster(changed, scaled, "fleetform").steps
    assert step.codes == ("spec-changed",)
    assert [(c.field, c.before, c.after) for c in step.changes] == [("replicas", 5, 4)]


def test_orphans_are_deleted_models_first_and_foreign_objects_are_left_alone(
    tmp_path: Path,
) -> None:
    host = desired(tmp_path)
    docs = documents(host)
    old_backend = stamped({"backend_name": "old-custom"}, "fleetform")
    old_model = stamped(
        {"name": "gone", "source": "local_path", "local_path": "/m"}, "fleetform", "gone"
    )
    theirs = ObservedDocument("model", "theirs", 9, {"name": "theirs"}, None)
    other_project = ObservedDocument("backend", "x-custom", 8, {"backend_name": "x-custom"}, None)
    plan = plan_cluster(
        host,
        observed(
            as_there("backend", docs["gpustack/backends/srv-custom.yaml"], 7),
            as_there("backend", old_backend, 5),
            as_there("model", old_model, 4),
            theirs,
            other_project,
        ),
        "fleetform",
    )
    assert [(s.action, s.name, s.codes) for s in plan.steps] == [
        ("delete", "model/gone", ("orphan",)),
        ("create", "model/chat", ("missing",)),
        ("delete", "backend/old-custom", ("orphan",)),
    ]
    assert plan.foreign == ("backend/x-custom", "model/theirs")
    assert not plan.empties


def test_a_foreign_object_with_a_wanted_name_is_a_host_error(tmp_path: Path) -> None:
    host = desired(tmp_path)
    squatter = ObservedDocument("model", "chat", 9, {"name": "chat"}, None)
    plan = plan_cluster(host, observed(squatter), "fleetform")
    assert plan.steps == ()
    assert plan.error == (
        "model 'chat' exists on the server and is not this project's (it has no fleetform"
        " mark): rename yours, or adopt it with `fleetform import gpustack`"
    )


def test_removing_every_model_needs_allow_empty(tmp_path: Path) -> None:
    host = desired(tmp_path)
    docs = documents(host)
    empty = desired(tmp_path, {"deployments.d/chat.yaml": "name: chat\nabstract: true\n"})
    plan = plan_cluster(
        empty,
        observed(
            as_there("backend", docs["gpustack/backends/srv-custom.yaml"], 7),
            as_there("model", docs["gpustack/models/chat.yaml"], 3),
        ),
        "fleetform",
    )
    assert [(s.action, s.name) for s in plan.steps] == [
        ("delete", "model/chat"),
        ("delete", "backend/srv-custom"),
    ]
    assert plan.empties
    assert comparable(
        {"description": "a\n" + docs["gpustack/models/chat.yaml"]["description"]}
    ) == {"description": "a"}


def test_diff_and_explain_show_a_cluster_deployment(tmp_path: Path) -> None:
    from compiler.diff import diff_fleets

    base = api.build(repo(tmp_path / "a"))
    changed = ON_CLUSTER.replace("replicas: 2", "replicas: 3")
    now = api.build(repo(tmp_path / "b", {"deployments.d/chat.yaml": changed}))
    (host,) = [h for h in diff_fleets(base, now) if h.host == "gs"]
    assert host.status == "changed" and host.unchanged == 1
    assert [
        (r.name, r.action, [(c.field, c.before, c.after) for c in r.changes]) for r in host.replicas
    ] == [("model/chat", "update", [("replicas", 2, 3)])]
    assert api.explain(tmp_path / "b", "chat").splitlines()[-1] == (
        "  on GPUStack cluster gs, as its model 'chat' (3 replica(s), scheduled by GPUStack;"
        " sent as output/gs/gpustack/models/chat.yaml)"
    )


def test_a_backend_version_its_model_leaves_is_removed_after_the_model_moved(
    tmp_path: Path,
) -> None:
    """GPUStack refuses to remove a version a model is on (400): the backend's update
    keeps it, the model moves, a second update removes it."""
    old = documents(
        desired(tmp_path / "old", {"deployments.d/chat.yaml": ON_CLUSTER.replace("v2", "v1")})
    )
    only_v2 = BACKEND_V2
    host = desired(tmp_path / "new", {"backends.d/b.yaml": only_v2})
    there = observed(
        as_there("backend", old["gpustack/backends/srv-custom.yaml"], 7),
        as_there("model", old["gpustack/models/chat.yaml"], 3),
    )
    steps = plan_cluster(host, there, "fleetform").steps
    assert [(s.action, s.name, s.codes, s.keep) for s in steps] == [
        ("update", "backend/srv-custom", ("spec-changed",), ("v1",)),
        ("update", "model/chat", ("spec-changed",), ()),
        ("update", "backend/srv-custom", ("versions-released",), ()),
    ]
    assert steps[2].reasons == ("removes version(s) v1 now that the models on them moved",)


def test_a_backend_another_model_uses_is_kept_and_twin_marks_are_an_error(
    tmp_path: Path,
) -> None:
    host = desired(tmp_path)
    docs = documents(host)
    backend = as_there("backend", docs["gpustack/backends/srv-custom.yaml"], 7)
    model = as_there("model", docs["gpustack/models/chat.yaml"], 3)
    old_backend = as_there("backend", stamped({"backend_name": "old-custom"}, "fleetform"), 5)
    plan = plan_cluster(
        host,
        ObservedHost(
            "gs",
            "gpustack",
            cluster_id=1,
            documents=(backend, model, old_backend),
            backend_users=(("old-custom", "someone-elses"),),
        ),
        "fleetform",
    )
    assert plan.steps == ()
    assert plan.foreign == ("backend/old-custom (kept: model someone-elses uses it)",)
    copy = ObservedDocument("model", "zz-copy", 4, model.view, model.owner, model.spec)
    twins = plan_cluster(host, observed(backend, model, copy), "fleetform")
    assert twins.error == (
        "the models 'chat' and 'zz-copy' on the server both carry the mark of model chat:"
        " delete the copy"
    )


def test_names_from_a_server_cannot_forge_plan_lines_or_markdown(tmp_path: Path) -> None:
    from compiler import report
    from compiler.plan import Plan

    host = desired(tmp_path)
    forged = ObservedDocument("model", "x\n  + create model/PWNED", 8, {}, None)
    image = ObservedDocument("backend", "b`![t](http://evil.example/x.png)`", 9, {}, None)
    plan = Plan("fleetform", (plan_cluster(host, observed(forged, image), "fleetform"),))
    text = report.plan_text(plan)
    assert "\n  + create model/PWNED" not in text
    assert "x\\n  + create model/PWNED" in text
    markdown = report.plan_markdown(plan)
    assert "`backend/b'![t](http://evil.example/x.png)'`" in markdown  # a code span: inert


@pytest.mark.parametrize(
    ("path", "text", "message"),
    [
        (
            "deployments.d/chat.yaml",
            ON_CLUSTER + "served_name: fleetform-lock-fleetform\n",
            "deployments.d/chat.yaml:10:14: served_name: 'fleetform-lock-fleetform' starts"
            " with fleetform-lock-, the name of fleetform's apply lock on a GPUStack server:"
            " choose another served_name",
        ),
        (
            "deployments.d/chat.yaml",
            ON_CLUSTER + "run_command: serve {{modle_path}}\n",
            "deployments.d/chat.yaml:10:14: run_command: undefined placeholder {{modle_path}}"
            " (defined: A, LEVEL, gpu_count, gpu_ids, model_name, model_path, port,"
            " worker_ip)",
        ),
        (
            "hosts.d/h2.yaml",
            "name: h2\naddress: 10.9.0.2\nlabels: {pool: gs, gpu: a100}\n",
            "deployments.d/chat.yaml:6:18: worker_selector: worker_selector matches GPUStack"
            " cluster gs and host h2: add a label that tells them apart",
        ),
        (
            "hosts.d/gs.yaml",
            CLUSTER + "api_key_env: GITHUB_TOKEN\n",
            "hosts.d/gs.yaml:6:14: api_key_env: 'GITHUB_TOKEN' is not a GPUStack API key"
            " variable (GPUSTACK_…API_KEY, for example GPUSTACK_PROD_API_KEY): a repository"
            " cannot send another secret to a server",
        ),
    ],
)
def test_what_a_cluster_refuses(tmp_path: Path, path: str, text: str, message: str) -> None:
    assert errors_of(repo(tmp_path, {path: text})) == [message]


def test_one_entry_per_server_however_its_url_is_written(tmp_path: Path) -> None:
    first = CLUSTER.replace("http://127.0.0.1:9", "http://gpustack.example")
    second = (
        CLUSTER.replace("name: gs", "name: gs2")
        .replace("http://127.0.0.1:9", "http://GPUStack.example:80/")
        .replace("pool: gs", "pool: other")
    )
    assert errors_of(repo(tmp_path, {"hosts.d/gs.yaml": first, "hosts.d/gs2.yaml": second})) == [
        "hosts.d/gs2.yaml:1:1: url: hosts gs and gs2 are the same GPUStack server"
        " (http://GPUStack.example:80): one hosts.d entry per server"
    ]
