"""Renderer details read back through the real tools: awkward model paths, mounts."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from compiler import api
from compiler.errors import FleetformError
from compiler.render.systemd import secrets_env_file, unit_name
from tests.helpers import (
    compose_config,
    compose_config_run,
    compose_value,
    exec_time_word,
    option_values,
    split_docker_run,
    systemd_exec_start,
    systemd_verify,
)
from tests.helpers_repo import make_repo

AWKWARD = ["/srv/a:b/m.gguf", "/srv/with,comma/m", '/srv/"quoted" dir/m', "/srv/sp ace/m.bin"]


@pytest.mark.parametrize("local_path", AWKWARD)
def test_model_mount_survives_compose(tmp_path: Path, local_path: str) -> None:
    make_repo(
        tmp_path,
        {"deployments.d/d.yaml": f"- name: d\n  backend: srv\n  local_path: '{local_path}'\n"},
    )
    api.compile_repo(tmp_path)
    config = compose_config(tmp_path / "output" / "h1" / "compose.yaml")
    (volume,) = config["services"]["d-0"]["volumes"]
    folder = local_path.rsplit("/", 1)[0]
    assert volume["type"] == "bind"
    assert compose_value(volume["source"]) == folder
    assert compose_value(volume["target"]) == folder
    assert volume["read_only"] is True


@pytest.mark.parametrize("local_path", AWKWARD)
def test_model_mount_survives_systemd(tmp_path: Path, local_path: str) -> None:
    hosts = "name: h1\naddress: 10.9.0.1\ntarget: systemd\ngpus: {framework: cuda, count: 1}\n"
    make_repo(
        tmp_path,
        {
            "hosts.d/h.yaml": hosts,
            "deployments.d/d.yaml": f"- name: d\n  backend: srv\n  local_path: '{local_path}'\n",
        },
    )
    compiled = api.build(tmp_path)
    (workload,) = compiled.fleet.workloads
    name = unit_name(workload, compiled.fleet.settings)
    text = compiled.files[f"h1/systemd/{name}"].decode()
    argv = [exec_time_word(word) for word in systemd_exec_start(name, text)]
    options, _, arguments = split_docker_run(argv)
    (mount,) = option_values(options, "--mount")
    folder = local_path.rsplit("/", 1)[0]
    # docker reads --mount as CSV: parse it the same way.
    (fields,) = list(csv.reader([mount]))
    assert fields == ["type=bind", f"source={folder}", f"target={folder}", "readonly"]
    assert arguments[1] == local_path


def test_relative_local_path_is_an_error(tmp_path: Path) -> None:
    make_repo(tmp_path, {"deployments.d/d.yaml": "- {name: d, backend: srv, local_path: m.gguf}\n"})
    with pytest.raises(FleetformError) as caught:
        api.build(tmp_path)
    assert str(caught.value) == (
        "deployments.d/d.yaml:1:39: local_path: 'm.gguf' must be an absolute, normalised path"
        " on the host (starting with '/', no '.', '..', '//', trailing '/' or control characters)"
    )


def test_unicode_line_breaks_survive_compose(tmp_path: Path) -> None:
    make_repo(
        tmp_path,
        {
            "deployments.d/d.yaml": "- {name: d, backend: srv, local_path: /m,"
            ' env: {X: "a\\Lc\\Pd"}}\n'
        },
    )
    api.compile_repo(tmp_path)
    config = compose_config(tmp_path / "output" / "h1" / "compose.yaml")
    # NEL (\N), a C1 control character, is refused where values enter.
    assert compose_value(config["services"]["d-0"]["environment"]["X"]) == "a\u2028c\u2029d"


# --- secrets ---------------------------------------------------------------------------

SECRETS_REPO = Path(__file__).parent / "golden" / "secrets" / "repo"
HOSTILE = "$x 'q' \"dq\" %h ;"


def _compiled_secrets(tmp_path: Path) -> api.Compiled:
    repo = tmp_path / "repo"
    shutil.copytree(SECRETS_REPO, repo)
    api.compile_repo(repo)
    return api.build(repo)


def test_secret_reaches_compose_from_the_environment_exactly(tmp_path: Path) -> None:
    compiled = _compiled_secrets(tmp_path)
    (workload,) = compiled.fleet.on_host("edge-compose")
    compose_file = compiled.output_dir / "edge-compose" / "compose.yaml"
    config = compose_config(compose_file, {"HF_TOKEN": HOSTILE, "openai_key": "k${y}$$"})
    environment = config["services"]["chat-0"]["environment"]
    read = {key: compose_value(value) for key, value in environment.items()}
    assert read == {**workload.env, "HF_TOKEN": HOSTILE, "API_KEY": "k${y}$$"}
    assert workload.env["PRICE"] == "$5 per 100% of it"  # a plain `$` stays literal


def test_compose_refuses_to_run_without_a_secret(tmp_path: Path) -> None:
    compiled = _compiled_secrets(tmp_path)
    compose_file = compiled.output_dir / "edge-compose" / "compose.yaml"
    result = compose_config_run(compose_file, {"HF_TOKEN": None, "openai_key": "k"})
    assert result.returncode != 0
    assert "required variable HF_TOKEN is missing a value: secret HF_TOKEN is not set" in (
        result.stderr
    )


def test_secret_sentinel_cannot_be_forged_by_user_text(tmp_path: Path) -> None:
    forged = "fleetform-secret.T.fleetform-secret ${T:?x} fleetform-secret-"
    make_repo(
        tmp_path,
        {
            "deployments.d/d.yaml": f"- {{name: d, backend: srv, local_path: /m,"
            f" env: {{T: {{secret: T}}, U: '{forged}'}}}}\n"
        },
    )
    api.compile_repo(tmp_path)
    config = compose_config(tmp_path / "output" / "h1" / "compose.yaml", {"T": "value"})
    environment = config["services"]["d-0"]["environment"]
    assert compose_value(environment["T"]) == "value"
    assert compose_value(environment["U"]) == forged


def test_secret_reaches_systemd_unit_by_name_only(tmp_path: Path) -> None:
    compiled = _compiled_secrets(tmp_path)
    (workload,) = compiled.fleet.on_host("edge-unit")
    name = unit_name(workload, compiled.fleet.settings)
    unit = compiled.output_dir / "edge-unit" / "systemd" / name
    text = unit.read_text()
    env_file = secrets_env_file(workload, compiled.fleet.settings)
    assert env_file == "/etc/fleetform/fleetform/fleetform-chat-unit-0.env"
    assert re.findall("^EnvironmentFile=.*$", text, re.MULTILINE) == [f"EnvironmentFile={env_file}"]
    # The file is written at apply time: verify must not mind that it is missing here.
    assert not Path(env_file).exists()
    assert systemd_verify([unit]) == []
    argv = [exec_time_word(word) for word in systemd_exec_start(name, text)]
    options, _, _ = split_docker_run(argv)
    assert option_values(options, "--env") == [
        "API_KEY=public-demo-key",
        "HF_HUB_OFFLINE=0",
        "HF_TOKEN",
        "LOG_LEVEL",
    ]


# --- user and IPC namespace (GPUStack's runtime UID/GID and host IPC) -------------------

RUNTIME_REPO = Path(__file__).parent / "golden" / "runtime" / "repo"


def _compiled_runtime(tmp_path: Path) -> api.Compiled:
    repo = tmp_path / "repo"
    shutil.copytree(RUNTIME_REPO, repo)
    api.compile_repo(repo)
    return api.build(repo)


def test_user_and_ipc_are_read_back_by_compose(tmp_path: Path) -> None:
    compiled = _compiled_runtime(tmp_path)
    config = compose_config(compiled.output_dir / "gpu-compose" / "compose.yaml")
    services = config["services"]
    shared, uid_only, plain = (services[s] for s in ("shared-ipc-0", "uid-only-0", "plain-0"))
    assert (shared["user"], shared["ipc"]) == ("1000:1000", "host")
    # compose takes shm_size beside ipc: host (the engine records it; /dev/shm is the host's).
    assert shared["shm_size"] == str(10 * 1024**3)
    assert uid_only["user"] == "1000" and "ipc" not in uid_only
    assert "user" not in plain and "ipc" not in plain


def test_user_and_ipc_reach_the_systemd_unit(tmp_path: Path) -> None:
    compiled = _compiled_runtime(tmp_path)
    (workload,) = compiled.fleet.on_host("gpu-unit")
    name = unit_name(workload, compiled.fleet.settings)
    unit = compiled.output_dir / "gpu-unit" / "systemd" / name
    assert systemd_verify([unit]) == []
    argv = [exec_time_word(word) for word in systemd_exec_start(name, unit.read_text())]
    options, _, _ = split_docker_run(argv)
    assert option_values(options, "--user") == ["1000:1000"]
    assert option_values(options, "--ipc") == ["host"]
    assert option_values(options, "--shm-size") == ["10g"]


def test_stop_timeout_reaches_compose_the_unit_and_the_container_alike(tmp_path: Path) -> None:
    """A deployment's stop_timeout: compose's stop_grace_period, the unit's `docker stop
    --time` (and systemd's own limit above it), `docker run --stop-timeout`, and the
    create request's StopTimeout. Unset: the unit keeps 30 s, the others say nothing."""
    from compiler.render.container import container_spec
    from compiler.targets.compose.fields import Wanted, create_request

    hosts = (
        "- {name: c1, address: 10.9.0.1, labels: {k: c}, gpus: {framework: cuda, count: 3}}\n"
        "- {name: s1, address: 10.9.0.2, labels: {k: s}, target: systemd,"
        " gpus: {framework: cuda, count: 3}}\n"
    )
    deployments = "".join(
        f"- {{name: {name}-{k}, backend: srv, local_path: /m/a, worker_selector: {{k: {k}}}"
        + ("" if stop is None else f", stop_timeout: {stop}")
        + "}\n"
        for name, stop in (("slow", 120), ("quick", 0), ("plain", None))
        for k in "cs"
    )
    make_repo(tmp_path, {"hosts.d/h.yaml": hosts, "deployments.d/d.yaml": deployments})
    api.compile_repo(tmp_path)
    compiled = api.build(tmp_path)
    services = compose_config(tmp_path / "output" / "c1" / "compose.yaml")["services"]
    grace = {name: service.get("stop_grace_period") for name, service in services.items()}
    assert grace == {"slow-c-0": "2m0s", "quick-c-0": "0s", "plain-c-0": None}
    units = {w.deployment: w for w in compiled.fleet.on_host("s1")}
    expected = {
        "slow-s": (120, "150", ["120"]),
        "quick-s": (0, "30", ["0"]),
        "plain-s": (30, "60", []),
    }
    for deployment, (stop, limit, option) in expected.items():
        name = unit_name(units[deployment], compiled.fleet.settings)
        unit = tmp_path / "output" / "s1" / "systemd" / name
        text = unit.read_text()
        assert f"ExecStop=/usr/bin/docker stop --time {stop} " in text
        assert f"\nTimeoutStopSec={limit}\n" in text
        argv = [exec_time_word(word) for word in systemd_exec_start(name, text)]
        options, _, _ = split_docker_run(argv)
        assert option_values(options, "--stop-timeout") == option
        assert systemd_verify([unit]) == []
    bodies = {
        w.deployment: create_request(
            Wanted(container_spec(w, compiled.fleet.settings, "10.9.0.1"), {}, {})
        )
        for w in compiled.fleet.on_host("c1")
    }
    assert {d: b.get("StopTimeout") for d, b in bodies.items()} == {
        "slow-c": 120, "quick-c": 0, "plain-c": None
    }  # fmt: skip
