"""Observe a systemd host over its shell (SSH, or this machine): read-only.

Four commands, whatever the number of units: find fleetform's unit files by their
marker, ``systemctl show`` them (and every name fleetform must use), read the files
and their drop-ins, and ``docker inspect`` the containers they run.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable
from dataclasses import replace

from compiler.hub import MANIFEST, stamp
from compiler.labels import MODEL_KEY, PROJECT, SPEC_HASH, label
from compiler.observed import ObservedHost, ObservedModel, ObservedUnit
from compiler.remote.ssh import Shell, TransportError

SHOW_PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "NeedDaemonReload",
    "FragmentPath",
    "DropInPaths",
)
_HASH_KEY = re.compile(r"^X-Fleetform-Spec-Hash=(\S+)$", re.MULTILINE)


def env_file(project: str, unit: str) -> str:
    """Where a unit's secrets env file lives (``EnvironmentFile=`` of the unit)."""
    return f"/etc/fleetform/{project}/{unit.removesuffix('.service')}.env"


def observe_systemd_host(
    shell: Shell,
    host: str,
    project: str,
    unit_dir: str,
    names: Iterable[str],
    *,
    label_prefix: str,
    models: bool = False,
) -> ObservedHost:
    """``models``: also read the records of the hub models fetched onto the host (its
    docker's never-started record containers), when the repository wants any there."""
    try:
        units = _observe(shell, project, unit_dir, sorted(set(names)), label_prefix)
        records = _models(shell, project, label_prefix) if models else []
    except TransportError as error:
        return ObservedHost(host=host, target="systemd", error=error.message)
    return ObservedHost(host=host, target="systemd", units=tuple(units), models=tuple(records))


def _models(shell: Shell, project: str, prefix: str) -> list[ObservedModel]:
    listed = shell.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label={label(prefix, MODEL_KEY)}"]
        + ["--filter", f"label={label(prefix, PROJECT)}={project}"]
    )
    ids = listed.text.split() if listed.code == 0 else []
    if not ids:
        return []  # none, or no docker yet: the fetch says what is wrong
    result = shell.run(["docker", "inspect", "--type", "container", "--", *ids])
    try:
        documents = json.loads(result.text or "[]")
    except ValueError:
        return []
    records = [
        ObservedModel.from_record(d["Id"], (d.get("Config") or {}).get("Labels") or {}, prefix)
        for d in documents
    ]
    # How each folder looks now: one stat of every folder and its manifest.
    paths = [p for m in records if m.repo for p in (m.folder, f"{m.folder}/{MANIFEST}")]
    mtimes: dict[str, str] = {}
    if paths:
        stated = shell.run(["stat", "-c", "%.9Y %n", "--", *paths])  # exit 1: one is gone
        for line in stated.text.splitlines():
            mtime, _, path = line.partition(" ")
            mtimes[path] = mtime
    records = [
        replace(m, now=stamp(mtimes[m.folder], mtimes.get(f"{m.folder}/{MANIFEST}", "")))
        if m.repo and m.folder in mtimes
        else replace(m, now="")
        if m.repo
        else m
        for m in records
    ]
    return sorted(records, key=lambda m: (m.folder, m.key, m.record))


def _observe(
    shell: Shell, project: str, unit_dir: str, wanted: list[str], label_prefix: str
) -> list[ObservedUnit]:
    marker = f"X-Fleetform-Project={project}"
    found = shell.run(["grep", "-rlxF", "--include=*.service", marker, unit_dir])
    if found.code not in (0, 1):  # 1: no match
        raise TransportError(f"cannot read {unit_dir}: {found.error}")
    owned_paths = [
        path for path in found.text.splitlines() if posixpath.dirname(path) == unit_dir.rstrip("/")
    ]
    owned_names = {posixpath.basename(path) for path in owned_paths}
    names = sorted(owned_names | set(wanted))
    if not names:
        return []
    states = _show(shell, names)
    files = [
        state["FragmentPath"]
        for state in states.values()
        if state.get("FragmentPath") and state.get("LoadState") != "not-found"
    ]
    drop_in_paths = [p for state in states.values() for p in state.get("DropInPaths", "").split()]
    contents = _read(shell, files + drop_in_paths)
    env_hashes = _env_hashes(shell, [env_file(project, name) for name in names])
    containers = _containers(
        shell, [name.removesuffix(".service") for name in names], label(label_prefix, SPEC_HASH)
    )
    units = []
    for name in names:
        state = states.get(name, {})
        path = state.get("FragmentPath", "")
        if state.get("LoadState") == "not-found" or not path:
            continue
        text = contents.get(path, "")
        match = _HASH_KEY.search(text)
        drop_ins = tuple((p, contents.get(p, "")) for p in state.get("DropInPaths", "").split())
        container, container_hash = containers.get(name.removesuffix(".service"), ("missing", ""))
        units.append(
            ObservedUnit(
                name=name,
                path=path,
                owned=marker in text.splitlines(),
                text=text,
                spec_hash=match.group(1) if match else "",
                load_state=state.get("LoadState", ""),
                active_state=state.get("ActiveState", ""),
                sub_state=state.get("SubState", ""),
                unit_file_state=state.get("UnitFileState", ""),
                need_daemon_reload=state.get("NeedDaemonReload") == "yes",
                drop_ins=drop_ins,
                container=container,
                container_hash=container_hash,
                env_hash=env_hashes.get(env_file(project, name), ""),
            )
        )
    return units


def _show(shell: Shell, names: list[str]) -> dict[str, dict[str, str]]:
    result = shell.run(["systemctl", "show", "-p", ",".join(SHOW_PROPERTIES), "--", *names])
    if result.code != 0:
        raise TransportError(f"systemctl show failed: {result.error}")
    states: dict[str, dict[str, str]] = {}
    for block in result.text.split("\n\n"):
        fields = dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
        if fields.get("Id"):
            states[fields["Id"]] = fields
    return states


def _read(shell: Shell, paths: list[str]) -> dict[str, str]:
    """Each file's text (``grep -H ''`` prints every line as ``path:line``)."""
    if not paths:
        return {}
    result = shell.run(["grep", "-H", "", "--", *paths])
    texts: dict[str, list[str]] = {path: [] for path in paths}
    for line in result.text.split("\n"):
        for path in paths:
            if line.startswith(path + ":"):
                texts[path].append(line[len(path) + 1 :])
                break
    return {path: "\n".join(lines) + ("\n" if lines else "") for path, lines in texts.items()}


def _env_hashes(shell: Shell, paths: list[str]) -> dict[str, str]:
    result = shell.run(["sha256sum", "--", *paths])
    hashes = {}
    for line in result.text.splitlines():
        digest, _, path = line.partition("  ")
        hashes[path] = digest[:16]
    return hashes


def _containers(shell: Shell, names: list[str], hash_label: str) -> dict[str, tuple[str, str]]:
    """Each container's state (docker's State.Status) and spec-hash label."""
    result = shell.run(["docker", "inspect", "--type", "container", "--", *names])
    try:
        documents = json.loads(result.text or "[]")
    except ValueError:
        return {}
    return {
        d.get("Name", "").lstrip("/"): (
            (d.get("State") or {}).get("Status", "unknown"),
            ((d.get("Config") or {}).get("Labels") or {}).get(hash_label, ""),
        )
        for d in documents
    }
