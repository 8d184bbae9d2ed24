"""Acceptance: every real GPUStack backend in the shared corpus compiles into artifacts
that the real tools accept.

For each backend (the eight objects of the community marketplace file, the two
``*.spec.yaml`` files and the three seed examples) a repository is built with the
backend's corpus file copied as is into ``backends.d/``, one compose host and one
systemd host carrying GPUs of every framework the backend uses, and one deployment
per backend version pinned with ``backend_version`` onto each host. The compiled
``compose.yaml`` must pass ``docker-compose config`` and the units
``systemd-analyze verify`` (tolerating only the absence of docker on the test
machine). The corpus is located through ``$FLEETFORM_SHARED``; a missing corpus is a
failure, never a skip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import (
    REPO_ROOT,
    SHARED_ENV,
    compose_config,
    compose_value,
    corpus_dir,
    dns_label,
    systemd_verify,
    write_yaml,
)

from compiler import api
from compiler.resolve import Workload

# The corpus as shipped: file → number of backend objects in it.
EXPECTED_FILES = {
    "gpustack-community/community-inference-backends.yaml": 8,
    "gpustack-community/llama.cpp.spec.yaml": 1,
    "gpustack-community/mineru.spec.yaml": 1,
    "seed-examples/advanced-backend-custom.yaml": 1,
    "seed-examples/custom-entry-backend-custom.yaml": 1,
    "seed-examples/tensorrt-llm-custom.yaml": 1,
}

COMPOSE_HOST = "cmp"
SYSTEMD_HOST = "sd"
HOST_ROLES = {COMPOSE_HOST: "compose", SYSTEMD_HOST: "systemd"}


@dataclass(frozen=True)
class Version:
    name: str
    framework: str
    image: str | None


@dataclass(frozen=True)
class CorpusBackend:
    file: str  # relative to the corpus folder
    name: str
    versions: tuple[Version, ...]


def read_corpus_file(relative: str) -> list[CorpusBackend]:
    """The backends of one corpus file, read with plain YAML (every scalar as text)."""
    text = (corpus_dir() / relative).read_text(encoding="utf-8")
    objects: list[dict[str, Any]] = []
    for document in yaml.load_all(text, Loader=yaml.BaseLoader):
        if isinstance(document, list):
            objects.extend(document)
        elif document is not None:
            objects.append(document)
    backends = []
    for obj in objects:
        versions = tuple(
            Version(
                name=version,
                framework=config.get("custom_framework") or "cuda",
                image=config.get("image_name"),
            )
            for version, config in (obj.get("version_configs") or {}).items()
        )
        backends.append(CorpusBackend(relative, obj["backend_name"], versions))
    return backends


def corpus_params() -> list[Any]:
    """One test id per corpus backend; a single failing id when the corpus is absent."""
    if not corpus_dir().is_dir():
        return [pytest.param(None, id="corpus-missing")]
    params = []
    for path in sorted(corpus_dir().rglob("*.yaml")):
        relative = path.relative_to(corpus_dir()).as_posix()
        for backend in read_corpus_file(relative):
            params.append(pytest.param(backend, id=f"{relative}:{backend.name}"))
    return params or [pytest.param(None, id="corpus-empty")]


def require_corpus() -> Path:
    folder = corpus_dir()
    if not folder.is_dir():
        pytest.fail(
            f"the shared corpus is missing: {folder} (set ${SHARED_ENV} to the shared folder)"
        )
    return folder


# --- building the repository ------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """A deployment the test wrote, and where it must land."""

    deployment: str
    host: str
    backend: str
    version: Version


def build_repo(root: Path, backends: list[CorpusBackend]) -> list[Planned]:
    """Copy the backends' corpus files and write hosts and deployments for every version."""
    folder = require_corpus()
    for relative in sorted({backend.file for backend in backends}):
        target = root / "backends.d" / relative.replace("/", "__")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / relative, target)

    needed = Counter(
        version.framework
        for backend in backends
        for version in backend.versions
        if version.framework != "cpu"
    )
    hosts = [
        {
            "name": name,
            "address": f"192.0.2.{index + 10}",
            "target": role,
            "labels": {"role": role},
            "port_range": "40000-40999",
            # One GPU per deployment of that framework: every version fits at once.
            "gpus": [{"framework": fw, "count": count} for fw, count in sorted(needed.items())],
        }
        for index, (name, role) in enumerate(HOST_ROLES.items())
    ]
    write_yaml(root / "hosts.d" / "hosts.yaml", hosts)

    planned: list[Planned] = []
    deployments: list[dict[str, Any]] = []
    for backend in backends:
        for index, version in enumerate(backend.versions):
            for host, role in HOST_ROLES.items():
                name = dns_label(backend.name, str(index), role[0])
                deployment: dict[str, Any] = {
                    "name": name,
                    "backend": backend.name,
                    "backend_version": version.name,
                    "worker_selector": {"role": role},
                }
                # Both model sources, so {{model_path}} is defined for every command.
                if index % 2:
                    deployment["local_path"] = f"/srv/models/{name}/model.gguf"
                else:
                    deployment["huggingface_repo_id"] = f"example-org/{name}"
                deployments.append(deployment)
                planned.append(Planned(name, host, backend.name, version))
    write_yaml(root / "deployments.d" / "deployments.yaml", deployments)
    return planned


def write_files(folder: Path, files: dict[str, bytes]) -> None:
    for relative, content in files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


# --- checking the artifacts ----------------------------------------------------------------


def check_placement(planned: list[Planned], workloads: tuple[Workload, ...]) -> None:
    by_deployment: dict[str, list[Workload]] = {}
    for workload in workloads:
        by_deployment.setdefault(workload.deployment, []).append(workload)
    assert sorted(by_deployment) == sorted(p.deployment for p in planned)
    for item in planned:
        (workload,) = by_deployment[item.deployment]
        assert workload.host == item.host, item
        assert workload.framework == item.version.framework, item
        if item.version.image is not None:
            assert workload.image == item.version.image, item


def check_compose(compose_file: Path, workloads: list[Workload]) -> None:
    """compose accepts the file and reads back each service's image, command, entrypoint."""
    services = compose_config(compose_file)["services"]
    assert sorted(services) == sorted(w.name for w in workloads)
    for workload in workloads:
        service = services[workload.name]
        assert service["image"] == workload.image
        assert [compose_value(word) for word in service["command"]] == list(workload.command)
        entrypoint = service.get("entrypoint")
        expected = None if workload.entrypoint is None else list(workload.entrypoint)
        assert (entrypoint and [compose_value(word) for word in entrypoint]) == expected
        environment = service.get("environment") or {}
        assert {key: compose_value(value) for key, value in environment.items()} == workload.env


def check_units(unit_dir: Path, workloads: list[Workload]) -> None:
    units = sorted(unit_dir.glob("*.service"))
    assert len(units) == len(workloads)
    unexpected = systemd_verify(units)
    assert unexpected == [], "systemd-analyze verify complained:\n" + "\n".join(unexpected)


def compile_and_check(root: Path, planned: list[Planned]) -> None:
    compiled = api.build(root)
    check_placement(planned, compiled.fleet.workloads)
    out = root / "artifacts"
    write_files(out, compiled.files)
    check_compose(out / COMPOSE_HOST / "compose.yaml", compiled.fleet.on_host(COMPOSE_HOST))
    check_units(out / SYSTEMD_HOST / "systemd", compiled.fleet.on_host(SYSTEMD_HOST))


# --- tests -------------------------------------------------------------------------------


def test_corpus_is_present() -> None:
    """The corpus the acceptance tests rely on is there, whole."""
    folder = require_corpus()
    found = {
        path.relative_to(folder).as_posix(): len(
            read_corpus_file(path.relative_to(folder).as_posix())
        )
        for path in folder.rglob("*.yaml")
    }
    for relative, count in EXPECTED_FILES.items():
        assert found.get(relative) == count, f"{relative}: expected {count} backend(s)"


@pytest.mark.parametrize("backend", corpus_params())
def test_backend_validates_and_compiles(backend: CorpusBackend | None, tmp_path: Path) -> None:
    if backend is None:
        require_corpus()
        pytest.fail(f"no backend found in the corpus at {corpus_dir()}")
    assert backend.versions, f"{backend.name} has no version_configs"
    root = tmp_path / "repo"
    planned = build_repo(root, [backend])

    # The whole corpus file validates: every object in it, not just this backend.
    repo = api.load(root)
    in_file = [b.name for b in read_corpus_file(backend.file)]
    assert [b.backend_name for b, _ in repo.backends] == in_file

    compile_and_check(root, planned)


def test_checks_catch_what_the_tools_reject(tmp_path: Path) -> None:
    """The two instruments fail on input the real tools reject (never a silent pass)."""
    compose_file = tmp_path / "compose.yaml"
    compose_file.write_text("services:\n  a:\n    image: x\n    volumes: ['::ro']\n")
    with pytest.raises(pytest.fail.Exception, match="docker-compose config rejected"):
        compose_config(compose_file)
    unit = tmp_path / "bad.service"
    unit.write_text('[Service]\nExecStart=/bin/true "unbalanced\nNoSuchKey=1\n')
    assert systemd_verify([unit]) != []


def test_whole_corpus_through_the_cli(tmp_path: Path) -> None:
    """End to end: every corpus file in one repository, through ``python -m compiler.cli``."""
    folder = require_corpus()
    backends = [
        backend
        for path in sorted(folder.rglob("*.yaml"))
        for backend in read_corpus_file(path.relative_to(folder).as_posix())
    ]
    assert len(backends) == sum(EXPECTED_FILES.values())
    root = tmp_path / "repo"
    planned = build_repo(root, backends)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "compiler.cli", *args, "--repo", str(root)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=120,
        )

    validated = cli("validate")
    assert validated.returncode == 0, validated.stderr
    compiled = cli("compile")
    assert compiled.returncode == 0, compiled.stderr
    checked = cli("compile", "--check")
    assert checked.returncode == 0, checked.stdout + checked.stderr

    fleet = api.build(root).fleet
    check_placement(planned, fleet.workloads)
    output = root / "output"
    check_compose(output / COMPOSE_HOST / "compose.yaml", fleet.on_host(COMPOSE_HOST))
    check_units(output / SYSTEMD_HOST / "systemd", fleet.on_host(SYSTEMD_HOST))
