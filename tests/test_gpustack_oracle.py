"""The GPUStack oracle (tests/gpustack_oracle.py) against GPUStack 2.3.0 behaviour we know.

Each expectation here was observed from GPUStack's own code through the oracle and
checked against that code's source; if one fails, the oracle (or the pinned GPUStack)
changed, not fleetform. All deploy cases run in one oracle process.

Skipped only when the venv cannot be built and FLEETFORM_REQUIRE_TOOLS is not "1"
(CI sets it: there a failed build fails).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests import gpustack_oracle as oracle

SPECULATIVE = '--speculative-config={"method": "ngram", "num_speculative_tokens": 5}'

BACKEND: dict[str, Any] = {
    "backend_name": "t-custom",
    "health_check_path": "/health",
    "default_version": "v1",
    "default_env": {"BACKEND_VAR": "from-backend"},
    "default_run_command": (
        "serve {{model_path}} --host {{worker_ip}} --port {{port}} --name {{model_name}}"
        " --tp {{gpu_count}} --ids {{gpu_ids}}"
    ),
    "version_configs": {
        "v1": {"image_name": "img:v1", "run_command": None, "custom_framework": "cuda"},
        "v2": {
            "image_name": "img:v2",
            "run_command": "v2serve --port {{port}}",
            "entrypoint": "/bin/sh -c 'exec \"$@\"' --",
            "custom_framework": "cuda",
        },
    },
}


def _case(case_id: str, **overrides: Any) -> dict[str, Any]:
    case: dict[str, Any] = {
        "id": case_id,
        "backend": BACKEND,
        "model": {"name": "qwen"},
        "model_path": "/models/qwen",
        "port": 40001,
        "worker_ip": "10.1.2.3",
        "framework": "cuda",
        "host_gpus": 4,
        "gpu_indexes": [2],
    }
    case.update(overrides)
    return case


def _backend(**changes: Any) -> dict[str, Any]:
    return {**BACKEND, **changes}


CASES: list[dict[str, Any]] = [
    _case("plain"),
    _case("speculative", model={"name": "qwen", "backend_parameters": [SPECULATIVE]}),
    _case(
        "speculative-space",
        backend=_backend(parameter_format="space"),
        model={"name": "qwen", "backend_parameters": [SPECULATIVE, "--a=1"]},
    ),
    _case(
        "speculative-equal",
        backend=_backend(parameter_format="equal"),
        model={"name": "qwen", "backend_parameters": [SPECULATIVE, "--a 1"]},
    ),
    _case(
        "no-default-version",
        backend={
            "backend_name": "n-custom",
            "default_run_command": "serve",
            "version_configs": {
                "1.10": {"image_name": "img:1.10"},
                "1.9rc1": {"image_name": "img:1.9rc1"},
            },
        },
    ),
    _case("spaced-placeholder", backend=_backend(default_run_command="serve --n {{ name }}")),
    _case("unknown-version", model={"name": "qwen", "backend_version": "v9"}),
    _case("entrypoint", model={"name": "qwen", "backend_version": "v2"}),
    _case(
        "model-env-placeholder",
        backend=_backend(default_run_command="serve --a {{BACKEND_VAR}} --b {{MODEL_VAR}}"),
        model={"name": "qwen", "env": {"MODEL_VAR": "from-model"}},
    ),
    _case(
        "container-settings",
        model={
            "name": "qwen",
            "env": {
                "GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB": "2",
                "GPUSTACK_MODEL_RUNTIME_UID": "1000",
                "GPUSTACK_MODEL_RUNTIME_GID": "1001",
            },
        },
    ),
    _case("host-ipc", model={"name": "qwen", "env": {"GPUSTACK_HOST_IPC": "true"}}),
    _case("no-health-path", backend={k: v for k, v in BACKEND.items()
                                      if k != "health_check_path"}),
    _case("name-not-custom", backend=_backend(backend_name="plain-name")),
    _case("community", backend=_backend(backend_name="plain-name"), **{"import": "community"}),
    *(
        _case(f"gpu2of4-{framework}", framework=framework)
        for framework in ("cuda", "rocm", "cann", "musa", "corex", "maca", "dtk", "neuware",
                          "hggc")
    ),
    _case("cuda-single", host_gpus=1, gpu_indexes=[0]),
    _case("cpu", framework="cpu", host_gpus=0, gpu_indexes=[]),
    _case(
        "on-host",
        mirrored=False,
        worker_env={"PATH": "/usr/bin", "HTTP_PROXY": "http://proxy", "GPUSTACK_TOKEN": "t",
                    "CUDA_VISIBLE_DEVICES": "0", "LD_LIBRARY_PATH": "/x"},
    ),
    oracle.compare_versions_case("1.10", "1.9rc1"),
    oracle.latest_version_case(["1.10", "1.9rc1"]),
]


@pytest.fixture(scope="module")
def venv() -> Path:
    return oracle.require_oracle()


def _catalogue_cases(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cases = []
    for card in cards:
        frameworks = sorted(
            {v.get("custom_framework") for v in card["version_configs"].values()} - {"cpu"}
        )
        framework = frameworks[0] if frameworks else "cpu"
        cases.append(
            {
                "id": f"catalogue:{card['backend_name']}",
                "import": "community",
                "backend": card,
                "model": {"name": "m", "env": card.get("default_env") or {},
                          "backend_parameters": card.get("default_backend_param") or []},
                "framework": framework,
                "host_gpus": 0 if framework == "cpu" else 2,
                "gpu_indexes": [] if framework == "cpu" else [1],
            }
        )
    return cases


BULK = [_case(f"bulk-{i}", model={"name": f"m{i}"}, gpu_indexes=[i % 4]) for i in range(200)]


@pytest.fixture(scope="module")
def answers(venv: Path) -> dict[str, Any]:
    """Every case of this file in one oracle call (its start-up is ~5 s)."""
    cards = oracle.catalogue(venv)
    assert cards and all(card.get("backend_name") for card in cards)
    cases = CASES + _catalogue_cases(cards) + BULK
    mp = pytest.MonkeyPatch()
    # The test process's environment must not reach the oracle (or the container).
    mp.setenv("FLEETFORM_ORACLE_LEAK", "leaked")
    started = time.monotonic()
    try:
        results = oracle.run(cases, venv)
    finally:
        mp.undo()
    named: dict[str, Any] = {"seconds": time.monotonic() - started}
    for case, result in zip(cases, results, strict=True):
        named[case.get("id") or f"{case['op']}:{case.get('a') or case.get('versions')}"] = result
    return named


def _ok(answers: dict[str, Any], case_id: str) -> dict[str, Any]:
    result = answers[case_id]
    assert "error" not in result, result
    return result


def test_plain_deploy(answers: dict[str, Any]) -> None:
    r = _ok(answers, "plain")
    assert r["version"] == "v1"
    assert r["image"] == "img:v1"
    assert r["entrypoint"] is None
    # run_command: null on the version -> default_run_command, rendered and shlex-split.
    assert r["args"] == [
        "serve", "/models/qwen", "--host", "10.1.2.3", "--port", "40001", "--name", "qwen",
        "--tp", "1", "--ids", "2",
    ]
    assert r["privileged"] is True
    assert r["shm_size"] == 10 * (1 << 30)
    assert r["host_network"] is True and r["network_mode"] == "host"
    assert r["host_ipc"] is False and r["ipc_mode"] == "shareable"
    assert r["user"] is None and r["mounts"] is None
    assert r["healthcheck"] == {"test": ["NONE"]}
    assert r["health_check_path"] == "/health"
    assert r["health_check_url"] == "http://10.1.2.3:40001/health"
    # The backend's default_env never reaches the container: only the model's env does.
    assert "BACKEND_VAR" not in r["env"]
    assert "FLEETFORM_ORACLE_LEAK" not in r["env"]
    # An empty backend_version is written back to the model as the resolved version.
    assert r["backend_version"] == "v1"
    assert [w["backend_version"] for w in r["model_writes"]] == ["v1"]
    assert r["injected_backend_parameters"] == [
        "--host=10.1.2.3", "--port=40001", "--name=qwen", "--tp=1", "--ids=2",
    ]


def test_speculative_config_stays_one_argument(answers: dict[str, Any]) -> None:
    assert _ok(answers, "speculative")["args"][-1] == SPECULATIVE
    # parameter_format splits key and value, never the JSON value itself.
    assert _ok(answers, "speculative-space")["args"][-4:] == [
        "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 5}', "--a", "1",
    ]
    assert _ok(answers, "speculative-equal")["args"][-2:] == [SPECULATIVE, "--a=1"]


def test_latest_version_without_default(answers: dict[str, Any]) -> None:
    # compare_versions("1.10", "1.9rc1") == -1, so "latest" is 1.9rc1.
    assert answers["compare_versions:1.10"]["result"] == -1
    assert answers["latest_version:['1.10', '1.9rc1']"]["result"] == "1.9rc1"
    r = _ok(answers, "no-default-version")
    assert r["version"] == "1.9rc1" and r["image"] == "img:1.9rc1"


def test_spaced_placeholder_stays_literal(answers: dict[str, Any]) -> None:
    r = _ok(answers, "spaced-placeholder")
    # Not a placeholder; shlex then splits the literal into three arguments.
    assert r["args"] == ["serve", "--n", "{{", "name", "}}"]


def test_unknown_backend_version_falls_back_to_latest(answers: dict[str, Any]) -> None:
    r = _ok(answers, "unknown-version")
    assert r["version"] == "v2"
    assert r["image"] == "img:v2"
    assert r["args"] == ["v2serve", "--port", "40001"]
    assert r["backend_version"] == "v9"  # kept as requested, never corrected


def test_version_entrypoint_and_run_command(answers: dict[str, Any]) -> None:
    r = _ok(answers, "entrypoint")
    assert r["entrypoint"] == ["/bin/sh", "-c", 'exec "$@"', "--"]
    assert r["args"] == ["v2serve", "--port", "40001"]


def test_model_env_feeds_placeholders_backend_env_does_not(answers: dict[str, Any]) -> None:
    r = _ok(answers, "model-env-placeholder")
    assert r["args"] == ["serve", "--a", "{{BACKEND_VAR}}", "--b", "from-model"]
    assert r["env"]["MODEL_VAR"] == "from-model"
    assert any("{{BACKEND_VAR}}" in w for w in r["warnings"])


def test_container_settings_from_model_env(answers: dict[str, Any]) -> None:
    r = _ok(answers, "container-settings")
    assert r["shm_size"] == 2 * (1 << 30)
    assert r["user"] == "1000:1001"
    assert r["group_add"] == [1001]
    ipc = _ok(answers, "host-ipc")
    assert ipc["host_ipc"] is True and ipc["ipc_mode"] == "host"
    assert ipc["shm_size"] is None


def test_no_health_check_path_means_always_ready(answers: dict[str, Any]) -> None:
    r = _ok(answers, "no-health-path")
    assert r["health_check_path"] is None and r["health_check_url"] is None


def test_yaml_import_requires_custom_suffix(answers: dict[str, Any]) -> None:
    assert answers["name-not-custom"]["stage"] == "backend"
    assert "must end with '-custom'" in answers["name-not-custom"]["error"]
    # A marketplace card takes the community path, which has no such rule.
    assert _ok(answers, "community")["image"] == "img:v1"


GPU2_OF_4 = {
    "cuda": {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "2"},
    "rocm": {"AMD_VISIBLE_DEVICES": "0,1,2,3", "HIP_VISIBLE_DEVICES": "2"},
    "cann": {"ASCEND_VISIBLE_DEVICES": "0,1,2,3", "ASCEND_RT_VISIBLE_DEVICES": "2",
             "NPU_VISIBLE_DEVICES": "2"},
    # "METHERDS" is gpustack-runtime 0.2.6's spelling.
    "musa": {"METHERDS_VISIBLE_DEVICES": "0,1,2,3", "CUDA_VISIBLE_DEVICES": "2",
             "MUSA_VISIBLE_DEVICES": "2"},
    "corex": {"IX_VISIBLE_DEVICES": "0,1,2,3", "CUDA_VISIBLE_DEVICES": "2"},
    # MetaX's runtime and backend variables are both CUDA_VISIBLE_DEVICES: the backend wins.
    "maca": {"CUDA_VISIBLE_DEVICES": "2"},
    "dtk": {"HYGON_VISIBLE_DEVICES": "0,1,2,3", "HIP_VISIBLE_DEVICES": "2"},
    "neuware": {"CAMBRICON_VISIBLE_DEVICES": "0,1,2,3", "MLU_VISIBLE_DEVICES": "2"},
    "hggc": {"CUDA_VISIBLE_DEVICES": "2"},
}


@pytest.mark.parametrize("framework", sorted(GPU2_OF_4))
def test_replica_on_gpu_2_of_4(answers: dict[str, Any], framework: str) -> None:
    r = _ok(answers, f"gpu2of4-{framework}")
    env = r["env"]
    # CustomServer runs privileged, so the runtime variable lists every GPU of the host and
    # the backend variable selects the replica's.
    assert r["privileged"] is True
    assert r["devices"] is None and r["device_requests"] is None
    for name, value in GPU2_OF_4[framework].items():
        assert env.get(name) == value, (name, env)
    if framework in ("cuda", "hggc"):
        uuids = env["NVIDIA_VISIBLE_DEVICES"].split(",")
        assert len(uuids) == 4 and all(uuids)
    visible = {k for k in env if k.endswith("_VISIBLE_DEVICES") or k == "CUDA_DEVICE_ORDER"}
    expected = set(GPU2_OF_4[framework]) | (
        {"NVIDIA_VISIBLE_DEVICES"} if framework in ("cuda", "hggc") else set()
    )
    assert visible == expected


def test_cuda_single_gpu_and_cpu(answers: dict[str, Any]) -> None:
    single = _ok(answers, "cuda-single")["env"]
    # Privileged: the ordering is pinned even for one GPU.
    assert single["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert single["CUDA_VISIBLE_DEVICES"] == "0"
    cpu = _ok(answers, "cpu")
    assert cpu["env"] == {}
    # gpu_count renders 0 and an empty gpu_ids vanishes in shlex.split.
    assert cpu["args"][-3:] == ["--tp", "0", "--ids"]


def test_worker_on_host_passes_its_filtered_env_and_mounts_the_model(
    answers: dict[str, Any],
) -> None:
    r = _ok(answers, "on-host")
    assert r["env"]["HTTP_PROXY"] == "http://proxy"
    for name in ("PATH", "GPUSTACK_TOKEN", "LD_LIBRARY_PATH"):
        assert name not in r["env"]
    assert r["env"]["CUDA_VISIBLE_DEVICES"] == "2"  # the worker's own value is dropped
    assert r["mounts"] == [
        {"Target": "/models", "Source": "/models", "Type": "bind", "ReadOnly": False}
    ]


def test_catalogue_cards_deploy(answers: dict[str, Any]) -> None:
    cards = [key for key in answers if key.startswith("catalogue:")]
    assert cards
    for key in cards:
        result = _ok(answers, key)
        assert result["image"] and result["args"], result


def test_two_hundred_cases_in_one_call(answers: dict[str, Any]) -> None:
    assert [answers[f"bulk-{i}"]["env"]["CUDA_VISIBLE_DEVICES"] for i in range(200)] == [
        str(i % 4) for i in range(200)
    ]
    # About 10 s here for the whole file's ~240 cases: one start-up, ~20 ms a case.
    assert answers["seconds"] < 120


def test_compare_and_latest_helpers(venv: Path) -> None:
    assert oracle.compare_versions("0.10.2", "0.11.0", venv) == -1
    assert oracle.latest_version(["v0.10.2", "v0.11.0"], venv) == "v0.11.0"
