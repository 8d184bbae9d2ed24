"""The real-engine harness itself (testing/engines.py): engines, GPU stand-in, image, ssh://."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import docker
import pytest
from docker.types import DeviceRequest

from testing.engines import (
    TEST_IMAGE,
    EngineFactory,
    EngineStartError,
    _cgroup_dirs,
    _mount_points,
    _pids_naming,
    free_port,
    load_test_image,
    start_engine,
)

GPU_REQUEST = {"Driver": "nvidia", "Count": 0, "Capabilities": [["gpu"]], "Options": {}}


def _names(client: docker.DockerClient) -> set[str]:
    return {container.name for container in client.containers.list(all=True)}


def test_two_engines_run_side_by_side(engines: EngineFactory) -> None:
    a, b = engines("a"), engines("b")
    client_a, client_b = a.client(), b.client()
    client_a.containers.run(TEST_IMAGE, ["sleep", "60"], name="only-on-a", detach=True, init=True)
    client_b.containers.run(TEST_IMAGE, ["sleep", "60"], name="only-on-b", detach=True, init=True)

    assert _names(client_a) == {"only-on-a"}
    assert _names(client_b) == {"only-on-b"}
    # Each engine runs its own managed containerd below its own folder.
    for engine in (a, b):
        commands = [
            Path(f"/proc/{pid}/comm").read_text().strip() for pid in _pids_naming(engine.dir)
        ]
        assert {"dockerd", "containerd"} <= set(commands), commands
    out = client_a.containers.run(TEST_IMAGE, ["sh", "-c", "echo $((6 * 7))"], remove=True)
    assert out == b"42\n"


def test_gpu_container_gets_the_exact_device_ids(engines: EngineFactory) -> None:
    engine = engines("gpu")
    client = engine.client()
    container = client.containers.run(
        TEST_IMAGE,
        ["sleep", "60"],
        detach=True,
        init=True,
        device_requests=[
            DeviceRequest(driver="nvidia", device_ids=["1", "3"], capabilities=[["gpu"]])
        ],
    )
    container.reload()
    assert container.status == "running"
    assert container.attrs["HostConfig"]["DeviceRequests"] == [
        {**GPU_REQUEST, "DeviceIDs": ["1", "3"]}
    ]
    # runc ran the stand-in hook, and dockerd handed it exactly those GPUs.
    assert engine.gpu_assignments()[container.id] == "1,3"

    # The docker CLI's --gpus (no driver named: dockerd picks nvidia by capability).
    cli = subprocess.run(
        ["docker", "run", "-d", "--init", "--gpus", '"device=0,2"', TEST_IMAGE, "sleep", "60"],
        capture_output=True,
        text=True,
        env=engine.cli_env(),
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    cli_id = cli.stdout.strip()
    requests = client.containers.get(cli_id).attrs["HostConfig"]["DeviceRequests"]
    assert requests == [{**GPU_REQUEST, "Driver": "", "DeviceIDs": ["0", "2"]}]
    assert engine.gpu_assignments()[cli_id] == "0,2"


def test_engine_without_gpu_hook_refuses_nvidia(engines: EngineFactory) -> None:
    engine = engines("nogpu", gpu_hook=False)
    client = engine.client()
    request = DeviceRequest(driver="nvidia", device_ids=["0"], capabilities=[["gpu"]])
    with pytest.raises(docker.errors.APIError, match='could not select device driver "nvidia"'):
        client.containers.run(TEST_IMAGE, ["true"], detach=True, device_requests=[request])
    # Plain containers still run.
    assert client.containers.run(TEST_IMAGE, ["echo", "ok"], remove=True) == b"ok\n"


def test_busybox_httpd_answers_health_on_loopback(engines: EngineFactory) -> None:
    engine = engines("web")
    port = free_port("127.0.0.1", start=18080, stop=18180)
    command = ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/var/www"]
    container = engine.client().containers.run(
        TEST_IMAGE, command, detach=True, init=True, network_mode="host"
    )
    deadline, status, body = time.monotonic() + 10, 0, b""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                status, body = answer.status, answer.read()
            break
        except OSError:
            time.sleep(0.05)
    assert (status, body) == (200, b"ok\n")
    started = time.monotonic()
    container.stop(timeout=5)
    assert time.monotonic() - started < 2, "with init=True the container stops at SIGTERM"


def test_sleep_as_pid_1_ignores_sigterm(engines: EngineFactory) -> None:
    """Why containers of the test image run with ``init=True`` (docker-init = tini)."""
    client = engines("pid1").client()
    bare = client.containers.run(TEST_IMAGE, ["sleep", "60"], detach=True)
    started = time.monotonic()
    bare.stop(timeout=1)
    assert time.monotonic() - started >= 0.9
    bare.reload()
    assert bare.attrs["State"]["ExitCode"] == 137  # SIGKILLed after the timeout
    with_init = client.containers.run(TEST_IMAGE, ["sleep", "60"], detach=True, init=True)
    with_init.stop(timeout=1)
    with_init.reload()
    assert with_init.attrs["State"]["ExitCode"] == 143  # SIGTERM, forwarded by tini


def test_docker_sdk_over_ssh_reaches_the_right_engine(engines: EngineFactory) -> None:
    a, b = engines("sa"), engines("sb")
    a.client().containers.run(TEST_IMAGE, ["sleep", "60"], name="on-a", detach=True, init=True)
    b.client().containers.run(TEST_IMAGE, ["sleep", "60"], name="on-b", detach=True, init=True)
    host_a, host_b = engines.ssh(a), engines.ssh(b)
    assert host_a.address != host_b.address

    for host, expected in ((host_a, "on-a"), (host_b, "on-b")):
        client = host.client()  # paramiko
        assert host.url.startswith("ssh://root@127.0.0.")
        assert [c.name for c in client.containers.list()] == [expected]
        client.close()


def test_docker_cli_and_openssh_mode_over_ssh(
    engines: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engines("cli")
    engine.client().containers.run(
        TEST_IMAGE, ["sleep", "60"], name="via-ssh", detach=True, init=True
    )
    host = engines.ssh(engine)
    env = {**engine.cli_env(), **host.env}
    env.pop("DOCKER_HOST")
    cli = subprocess.run(
        ["docker", "-H", host.url, "ps", "--format", "{{.Names}}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (cli.returncode, cli.stdout) == (0, "via-ssh\n"), cli.stderr

    for name, value in host.env.items():
        monkeypatch.setenv(name, value)
    client = docker.DockerClient(base_url=host.url, use_ssh_client=True, timeout=60)
    assert [c.name for c in client.containers.list()] == ["via-ssh"]
    client.close()


def test_stop_leaves_nothing_behind(engine_root: Path) -> None:
    engine = start_engine(engine_root, "gone")
    try:
        load_test_image(engine)
        engine.client().containers.run(TEST_IMAGE, ["sleep", "60"], detach=True)
        assert _pids_naming(engine.dir)
    finally:
        engine.stop()
    assert not _pids_naming(engine.dir)
    assert not [p for p in _mount_points() if p.startswith(f"{engine.dir}/")]
    assert not _cgroup_dirs(engine.cgroup_parent.strip("/"), exact=True)
    assert not engine.dir.exists()


def test_start_failure_reports_the_log(engine_root: Path) -> None:
    with pytest.raises(EngineStartError, match="unknown flag: --no-such-flag") as failure:
        start_engine(engine_root, "broken", extra_args=["--no-such-flag"])
    assert "dockerd.log" in str(failure.value)
    assert not _pids_naming(engine_root / "broken")
