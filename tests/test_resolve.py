from __future__ import annotations

from pathlib import Path

import pytest

from compiler import api
from compiler.errors import FleetformError
from compiler.resolve import Workload
from compiler.versions import compare_versions, gpustack_latest
from tests.helpers_repo import make_repo


def _workloads(root: Path, deployments: str, **files: str) -> dict[str, Workload]:
    make_repo(root, {"deployments.d/d.yaml": deployments, **files})
    return {w.name: w for w in api.build(root).fleet.workloads}


def test_version_named_default_and_highest(tmp_path: Path) -> None:
    w = _workloads(
        tmp_path,
        """\
        - {name: named, backend: srv, backend_version: v1, local_path: /m/a}
        - {name: highest, backend: srv, local_path: /m/b}
        """,
    )
    assert w["named-0"].image == "example/srv:1"
    assert w["highest-0"].image == "example/srv:2"
    explanation = api.build(tmp_path).fleet.explanations["highest"]
    assert explanation.version == "v2"
    assert explanation.version_reason == (
        "no backend_version or default_version: GPUStack's latest by compare_versions of v1, v2"
    )


@pytest.mark.parametrize(
    ("versions", "latest"),
    [
        # GPUStack's order, not semver's (gpustack_runtime 0.2.6 compare_versions);
        # tests/test_gpustack_parity.py checks each against GPUStack's own function.
        (["1.0", "1.10", "1.9rc1"], "1.9rc1"),
        (["2.0.0", "2.0.0rc1"], "2.0.0rc1"),
        (["x", "x-sm120"], "x-sm120"),
        (["1.9", "1.9.post1"], "1.9.post1"),
        (["1.9rc1", "1.9"], "1.9rc1"),  # "9rc1" is no number: its code points win
        (["v2", "v10"], "v10"),
        (["0.1.3-sm90", "0.1.3-sm100"], "0.1.3-sm90"),
        (["v1", "1"], "v1"),  # equal: the first written wins
        (["1²", "1"], "1²"),  # GPUStack's compare raises: text order
    ],
)
def test_gpustack_latest(versions: list[str], latest: str) -> None:
    assert gpustack_latest(versions) == latest


def test_compare_versions_is_gpustacks() -> None:
    assert compare_versions("1.9rc1", "1.10") == 1
    assert compare_versions("v1.0", "1.0") == 0
    assert compare_versions("1.0alpha1", "1.0beta1") == -1
    assert compare_versions(None, "") == 0


def test_env_precedence(tmp_path: Path) -> None:
    w = _workloads(
        tmp_path,
        """\
        - {name: base, abstract: true, env: {LEVEL: debug, FROM_BASE: "1"}}
        - {name: d1, extends: base, backend: srv, local_path: /m/a}
        - {name: d2, extends: base, backend: srv, local_path: /m/a, env: {LEVEL: error}}
        - {name: d3, backend: srv, local_path: /m/a}
        - {name: d4, backend: srv, backend_version: v1, local_path: /m/a}
        """,
    )
    assert w["d1-0"].env == {"FROM_BASE": "1", "LEVEL": "debug"}
    assert w["d2-0"].env["LEVEL"] == "error"
    assert w["d3-0"].env == {"LEVEL": "warn"}  # version env over default_env
    assert w["d4-0"].env == {"LEVEL": "info"}


def test_extends_diamond_keeps_first_occurrence_order(tmp_path: Path) -> None:
    w = _workloads(
        tmp_path,
        """\
        - {name: root, abstract: true, env: {A: root, B: root}, shm_size: 1g}
        - {name: left, abstract: true, extends: root, env: {A: left}}
        - {name: right, abstract: true, extends: root, env: {B: right}}
        - {name: leaf, extends: [left, right], backend: srv, local_path: /m/a}
        """,
    )
    assert w["leaf-0"].env == {"A": "left", "B": "right", "LEVEL": "warn"}
    assert w["leaf-0"].shm_size == "1g"


def test_backend_extends_chain(tmp_path: Path) -> None:
    child = """\
    backend_name: child
    extends: srv
    default_env: {EXTRA: "x"}
    version_configs:
      v2: {run_command: "serve2 --port {{port}}"}
    """
    w = _workloads(
        tmp_path,
        "- {name: d, backend: child, backend_version: v2}\n",
        **{"backends.d/child.yaml": child},
    )
    assert w["d-0"].image == "example/srv:2"
    assert w["d-0"].command[0] == "serve2"
    assert w["d-0"].env == {"EXTRA": "x", "LEVEL": "warn"}


def test_model_path_from_hub_source_uses_host_model_dir(tmp_path: Path) -> None:
    w = _workloads(
        tmp_path,
        "- {name: d, backend: srv, huggingface_repo_id: org/m}\n",
        **{
            "hosts.d/h.yaml": "name: h1\naddress: 10.9.0.1\nmodel_dir: /data\n"
            "gpus: {framework: cuda, count: 1}\n"
        },
    )
    assert w["d-0"].command[1] == "/data/org/m"
    assert w["d-0"].model_mount == "/data"
    assert w["d-0"].volumes == ()


@pytest.mark.parametrize(
    ("local_path", "mount"),
    [("/m", "/m"), ("/srv/models/a.gguf", "/srv/models"), ("/srv/a:b/m.gguf", "/srv/a:b")],
)
def test_local_model_mount_is_its_folder_never_root(
    tmp_path: Path, local_path: str, mount: str
) -> None:
    w = _workloads(tmp_path, f"- {{name: d, backend: srv, local_path: '{local_path}'}}\n")
    assert w["d-0"].model_mount == mount


def test_replicas_zero_keeps_definition_but_runs_nothing(tmp_path: Path) -> None:
    w = _workloads(tmp_path, "- {name: d, backend: srv, local_path: /m, replicas: 0}\n")
    assert w == {}


def test_explicit_gpu_ids_split_into_replicas(tmp_path: Path) -> None:
    w = _workloads(
        tmp_path,
        """\
        - name: d
          backend: srv
          local_path: /m
          replicas: 2
          gpu_selector: {gpu_ids: ["h1:cuda:3", "h1:cuda:2", "h1:cuda:1", "h1:cuda:0"]}
        """,
    )
    # Split in the order written; within a replica sorted, as GPUStack sorts them.
    assert w["d-0"].gpus == (2, 3)
    assert w["d-1"].gpus == (0, 1)


def test_automatic_placement_spreads_to_the_host_with_most_free_gpus(tmp_path: Path) -> None:
    hosts = """\
    - {name: h1, address: 10.9.0.1, gpus: {framework: cuda, count: 2}}
    - {name: h2, address: 10.9.0.2, gpus: {framework: cuda, count: 4}}
    """
    w = _workloads(
        tmp_path,
        "- {name: d, backend: srv, local_path: /m, replicas: 3}\n",
        **{"hosts.d/h.yaml": hosts},
    )
    assert [(w[f"d-{i}"].host, w[f"d-{i}"].gpus) for i in range(3)] == [
        ("h2", (0,)),
        ("h2", (1,)),
        ("h1", (0,)),
    ]


def test_explain_names_origins(tmp_path: Path) -> None:
    make_repo(tmp_path, {"deployments.d/d.yaml": "- {name: d, backend: srv, local_path: /m}\n"})
    text = api.explain(tmp_path, "d")
    assert "version: v2 (no backend_version or default_version: GPUStack's latest" in text
    assert "image: example/srv:2  <- backends.d/b.yaml:6:20 (backend 'srv' version 'v2')" in text
    assert "env LEVEL: warn  <- backends.d/b.yaml:6:74 (backend 'srv' version 'v2')" in text
    assert "command: serve /m --port 40000  <- backends.d/b.yaml:3:22 (backend 'srv')" in text
    with pytest.raises(FleetformError, match="no deployment 'nope'"):
        api.explain(tmp_path, "nope")


def test_secret_env_merges_key_by_key(tmp_path: Path) -> None:
    w = _workloads(
        tmp_path,
        """\
        - name: base
          abstract: true
          env: {HF_TOKEN: {secret: HF_TOKEN}, API_KEY: {secret: openai_key}, TEAM: search}
        - {name: inherits, extends: base, backend: srv, local_path: /m/a}
        - name: overrides
          extends: base
          backend: srv
          local_path: /m/a
          env: {API_KEY: public, HF_TOKEN: {secret: hf_token_2}, LEVEL: {secret: level}}
        """,
    )
    assert w["inherits-0"].env == {"LEVEL": "warn", "TEAM": "search"}
    assert w["inherits-0"].secrets == {"API_KEY": "openai_key", "HF_TOKEN": "HF_TOKEN"}
    # A secret replaced by a plain value, a plain value (the backend's) by a secret.
    assert w["overrides-0"].env == {"API_KEY": "public", "TEAM": "search"}
    assert w["overrides-0"].secrets == {"HF_TOKEN": "hf_token_2", "LEVEL": "level"}
    assert list(w["overrides-0"].secrets) == sorted(w["overrides-0"].secrets)


def test_a_secret_may_not_replace_a_vendor_variable(tmp_path: Path) -> None:
    """It would point the replica at GPUs fleetform did not give it (compiler/gpus.py)."""
    backend = """\
    backend_name: amd
    default_run_command: serve --port {{port}}
    version_configs:
      v1: {image_name: "example/amd:1", custom_framework: rocm}
    """
    with pytest.raises(FleetformError) as caught:
        _workloads(
            tmp_path,
            "- {name: d, backend: amd, env: {HIP_VISIBLE_DEVICES: {secret: gpus}}}\n",
            **{
                "backends.d/amd.yaml": backend,
                "hosts.d/h.yaml": (
                    "name: h1\naddress: 10.9.0.1\ngpus: {framework: rocm, count: 1}\n"
                ),
            },
        )
    assert str(caught.value) == (
        "deployments.d/d.yaml:1:54: env.HIP_VISIBLE_DEVICES: HIP_VISIBLE_DEVICES picks the GPUs"
        " a replica sees; fleetform sets it from gpu_selector (remove it here)"
    )


def test_spec_hash_covers_secret_names_never_values(tmp_path: Path) -> None:
    def hashed(folder: str, env: str) -> Workload:
        deployments = f"- {{name: d, backend: srv, local_path: /m, env: {env}}}\n"
        return _workloads(tmp_path / folder, deployments)["d-0"]

    plain = hashed("plain", "{A: x}")
    secret = hashed("secret", "{A: x, T: {secret: HF_TOKEN}}")
    renamed = hashed("renamed", "{A: x, T: {secret: HF_TOKEN_2}}")
    again = hashed("again", "{A: x, T: {secret: HF_TOKEN}}")
    assert "secrets" not in plain.spec()  # workloads without secrets keep their hashes
    assert secret.spec()["secrets"] == {"T": "HF_TOKEN"}
    assert len({plain.spec_hash(), secret.spec_hash(), renamed.spec_hash()}) == 3
    assert again.spec_hash() == secret.spec_hash()


def test_explain_shows_secrets_by_name(tmp_path: Path) -> None:
    make_repo(
        tmp_path,
        {
            "deployments.d/d.yaml": """\
            - name: d
              backend: srv
              local_path: /m
              env:
                HF_TOKEN: {secret: hf_token}
            """
        },
    )
    text = api.explain(tmp_path, "d")
    assert "env HF_TOKEN: (secret hf_token)  <- deployments.d/d.yaml:5:15 (deployment 'd')" in text
    assert "env LEVEL: warn  <- " in text


def test_served_name_is_free_text_and_renders_model_name(tmp_path: Path) -> None:
    """GPUStack's model name is free text (clients ask for it); the deployment's name
    stays a DNS label, for containers and units."""
    w = _workloads(
        tmp_path,
        "- {name: qwen, backend: srv, local_path: /m, served_name: Qwen2.5-7B Instruct,"
        " run_command: 'serve --served-model-name {{model_name}}'}\n"
        "- {name: plain, backend: srv, local_path: /m, run_command: 'serve {{model_name}}'}\n",
    )
    assert w["qwen-0"].command == ("serve", "--served-model-name", "Qwen2.5-7B Instruct")
    assert w["plain-0"].command == ("serve", "plain")


def test_a_hub_file_is_the_model_path(tmp_path: Path) -> None:
    """llama.cpp-style backends take one GGUF file: -m {{model_path}}."""
    w = _workloads(
        tmp_path,
        "- {name: gguf, backend: srv, huggingface_repo_id: Qwen/Qwen2.5-7B-Instruct-GGUF,"
        " huggingface_filename: qwen2.5-7b-instruct-q4_k_m.gguf,"
        " run_command: '-m {{model_path}}'}\n"
        "- {name: ms, backend: srv, model_scope_model_id: qwen/Qwen2-GGUF,"
        " model_scope_file_path: sub/q8_0.gguf, run_command: '-m {{model_path}}'}\n",
    )
    assert w["gguf-0"].command == (
        "-m",
        "/var/lib/fleetform/models/Qwen/Qwen2.5-7B-Instruct-GGUF/qwen2.5-7b-instruct-q4_k_m.gguf",
    )
    assert w["ms-0"].command == ("-m", "/var/lib/fleetform/models/qwen/Qwen2-GGUF/sub/q8_0.gguf")
    assert w["gguf-0"].model_mount == "/var/lib/fleetform/models"


@pytest.mark.parametrize(
    ("filename", "message"),
    [
        (
            "'*Q4_K_M.gguf'",
            "'*Q4_K_M.gguf' is a pattern; fleetform needs the exact file name in the repository"
            " (GPUStack matches patterns when downloading)",
        ),
        (
            "../../etc/passwd",
            "'../../etc/passwd' is not a file of the repository like model-Q4_K_M.gguf or"
            " sub/model.gguf (letters, digits, '_', '.', '+', '@', '=', '-'; no '..')",
        ),
    ],
)
def test_a_hub_file_is_an_exact_name_inside_the_repository(
    tmp_path: Path, filename: str, message: str
) -> None:
    with pytest.raises(FleetformError) as caught:
        _workloads(
            tmp_path,
            "- {name: g, backend: srv, huggingface_repo_id: a/b,"
            f" huggingface_filename: {filename}}}\n",
        )
    assert str(caught.value).endswith(f"huggingface_filename: {message}")


def test_keys_gpustack_writes_are_accepted(tmp_path: Path) -> None:
    """An API dump of a GPUStack 2.3 backend: dump fields, per-version origins."""
    backend = """\
    backend_name: dumped
    id: 7
    created_at: "2026-11-02T10:00:00Z"
    updated_at: "2026-11-02T10:00:00Z"
    deleted_at: null
    source_name: community
    source_type: URL
    allowed_proxy_uris: ["/v1/chat/completions"]
    default_run_command: serve --port {{port}}
    version_configs:
      v1:
        image_name: example/dumped:1
        custom_framework: cpu
        source_name: community
        source_type: URL
        built_in_frameworks: null
    """
    w = _workloads(
        tmp_path, "- {name: d, backend: dumped}\n", **{"backends.d/dumped.yaml": backend}
    )
    assert w["d-0"].image == "example/dumped:1"


def test_null_or_empty_commands_fall_back_as_in_gpustack(tmp_path: Path) -> None:
    backend = """\
    backend_name: nulls
    default_run_command: serve --port {{port}}
    default_entrypoint: /bin/launch
    version_configs:
      v1: {image_name: "example/n:1", run_command: null, entrypoint: "", custom_framework: cpu}
    """
    w = _workloads(
        tmp_path,
        "- {name: d, backend: nulls, run_command: '', image_name: ''}\n",
        **{"backends.d/nulls.yaml": backend},
    )
    assert (w["d-0"].image, w["d-0"].entrypoint, w["d-0"].command) == (
        "example/n:1",
        ("/bin/launch",),
        ("serve", "--port", "40000"),
    )


def test_default_and_deployment_parameters_normalise_as_one_list(tmp_path: Path) -> None:
    backend = """\
    backend_name: p
    parameter_format: equal
    default_backend_param: ["--flag"]
    default_run_command: serve
    version_configs:
      v1: {image_name: "example/p:1", custom_framework: cpu}
    """
    w = _workloads(
        tmp_path,
        "- {name: d, backend: p, backend_parameters: [value, --n 2]}\n",
        **{"backends.d/p.yaml": backend},
    )
    assert w["d-0"].command == ("serve", "--flag=value", "--n=2")
