"""compiler/runtime_env.py: the env variables GPUStack acts on, acted on here too."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler import api
from compiler.errors import FleetformError
from compiler.runtime_env import RuntimeEnvError, RuntimeSettings, runtime_settings
from tests.helpers_repo import make_repo


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, RuntimeSettings()),
        ({"GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB": "16"}, RuntimeSettings(shm_size="16g")),
        ({"GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB": "0.5"}, RuntimeSettings(shm_size="512m")),
        ({"GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB": "1e-6"}, RuntimeSettings(shm_size="1073")),
        ({"GPUSTACK_MODEL_RUNTIME_UID": "1000"}, RuntimeSettings(user="1000")),
        (
            {"GPUSTACK_MODEL_RUNTIME_UID": "1000", "GPUSTACK_MODEL_RUNTIME_GID": "100"},
            RuntimeSettings(user="1000:100"),
        ),
        ({"GPUSTACK_MODEL_RUNTIME_UID": ""}, RuntimeSettings()),  # empty is unset
        ({"GPUSTACK_HOST_IPC": "true"}, RuntimeSettings(ipc="host")),
        ({"GPUSTACK_HOST_IPC": "On"}, RuntimeSettings(ipc="host")),
        ({"GPUSTACK_HOST_IPC": "false"}, RuntimeSettings()),
        ({"GPUSTACK_HOST_IPC": "maybe"}, RuntimeSettings()),  # to_bool: not true
        (
            {"GPUSTACK_MODEL_HEALTH_CHECK_PATH": "/ready"},
            RuntimeSettings(health_check_path="/ready"),
        ),
    ],
)
def test_runtime_settings(env: dict[str, str], expected: RuntimeSettings) -> None:
    assert runtime_settings(env) == expected


@pytest.mark.parametrize(
    ("env", "variable", "message"),
    [
        (
            {"GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB": "lots"},
            "GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB",
            "'lots' is not a size in GiB (a number above 0, like 16 or 0.5)",
        ),
        (
            {"GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB": "inf"},
            "GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB",
            "'inf' is not a size in GiB (a number above 0, like 16 or 0.5)",
        ),
        (
            {"GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB": "-1"},
            "GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB",
            "'-1' is not a size in GiB (a number above 0, like 16 or 0.5)",
        ),
        (
            {"GPUSTACK_MODEL_RUNTIME_UID": "root"},
            "GPUSTACK_MODEL_RUNTIME_UID",
            "'root' is not a numeric user or group id",
        ),
        (
            {"GPUSTACK_MODEL_RUNTIME_UID": "-5"},
            "GPUSTACK_MODEL_RUNTIME_UID",
            "'-5' is not a numeric user or group id",
        ),
        (
            {"GPUSTACK_MODEL_RUNTIME_GID": "100"},
            "GPUSTACK_MODEL_RUNTIME_GID",
            "GPUSTACK_MODEL_RUNTIME_GID needs GPUSTACK_MODEL_RUNTIME_UID beside it"
            " (fleetform sets the user as uid:gid)",
        ),
    ],
)
def test_values_gpustack_would_ignore_are_errors(
    env: dict[str, str], variable: str, message: str
) -> None:
    with pytest.raises(RuntimeEnvError) as caught:
        runtime_settings(env)
    assert (caught.value.variable, str(caught.value)) == (variable, message)


BACKEND = """\
backend_name: srv
health_check_path: /health
default_env: {GPUSTACK_HOST_IPC: "true"}
default_run_command: serve {{model_path}} --port {{port}}
version_configs:
  v1: {image_name: "example/srv:1", custom_framework: cuda}
"""


def test_deepinfer_style_backend_env_reaches_the_container(tmp_path: Path) -> None:
    """GPUStack 2.3.0's own DeepInfer backend sets GPUSTACK_HOST_IPC in default_env."""
    make_repo(
        tmp_path,
        {
            "backends.d/b.yaml": BACKEND,
            "deployments.d/d.yaml": """\
            - name: d
              backend: srv
              local_path: /m/x
              env:
                GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB: "32"
                GPUSTACK_MODEL_RUNTIME_UID: "1000"
                GPUSTACK_MODEL_RUNTIME_GID: "1000"
                GPUSTACK_MODEL_HEALTH_CHECK_PATH: /v1/models
            - name: own
              backend: srv
              local_path: /m/y
              shm_size: 8g
              health_check_path: /ping
              env: {GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB: "32", GPUSTACK_HOST_IPC: "0"}
            """,
        },
    )
    workloads = {w.deployment: w for w in api.build(tmp_path).fleet.workloads}
    d = workloads["d"]
    assert (d.shm_size, d.user, d.ipc, d.health_check_path) == (
        "32g",
        "1000:1000",
        "host",
        "/v1/models",
    )
    # The variables are passed on too, as GPUStack passes them.
    assert d.env["GPUSTACK_HOST_IPC"] == "true"
    # A deployment's own fields win over the variables; "0" turns the backend's off.
    own = workloads["own"]
    assert (own.shm_size, own.user, own.ipc, own.health_check_path) == ("8g", None, None, "/ping")


def test_a_bad_value_is_reported_where_it_is_written(tmp_path: Path) -> None:
    make_repo(
        tmp_path,
        {
            "deployments.d/d.yaml": (
                "- {name: d, backend: srv, local_path: /m,"
                " env: {GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB: lots}}\n"
            )
        },
    )
    with pytest.raises(FleetformError) as caught:
        api.build(tmp_path)
    assert str(caught.value) == (
        "deployments.d/d.yaml:1:86: env.GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB:"
        " 'lots' is not a size in GiB (a number above 0, like 16 or 0.5)"
    )


def test_a_variable_fleetform_reads_cannot_be_a_secret(tmp_path: Path) -> None:
    make_repo(
        tmp_path,
        {
            "deployments.d/d.yaml": (
                "- {name: d, backend: srv, local_path: /m,"
                " env: {GPUSTACK_MODEL_RUNTIME_UID: {secret: uid}}}\n"
            )
        },
    )
    with pytest.raises(FleetformError) as caught:
        api.build(tmp_path)
    assert str(caught.value).endswith(
        "env.GPUSTACK_MODEL_RUNTIME_UID: GPUSTACK_MODEL_RUNTIME_UID is read when compiling"
        " (GPUStack acts on it): it cannot be a secret"
    )
