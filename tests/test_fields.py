"""The schema's value types (compiler/fields.py): what each accepts and refuses.

Every accepted example is also compiled and read back by the real ``docker compose
config`` (and its unit by ``systemd-analyze verify``), so "accepted" means "compose and
systemd read it as written"; every refused one is a value that compose rejects, that
docker would read as an option, or that would mount or write another path than named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from compiler import api, model
from tests.helpers import compose_config, systemd_verify
from tests.helpers_repo import make_repo

ACCEPTED: dict[Any, list[str]] = {
    model.ImageRef: [
        "busybox",
        "busybox:1.36",
        "vllm/vllm-openai:v0.11.0",
        "ghcr.io/ggml-org/llama.cpp:server-cuda",
        "localhost:5000/team/model-server:v1",
        "registry.example.com:443/a/b/c:1.0-rc1",
        "[::1]:5000/srv:1",
        "srv@sha256:" + "a" * 64,
        "srv:1@sha256:" + "0123456789abcdef" * 4,
        "my__image",
        "a--b",
    ],
    model.LabelKey: ["team", "com.example.owner", "a/b", "Traefik.http_1", "x"],
    model.Size: ["10g", "512m", "1073741824", "1.5g", "64MiB", "2 GB", "100kb", "0"],
    model.PortSpec: [
        "80",
        "8080:80",
        "127.0.0.1:8080:80",
        "127.0.0.1::80",
        "[::1]:9000:90/udp",
        "9000-9001:80-81",
        "8000-8010:80",
        "53/udp",
        "5000/sctp",
    ],
    model.Volume: ["/data:/data", "/srv/cache:/root/.cache:ro", "/a:/b:rw,z", "/a b:/c d"],
    model.Device: [
        "/dev/kfd",
        "/dev/dri:/dev/dri",
        "/dev/nvidia0:/dev/nvidia0:rwm",
        "/dev/a:/dev/b:r",
    ],
    model.NetworkMode: ["host", "bridge", "none", "container:db", "inference-net"],
    model.HttpPath: ["/health", "/v1/models?x=1", "/"],
    model.ModelId: ["Qwen/Qwen2.5-7B-Instruct", "gpt2", "org_1/model.v2-gguf"],
    model.HostFolder: ["/models", "/srv/models/qwen", "/a b/c"],
    model.Address: ["192.0.2.1", "2001:db8::1", "gpu-a.example.com", "gpu-a"],
    model.SshTarget: ["root@gpu-a", "deploy@192.0.2.1:2222", "u.x-1@[2001:db8::1]:22"],
    model.DockerHost: [
        "unix:///var/run/docker.sock",
        "ssh://deploy@gpu-a",
        "ssh://gpu-a:2222",
        "tcp://192.0.2.1:2376",
    ],
    model.Name: ["vllm", "llama.cpp", "Text Embeddings Inference", "v0.11.0", "x"],
}

REFUSED: dict[Any, list[str]] = {
    # Values docker would read as options in `docker run … IMAGE`, or not an image.
    model.ImageRef: [
        "--privileged",
        "-v/:/host",
        "-it",
        "",
        "Busybox",
        "busy box",
        "srv:1:2",
        "srv:",
        "/srv",
        "srv/",
        "srv@sha256:abc",
        "a" * 256,
        "srv:" + "t" * 129,
    ],
    # '=' ends a key in `--label k=v`; compose never interpolates keys, so '$' would stay.
    model.LabelKey: ["a=b", "cost$center", "", "a b", "-x", "x.", "é", "a" * 256],
    model.Size: ["1.5.3g", "big", "-1g", "10gg", "g", "", "1e9", "١٠g"],
    model.PortSpec: [
        "0",
        "65536",
        "80:0",
        "-p80",
        "a:80",
        "1.2.3:80:80",
        "80/icmp",
        "9000-9002:80-81",
        "81-80",
        "::90",
        "٨٠",
    ],
    model.Volume: [
        "/:/host:x",
        "data:/data",
        "./data:/data",
        "~/data:/data",
        "/data",
        "/a/../b:/c",
        "/a:/",
        "/a:relative",
        "/a:/b:ro:z",
        "/a:/b:nocopy",
        "/a,b:/c",
        "-v/:/host",
    ],
    # '/dev/a:rw' is docker's short form, which compose reads as the container path 'rw'.
    model.Device: [
        "dev/kfd",
        "/",
        "/dev/a:rw",
        "/dev/a:/dev/b:rwx",
        "/dev/a:/dev/b:rw:x",
        "/dev/a:b",
        "--privileged",
    ],
    model.NetworkMode: ["--privileged", "host net", "service:db", "", "container:"],
    model.HttpPath: ["health", "/a b", "", "/\u00e9"],
    model.ModelId: ["../../etc", "/etc", "a/../b", "a/b/c", "a--b", ".hidden", "a.", "x" * 97],
    model.HostFolder: ["/", "models", "~/models", "/srv/../etc", "/srv/", "//srv", "/srv/./m"],
    model.Address: ["-oProxyCommand=x", "a b", "gpu_a", "", "-gpu"],
    model.SshTarget: [
        "gpu-a",
        "-oProxyCommand=touch x@gpu-a",
        "root@-oProxyCommand=x",
        "root@gpu-a:0",
        "root@gpu-a:ssh",
        "root@gpu-a:22:22",
        "root@[::1",
    ],
    model.DockerHost: [
        "ssh://-oProxyCommand=touch /tmp/x",
        "ssh://u@-x",
        "tcp://gpu-a",
        "unix://relative.sock",
        "http://gpu-a:2375",
        "gpu-a",
    ],
    model.Name: ["", " x", "x ", "a\tb"],
}


def _adapter(kind: Any) -> TypeAdapter[str]:
    return TypeAdapter(kind)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        pytest.param(k, v, id=f"{k.__metadata__[0].func.__name__}:{v}")
        for k in ACCEPTED
        for v in ACCEPTED[k]
    ],
)
def test_accepted(kind: Any, value: str) -> None:
    assert _adapter(kind).validate_python(value) == value


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        pytest.param(k, v, id=f"{k.__metadata__[0].func.__name__}:{v[:40]}")
        for k in REFUSED
        for v in REFUSED[k]
    ],
)
def test_refused(kind: Any, value: str) -> None:
    with pytest.raises(ValidationError):
        _adapter(kind).validate_python(value)


def test_messages_quote_long_values_cut_short() -> None:
    with pytest.raises(ValidationError) as caught:
        _adapter(model.ImageRef).validate_python("-" * 10_000)
    message = caught.value.errors()[0]["ctx"]["error"].args[0]
    assert message == (
        f"{'-' * 60!r}… (10000 characters) is not an image reference"
        " ([registry/]name[:tag][@digest], lowercase name, as docker reads it)"
    )


def _container_values() -> dict[str, Any]:
    return {
        "volumes": ACCEPTED[model.Volume],
        "devices": ACCEPTED[model.Device],
        "ports": ACCEPTED[model.PortSpec],
    }


@pytest.mark.parametrize("network_mode", ACCEPTED[model.NetworkMode])
def test_accepted_values_are_read_back_by_compose(tmp_path: Path, network_mode: str) -> None:
    """Every accepted volume, device and port, and each network mode, in one service:
    compose accepts the file and reads each value as written."""
    import yaml

    values = _container_values()
    deployment = {
        "name": "d",
        "backend": "srv",
        "local_path": "/models/m",
        "network_mode": network_mode,
        "shm_size": "1.5g",
        **values,
    }
    make_repo(tmp_path, {"deployments.d/d.yaml": yaml.safe_dump(deployment)})
    api.compile_repo(tmp_path)
    config = compose_config(tmp_path / "output/h1/compose.yaml")
    service = config["services"]["d-0"]
    binds = [(v["source"], v["target"]) for v in service["volumes"] if v["type"] == "bind"]
    for volume in values["volumes"]:
        source, target = volume.split(":")[:2]
        assert (source, target) in binds
    assert service["devices"] == [
        {"source": "/dev/kfd", "target": "/dev/kfd", "permissions": "rwm"},
        {"source": "/dev/dri", "target": "/dev/dri", "permissions": "rwm"},
        {"source": "/dev/nvidia0", "target": "/dev/nvidia0", "permissions": "rwm"},
        {"source": "/dev/a", "target": "/dev/b", "permissions": "r"},
    ]
    published = [
        (p.get("host_ip"), p.get("published"), p["target"], p["protocol"]) for p in service["ports"]
    ]
    assert published == [
        (None, None, 80, "tcp"),
        (None, "8080", 80, "tcp"),
        ("127.0.0.1", "8080", 80, "tcp"),
        ("127.0.0.1", None, 80, "tcp"),
        ("::1", "9000", 90, "udp"),
        (None, "9000", 80, "tcp"),
        (None, "9001", 81, "tcp"),
        (None, "8000-8010", 80, "tcp"),
        (None, None, 53, "udp"),
        (None, None, 5000, "sctp"),
    ]
    assert service["network_mode"] == network_mode
    assert service["shm_size"] == str(int(1.5 * 1024**3))


def test_accepted_values_pass_systemd_verify(tmp_path: Path) -> None:
    import yaml

    deployment = {"name": "d", "backend": "srv", "local_path": "/models/m", **_container_values()}
    make_repo(
        tmp_path,
        {
            "deployments.d/d.yaml": yaml.safe_dump(deployment),
            "hosts.d/h.yaml": "name: h1\naddress: 10.9.0.1\ntarget: systemd\n"
            "gpus: {framework: cuda, count: 4}\n",
        },
    )
    api.compile_repo(tmp_path)
    units = sorted((tmp_path / "output/h1/systemd").glob("*.service"))
    assert units
    assert systemd_verify(units) == []


def test_every_accepted_size_is_the_bytes_compose_reads(tmp_path: Path) -> None:
    """fields.size_in_bytes — what plan compares and apply sends as ShmSize — is the
    number compose (go-units RAMInBytes) makes of each accepted size; none becomes 0."""
    import yaml

    from compiler.fields import size_in_bytes

    sizes = ACCEPTED[model.Size]
    services = {f"s{i}": {"image": "busybox", "shm_size": size} for i, size in enumerate(sizes)}
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump({"services": services}), encoding="utf-8")
    config = compose_config(path)
    services = config["services"]
    # compose leaves a size of 0 out: the default.
    read = {size: int(services[f"s{i}"].get("shm_size", 0)) for i, size in enumerate(sizes)}
    assert {size: size_in_bytes(size) for size in sizes} == read
    assert size_in_bytes("1.5g") == 1610612736 and size_in_bytes("2 GB") == 2 * 1024**3
    for bad in REFUSED[model.Size]:
        with pytest.raises(ValueError):
            size_in_bytes(bad)


def test_every_accepted_port_is_bound_as_compose_binds_it(tmp_path: Path) -> None:
    """The create request's exposed ports and bindings (read by the docker SDK's own
    parser) say what compose makes of each accepted port: one binding per port of a
    range, a host range for one container port, an IPv6 address without brackets."""
    import yaml

    from compiler.targets.compose.fields import published_ports

    specs = ACCEPTED[model.PortSpec]
    path = tmp_path / "compose.yaml"
    path.write_text(
        yaml.safe_dump({"services": {"s": {"image": "busybox", "ports": specs}}}),
        encoding="utf-8",
    )
    by_compose = sorted(
        (f"{p['target']}/{p['protocol']}", p.get("host_ip") or "", p.get("published") or "")
        for p in compose_config(path)["services"]["s"]["ports"]
    )
    exposed, bindings = published_ports(tuple(specs))
    by_apply = sorted(
        (key, b["HostIp"], b["HostPort"]) for key, found in bindings.items() for b in found
    )
    assert by_apply == by_compose
    assert set(exposed) == set(bindings) == {e[0] for e in by_compose}
    assert ("90/udp", "::1", "9000") in by_apply and ("80/tcp", "", "8000-8010") in by_apply
