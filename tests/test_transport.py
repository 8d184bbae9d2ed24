"""SSH options and messages (compiler/remote/ssh.py), and the Engine API's small
formats (compiler/remote/engine.py, compiler/targets/compose/apply.py): no host needed.

Against real sshd and engines: tests/test_apply_robustness.py (ssh:// hosts, the
shared master connection) and tests/test_apply_systemd.py."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from compiler.remote.engine import demultiplex
from compiler.remote.ssh import (
    TransportError,
    multiplexing,
    ssh_message,
    ssh_options,
)
from compiler.render.container import ContainerSpec, Mount
from compiler.targets.compose.apply import split_reference
from compiler.targets.compose.fields import Wanted, create_request

UNKNOWN = (
    b"No ED25519 host key is known for [127.0.0.2]:2201 and you have requested strict"
    b" checking.\r\nHost key verification failed.\r\n"
)

CHANGED = b"""@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ED25519 key sent by the remote host is
SHA256:2bZ1oO3vL8m1e0c2W0mVQfQ0Z1f6cXq4m5q6n7o8p9Q.
Please contact your system administrator.
Add correct host key in /root/.ssh/known_hosts to get rid of this message.
Offending ED25519 key in /root/.ssh/known_hosts:3
Host key for [127.0.0.2]:2201 has changed and you have requested strict checking.
Host key verification failed.
"""


@pytest.mark.parametrize(
    ("stderr", "message"),
    [
        (
            UNKNOWN,
            "No ED25519 host key is known for [127.0.0.2]:2201 and you have requested"
            " strict checking.",
        ),
        (
            CHANGED,
            "Host key for [127.0.0.2]:2201 has changed and you have requested strict checking.",
        ),
        (
            b"root@10.0.0.9: Permission denied (publickey).\r\n",
            "root@10.0.0.9: Permission denied (publickey).",
        ),
        (
            b"Warning: Permanently added '[h]:22' (ED25519) to the list of known hosts.\n"
            b"bash: line 1: docker: command not found\n",
            "bash: line 1: docker: command not found",
        ),
        (b"", ""),
    ],
)
def test_ssh_message_is_the_line_that_says_why(stderr: bytes, message: str) -> None:
    assert ssh_message(stderr) == message


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A home short enough for socket paths (pytest's tmp_path is too deep)."""
    home = Path(tempfile.mkdtemp(prefix="ff-home-", dir="/tmp"))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("FLEETFORM_SSH_PERSIST", raising=False)
    monkeypatch.delenv("FLEETFORM_SSH_TRUST_UNKNOWN_HOSTS", raising=False)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def test_a_master_per_host_persists_60_s_by_default(home: Path) -> None:
    folder = home / ".cache" / "fleetform-ssh"
    assert multiplexing() == [
        "-o", "ControlMaster=auto",
        "-o", f"ControlPath={folder}/%C",
        "-o", "ControlPersist=60",
    ]  # fmt: skip
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    options = ssh_options(connect_timeout=7)
    assert options[:8] == [
        "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=7",
        "-o", "ServerAliveInterval=10",
        "-o", "StrictHostKeyChecking=yes",
    ]  # fmt: skip
    assert options[8:] == multiplexing()


def test_persist_setting_and_trust(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETFORM_SSH_PERSIST", "0")
    assert multiplexing() == []
    assert not (home / ".cache").exists()
    monkeypatch.setenv("FLEETFORM_SSH_PERSIST", "300")
    assert multiplexing()[-1] == "ControlPersist=300"
    monkeypatch.setenv("FLEETFORM_SSH_PERSIST", "1m")
    with pytest.raises(TransportError, match=r"FLEETFORM_SSH_PERSIST='1m': expected a number"):
        multiplexing()
    monkeypatch.setenv("FLEETFORM_SSH_PERSIST", "60")
    monkeypatch.setenv("FLEETFORM_SSH_TRUST_UNKNOWN_HOSTS", "1")
    assert "StrictHostKeyChecking=accept-new" in ssh_options()


def test_no_master_where_the_socket_folder_is_not_private(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = home / ".cache" / "fleetform-ssh"
    folder.mkdir(parents=True)
    folder.chmod(0o777)  # another user could reach our hosts through its sockets
    assert multiplexing() == []
    folder.chmod(0o700)
    assert multiplexing() != []
    # A socket path has at most 107 bytes: a home this deep leaves no room for one.
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setenv("HOME", str(deep))
    assert multiplexing() == []


@pytest.mark.parametrize(
    ("image", "name", "tag"),
    [
        ("vllm/vllm-openai:v0.6.3", "vllm/vllm-openai", "v0.6.3"),
        ("busybox", "busybox", "latest"),  # an empty tag would pull every tag
        ("registry:5000/team/img", "registry:5000/team/img", "latest"),
        ("registry:5000/team/img:1", "registry:5000/team/img", "1"),
        ("img@sha256:" + "a" * 64, "img", "sha256:" + "a" * 64),
    ],
)
def test_pull_reference(image: str, name: str, tag: str) -> None:
    assert split_reference(image) == (name, tag)


def test_log_frames_are_stripped() -> None:
    frames = b"\x01\x00\x00\x00\x00\x00\x00\x03out" + b"\x02\x00\x00\x00\x00\x00\x00\x04err\n"
    assert demultiplex(frames) == b"outerr\n"
    assert demultiplex(b"plain text from a TTY\n") == b"plain text from a TTY\n"


SPEC = ContainerSpec(
    name="p-web-0",
    deployment="web",
    replica=0,
    spec_hash="0123456789abcdef",
    image="img:1",
    entrypoint=None,
    command=("serve", "--port", "8000"),
    env={"B": "2", "A": "1"},
    secrets={"S": "HF_TOKEN"},
    labels={"io.fleetform.project": "p"},
    gpu_driver="nvidia",
    gpu_ids=("0", "1"),
    mounts=(Mount("/srv/models/m", "/models/m", True),),
    binds=("/models/m:/models/m:ro",),
    devices=("/dev/infiniband", "/dev/kfd:/dev/kfd:rw"),
    network_mode="host",
    shm_size="16g",
    restart="unless-stopped",
    ports=("127.0.0.1:8000:8000", "9000:90/udp"),
    address="10.0.0.1",
    port=8000,
    health_check_path="/health",
    health_timeout=60.0,
)


def test_create_request_is_the_engine_api_form() -> None:
    spec = SPEC
    body = create_request(Wanted(spec, {"A": "1", "B": "2", "S": "secret"}, {"l": "v"}))
    assert body == {
        "Image": "img:1",
        "Cmd": ["serve", "--port", "8000"],
        "Entrypoint": None,
        "Env": ["A=1", "B=2", "S=secret"],
        "Labels": {"l": "v"},
        "ExposedPorts": {"8000/tcp": {}, "90/udp": {}},
        "HostConfig": {
            "NetworkMode": "host",
            "Mounts": [
                {"Target": "/models/m", "Source": "/srv/models/m", "Type": "bind", "ReadOnly": True}
            ],
            "ShmSize": 16 * 1024**3,
            "RestartPolicy": {"Name": "unless-stopped"},
            "Binds": ["/models/m:/models/m:ro"],
            "Devices": [
                {
                    "PathOnHost": "/dev/infiniband",
                    "PathInContainer": "/dev/infiniband",
                    "CgroupPermissions": "rwm",
                },
                {
                    "PathOnHost": "/dev/kfd",
                    "PathInContainer": "/dev/kfd",
                    "CgroupPermissions": "rw",
                },
            ],
            "DeviceRequests": [
                {
                    "Driver": "nvidia",
                    "Count": 0,
                    "DeviceIDs": ["0", "1"],
                    "Capabilities": [["gpu"]],
                    "Options": {},
                }
            ],
            "PortBindings": {
                "8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8000"}],
                "90/udp": [{"HostIp": "", "HostPort": "9000"}],
            },
        },
    }


def test_create_request_sets_user_and_ipc_only_when_given() -> None:
    spec = ContainerSpec(
        name="p-web-0",
        deployment="web",
        replica=0,
        spec_hash="0123456789abcdef",
        image="img:1",
        entrypoint=None,
        command=(),
        env={},
        secrets={},
        labels={},
        gpu_driver=None,
        gpu_ids=(),
        mounts=(),
        binds=(),
        devices=(),
        network_mode="host",
        shm_size="16g",
        restart="no",
        ports=(),
        address="10.0.0.1",
        port=8000,
        health_check_path=None,
        health_timeout=60.0,
    )
    plain = create_request(Wanted(spec, {}, {}))
    assert "User" not in plain and "IpcMode" not in plain["HostConfig"]
    body = create_request(Wanted(dataclasses.replace(spec, user="1000:1000", ipc="host"), {}, {}))
    assert body["User"] == "1000:1000"
    # ShmSize is sent beside IpcMode host, as `docker run --ipc host --shm-size` does.
    assert (body["HostConfig"]["IpcMode"], body["HostConfig"]["ShmSize"]) == ("host", 16 * 1024**3)
    assert {k: v for k, v in body.items() if k != "User"} == {
        **plain,
        "HostConfig": {**plain["HostConfig"], "IpcMode": "host"},
    }


def test_every_container_field_reads_back_what_it_wrote() -> None:
    """The table of container fields is one place per field: for each row, the create
    request it writes, read back as ``docker inspect`` shows it (Config and HostConfig),
    is the view the plan wants — so a field written one way and read another would be
    drift forever (as shm_size once was). Every row is set to a non-default value."""
    from compiler.observed import ObservedContainer
    from compiler.targets.compose.fields import (
        FIELDS,
        left_to_engine,
        observed_view,
        wanted_view,
    )

    spec = dataclasses.replace(
        SPEC,
        entrypoint=("python3", "-m"),
        secrets={},
        binds=("/data:/data:rw", "/cache:/cache"),
        shm_size="1.5g",
        ports=("127.0.0.1:8000-8001:8000-8001", "[::1]:9000:90/udp"),
        stop_timeout=45,
        user="1000:1000",
        ipc="host",
    )
    wanted = Wanted(spec, dict(spec.env), dict(spec.labels))
    body = create_request(wanted)
    inspect = {
        "Config": {k: v for k, v in body.items() if k != "HostConfig"},
        "HostConfig": body["HostConfig"],
    }
    assert observed_view(inspect) == wanted_view(wanted)
    assert observed_view(inspect)["shm_size"] == 1610612736  # docker's 1.5g, not 0
    seen = ObservedContainer(
        id="c", name=spec.name, state="running", owned=True, deployment="web", replica=0,
        spec_hash=spec.spec_hash, secret_hash="", view=observed_view(inspect),
    )  # fmt: skip
    assert left_to_engine(spec, seen) == set()  # every field is the spec's here
    assert len({f.name for f in FIELDS}) == len(FIELDS)
