"""The live suite's fleet: 3 hosts × 10 deployments of ``busybox httpd``, a fleetform repository.

Each deployment serves ``/health`` on its host's address and an own port (host
networking), from a GPUStack-format backend with ``entrypoint: busybox`` and the offline
test image of ``testing/engines.py``. Both fleets of the live suite are this repository,
written for their own hosts' addresses; the deployments differ only by an env value
(``REVISION``), which the one-change step changes for one of them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

HOSTS = ("h1", "h2", "h3")
PER_HOST = 10

BACKEND = """\
# A real HTTP server per deployment: busybox httpd from the offline test image.
backend_name: busybox-httpd
health_check_path: /health
default_run_command: "httpd -f -p {{worker_ip}}:{{port}} -h /var/www"
version_configs:
  v1:
    image_name: "fleetform-test/busybox:1"
    custom_framework: cpu
    entrypoint: busybox
"""


class HostEntry(Protocol):
    """What the repository says about a host."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def url(self) -> str: ...  # its docker_host, ssh://…
    @property
    def port_range(self) -> tuple[int, int]: ...


def deployment_names(host: str) -> list[str]:
    return [f"web-{host}-{i:02d}" for i in range(PER_HOST)]


def write_repo(repo: Path, hosts: Sequence[HostEntry], models: Path) -> None:
    for folder in ("backends.d", "deployments.d", "hosts.d"):
        (repo / folder).mkdir(parents=True, exist_ok=True)
    (repo / "backends.d" / "busybox.yaml").write_text(BACKEND, encoding="utf-8")
    entries = []
    for host in hosts:
        low, high = host.port_range
        entries.append(
            f"- name: {host.name}\n"
            f"  address: {host.address}\n"
            "  target: compose\n"
            f"  docker_host: {host.url}\n"
            f"  labels: {{pool: {host.name}}}\n"
            f"  port_range: {low}-{high}\n"
        )
        for name in deployment_names(host.name):
            (models / name).mkdir(parents=True, exist_ok=True)
    (repo / "hosts.d" / "fleet.yaml").write_text("".join(entries), encoding="utf-8")
    for host in hosts:
        write_deployments(repo, host.name, models, revision={})


def write_deployments(repo: Path, host: str, models: Path, revision: dict[str, str]) -> None:
    """The deployments of one host; ``revision``: the env value of those not at "1"."""
    docs = [
        f"name: {name}\n"
        "backend: busybox-httpd\n"
        f"local_path: {models / name}\n"
        f"worker_selector: {{pool: {host}}}\n"
        f'env: {{REVISION: "{revision.get(name, "1")}"}}\n'
        for name in deployment_names(host)
    ]
    path = repo / "deployments.d" / f"{host}.yaml"
    path.write_text("---\n".join(docs), encoding="utf-8")


def endpoints(output: Path) -> list[tuple[str, int]]:
    """Every workload's address and port, from the compiled ``output/<host>/index.json``."""
    found = []
    for host in HOSTS:
        index = json.loads((output / host / "index.json").read_text(encoding="utf-8"))
        found += [(index["address"], w["port"]) for w in index["workloads"]]
    return found


def copy_compose(output: Path, target: Path) -> None:
    """``output/<host>/compose.yaml`` → ``target/<host>/compose.yaml`` (one stack per host)."""
    for host in HOSTS:
        (target / host).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(output / host / "compose.yaml", target / host / "compose.yaml")
