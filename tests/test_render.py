"""Renderer details read back through the real tools: awkward model paths, mounts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from compiler import api
from compiler.errors import FleetformError
from compiler.render.systemd import unit_name
from tests.helpers import (
    compose_config,
    compose_value,
    exec_time_word,
    option_values,
    split_docker_run,
    systemd_exec_start,
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
        "deployments.d/d.yaml:1:39: local_path: 'm.gguf' must be an absolute path on the host"
    )


def test_unicode_line_breaks_survive_compose(tmp_path: Path) -> None:
    make_repo(
        tmp_path,
        {
            "deployments.d/d.yaml": "- {name: d, backend: srv, local_path: /m,"
            ' env: {X: "a\\Nb\\Lc\\Pd"}}\n'
        },
    )
    api.compile_repo(tmp_path)
    config = compose_config(tmp_path / "output" / "h1" / "compose.yaml")
    assert compose_value(config["services"]["d-0"]["environment"]["X"]) == "a\x85b\u2028c\u2029d"
