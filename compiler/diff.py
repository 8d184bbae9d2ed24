"""``fleetform diff --base REF``: what a change since REF does to each host, offline.

The repository is compiled twice, as it is at REF (read from Git into a temporary
folder: the working tree and its ``output/`` are never touched) and as it is now, and
the two resolved fleets are compared per host and per replica: created, changed (field
by field, as ``plan`` shows a change; the unit text for systemd hosts) and removed;
hosts added and removed. It names secrets, never values (a compile holds none). No
host is contacted.
"""

from __future__ import annotations

import difflib
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from compiler.errors import FleetformError
from compiler.plan import Change, changes_between

if TYPE_CHECKING:
    from compiler.api import Compiled
    from compiler.resolve import Workload

_Host = tuple[str, dict[str, "Workload"], dict[str, str]]

DIFF_SCHEMA = "fleetform.diff/v1"
Action = Literal["create", "update", "delete"]


class DiffError(FleetformError):
    """The base cannot be read from Git."""


@dataclass(frozen=True)
class ReplicaDiff:
    name: str
    deployment: str
    action: Action
    changes: tuple[Change, ...] = ()
    unit_diff: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostDiff:
    host: str
    status: Literal["added", "removed", "changed", "unchanged"]
    target: str
    replicas: tuple[ReplicaDiff, ...]
    unchanged: int


@dataclass(frozen=True)
class FleetDiff:
    base: str
    base_error: str | None
    hosts: tuple[HostDiff, ...]

    @property
    def changed(self) -> bool:
        return self.base_error is not None or any(h.status != "unchanged" for h in self.hosts)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": DIFF_SCHEMA,
            "base": self.base,
            "base_error": self.base_error,
            "changed": self.changed,
            "hosts": [
                {
                    "host": host.host,
                    "status": host.status,
                    "target": host.target,
                    "unchanged": host.unchanged,
                    "replicas": [
                        {
                            "name": r.name,
                            "deployment": r.deployment,
                            "action": r.action,
                            "changes": [
                                {"field": c.field, "before": c.before, "after": c.after}
                                for c in r.changes
                            ],
                            "unit_diff": list(r.unit_diff),
                        }
                        for r in host.replicas
                    ],
                }
                for host in self.hosts
            ],
        }


def base_tree(root: Path, ref: str, into: Path) -> Path:
    """The repository at ``ref`` (the folder ``root`` is, inside its Git work tree),
    extracted under ``into``; returns that folder."""

    def git(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True)

    if ref.startswith("-"):
        raise DiffError(f"'{ref}' is not a Git revision", None)
    prefix = git("rev-parse", "--show-prefix")
    if prefix.returncode != 0:
        raise DiffError(f"{root} is not in a Git repository", None)
    commit = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if commit.returncode != 0:
        raise DiffError(f"'{ref}' is not a commit of this repository", None)
    subfolder = prefix.stdout.decode().strip().rstrip("/")
    # <commit>:<folder> (a path from the top): the tree of the folder, entries relative
    # to it. A folder the base does not have yet is an empty base.
    tree = commit.stdout.decode().strip() + (f":{subfolder}" if subfolder else "")
    (into / "tree").mkdir()
    if git("cat-file", "-e", tree).returncode != 0:
        return into / "tree"
    top = git("rev-parse", "--show-toplevel").stdout.decode().strip()
    archive = subprocess.run(
        ["git", "-C", top, "archive", "--format=tar", tree], capture_output=True
    )
    if archive.returncode != 0:
        raise DiffError(f"git archive {ref} failed: {archive.stderr.decode().strip()}", None)
    tar = into / "base.tar"
    tar.write_bytes(archive.stdout)
    with tarfile.open(tar) as opened:
        opened.extractall(into / "tree", filter="data")
    tar.unlink()
    return into / "tree"


def diff_fleets(base: Compiled | None, now: Compiled) -> tuple[HostDiff, ...]:
    """Compare two compiles; ``base`` None: nothing before."""
    before = _by_host(base)
    after = _by_host(now)
    hosts = []
    for host in sorted(set(before) | set(after)):
        old, new = before.get(host), after.get(host)
        target = (new or old or ("compose", {}, {}))[0]
        old_workloads = old[1] if old else {}
        new_workloads = new[1] if new else {}
        old_units = old[2] if old else {}
        new_units = new[2] if new else {}
        replicas = []
        unchanged = 0
        for name in sorted(set(old_workloads) | set(new_workloads)):
            was, will = old_workloads.get(name), new_workloads.get(name)
            if will is not None and was is None:
                replicas.append(ReplicaDiff(name, will.deployment, "create"))
            elif was is not None and will is None:
                replicas.append(ReplicaDiff(name, was.deployment, "delete"))
            elif was is None or will is None or was.spec_hash() == will.spec_hash():
                unchanged += 1
            else:
                unit = _unit_diff(old_units.get(name), new_units.get(name), name)
                replicas.append(
                    ReplicaDiff(name, will.deployment, "update", _changes(was, will), unit)
                )
        documents, same = _cluster_diff(_cluster(base, host), _cluster(now, host))
        replicas.extend(documents)
        unchanged += same
        status: Literal["added", "removed", "changed", "unchanged"]
        if old is None:
            status = "added"
        elif new is None:
            status = "removed"
        else:
            status = "changed" if replicas else "unchanged"
        hosts.append(HostDiff(host, status, target, tuple(replicas), unchanged))
    return tuple(hosts)


def _by_host(compiled: Compiled | None) -> dict[str, _Host]:
    """host -> (target, workloads by name, unit text by workload name)."""
    if compiled is None:
        return {}
    from compiler.targets import driver_for

    out: dict[str, _Host] = {}
    for name, host in compiled.fleet.hosts.items():
        out[name] = (host.target, {}, {})
    for workload in compiled.fleet.workloads:
        entry = out[workload.host]
        entry[1][workload.name] = workload
        found = driver_for(workload.target).compared_file(
            workload, compiled.fleet.settings, compiled.files
        )
        if found is not None:
            entry[2][workload.name] = found[1]
    return out


def _cluster(compiled: Compiled | None, host: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """A GPUStack cluster's documents as a plan compares them: ``kind/name`` →
    (deployment, view); empty for other hosts."""
    from compiler.targets.gpustack.documents import backend_view, comparable, model_view

    state = compiled.fleet.clusters.get(host) if compiled is not None else None
    if state is None:
        return {}
    found = {
        f"backend/{name}": ("", comparable(backend_view(document)))
        for name, document in state.backends.items()
    }
    found.update(
        (f"model/{document['name']}", (deployment, comparable(model_view(document))))
        for deployment, document in state.models.items()
    )
    return found


def _cluster_diff(
    old: dict[str, tuple[str, dict[str, Any]]], new: dict[str, tuple[str, dict[str, Any]]]
) -> tuple[list[ReplicaDiff], int]:
    diffs: list[ReplicaDiff] = []
    same = 0
    for name in sorted(set(old) | set(new)):
        was, will = old.get(name), new.get(name)
        if was is None and will is not None:
            diffs.append(ReplicaDiff(name, will[0], "create"))
        elif will is None and was is not None:
            diffs.append(ReplicaDiff(name, was[0], "delete"))
        elif was is not None and will is not None and was[1] != will[1]:
            diffs.append(ReplicaDiff(name, will[0], "update", changes_between(was[1], will[1])))
        else:
            same += 1
    return diffs, same


def _changes(was: Workload, will: Workload) -> tuple[Change, ...]:
    return changes_between(_compared(was), _compared(will))


def _compared(workload: Workload) -> dict[str, Any]:
    spec: dict[str, Any] = workload.spec()
    for key in ("deployment", "replica", "host", "target"):
        spec.pop(key, None)
    return spec


def _unit_diff(old: str | None, new: str | None, name: str) -> tuple[str, ...]:
    if old is None or new is None or old == new:
        return ()
    return tuple(
        line.rstrip("\n")
        for line in difflib.unified_diff(
            old.splitlines(), new.splitlines(), f"a/{name}", f"b/{name}", n=1, lineterm=""
        )
    )


def temporary_folder() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="fleetform-diff-")
