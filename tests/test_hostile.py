"""A catalogue of hostile repositories (issue 9), each pinned to its outcome.

A pull request's content reaches ``compile`` in CI. For every repository here the
contract holds: exit 0 with artifacts that compose and systemd read back exactly as
intended, or exit 1 with one line per problem ``file:line:col: key.path: message``,
nothing on stdout and ``output/`` byte for byte untouched; never exit 3, a traceback,
more than 20 s or 2 GB, a change outside the repository or a mixed ``output/``.

Every scenario starts from a small valid repository (two hosts, compose and systemd,
a deployment on each), compiled first so that ``output/`` exists, then writes its
files (text, raw bytes, a symlink, a folder, or a deletion) and compiles again.

What is pinned where:

- in this file, per scenario: the expected exit code, and for a failure the position
  and key path of each error line (``file:line:col: key.path``), decided exactly; for a
  success, a check of the artifacts (the value reaches the container intact).
- in ``tests/hostile/expected.json``, per scenario: the full error lines, message
  text included. They are refreshed from the compiler's actual output with
  ``python3 -m pytest tests/test_hostile.py --update-hostile`` (then review the diff of
  that file and commit it). A refresh never changes exit codes or positions.

Whatever the pins say, the contract itself (exit 0/1 only, no traceback, error-line
shape, ``output/`` untouched on failure, a sentinel folder beside the repository
untouched, time and memory) is checked for every scenario: each compile runs in a
child process (a fork of this one, or ``python -m compiler.cli`` for the scenarios in
``SUBPROCESS``) with ``RLIMIT_AS`` at 2 GB and a 20 s timeout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hostile_repos import (
    ERROR_LINE,
    Content,
    Link,
    Run,
    contract_violations,
    make_outside,
    run_forked,
    run_subprocess,
    state_diff,
    tree_state,
    write_files,
)

from compiler.cli import cli
from compiler.render.index import INDEX_SCHEMA

EXPECTED_FILE = Path(__file__).parent / "hostile" / "expected.json"

# --- the valid base repository -----------------------------------------------------------

SETTINGS = """\
project: fleet
output_dir: output
label_prefix: io.fleetform
"""

BACKEND = """\
backend_name: vllm
default_version: v1
default_run_command: vllm serve {{model_path}} --port {{port}}
version_configs:
  v1:
    image_name: vllm/vllm-openai:v1
    custom_framework: cuda
"""

HOST = """\
name: gpu-a
address: 192.0.2.11
docker_host: ssh://deploy@192.0.2.11
labels: {gpu: h100}
gpus: {framework: cuda, count: 4}
port_range: 40000-40009
"""

SYSTEMD_HOST = """\
name: gpu-s
address: 192.0.2.12
target: systemd
ssh: root@192.0.2.12
labels: {gpu: l4}
gpus: {framework: cuda, count: 2}
port_range: 41000-41009
"""

DEPLOYMENT = """\
name: chat
backend: vllm
local_path: /models/qwen
port: 8000
worker_selector: {gpu: h100}
"""

UNIT_DEPLOYMENT = """\
name: unit
backend: vllm
huggingface_repo_id: mistralai/Mistral-7B
port: 8001
worker_selector: {gpu: l4}
"""

F = "fleetform.yaml"
B = "backends.d/vllm.yaml"
H = "hosts.d/gpu-a.yaml"
S = "hosts.d/gpu-s.yaml"
D = "deployments.d/chat.yaml"
U = "deployments.d/unit.yaml"

BASE: dict[str, Content] = {
    F: SETTINGS,
    B: BACKEND,
    H: HOST,
    S: SYSTEMD_HOST,
    D: DEPLOYMENT,
    U: UNIT_DEPLOYMENT,
}

COMPOSE = "output/gpu-a/compose.yaml"
UNIT_FILE = "output/gpu-s/systemd/fleet-unit-0.service"


# --- scenarios ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A hostile change to the base repository and its pinned outcome.

    ``where`` holds, for a failure, the ``file:line:col: key.path`` of each error line
    (in order); ``check`` inspects a success's repository (its ``output/``).
    """

    id: str
    files: Mapping[str, Content]
    exit: int
    where: tuple[str, ...] = ()
    check: Callable[[Path], None] | None = field(default=None, compare=False)
    args: tuple[str, ...] = ("compile",)


def bad(id: str, files: Mapping[str, Content], *where: str) -> Scenario:
    assert where, id
    return Scenario(id, files, 1, where)


def good(
    id: str, files: Mapping[str, Content], check: Callable[[Path], None] | None = None
) -> Scenario:
    return Scenario(id, files, 0, (), check)


def at(file: str, line: int, col: int, key: str = "") -> str:
    return f"{file}:{line}:{col}: {key}" if key else f"{file}:{line}:{col}"


def dep(extra: str) -> dict[str, Content]:
    """The compose host's deployment with ``extra`` lines appended (from line 6)."""
    return {D: DEPLOYMENT + extra}


def unit(extra: str) -> dict[str, Content]:
    """The systemd host's deployment with ``extra`` lines appended (from line 6)."""
    return {U: UNIT_DEPLOYMENT + extra}


def q(value: str) -> str:
    """``value`` as a YAML double-quoted scalar: JSON, but for the characters YAML
    reads as line breaks, escaped YAML's way (and no surrogate pairs)."""
    text = json.dumps(value, ensure_ascii=False)
    return text.replace("\x85", "\\N").replace("\u2028", "\\L").replace("\u2029", "\\P")


def key_value(key: str, value: str, *, base: str = "", line: int = 6) -> tuple[str, str]:
    """(``key: "value"`` line, position of the value) for a line appended to a deployment."""
    return f"{key}: {q(value)}\n", f"{line}:{len(key) + 3}"


# --- artifact readers (for successes) ------------------------------------------------


def _assert_model_mount(repo: Path, path: str) -> None:
    service = compose_doc(repo)["services"]["chat-0"]
    mounts = [v for v in service["volumes"] if isinstance(v, dict)]
    assert mounts == [{"type": "bind", "source": path, "target": path, "read_only": True}]


def compose_doc(repo: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((repo / COMPOSE).read_text(encoding="utf-8"))
    return document


def undollar(value: Any) -> Any:
    """A compose value as the container gets it (every ``$$`` is one ``$``)."""
    if isinstance(value, str):
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [undollar(item) for item in value]
    if isinstance(value, dict):
        return {undollar(k): undollar(v) for k, v in value.items()}
    return value


def service(repo: Path, name: str = "chat-0") -> dict[str, Any]:
    found: dict[str, Any] = undollar(compose_doc(repo)["services"][name])
    return found


def unit_text(repo: Path, path: str = UNIT_FILE) -> str:
    return (repo / path).read_text(encoding="utf-8")


def unit_argv(repo: Path, path: str = UNIT_FILE) -> list[str]:
    """The docker argv of a unit as real systemd parses it (and exec time expands it)."""
    from helpers import exec_time_word, systemd_exec_start

    words = systemd_exec_start(Path(path).name, unit_text(repo, path))
    return [exec_time_word(word) for word in words]


def env_is(name: str, value: str) -> Callable[[Path], None]:
    def check(repo: Path) -> None:
        assert service(repo)["environment"][name] == value

    return check


def unit_env_is(name: str, value: str) -> Callable[[Path], None]:
    def check(repo: Path) -> None:
        argv = unit_argv(repo)
        pairs = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--env"]
        assert f"{name}={value}" in pairs, pairs

    return check


def command_is(*argv: str) -> Callable[[Path], None]:
    def check(repo: Path) -> None:
        assert service(repo)["command"] == list(argv)

    return check


def output_like_base(repo: Path) -> None:
    """The compile ignored what it should ignore: output/ is what the base compiles to."""
    assert tree_state(repo / "output") == BASE_OUTPUT[0], state_diff(
        BASE_OUTPUT[0], tree_state(repo / "output")
    )


BASE_OUTPUT: list[dict[str, tuple[str, object]]] = []  # filled by the base fixture
LAST_STDOUT: list[str] = [""]  # the stdout of the scenario being checked


def explain(id: str, files: Mapping[str, Content], *forged: str) -> Scenario:
    """``explain chat`` on a value that tries to forge output: exit 0, no line of the
    output starts with any of ``forged``, and no raw control character is printed."""

    def check(repo: Path) -> None:
        stdout = LAST_STDOUT[0]
        assert stdout.startswith("deployment chat\n"), stdout[:300]
        lines = stdout.split("\n")
        for line in lines:
            assert not any(line.lstrip().startswith(text) for text in forged), line
        raw = [c for c in stdout if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F]
        bidi = [c for c in stdout if c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"]
        assert not raw and not bidi, (raw, bidi)
        assert "\u2028" not in stdout and "\u2029" not in stdout

    return Scenario(id, files, 0, (), check, args=("explain", "chat"))


def kept(path: str) -> Callable[[Path], None]:
    """A file compile did not write is still there, unchanged."""

    def check(repo: Path) -> None:
        assert (repo / path).read_text(encoding="utf-8") == USER_FILE

    return check


USER_FILE = "# written by a person, not by fleetform\n"


# 41 env values, each twice the one before: 2**40 copies of "x" once expanded.
DOUBLING = "env:\n  V0: x\n" + "".join(
    f"  V{i}: '{{{{V{i - 1}}}}}{{{{V{i - 1}}}}}'\n" for i in range(1, 41)
)
# A chain of env references, each one deeper than the last.
DEEP_ENV = "env:\n  E0: x\n" + "".join(f"  E{i}: 'a{{{{E{i - 1}}}}}'\n" for i in range(1, 1001))


def extends_chain(depth: int) -> dict[str, Content]:
    docs = [f"name: t{i}\nabstract: true\nextends: t{i + 1}\n" for i in range(depth)]
    docs.append(f"name: t{depth}\nabstract: true\nport: 8000\n")
    return {
        "deployments.d/chain.yaml": "---\n".join(docs),
        D: DEPLOYMENT.replace("port: 8000\n", "extends: t0\n"),
    }


def backend_chain(depth: int) -> dict[str, Content]:
    docs = [f"backend_name: b{i}\nextends: b{i + 1}\n" for i in range(depth)]
    docs.append(f"backend_name: b{depth}\nextends: vllm\n")
    return {
        "backends.d/chain.yaml": "---\n".join(docs),
        D: DEPLOYMENT.replace("backend: vllm", "backend: b0"),
    }


def extends_diamond(levels: int, width: int = 2) -> dict[str, Content]:
    """Templates in ``levels`` rows of ``width``; each extends every one of the row below."""
    docs = []
    for level in range(levels):
        for i in range(width):
            parents = [f"l{level + 1}-{j}" for j in range(width)] if level < levels - 1 else []
            extends = f"extends: [{', '.join(parents)}]\n" if parents else "port: 8000\n"
            docs.append(f"name: l{level}-{i}\nabstract: true\n{extends}")
    return {
        "deployments.d/diamond.yaml": "---\n".join(docs),
        D: DEPLOYMENT.replace("port: 8000\n", "extends: l0-0\n"),
    }


def alias_fanout(items: int, keys: int) -> str:
    """One anchor of ``keys`` env entries, aliased by ``items`` deployments."""
    env = "".join(f"    K{i}: v\n" for i in range(keys))
    first = f"- name: d0\n  backend: vllm\n  local_path: /m/0\n  replicas: 0\n  env: &big\n{env}"
    rest = "".join(
        f"- {{name: d{i}, backend: vllm, local_path: /m/{i}, replicas: 0, env: *big}}\n"
        for i in range(1, items)
    )
    return first + rest


def many_params(count: int, size: int) -> str:
    params = "".join(f"  - --p{i}={'x' * size}\n" for i in range(count))
    return f"backend_parameters:\n{params}"


INDEX_ENTRY = (
    '{{"schema": {schema}, "project": "fleet", "host": {host}, "workloads":'
    ' [{{"deployment": "chat", "replica": 0, "gpus": {gpus}, "port": {port}}}]}}\n'
)


def unit_index(**overrides: str) -> dict[str, Content]:
    """``output/gpu-s/index.json`` as compile writes it, one workload's fields replaced:
    an index lists artifacts, and a hand-edited one may name any path."""
    workload = {
        "name": "gone-0",
        "deployment": "gone",
        "replica": 0,
        "spec_hash": "0000000000000000",
        "container": "fleet-gone-0",
        "artifact": "systemd/fleet-gone-0.service",
        "image": "vllm/vllm-openai:v1",
        "framework": "cuda",
        "gpus": [1],
        "port": 41001,
    }
    document = {
        "schema": INDEX_SCHEMA,
        "project": "fleet",
        "host": "gpu-s",
        "target": "systemd",
        "address": "192.0.2.12",
        "workloads": [workload],
    }
    for key, value in overrides.items():
        (document if key == "host" else workload)[key] = value
    return {"output/gpu-s/index.json": json.dumps(document, indent=2) + "\n"}


def index_of_gpu_a(**overrides: str) -> dict[str, Content]:
    """A hand-edited ``output/gpu-a/index.json`` (placement reads it as the prior)."""
    fields = {"schema": json.dumps(INDEX_SCHEMA), "host": '"gpu-a"', "gpus": "[]", "port": "8000"}
    fields.update(overrides)
    return {"output/gpu-a/index.json": INDEX_ENTRY.format(**fields)}


SCENARIOS: list[Scenario] = [
    # === argument injection: values that would become options of docker, ssh, systemd ===
    bad(
        "image-name-privileged-option",
        unit("image_name: --privileged\n"),
        at(U, 6, 13, "image_name"),
    ),
    bad(
        "image-name-volume-option",
        unit('image_name: "-v/:/host"\n'),
        at(U, 6, 13, "image_name"),
    ),
    bad(
        "image-name-option-in-backend-version",
        {B: BACKEND.replace("image_name: vllm/vllm-openai:v1", "image_name: --privileged")},
        at(B, 6, 17, "version_configs.v1.image_name"),
    ),
    bad(
        "image-name-with-space-and-option",
        unit('image_name: "vllm/vllm-openai:v1 --privileged"\n'),
        at(U, 6, 13, "image_name"),
    ),
    # GPUStack reads "" as not set: the backend's image, as if the key were absent.
    good("image-name-empty-falls-back", unit('image_name: ""\n'), output_like_base),
    bad("image-name-uppercase", unit("image_name: Vllm/OpenAI:v1\n"), at(U, 6, 13, "image_name")),
    bad(
        "image-name-newline",
        unit('image_name: "vllm/vllm-openai:v1\\n--privileged"\n'),
        at(U, 6, 13, "image_name"),
    ),
    bad(
        "image-name-bad-digest",
        unit('image_name: "vllm/vllm-openai@sha256:xyz"\n'),
        at(U, 6, 13, "image_name"),
    ),
    bad(
        "image-name-tag-with-slash",
        unit('image_name: "vllm:v1/../../x"\n'),
        at(U, 6, 13, "image_name"),
    ),
    bad(
        "image-name-compose-interpolation",
        dep('image_name: "${IMAGE:-busybox}"\n'),
        at(D, 6, 13, "image_name"),
    ),
    bad(
        "label-key-with-equals-impersonates-ownership",
        unit('labels: {"io.fleetform.managed-by=someone-else,x": "y"}\n'),
        at(U, 6, 10, "labels.io.fleetform.managed-by=someone-else,x"),
    ),
    bad(
        "label-key-with-equals",
        unit('labels: {"team=ops": "x"}\n'),
        at(U, 6, 10, "labels.team=ops"),
    ),
    bad(
        "label-key-reserved-prefix",
        dep("labels: {io.fleetform.managed-by: someone-else}\n"),
        at(D, 6, 10, "labels.io.fleetform.managed-by"),
    ),
    bad(
        "label-key-reserved-spec-hash",
        unit("labels:\n  io.fleetform.spec-hash: '0000000000000000'\n"),
        at(U, 7, 3, "labels.io.fleetform.spec-hash"),
    ),
    bad("label-key-empty", dep('labels: {"": x}\n'), at(D, 6, 10, "labels.")),
    bad(
        "label-key-dollar", dep('labels: {"cost$center": x}\n'), at(D, 6, 10, "labels.cost$center")
    ),
    bad(
        "label-key-option",
        unit('labels: {"--privileged": x}\n'),
        at(U, 6, 10, "labels.--privileged"),
    ),
    bad(
        "label-key-newline",
        dep('labels: {"a\\nb": x}\n'),
        at(D, 6, 10, "labels"),  # a key path never shows a raw line break
    ),
    bad("label-key-space", dep('labels: {"a b": x}\n'), at(D, 6, 10, "labels.a b")),
    bad("label-value-nul", dep('labels: {team: "a\\0b"}\n'), at(D, 6, 16, "labels.team")),
    bad(
        "env-name-option",
        unit('env: {"--privileged": x}\n'),
        at(U, 6, 7, "env.--privileged"),
    ),
    bad("env-name-with-equals", unit('env: {"A=B": x}\n'), at(U, 6, 7, "env.A=B")),
    bad(
        "network-mode-option",
        unit("network_mode: --privileged\n"),
        at(U, 6, 15, "network_mode"),
    ),
    bad(
        "network-mode-with-space",
        unit('network_mode: "host --privileged"\n'),
        at(U, 6, 15, "network_mode"),
    ),
    bad("network-mode-empty", dep('network_mode: ""\n'), at(D, 6, 15, "network_mode")),
    bad(
        "network-mode-default-option",
        {F: SETTINGS + "defaults:\n  network_mode: --privileged\n"},
        at(F, 5, 17, "defaults.network_mode"),
    ),
    bad("volume-option", unit("volumes: [--privileged]\n"), at(U, 6, 11, "volumes[0]")),
    bad("volume-root-of-host-option", unit('volumes: ["-v/:/host"]\n'), at(U, 6, 11, "volumes[0]")),
    bad("volume-four-fields", dep("volumes: ['/a:/b:ro:z']\n"), at(D, 6, 11, "volumes[0]")),
    bad("volume-relative-target", dep("volumes: ['/a:b']\n"), at(D, 6, 11, "volumes[0]")),
    bad("volume-empty", dep("volumes: ['']\n"), at(D, 6, 11, "volumes[0]")),
    bad("volume-bad-mode", dep("volumes: ['/a:/b:rwx']\n"), at(D, 6, 11, "volumes[0]")),
    bad(
        "volume-over-model-mount",
        dep("volumes: ['/tmp/evil:/models']\n"),
        at(D, 6, 11, "volumes[0]"),
    ),
    bad(
        "volume-second-entry-bad",
        dep("volumes:\n  - /data:/data:ro\n  - --privileged\n"),
        at(D, 8, 5, "volumes[1]"),
    ),
    bad("device-option", unit("devices: [--privileged]\n"), at(U, 6, 11, "devices[0]")),
    bad("device-relative", dep("devices: [dev/nvidia0]\n"), at(D, 6, 11, "devices[0]")),
    bad(
        "device-bad-permissions",
        dep("devices: ['/dev/nvidia0:/dev/nvidia0:rwmx']\n"),
        at(D, 6, 11, "devices[0]"),
    ),
    bad("device-empty", dep("devices: ['']\n"), at(D, 6, 11, "devices[0]")),
    bad("port-mapping-option", unit("ports: [--privileged]\n"), at(U, 6, 9, "ports[0]")),
    bad("port-mapping-text", dep("ports: [abc]\n"), at(D, 6, 9, "ports[0]")),
    bad("port-mapping-out-of-range", dep("ports: ['70000:80']\n"), at(D, 6, 9, "ports[0]")),
    bad("port-mapping-bad-protocol", dep("ports: ['8080:80/xyz']\n"), at(D, 6, 9, "ports[0]")),
    bad("port-mapping-empty", dep("ports: ['']\n"), at(D, 6, 9, "ports[0]")),
    bad("shm-size-option", unit("shm_size: --privileged\n"), at(U, 6, 11, "shm_size")),
    bad("shm-size-text", dep("shm_size: lots\n"), at(D, 6, 11, "shm_size")),
    bad("shm-size-negative", dep("shm_size: -1g\n"), at(D, 6, 11, "shm_size")),
    bad("shm-size-bad-unit", dep("shm_size: 10q\n"), at(D, 6, 11, "shm_size")),
    bad("shm-size-empty", dep('shm_size: ""\n'), at(D, 6, 11, "shm_size")),
    bad(
        "shm-size-default-invalid",
        {F: SETTINGS + "defaults:\n  shm_size: huge\n"},
        at(F, 5, 13, "defaults.shm_size"),
    ),
    bad(
        "docker-host-ssh-proxycommand",
        {H: HOST.replace("ssh://deploy@192.0.2.11", "'ssh://-oProxyCommand=touch /tmp/pwned'")},
        at(H, 3, 14, "docker_host"),
    ),
    bad(
        "docker-host-ssh-user-option",
        {H: HOST.replace("ssh://deploy@192.0.2.11", "'ssh://-oProxyCommand=x@192.0.2.11'")},
        at(H, 3, 14, "docker_host"),
    ),
    bad(
        "docker-host-ssh-host-option",
        {H: HOST.replace("ssh://deploy@192.0.2.11", "'ssh://deploy@-oProxyCommand=x'")},
        at(H, 3, 14, "docker_host"),
    ),
    bad(
        "docker-host-ssh-no-host",
        {H: HOST.replace("ssh://deploy@192.0.2.11", "'ssh://'")},
        at(H, 3, 14, "docker_host"),
    ),
    bad(
        "docker-host-ssh-bad-port",
        {H: HOST.replace("ssh://deploy@192.0.2.11", "'ssh://deploy@192.0.2.11:99999'")},
        at(H, 3, 14, "docker_host"),
    ),
    bad(
        "docker-host-ssh-space",
        {H: HOST.replace("ssh://deploy@192.0.2.11", "'ssh://deploy@192.0.2.11 -v'")},
        at(H, 3, 14, "docker_host"),
    ),
    bad(
        "docker-host-tcp-no-host",
        {H: HOST.replace("ssh://deploy@192.0.2.11", "'tcp://'")},
        at(H, 3, 14, "docker_host"),
    ),
    bad(
        "docker-host-unix-relative",
        {H: HOST.replace("ssh://deploy@192.0.2.11", "'unix://docker.sock'")},
        at(H, 3, 14, "docker_host"),
    ),
    bad(
        "docker-host-newline",
        {H: HOST.replace("ssh://deploy@192.0.2.11", '"ssh://deploy@192.0.2.11\\n-v"')},
        at(H, 3, 14, "docker_host"),
    ),
    bad(
        "ssh-proxycommand",
        {S: SYSTEMD_HOST.replace("ssh: root@192.0.2.12", "ssh: '-oProxyCommand=touch /tmp/x'")},
        at(S, 4, 6, "ssh"),
    ),
    bad(
        "ssh-host-is-option",
        {S: SYSTEMD_HOST.replace("ssh: root@192.0.2.12", "ssh: 'root@-oProxyCommand=x'")},
        at(S, 4, 6, "ssh"),
    ),
    bad(
        "ssh-user-is-option",
        {S: SYSTEMD_HOST.replace("ssh: root@192.0.2.12", "ssh: '-lroot@192.0.2.12'")},
        at(S, 4, 6, "ssh"),
    ),
    bad(
        "ssh-port-out-of-range",
        {S: SYSTEMD_HOST.replace("ssh: root@192.0.2.12", "ssh: 'root@192.0.2.12:70000'")},
        at(S, 4, 6, "ssh"),
    ),
    bad(
        "ssh-with-space",
        {S: SYSTEMD_HOST.replace("ssh: root@192.0.2.12", "ssh: 'root@192.0.2.12 -v'")},
        at(S, 4, 6, "ssh"),
    ),
    bad(
        "ssh-empty",
        {S: SYSTEMD_HOST.replace("ssh: root@192.0.2.12", "ssh: ''")},
        at(S, 4, 6, "ssh"),
    ),
    bad(
        "address-option",
        {S: SYSTEMD_HOST.replace("address: 192.0.2.12", "address: -oProxyCommand=x")},
        at(S, 2, 10, "address"),
    ),
    bad(
        "address-with-space",
        {H: HOST.replace("address: 192.0.2.11", "address: '192.0.2.11 --privileged'")},
        at(H, 2, 10, "address"),
    ),
    bad(
        "address-empty",
        {H: HOST.replace("address: 192.0.2.11", "address: ''")},
        at(H, 2, 10, "address"),
    ),
    bad(
        "address-shell-text",
        {H: HOST.replace("address: 192.0.2.11", "address: '$(touch /tmp/x)'")},
        at(H, 2, 10, "address"),
    ),
    bad(
        "unit-dir-relative",
        {S: SYSTEMD_HOST + "unit_dir: ../../etc/systemd/system\n"},
        at(S, 8, 11, "unit_dir"),
    ),
    bad("unit-dir-option", {S: SYSTEMD_HOST + "unit_dir: --help\n"}, at(S, 8, 11, "unit_dir")),
    bad(
        "unit-dir-dotdot",
        {S: SYSTEMD_HOST + "unit_dir: /etc/systemd/../../root/.ssh\n"},
        at(S, 8, 11, "unit_dir"),
    ),
    bad(
        "unit-dir-default-relative",
        {F: SETTINGS + "defaults:\n  unit_dir: units\n"},
        at(F, 5, 13, "defaults.unit_dir"),
    ),
    bad(
        "model-dir-relative",
        {S: SYSTEMD_HOST + "model_dir: models\n"},
        at(S, 8, 12, "model_dir"),
    ),
    bad("model-dir-home", {S: SYSTEMD_HOST + "model_dir: ~/models\n"}, at(S, 8, 12, "model_dir")),
    bad(
        "model-dir-dotdot",
        {S: SYSTEMD_HOST + "model_dir: /srv/../etc\n"},
        at(S, 8, 12, "model_dir"),
    ),
    bad(
        "model-dir-default-relative",
        {F: SETTINGS + "defaults:\n  model_dir: models\n"},
        at(F, 5, 14, "defaults.model_dir"),
    ),
    bad("model-dir-option", {S: SYSTEMD_HOST + "model_dir: -v\n"}, at(S, 8, 12, "model_dir")),
    bad(
        "project-too-long-for-container-names",
        {F: SETTINGS.replace("project: fleet", "project: " + "p" * 64)},
        at(F, 1, 10, "project"),
    ),
    bad(
        "label-prefix-impersonates-docker",
        {F: SETTINGS.replace("label_prefix: io.fleetform", "label_prefix: com.docker.compose")},
        at(F, 3, 15, "label_prefix"),
    ),
    # === writes and deletes outside the repository ===================================
    bad(
        "symlink-systemd-folder-out-of-repo",
        {"output/gpu-s/systemd": Link("{outside}/systemd")},
        at(F, 2, 13, "output_dir"),
    ),
    bad(
        "symlink-host-folder-out-of-repo",
        {"output/gpu-a": Link("{outside}/host")},
        at(F, 2, 13, "output_dir"),
    ),
    bad(
        "symlink-output-folder-out-of-repo",
        {"output": Link("{outside}")},
        at(F, 2, 13, "output_dir"),
    ),
    bad(
        "symlink-output-folder-inside-repo",
        {"elsewhere/keep.txt": "mine\n", "output": Link("elsewhere")},
        at(F, 2, 13, "output_dir"),
    ),
    bad(
        "symlink-compose-file-out-of-repo",
        {COMPOSE: Link("{outside}/host/compose.yaml"), D: DEPLOYMENT + "env: {A: changed}\n"},
        at(F, 2, 13, "output_dir"),
    ),
    bad(
        "symlink-unit-file-out-of-repo",
        {UNIT_FILE: Link("{outside}/systemd/sshd.service"), U: UNIT_DEPLOYMENT + "env: {A: x}\n"},
        at(F, 2, 13, "output_dir"),
    ),
    bad(
        "symlink-index-out-of-repo",
        {"output/gpu-a/index.json": Link("{outside}/host/index.json")},
        at(F, 2, 13, "output_dir"),
    ),
    bad(
        "symlink-dangling-in-output",
        {COMPOSE: Link("/nonexistent/fleetform/compose.yaml")},
        at(F, 2, 13, "output_dir"),
    ),
    bad(
        "symlink-new-host-folder",
        {
            "hosts.d/gpu-n.yaml": "name: gpu-n\naddress: 192.0.2.13\nlabels: {gpu: new}\n"
            "gpus: {framework: cuda, count: 1}\n",
            "deployments.d/new.yaml": "name: new\nbackend: vllm\nlocal_path: /m/n\n"
            "worker_selector: {gpu: new}\n",
            "output/gpu-n": Link("{outside}/host"),
        },
        at(F, 2, 13, "output_dir"),
    ),
    bad(
        "symlink-deployment-file-out-of-repo",
        {"deployments.d/leak.yaml": Link("{outside}/secret.txt")},
        "deployments.d/leak.yaml:1:1",
    ),
    bad(
        "symlink-deployments-folder-out-of-repo",
        {
            "deployments.d/chat.yaml": None,
            "deployments.d/unit.yaml": None,
            "deployments.d": Link("{outside}/host"),
        },
        "deployments.d:1:1",
    ),
    bad(
        "symlink-settings-out-of-repo",
        {F: Link("{outside}/secret.txt")},
        at(F, 1, 1),
    ),
    bad("output-dir-absolute", {F: "output_dir: /tmp/fleetform-out\n"}, at(F, 1, 13, "output_dir")),
    bad("output-dir-home", {F: "output_dir: ~/out\n"}, at(F, 1, 13, "output_dir")),
    bad("output-dir-nul", {F: 'output_dir: "out\\0put"\n'}, at(F, 1, 13, "output_dir")),
    bad("output-dir-300-chars", {F: "output_dir: " + "o" * 300 + "\n"}, at(F, 1, 13, "output_dir")),
    bad("output-dir-source-folder", {F: "output_dir: hosts.d\n"}, at(F, 1, 13, "output_dir")),
    bad("output-dir-git", {F: "output_dir: .git/out\n"}, at(F, 1, 13, "output_dir")),
    bad("output-dir-newline", {F: 'output_dir: "out\\nput"\n'}, at(F, 1, 13, "output_dir")),
    bad(
        "local-path-root",
        {D: DEPLOYMENT.replace("/models/qwen", "/")},
        at(D, 3, 13, "local_path"),
    ),
    bad(
        "local-path-dotdot",
        {D: DEPLOYMENT.replace("/models/qwen", "/models/../etc/shadow")},
        at(D, 3, 13, "local_path"),
    ),
    # A top-level local_path mounts itself (its parent would be '/'), read-only.
    good(
        "local-path-top-level-file",
        {D: DEPLOYMENT.replace("/models/qwen", "/etc")},
        lambda repo: _assert_model_mount(repo, "/etc"),
    ),
    bad(
        "local-path-newline",
        {D: DEPLOYMENT.replace("/models/qwen", '"/models/qwen\\n"')},
        at(D, 3, 13, "local_path"),
    ),
    bad(
        "hub-id-dotdot",
        {U: UNIT_DEPLOYMENT.replace("mistralai/Mistral-7B", "../../etc")},
        at(U, 3, 22, "huggingface_repo_id"),
    ),
    bad(
        "hub-id-absolute",
        {U: UNIT_DEPLOYMENT.replace("mistralai/Mistral-7B", "/etc")},
        at(U, 3, 22, "huggingface_repo_id"),
    ),
    bad(
        "hub-id-dotdot-inside",
        {U: UNIT_DEPLOYMENT.replace("mistralai/Mistral-7B", "org/../../../root")},
        at(U, 3, 22, "huggingface_repo_id"),
    ),
    bad(
        "model-scope-id-dotdot",
        {
            U: UNIT_DEPLOYMENT.replace(
                "huggingface_repo_id: mistralai/Mistral-7B", "model_scope_model_id: ../x"
            )
        },
        at(U, 3, 23, "model_scope_model_id"),
    ),
    bad(
        "hub-id-empty",
        {U: UNIT_DEPLOYMENT.replace("mistralai/Mistral-7B", "''")},
        at(U, 3, 22, "huggingface_repo_id"),
    ),
    # === crashes (exit 3) from odd YAML =============================================
    bad("tag-int-on-word", dep('replicas: !!int "two"\n'), at(D, 6, 11, "replicas")),
    bad(
        "tag-float-on-word",
        {D: DEPLOYMENT.replace("port: 8000", 'port: !!float "abc"')},
        at(D, 4, 7, "port"),
    ),
    bad("tag-bool-on-word", dep('abstract: !!bool "maybe"\n'), at(D, 6, 11, "abstract")),
    bad("tag-int-on-empty", dep('replicas: !!int ""\n'), at(D, 6, 11, "replicas")),
    bad(
        "tag-timestamp-on-word",
        dep('backend_version: !!timestamp "soon"\n'),
        at(D, 6, 18, "backend_version"),
    ),
    bad("tag-int-hex-garbage", dep('replicas: !!int "0xZZ"\n'), at(D, 6, 11, "replicas")),
    bad("tag-float-in-env", dep('env: {A: !!float "x"}\n'), at(D, 6, 10, "env.A")),
    bad("tag-binary", dep('env: {A: !!binary "aGk="}\n'), at(D, 6, 10, "env.A")),
    bad("tag-set", dep("labels: !!set {a, b}\n"), at(D, 6, 9, "labels")),
    bad("tag-omap", dep("labels: !!omap [a: b]\n"), at(D, 6, 9, "labels")),
    bad("tag-local", dep("labels: !local {a: b}\n"), at(D, 6, 9, "labels")),
    bad("huge-int-replicas", dep("replicas: " + "9" * 5000 + "\n"), at(D, 6, 11, "replicas")),
    bad(
        "huge-int-port",
        {D: DEPLOYMENT.replace("port: 8000", "port: " + "1" * 5000)},
        at(D, 4, 7, "port"),
    ),
    bad(
        "huge-int-gpu-count",
        {H: HOST.replace("count: 4", "count: " + "4" * 4400)},
        at(H, 5, 32, "gpus.count"),
    ),
    bad(
        "huge-int-memory-mib",
        {
            S: SYSTEMD_HOST.replace(
                "gpus: {framework: cuda, count: 2}",
                "gpus: [{index: 0, framework: cuda, memory_mib: " + "7" * 5000 + "}]",
            )
        },
        at(S, 6, 48, "gpus[0].memory_mib"),
    ),
    bad(
        "huge-int-port-range",
        {H: HOST.replace("40000-40009", "4" * 5000 + "-5")},
        at(H, 6, 13, "port_range"),
    ),
    bad("float-inf-replicas", dep("replicas: .inf\n"), at(D, 6, 11, "replicas")),
    bad("float-nan-replicas", dep("replicas: .nan\n"), at(D, 6, 11, "replicas")),
    bad(
        "float-1e400-port",
        {D: DEPLOYMENT.replace("port: 8000", "port: 1e400")},
        at(D, 4, 7, "port"),
    ),
    bad(
        "float-gpus-per-replica",
        dep("gpu_selector: {gpus_per_replica: 1.0}\n"),
        at(D, 6, 34, "gpu_selector.gpus_per_replica"),
    ),
    bad(
        "float-gpu-index",
        {
            S: SYSTEMD_HOST.replace(
                "gpus: {framework: cuda, count: 2}", "gpus: [{index: 0.5, framework: cuda}]"
            )
        },
        at(S, 6, 16, "gpus[0].index"),
    ),
    bad("bool-replicas", dep("replicas: yes\n"), at(D, 6, 11, "replicas")),
    bad(
        "gpu-ids-empty-list",
        dep("gpu_selector: {gpu_ids: []}\n"),
        at(D, 6, 25, "gpu_selector.gpu_ids"),
    ),
    bad(
        "gpu-ids-empty-list-with-per-replica",
        dep("gpu_selector: {gpu_ids: [], gpus_per_replica: 1}\n"),
        at(D, 6, 25, "gpu_selector.gpu_ids"),
    ),
    bad(
        "gpu-id-unicode-digit",
        dep("gpu_selector: {gpu_ids: ['gpu-a:cuda:\u0663']}\n"),
        at(D, 6, 25, "gpu_selector.gpu_ids"),
    ),
    bad(
        "gpu-id-fullwidth-digit",
        dep("gpu_selector: {gpu_ids: ['gpu-a:cuda:\uff11']}\n"),
        at(D, 6, 25, "gpu_selector.gpu_ids"),
    ),
    bad(
        "gpu-id-huge-index",
        dep("gpu_selector: {gpu_ids: ['gpu-a:cuda:" + "9" * 5000 + "']}\n"),
        at(D, 6, 25, "gpu_selector.gpu_ids"),
    ),
    bad(
        "gpu-id-negative-index",
        dep("gpu_selector: {gpu_ids: ['gpu-a:cuda:-1']}\n"),
        at(D, 6, 25, "gpu_selector.gpu_ids"),
    ),
    bad(
        "gpu-id-with-spaces",
        dep("gpu_selector: {gpu_ids: ['gpu-a:cuda: 1']}\n"),
        at(D, 6, 25, "gpu_selector.gpu_ids"),
    ),
    bad(
        "port-range-unicode-digits",
        {
            H: HOST.replace(
                "40000-40009", "'\u0664\u0660\u0660\u0660\u0660-\u0664\u0660\u0660\u0660\u0669'"
            )
        },
        at(H, 6, 13, "port_range"),
    ),
    bad(
        "host-gpu-index-twice",
        {
            S: SYSTEMD_HOST.replace(
                "gpus: {framework: cuda, count: 2}",
                "gpus: [{index: 0, framework: cuda}, {index: 0, framework: cuda}]",
            )
        },
        at(S, 6, 45, "gpus[1].index"),
    ),
    bad(
        "deployment-extends-1000-deep",
        extends_chain(1000),
        at(D, 4, 10, "extends"),
    ),
    bad(
        # 40 deep: one backend past the limit. (At 1,000 every 33rd backend of the chain
        # is reported, which depends on how the limit is walked.)
        "backend-extends-40-deep",
        backend_chain(40),
        "backends.d/chain.yaml:2:10: extends",
    ),
    # No recursion: the chain resolves, and the container it makes is over the size limit.
    bad("env-references-1000-deep", dep(DEEP_ENV), at(D, 1, 7, "name")),
    bad(
        "mapping-key-is-a-list",
        dep("? [a, b]\n: x\n"),
        at(D, 6, 3),
    ),
    bad("mapping-key-is-null", dep("~: x\n"), at(D, 6, 1, "~")),
    bad("mapping-key-is-int", dep("1: x\n"), at(D, 6, 1, "1")),
    bad(
        "version-key-is-int",
        {B: BACKEND.replace("  v1:", "  1:").replace("default_version: v1", "default_version: 1")},
        at(B, 2, 18, "default_version"),
    ),
    bad("extends-is-a-number", dep("extends: 42\n"), at(D, 6, 10, "extends")),
    bad("extends-is-empty-text", dep("extends: ''\n"), at(D, 6, 10, "extends")),
    bad("extends-itself", dep("extends: chat\n"), at(D, 6, 10, "extends")),
    bad("name-is-null", {D: DEPLOYMENT.replace("name: chat", "name: ~")}, at(D, 1, 7, "name")),
    bad(
        "backend-name-is-int",
        {B: BACKEND.replace("backend_name: vllm", "backend_name: 42")},
        at(B, 1, 15, "backend_name"),
    ),
    bad(
        "backend-name-empty",
        {B: BACKEND.replace("backend_name: vllm", "backend_name: ''")},
        at(B, 1, 15, "backend_name"),
    ),
    bad(
        "reader-error-control-character",
        {D: DEPLOYMENT.replace("backend: vllm", "backend: vl\x07lm")},
        at(D, 2, 12),
    ),
    bad(
        "reader-error-nul-byte-in-file",
        {D: DEPLOYMENT.encode() + b"# \x00\n"},
        at(D, 6, 3),
    ),
    bad("scanner-error-tab-indent", dep("env:\n\tA: x\n"), at(D, 7, 1)),
    # hand-edited output/<host>/index.json: ignored (placement starts fresh), never trusted
    good("index-is-a-list", {"output/gpu-a/index.json": "[]\n"}, output_like_base),
    good("index-is-null", {"output/gpu-a/index.json": "null\n"}, output_like_base),
    good("index-is-empty", {"output/gpu-a/index.json": ""}, output_like_base),
    good("index-port-1e400", index_of_gpu_a(port="1e400"), output_like_base),
    good("index-port-huge-int", index_of_gpu_a(port="9" * 5000), output_like_base),
    good(
        "index-deeply-nested",
        {"output/gpu-a/index.json": "[" * 100_000 + "]" * 100_000},
        output_like_base,
    ),
    good("index-gpu-listed-twice", index_of_gpu_a(gpus="[0, 0]"), output_like_base),
    good("index-gpu-host-lacks", index_of_gpu_a(gpus="[99]"), output_like_base),
    good("index-gpu-negative", index_of_gpu_a(gpus="[-1]"), output_like_base),
    good("index-gpu-as-float", index_of_gpu_a(gpus="[1.5]"), output_like_base),
    good("index-gpus-not-a-list", index_of_gpu_a(gpus='"0"'), output_like_base),
    good("index-port-out-of-range", index_of_gpu_a(port="70000"), output_like_base),
    good("index-port-text", index_of_gpu_a(port='"8000"'), output_like_base),
    good("index-other-host", index_of_gpu_a(host='"gpu-s"'), output_like_base),
    good("index-host-not-a-string", index_of_gpu_a(host="[1]"), output_like_base),
    good("index-not-utf8", {"output/gpu-a/index.json": b"\xff\xfe{}"}, output_like_base),
    # === resource exhaustion ===========================================================
    # Stopped at the first variable whose value would pass 128 KiB.
    bad("env-doubling-placeholders", dep(DOUBLING), at(D, 25, 8, "env.V18")),
    bad("env-value-10-mb", dep("env: {BIG: " + "x" * 10_000_000 + "}\n"), at(D, 6, 12, "env.BIG")),
    bad(
        "run-command-1-mb",
        dep("run_command: vllm " + "a " * 500_000 + "\n"),
        at(D, 6, 14, "run_command"),
    ),
    bad(
        "alias-fanout-across-objects",
        {"deployments.d/fan.yaml": alias_fanout(3000, 5000)},
        "deployments.d/fan.yaml",  # the line depends on the budget chosen
    ),
    good("extends-diamond-30-levels", extends_diamond(30)),
    bad(
        "near-miss-braces-quadratic",
        dep("run_command: vllm " + "{{a " * 100_000 + "\n"),
        at(D, 6, 14, "run_command"),
    ),
    bad(
        "placeholder-spaces-quadratic",
        dep("run_command: vllm {{" + " " * 200_000 + "x\n"),
        at(D, 6, 14, "run_command"),
    ),
    good(
        "twenty-thousand-objects-in-one-file",
        {
            "deployments.d/many.yaml": "".join(
                f"- {{name: m{i}, backend: vllm, local_path: /m/{i}, replicas: 0}}\n"
                for i in range(20_000)
            )
        },
    ),
    bad(
        "argument-over-128-kib",
        dep(f"backend_parameters: [{q('--x=' + 'a' * 140_000)}]\n"),
        at(D, 6, 22, "backend_parameters[0]"),
    ),
    bad(
        "env-value-over-128-kib",
        dep(f"env: {{BIG: {q('b' * 140_000)}}}\n"),
        at(D, 6, 12, "env.BIG"),
    ),
    bad("exec-start-over-1-mib", unit(many_params(200, 6000)), at(U, 1, 7, "name")),
    # === atomicity =====================================================================
    bad(
        "late-obstruction-leaves-output-untouched",
        {
            D: DEPLOYMENT + "env: {A: changed}\n",
            U: UNIT_DEPLOYMENT.replace("port: 8001\n", "") + "replicas: 2\n",
            "output/gpu-s/systemd/fleet-unit-1.service/keep": "an obstruction\n",
        },
        at(F, 2, 13, "output_dir"),
    ),
    # === wrong or refused values =======================================================
    bad("nul-in-env-value", dep('env: {A: "x\\0y"}\n'), at(D, 6, 10, "env.A")),
    bad(
        "nul-in-run-command",
        dep('run_command: "vllm serve\\0 {{model_path}}"\n'),
        at(D, 6, 14, "run_command"),
    ),
    bad(
        "nul-in-local-path",
        {D: DEPLOYMENT.replace("/models/qwen", '"/models/q\\0"')},
        at(D, 3, 13, "local_path"),
    ),
    bad(
        "nul-in-backend-parameter",
        dep('backend_parameters: ["--x=\\0"]\n'),
        at(D, 6, 22, "backend_parameters[0]"),
    ),
    bad(
        "nul-in-default-env",
        {B: BACKEND + 'default_env: {A: "\\0"}\n'},
        at(B, 8, 18, "default_env.A"),
    ),
    bad("nul-in-entrypoint", dep('entrypoint: "\\0"\n'), at(D, 6, 13, "entrypoint")),
    bad("nul-in-volume", dep('volumes: ["/a\\0:/b"]\n'), at(D, 6, 11, "volumes[0]")),
    bad("surrogate-escape-in-env", dep('env: {A: "\\ud800"}\n'), at(D, 6, 13)),
    bad("secret-name-nul", dep('env: {T: {secret: "A\\0"}}\n'), at(D, 6, 19, "env.T.secret")),
    bad(
        "gpus-per-replica-negative",
        dep("gpu_selector: {gpus_per_replica: -1}\n"),
        at(D, 6, 34, "gpu_selector.gpus_per_replica"),
    ),
    bad("health-timeout-float", dep("health_timeout: 1.5\n"), at(D, 6, 17, "health_timeout")),
    bad("restart-policy-option", dep("restart: --privileged\n"), at(D, 6, 10, "restart")),
    # === messages: one line each, no raw control characters ============================
    bad(
        "message-newline-in-name",
        {D: DEPLOYMENT.replace("name: chat", 'name: "Chat\\nfake.yaml:1:1: forged"')},
        at(D, 1, 7, "name"),
    ),
    bad("message-newline-in-unknown-key", dep('"foo\\nbar.yaml:1:1: x": 1\n'), at(D, 6, 1)),
    bad(
        "message-newline-in-port-range",
        {H: HOST.replace("40000-40009", '"1-\\n2"')},
        at(H, 6, 13, "port_range"),
    ),
    bad(
        "message-newline-in-docker-host",
        {H: HOST.replace("ssh://deploy@192.0.2.11", '"http://x\\ny"')},
        at(H, 3, 14, "docker_host"),
    ),
    bad("message-newline-in-env-name", dep('env: {"A\\nB": x}\n'), at(D, 6, 7)),
    bad(
        "message-newline-in-backend-reference",
        {D: DEPLOYMENT.replace("backend: vllm", 'backend: "vlm\\nx"')},
        at(D, 2, 10, "backend"),
    ),
    bad("message-newline-in-extends", dep('extends: "a\\nb"\n'), at(D, 6, 10, "extends")),
    bad(
        "message-newline-in-host-name",
        {H: HOST.replace("name: gpu-a", 'name: "gpu-a\\nx"')},
        at(H, 1, 7, "name"),
    ),
    bad(
        "message-newline-in-gpu-id",
        dep('gpu_selector: {gpu_ids: ["gpu-a:0\\nx"]}\n'),
        at(D, 6, 25, "gpu_selector.gpu_ids"),
    ),
    bad(
        "message-escape-in-name",
        {D: DEPLOYMENT.replace("name: chat", 'name: "\\e[2J\\e[31mok"')},
        at(D, 1, 7, "name"),
    ),
    bad(
        "message-escape-in-framework",
        {B: BACKEND.replace("custom_framework: cuda", 'custom_framework: "\\e]0;x\\a"')},
        at(B, 7, 23, "version_configs.v1.custom_framework"),
    ),
    bad(
        "message-newline-in-worker-selector",
        {D: DEPLOYMENT.replace("worker_selector: {gpu: h100}", 'worker_selector: {gpu: "a\\nb"}')},
        at(D, 5, 18, "worker_selector"),
    ),
    # Not a placeholder (GPUStack's {{name}} holds no space): literal text, split as such.
    good(
        "newline-inside-braces-is-text",
        dep('run_command: "vllm \'{{a\\n}}\' {{ b }}"\n'),
        command_is("vllm", "{{a\n}}", "{{", "b", "}}"),
    ),
    bad(
        "message-newline-in-version",
        dep('backend_version: "v\\n2"\n'),
        at(D, 6, 18, "backend_version"),
    ),
    # === successes: hostile-looking values that are legitimate =========================
    good("env-value-dollar", dep("env: {A: '$HOME ${X} $$ $'}\n"), env_is("A", "$HOME ${X} $$ $")),
    good("env-value-percent", dep("env: {A: '%h %n %%'}\n"), env_is("A", "%h %n %%")),
    good("env-value-quotes", dep("env: {A: '\"q\" ''s'' `b`'}\n"), env_is("A", "\"q\" 's' `b`")),
    good("env-value-unicode", dep("env: {A: 'é中🙂\u00a0'}\n"), env_is("A", "é中🙂\u00a0")),
    good("env-value-newline-tab", dep('env: {A: "a\\nb\\tc\\r"}\n'), env_is("A", "a\nb\tc\r")),
    good("env-value-option-like", dep("env: {A: --privileged}\n"), env_is("A", "--privileged")),
    good("env-value-empty", dep("env: {A: ''}\n"), env_is("A", "")),
    good(
        "env-value-number-as-written",
        dep("env: {A: 0x10, B: 1e3, C: .inf, D: no}\n"),
        lambda r: (env_is("A", "0x10")(r), env_is("D", "no")(r)),
    ),
    good(
        "env-value-dollar-systemd",
        unit("env: {A: '$HOME ${X} %h %%'}\n"),
        unit_env_is("A", "$HOME ${X} %h %%"),
    ),
    good(
        "env-value-newline-systemd",
        unit('env: {A: "a\\nb\\\\n\\\\"}\n'),
        unit_env_is("A", "a\nb\\n\\"),
    ),
    good(
        "env-value-unicode-systemd",
        unit("env: {A: " + q("é中🙂 \u00a0ü \u2003x") + "}\n"),
        unit_env_is("A", "é中🙂 \u00a0ü \u2003x"),
    ),
    bad(
        "control-character-nel-in-env-value",
        unit("env: {A: " + q("a\x85b") + "}\n"),
        at(U, 6, 10, "env.A"),
    ),
    good("label-value-dollar", dep("labels: {team: 'a$b ${c}'}\n"), lambda r: None),
    good(
        "local-path-with-comma-quote-colon",
        {D: DEPLOYMENT.replace("/models/qwen", "'/models/a,b\"c:d e'")},
        command_is("vllm", "serve", '/models/a,b"c:d e', "--port", "8000"),
    ),
    good(
        "local-path-with-dollar",
        {D: DEPLOYMENT.replace("/models/qwen", "'/models/$HOME'")},
        command_is("vllm", "serve", "/models/$HOME", "--port", "8000"),
    ),
    good(
        "run-command-json-parameter",
        dep('backend_parameters: [\'{"a": [1, "b c"]}\']\n'),
        command_is("vllm", "serve", "/models/qwen", "--port", "8000", '{"a": [1, "b c"]}'),
    ),
    good(
        "run-command-semicolon-and-pipes",
        dep("run_command: \"vllm serve {{model_path}} ';' '|' '&&' '$(id)'\"\n"),
        command_is("vllm", "serve", "/models/qwen", ";", "|", "&&", "$(id)"),
    ),
    good(
        "run-command-line-continuation",
        dep("run_command: |\n  vllm serve \\\n    {{model_path}} --port {{port}}\n"),
        command_is("vllm", "serve", "/models/qwen", "--port", "8000"),
    ),
    good("run-command-option-first-word", dep("run_command: --help\n"), command_is("--help")),
    good("trailing-empty-document", {D: DEPLOYMENT + "---\n"}, None),
    good("only-empty-documents", {"deployments.d/empty.yaml": "---\n---\n"}, None),
    good("comment-only-file", {"deployments.d/empty.yaml": "# nothing yet\n"}, None),
    good("empty-file", {"deployments.d/empty.yaml": ""}, None),
    good("bom-at-file-start", {D: "\ufeff" + DEPLOYMENT}, None),
    good("crlf-line-ends", {D: DEPLOYMENT.replace("\n", "\r\n")}, None),
    good(
        "image-with-registry-port-and-digest",
        unit("image_name: 'registry.example:5000/a/b@sha256:" + "a" * 64 + "'\n"),
        lambda r: None,
    ),
    good("shm-size-plain-bytes", dep("shm_size: '1073741824'\n"), lambda r: None),
    good(
        "valid-volume-device-port",
        dep(
            "volumes: ['/data:/data:ro']\ndevices: ['/dev/fuse:/dev/fuse:rwm']\n"
            "ports: ['127.0.0.1:9000:9000/udp']\n"
        ),
        lambda r: None,
    ),
    bad(
        "hub-id-with-double-dot",
        {U: UNIT_DEPLOYMENT.replace("mistralai/Mistral-7B", "org/model.v1..2")},
        at(U, 3, 22, "huggingface_repo_id"),
    ),
    good("index-stale-but-valid-prior", index_of_gpu_a(gpus="[3]"), None),
]

SCENARIOS += [
    # --- keys that look like pydantic's own location parts (found by test_fuzz.py) ---
    bad("unknown-key-with-bracket", dep('"[": 1\n'), at(D, 6, 1, "[")),
    bad("unknown-key-gpu-spec", dep("gpu-spec: 1\n"), at(D, 6, 1, "gpu-spec")),
    bad("unknown-key-function-after", dep("function-after: 1\n"), at(D, 6, 1, "function-after")),
    bad(
        "unknown-host-key-list-of-str",
        {S: SYSTEMD_HOST + '"list[str]": 1\n'},
        at(S, 8, 1, "list[str]"),
    ),
    bad("env-name-with-brackets", dep('env: {"[x]": a}\n'), at(D, 6, 7, "env.[x]")),
    bad("label-key-with-brackets", dep('labels: {"a[0]": b}\n'), at(D, 6, 10, "labels.a[0]")),
    # --- more odd YAML and settings ---
    bad("merge-of-a-scalar", dep("<<: 1\n"), at(D, 6, 5)),
    bad("settings-two-documents", {F: "project: a\n---\nproject: b\n"}, at(F, 3, 1)),
    bad("settings-defaults-null", {F: SETTINGS + "defaults: ~\n"}, at(F, 4, 11, "defaults")),
    good("settings-as-a-one-item-list", {F: "- project: a\n"}, None),
    bad(
        "project-option",
        {F: SETTINGS.replace("project: fleet", "project: --x")},
        at(F, 1, 10, "project"),
    ),
    bad(
        "label-prefix-trailing-dot",
        {F: SETTINGS.replace("label_prefix: io.fleetform", "label_prefix: io.fleetform.")},
        at(F, 3, 15, "label_prefix"),
    ),
    bad("undefined-alias", dep("labels: *nowhere\n"), at(D, 6, 9)),
    good("empty-settings-file", {F: ""}, None),
    # --- the output folder holds what it holds ---
    bad("output-is-a-file", {"output": "not a folder\n"}, at(F, 2, 13, "output_dir")),
    bad(
        "host-folder-is-a-file",
        {"output/gpu-a": "not a folder\n", D: DEPLOYMENT + "env: {A: changed}\n"},
        at(F, 2, 13, "output_dir"),
    ),
    bad(
        "obstruction-index-is-a-folder",
        {
            "output/gpu-s/index.json": None,
            "output/gpu-s/index.json/keep": USER_FILE,
            D: DEPLOYMENT + "env: {A: changed}\n",
        },
        at(F, 2, 13, "output_dir"),
    ),
    good(
        "user-file-in-host-folder-is-kept",
        {"output/gpu-a/README.md": USER_FILE, D: DEPLOYMENT + "env: {A: changed}\n"},
        kept("output/gpu-a/README.md"),
    ),
    good(
        "hand-written-unit-beside-ours-is-kept",
        {"output/gpu-s/systemd/by-hand.service": USER_FILE, U: UNIT_DEPLOYMENT + "env: {A: b}\n"},
        kept("output/gpu-s/systemd/by-hand.service"),
    ),
    good(
        "dotfile-in-output-is-kept",
        {"output/.keep": USER_FILE, "output/gpu-a/.notes": USER_FILE},
        lambda repo: (kept("output/.keep")(repo), kept("output/gpu-a/.notes")(repo)),
    ),
    good(
        "unit-of-removed-deployment-is-deleted",
        {U: UNIT_DEPLOYMENT.replace("worker_selector: {gpu: l4}", "worker_selector: {gpu: h100}")},
        lambda repo: None if not (repo / UNIT_FILE).exists() else pytest.fail("stale unit kept"),
    ),
    good(
        "index-unknown-deployment",
        {
            "output/gpu-a/index.json": INDEX_ENTRY.format(
                schema=json.dumps(INDEX_SCHEMA), host='"gpu-a"', gpus="[1]", port="8000"
            ).replace('"chat"', '"gone"')
        },
        output_like_base,
    ),
    good(
        "index-of-systemd-host-gpu-host-lacks",
        {
            "output/gpu-s/index.json": INDEX_ENTRY.format(
                schema=json.dumps(INDEX_SCHEMA), host='"gpu-s"', gpus="[7]", port="8001"
            ).replace('"chat"', '"unit"')
        },
        output_like_base,
    ),
    # --- an index that names artifacts elsewhere: compile deletes only what it wrote ---
    good(
        "index-artifact-escapes-to-outside",
        unit_index(artifact="../../../outside/secret.txt"),
        None,
    ),
    good("index-artifact-absolute", unit_index(artifact="/tmp/fleetform-never-this"), None),
    good("index-artifact-other-host", unit_index(artifact="../gpu-a/compose.yaml"), None),
    good("index-artifact-source-file", unit_index(artifact="../../hosts.d/gpu-s.yaml"), None),
    good("index-container-name-option", unit_index(container="--privileged"), None),
    good("index-host-path-escape", unit_index(host="../../outside/host"), None),
    # --- legitimate values that look like options ---
    good(
        "entrypoint-option-like-word",
        unit("entrypoint: --privileged\n"),
        lambda repo: _entrypoint_is(repo, "--privileged"),
    ),
    good(
        "backend-parameter-privileged-is-a-container-argument",
        unit("backend_parameters: [--privileged]\n"),
        lambda repo: _after_image(
            repo,
            [
                "vllm",
                "serve",
                "/var/lib/fleetform/models/mistralai/Mistral-7B",
                "--port",
                "8001",
                "--privileged",
            ],
        ),
    ),
    good(
        "env-value-looks-like-env-option",
        unit("env: {A: '--env=B=1 --privileged'}\n"),
        unit_env_is("A", "--env=B=1 --privileged"),
    ),
    good(
        "label-value-with-equals-and-newline",
        unit('labels: {team: "a=b\\nio.fleetform.managed-by=x"}\n'),
        lambda repo: _label_is(repo, "team", "a=b\nio.fleetform.managed-by=x"),
    ),
    # --- explain cannot be made to print forged lines or terminal controls ---
    explain(
        "explain-newline-in-env-value",
        dep('env: {A: "x\\n    env B: forged  <- hosts.d/gpu-a.yaml:1:1"}\n'),
        "env B:",
    ),
    bad(
        "control-character-escape-in-env-value",
        dep('env: {A: "\\e[2J\\e[1;1Hdeployment chat"}\n'),
        at(D, 6, 10, "env.A"),
    ),
    explain("explain-carriage-return-in-env-value", dep('env: {A: "ok\\r    image: evil"}\n')),
    explain("explain-bidi-in-env-value", dep('env: {A: "abc\\u202edcba"}\n')),
    explain(
        "explain-line-separator-in-env-value",
        dep('env: {A: "x\\L  replica 9 on host evil"}\n'),
        "replica 9",
    ),
    explain(
        "explain-newline-in-backend-parameter",
        dep('backend_parameters: ["--x=a\\n    image: forged"]\n'),
        "image: forged",
    ),
    explain(
        "explain-newline-in-run-command-argument",
        dep("run_command: \"vllm serve {{model_path}} 'a\\n  replica 7 on host x'\"\n"),
        "replica 7",
    ),
    explain(
        "explain-newline-in-volume",
        dep('volumes: ["/data/a:/data/b"]\nenv: {A: "\\n    volume: /:/host"}\n'),
        "volume: /:/host",
    ),
]


def _unit_docker_argv(repo: Path) -> list[str]:
    return unit_argv(repo)


def _entrypoint_is(repo: Path, entrypoint: str) -> None:
    argv = _unit_docker_argv(repo)
    at = argv.index("--entrypoint")
    assert argv[at + 1] == entrypoint and argv[at + 2] == "vllm/vllm-openai:v1", argv
    assert service(repo, "chat-0").get("entrypoint") is None


def _after_image(repo: Path, words: list[str]) -> None:
    argv = _unit_docker_argv(repo)
    assert argv[argv.index("vllm/vllm-openai:v1") + 1 :] == words, argv


def _label_is(repo: Path, key: str, value: str) -> None:
    argv = _unit_docker_argv(repo)
    labels = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "--label"]
    assert f"{key}={value}" in labels, labels
    assert "io.fleetform.managed-by=fleetform" in labels


# Run as a real child process (python -m compiler.cli), as CI and users do.
SUBPROCESS = {
    "image-name-privileged-option",
    "symlink-systemd-folder-out-of-repo",
    "tag-int-on-word",
    "huge-int-replicas",
    "env-doubling-placeholders",
    "alias-fanout-across-objects",
    "message-newline-in-name",
    "env-value-dollar-systemd",
}

# --- machinery ---------------------------------------------------------------------------


def read_expected() -> dict[str, list[str]]:
    if not EXPECTED_FILE.is_file():
        return {}
    data: dict[str, list[str]] = json.loads(EXPECTED_FILE.read_text(encoding="utf-8"))
    return data


EXPECTED = read_expected()
UPDATED: dict[str, list[str]] = {}


@pytest.fixture(scope="module")
def update_hostile(request: pytest.FixtureRequest) -> Any:
    """With ``--update-hostile``: collect each scenario's actual lines, write them at the end."""
    enabled = bool(request.config.getoption("--update-hostile"))
    yield enabled
    if enabled and UPDATED:
        merged = {**read_expected(), **UPDATED}
        ordered = {s.id: merged[s.id] for s in SCENARIOS if s.id in merged}
        EXPECTED_FILE.parent.mkdir(parents=True, exist_ok=True)
        EXPECTED_FILE.write_text(
            json.dumps(ordered, indent=1, ensure_ascii=True) + "\n", encoding="utf-8"
        )


@pytest.fixture(scope="module")
def compiled_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base repository after one successful compile."""
    root = tmp_path_factory.mktemp("base") / "repo"
    root.mkdir()
    write_files(root, BASE)
    # In this process, so that every child forked later starts warm (lazy imports,
    # pydantic's schemas) and a scenario's time is its compile's.
    result = CliRunner().invoke(cli, ["compile", "--repo", str(root)])
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    CliRunner().invoke(cli, ["validate", "--repo", str(root / "deployments.d")])
    run = run_forked(["compile", "--check", "--repo", str(root)])
    assert (run.exit_code, run.stderr) == (0, ""), run
    BASE_OUTPUT[:] = [tree_state(root / "output")]
    return root


def copy_repo(compiled_base: Path, folder: Path) -> tuple[Path, Path]:
    repo = folder / "repo"
    shutil.copytree(compiled_base, repo, symlinks=True)
    outside = make_outside(folder / "outside")
    return repo, outside


def place(repo: Path, outside: Path, files: Mapping[str, Content]) -> None:
    """Write a scenario's files; a file or symlink replaces a folder of the base."""
    for relative, content in files.items():
        path = repo / relative
        if content is not None and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
    write_files(repo, files, outside)


def run_scenario(case: Scenario, repo: Path) -> Run:
    args = [*case.args, "--repo", str(repo)]
    return run_subprocess(args) if case.id in SUBPROCESS else run_forked(args)


def test_base_repository_compiles_to_both_targets(compiled_base: Path) -> None:
    state = tree_state(compiled_base / "output")
    files = sorted(path for path, (kind, _) in state.items() if kind == "file")
    assert files == [
        "gpu-a/compose.yaml",
        "gpu-a/index.json",
        "gpu-s/index.json",
        "gpu-s/systemd/fleet-unit-0.service",
    ]
    run = run_forked(["compile", "--check", "--repo", str(compiled_base)])
    assert (run.exit_code, run.stderr) == (0, "")


def test_catalogue_is_large_and_ids_unique() -> None:
    ids = [s.id for s in SCENARIOS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 150
    assert set(ids) >= SUBPROCESS
    assert set(EXPECTED) <= set(ids), set(EXPECTED) - set(ids)


@pytest.mark.parametrize("case", [pytest.param(s, id=s.id) for s in SCENARIOS])
def test_hostile_repository(
    case: Scenario, compiled_base: Path, tmp_path: Path, update_hostile: bool
) -> None:
    repo, outside = copy_repo(compiled_base, tmp_path)
    place(repo, outside, case.files)
    output_before = tree_state(repo / "output")
    outside_before = tree_state(outside)
    beside_before = sorted(p.name for p in tmp_path.iterdir())

    run = run_scenario(case, repo)

    violations = contract_violations(
        run,
        output_before=output_before,
        output_after=tree_state(repo / "output"),
        outside_before=outside_before,
        outside_after=tree_state(outside),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == beside_before
    assert not violations, f"{violations}\nstderr: {run.stderr[:2000]}"
    assert run.exit_code == case.exit, f"exit {run.exit_code}, stderr: {run.stderr[:2000]}"

    # Pins name the scenario's folders, not this run's temporary paths.
    shown = run.stderr.replace(str(outside), "{outside}").replace(str(repo), "{repo}")
    lines = shown.splitlines()
    if case.exit == 1:
        assert len(lines) == len(case.where), lines
        for line, where in zip(lines, case.where, strict=True):
            # A bare file name pins the file only (a position that depends on a limit).
            assert line.startswith(where + (": " if ":" in where else ":")), (where, line)
        if update_hostile:
            # Only once exit code and positions are right: a refresh pins wording only.
            UPDATED[case.id] = lines
        elif case.id in EXPECTED:
            assert lines == EXPECTED[case.id]
    else:
        assert not [line for line in lines if ERROR_LINE.match(line)], lines
        if case.check is not None:
            LAST_STDOUT[:] = [run.stdout]
            case.check(repo)
        check_artifacts(repo)


# --- the artifacts of a success ------------------------------------------------------------


def check_artifacts(repo: Path) -> None:
    """What compose and systemd read back: every compose file passes ``docker compose
    config``, every unit ``systemd-analyze verify``; nothing is a symlink."""
    from helpers import compose_config, systemd_verify

    output = repo / "output"
    for path in output.rglob("*"):
        assert not path.is_symlink(), path
    for compose_file in sorted(output.glob("*/compose.yaml")):
        compose_config(compose_file)
    units = [
        unit
        for unit in sorted(output.glob("*/systemd/*.service"))
        if unit.read_bytes().startswith(b"# Generated by fleetform")
    ]
    if units:
        assert systemd_verify(units) == []


# --- atomicity and concurrency (whole compiles, not a scenario each) ---------------------------


def fleet_of(count: int) -> dict[str, Content]:
    """The base plus ``count`` CPU-only deployments on the systemd host: a unit file each."""
    deployments = "".join(
        f"- {{name: d{i}, backend: vllm, local_path: /m/{i}, port: {10000 + i},"
        f" worker_selector: {{gpu: l4}}, gpu_selector: {{gpus_per_replica: 0}}}}\n"
        for i in range(count)
    )
    return {**BASE, "deployments.d/many.yaml": deployments}


def visible(state: dict[str, tuple[str, object]]) -> dict[str, tuple[str, object]]:
    """A tree state without dot entries (a compile's journal or lock may live there)."""
    return {path: entry for path, entry in state.items() if not path.startswith(".")}


def compile_child(repo: Path, *, capture: bool = False) -> subprocess.Popen[str]:
    pipe = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "compiler.cli", "compile", "--repo", str(repo)],
        stdout=pipe,
        stderr=pipe,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )


def test_killed_compile_leaves_output_old_or_new(tmp_path: Path) -> None:
    """``kill -9`` at moments spread over a compile that changes 200 files: ``output/`` is
    the old tree or the new one each time, never a mix; the next compile finishes the
    job and leaves no temporary file anywhere in the repository."""
    repo = tmp_path / "repo"
    repo.mkdir()
    files = fleet_of(200)
    write_files(repo, files)
    assert run_subprocess(["compile", "--repo", str(repo)]).exit_code == 0
    old_output = tmp_path / "old-output"
    shutil.copytree(repo / "output", old_output, symlinks=True)
    old = visible(tree_state(old_output))
    changed = str(files["deployments.d/many.yaml"]).replace("/m/", "/n/")
    write_files(repo, {"deployments.d/many.yaml": changed})
    sources = {p: e for p, e in tree_state(repo).items() if not p.startswith("output")}

    reference = tmp_path / "reference"
    shutil.copytree(repo, reference, symlinks=True)
    done = run_subprocess(["compile", "--repo", str(reference)])
    assert done.exit_code == 0
    new = visible(tree_state(reference / "output"))
    assert old != new

    for fraction in (0.5, 0.7, 0.8, 0.88, 0.94, 1.0):
        child = compile_child(repo)
        time.sleep(done.seconds * fraction)
        child.kill()
        child.wait()
        state = visible(tree_state(repo / "output"))
        assert state in (old, new), f"mixed output/ after a kill at {fraction:.0%}: " + ", ".join(
            state_diff(old, state)[:5]
        )
        # Start the next kill from the old tree again.
        shutil.rmtree(repo / "output")
        shutil.copytree(old_output, repo / "output", symlinks=True)

    child = compile_child(repo)
    time.sleep(done.seconds * 0.8)
    child.kill()
    child.wait()
    assert run_subprocess(["compile", "--repo", str(repo)]).exit_code == 0
    assert visible(tree_state(repo / "output")) == new
    after = {p: e for p, e in tree_state(repo).items() if not p.startswith("output")}
    assert after == sources, state_diff(sources, after)
    leftovers = [p for p in tree_state(repo / "output") if ".tmp" in p or "fleetform-" in p]
    assert leftovers == []


def test_concurrent_compiles_leave_a_valid_output(tmp_path: Path) -> None:
    """Four compiles of one repository at once: each exits 0 or fails cleanly (exit 1,
    one line each), at least one succeeds, and ``output/`` is then exactly what one
    compile writes, without temporary files."""
    repo = tmp_path / "repo"
    repo.mkdir()
    write_files(repo, fleet_of(300))
    reference = tmp_path / "reference"
    shutil.copytree(repo, reference)
    assert run_subprocess(["compile", "--repo", str(reference)]).exit_code == 0
    children = [compile_child(repo, capture=True) for _ in range(4)]
    results = []
    for child in children:
        out, err = child.communicate(timeout=60)
        results.append((child.returncode, err))
    for code, stderr in results:
        assert code in (0, 1), (code, stderr)
        assert "Traceback" not in stderr and "internal error" not in stderr, stderr
        if code == 1:
            assert stderr and all(ERROR_LINE.match(line) for line in stderr.splitlines()), stderr
    assert any(code == 0 for code, _ in results), results
    assert visible(tree_state(repo / "output")) == visible(tree_state(reference / "output"))
    leftovers = [p for p in tree_state(repo / "output") if ".tmp" in p]
    assert leftovers == []


def test_scenario_files_stay_in_their_repository() -> None:
    for case in SCENARIOS:
        for relative in case.files:
            assert not os.path.isabs(relative) and ".." not in Path(relative).parts, case.id
            assert re.match(r"^[\w.-]", relative), case.id
