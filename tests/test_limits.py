"""The bounds on what one repository may ask for, each a one-line error naming it.

Without them a few lines of YAML ask for gigabytes (a million GPUs to place), or
compile into a container that no kernel or systemd would start.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler import api
from compiler.errors import FleetformError
from compiler.resolve import MAX_ARGUMENT_BYTES, MAX_CONTAINER_BYTES, MAX_FLEET_GPUS

CPU_BACKEND = """\
backend_name: srv
default_run_command: serve {{model_path}} --port {{port}}
version_configs:
  v1: {image_name: "example/srv:1", custom_framework: cpu}
"""


def _error(tmp_path: Path, files: dict[str, str]) -> str:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    with pytest.raises(FleetformError) as caught:
        api.build(tmp_path)
    return str(caught.value)


def test_a_host_has_at_most_1024_gpus(tmp_path: Path) -> None:
    host = (
        "name: h1\naddress: 10.9.0.1\n"
        "gpus: [{framework: cuda, count: 1000}, {index: 5000, framework: rocm},"
        " {framework: cuda, count: 24}]\n"
    )
    assert _error(tmp_path, {"hosts.d/h.yaml": host, "backends.d/b.yaml": CPU_BACKEND}) == (
        "hosts.d/h.yaml:3:7: gpus: 1025 GPUs; a host has at most 1024"
    )


def test_a_fleet_has_at_most_262144_gpus(tmp_path: Path) -> None:
    hosts = "".join(
        f"- {{name: h{i}, address: 10.9.0.1, gpus: {{framework: cuda, count: 1024}}}}\n"
        for i in range(MAX_FLEET_GPUS // 1024 + 1)
    )
    line = MAX_FLEET_GPUS // 1024 + 1
    assert _error(tmp_path, {"hosts.d/h.yaml": hosts, "backends.d/b.yaml": CPU_BACKEND}) == (
        f"hosts.d/h.yaml:{line}:41: gpus: the fleet has more than {MAX_FLEET_GPUS} GPUs in all"
    )


def test_a_fleet_has_at_most_100000_replicas(tmp_path: Path) -> None:
    deployments = "".join(
        f"- {{name: d{i:03}, backend: srv, local_path: /m, replicas: 1000}}\n" for i in range(101)
    )
    message = _error(
        tmp_path,
        {
            "backends.d/b.yaml": CPU_BACKEND,
            "hosts.d/h.yaml": "name: h1\naddress: 10.9.0.1\n",
            "deployments.d/d.yaml": deployments,
        },
    )
    assert message == (
        "deployments.d/d.yaml:101:56: replicas: the fleet has more than 100000 replicas in all"
    )


def test_an_argument_over_max_arg_strlen(tmp_path: Path) -> None:
    """Each value fits the loader's limit and the substitution's (in characters); the
    command joins them into one argument of more bytes than the kernel takes."""
    half = "\u00e9" * 40_000  # 80,000 bytes
    deployment = (
        f"name: d\nbackend: srv\nlocal_path: /m\nenv: {{A: {half}}}\n"
        'backend_parameters: ["--x={{A}}{{A}}"]\n'
    )
    message = _error(
        tmp_path,
        {
            "backends.d/b.yaml": CPU_BACKEND,
            "hosts.d/h.yaml": "name: h1\naddress: 10.9.0.1\n",
            "deployments.d/d.yaml": deployment,
        },
    )
    size = 2 * len(half.encode()) + len("--x=")
    assert message == (
        f"deployments.d/d.yaml:5:21: backend_parameters: an argument of {size} bytes;"
        f" the limit is {MAX_ARGUMENT_BYTES} (Linux's MAX_ARG_STRLEN)"
    )


def test_a_container_over_its_total_size(tmp_path: Path) -> None:
    value = "y" * 100_000
    env = "".join(f"  A{i}: {value}\n" for i in range(3))
    message = _error(
        tmp_path,
        {
            "backends.d/b.yaml": CPU_BACKEND,
            "hosts.d/h.yaml": "name: h1\naddress: 10.9.0.1\n",
            "deployments.d/d.yaml": f"name: d\nbackend: srv\nlocal_path: /m\nenv:\n{env}",
        },
    )
    assert message.startswith("deployments.d/d.yaml:1:7: name: the container's arguments,")
    assert message.endswith(f"bytes; the limit is {MAX_CONTAINER_BYTES}")


def test_the_largest_container_still_fits_systemd(tmp_path: Path) -> None:
    """Just under the cap, in the characters quoting makes longest (a noncharacter's 3
    bytes become 12 characters of escapes): real systemd reads the argv back whole."""
    from tests.helpers import systemd_exec_start

    value = "\ufdd0" * 31_000  # 93,000 bytes a variable, two of them
    deployment = "name: d\nbackend: srv\nlocal_path: /m\nenv:\n" + "".join(
        f"  A{i}: {value}\n" for i in range(2)
    )
    for relative, text in {
        "backends.d/b.yaml": CPU_BACKEND,
        "hosts.d/h.yaml": "name: h1\naddress: 10.9.0.1\ntarget: systemd\n",
        "deployments.d/d.yaml": deployment,
    }.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text, encoding="utf-8")
    api.compile_repo(tmp_path)
    (unit,) = (tmp_path / "output/h1/systemd").glob("*.service")
    text = unit.read_text(encoding="utf-8")
    assert len(max(text.split(" \\\n"), key=len)) > 4 * 93_000
    argv = systemd_exec_start(unit.name, text)
    assert [word for word in argv if word.startswith("A")] == [f"A0={value}", f"A1={value}"]
