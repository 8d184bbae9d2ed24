"""Fuzzing ``compile`` with hostile repositories derived from the example fleet (issue 9).

Each example starts from the example fleet in the repository root (``backends.d/``,
``deployments.d/``, ``hosts.d/``, ``fleetform.yaml``), compiled once so that
``output/`` exists, and applies a few mutations drawn by hypothesis:

- model-level: a field of a backend, deployment, host or the settings (at any depth:
  ``version_configs.v1.image_name``, ``gpu_selector.gpu_ids[0]``, ``env.X``) replaced,
  inserted or deleted, its new value drawn from hostile values (text with controls,
  quotes, ``{{…}}``, ``$``, ``%``, options like ``-x``, odd Unicode; huge, negative and
  float numbers, inf and nan; wrong types, lists and maps); ``extends`` cycles;
  duplicated names; a symlink out of the repository in ``output/``;
- YAML-level, on a file's text: explicit tags, anchors and aliases, a duplicated line
  (key), truncation, indentation changes, ``---`` documents, stray control bytes.

The invariant is the contract of ``tests/hostile_repos.py``: exit 0 or 1 only, no
traceback, within 20 s and 2 GB; on exit 1 one ``file:line:col:`` line per problem and
``output/`` untouched; never a change outside the repository. On exit 0 every
``compose.yaml`` is YAML, and for a deterministic third of the examples the artifacts
pass ``docker compose config`` and ``systemd-analyze verify``.

CI runs a fixed, bounded budget (300 examples, ``derandomize=True``; ~40 s on 2 cores). A longer
run, for local use::

    FLEETFORM_FUZZ_EXAMPLES=5000 python3 -m pytest -q tests/test_fuzz.py -p no:cacheprovider

(``FLEETFORM_FUZZ_SEED=N`` additionally draws a different, still reproducible, series.)
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile_repos import (
    Link,
    contract_violations,
    make_outside,
    run_forked,
    tree_state,
    write_files,
)
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("backends.d", "deployments.d", "hosts.d")
SETTINGS_FILE = "fleetform.yaml"

EXAMPLES = int(os.environ.get("FLEETFORM_FUZZ_EXAMPLES", "300"))
SEED = int(os.environ.get("FLEETFORM_FUZZ_SEED", "0"))

# --- the example fleet ------------------------------------------------------------------


def example_files() -> dict[str, str]:
    """The example fleet's source files, as text, by path relative to the repository."""
    files = {SETTINGS_FILE: (REPO_ROOT / SETTINGS_FILE).read_text(encoding="utf-8")}
    for folder in SOURCE_FOLDERS:
        for path in sorted((REPO_ROOT / folder).rglob("*.y*ml")):
            files[path.relative_to(REPO_ROOT).as_posix()] = path.read_text(encoding="utf-8")
    return files


EXAMPLE = example_files()


def documents_of(text: str) -> list[Any]:
    """A file's objects: each document, or each item of a document that is a list."""
    objects: list[Any] = []
    for document in yaml.safe_load_all(text):
        if isinstance(document, list):
            objects.extend(document)
        elif document is not None:
            objects.append(document)
    return objects


EXAMPLE_OBJECTS = {path: documents_of(text) for path, text in EXAMPLE.items()}

# Field names each kind of object knows (and a few it does not), for inserts.
FIELDS = {
    "backends.d": [
        "backend_name", "description", "health_check_path", "default_version", "default_env",
        "default_entrypoint", "default_run_command", "default_backend_param",
        "parameter_format", "version_configs", "extends", "is_built_in", "icon",
    ],
    "deployments.d": [
        "name", "abstract", "extends", "source", "local_path", "huggingface_repo_id",
        "model_scope_model_id", "backend", "backend_version", "backend_parameters",
        "image_name", "run_command", "entrypoint", "env", "replicas", "gpu_selector",
        "worker_selector", "port", "volumes", "devices", "ports", "shm_size", "labels",
        "network_mode", "restart", "health_check_path", "health_timeout",
    ],
    "hosts.d": [
        "name", "address", "target", "docker_host", "ssh", "gpus", "labels", "port_range",
        "model_dir", "unit_dir",
    ],
    SETTINGS_FILE: ["project", "output_dir", "label_prefix", "defaults"],
    "nested": [
        "image_name", "run_command", "entrypoint", "env", "custom_framework", "gpu_ids",
        "gpus_per_replica", "index", "framework", "count", "memory_mib", "uuid", "secret",
        "model_dir", "port_range", "shm_size", "network_mode", "unit_dir", "target",
    ],
}  # fmt: skip

# --- hostile values -------------------------------------------------------------------------

PIECES = [
    "", " ", "'", '"', "\\", "$", "$$", "${X}", "$(id)", "`id`", "%", "%h", "%%", ";", "|",
    "&&", "\n", "\r", "\t", "\x00", "\x07", "\x1b[31m", "\x7f", "\x85", "\u2028", "\ufeff",
    "\u202e", "\ud7ff", "\ufffe", "é", "中", "🙂", "-", "--", "-x", "--privileged",
    "-v/:/host", "-oProxyCommand=x", "=", ":", ",", "/", "..", "../..", "~", "*", "#", "&a",
    "!!int", "{{", "}}", "{{model_path}}", "{{port}}", "{{ gpu_ids }}", "{{X}}", "{{ a + b }}",
    "{%", "io.fleetform.managed-by", "gpu-a:cuda:0", "gpu-c:cuda:1", "40000-40063",
    "unix:///var/run/docker.sock", "ssh://", "tcp://", "/etc", "/", "host", "cuda", "v1",
    "vllm-custom", "llm-base", "gpu-a", "0", "1", "٣", "１", "1e400", "nan",
]  # fmt: skip

TEXT = st.lists(
    st.one_of(
        st.sampled_from(PIECES),
        st.text(st.characters(exclude_categories=["Cs"]), max_size=6),
    ),
    max_size=5,
).map("".join)

NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70),
    # (An int over 4,300 digits cannot be dumped: the "huge-int" text mutation writes one.)
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**4000, 65535, 65536, 1000, 1001, 1024, 1025]),
    st.floats(allow_nan=True, allow_infinity=True),
)

SCALARS = st.one_of(TEXT, NUMBERS, st.booleans(), st.none())


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.sampled_from(FIELDS["nested"] + ["A", "HF_HOME", "gpu"]), TEXT)
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(keys, children, max_size=4),
    )


HOSTILE = st.recursive(SCALARS, _containers, max_leaves=8)

# --- model-level mutations -------------------------------------------------------------------

Path_ = tuple[Any, ...]


def paths_in(value: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every path to a node below ``value`` (dict keys and list indices)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield prefix + (key,)
            yield from paths_in(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield prefix + (index,)
            yield from paths_in(item, prefix + (index,))


def node_at(root: Any, path: Path_) -> Any:
    node = root
    for part in path:
        node = node[part]
    return node


def parent_of(root: Any, path: Path_) -> Any:
    return node_at(root, path[:-1])


def folder_of(path: str) -> str:
    return path.split("/", 1)[0] if "/" in path else path


def mutate_model(data: st.DataObject, objects: dict[str, list[Any]]) -> list[str]:
    """One model-level mutation of ``objects`` (in place); its description."""
    op = data.draw(
        st.sampled_from(["replace", "replace", "insert", "delete", "cycle", "duplicate"]),
        label="model op",
    )
    files = sorted(path for path, objs in objects.items() if objs)
    file = data.draw(st.sampled_from(files), label="file")
    objs = objects[file]
    index = data.draw(st.integers(0, len(objs) - 1), label="object")
    target = objs[index]
    if op == "cycle" and file.startswith(("backends.d", "deployments.d")):
        key = "backend_name" if file.startswith("backends.d") else "name"
        same = [
            (f, i) for f in files if folder_of(f) == folder_of(file) for i in range(len(objects[f]))
        ]
        other_file, other = data.draw(st.sampled_from(same), label="other")
        a, b = target, objects[other_file][other]
        if isinstance(a, dict) and isinstance(b, dict) and key in a and key in b:
            a["extends"], b["extends"] = b[key], a[key]
            return [f"extends cycle {a[key]!r} <-> {b[key]!r}"]
        return ["cycle skipped"]
    if op == "duplicate":
        objs.append(copy.deepcopy(target))
        return [f"duplicated object {index} of {file}"]
    if not isinstance(target, dict):
        objs[index] = data.draw(HOSTILE, label="object")
        return [f"object {index} of {file} replaced"]
    paths = list(paths_in(target))
    if op == "insert" or not paths:
        container_paths = [()] + [p for p in paths if isinstance(node_at(target, p), dict)]
        where = data.draw(st.sampled_from(container_paths), label="at")
        container = node_at(target, where)
        names = FIELDS.get(folder_of(file), []) if where == () else FIELDS["nested"]
        key = data.draw(st.one_of(st.sampled_from(names), TEXT), label="key")
        container[key] = data.draw(HOSTILE, label="value")
        return [f"insert {where + (key,)} in {file}[{index}]"]
    path = data.draw(st.sampled_from(paths), label="path")
    parent = parent_of(target, path)
    if op == "delete":
        del parent[path[-1]]
        return [f"delete {path} in {file}[{index}]"]
    parent[path[-1]] = data.draw(HOSTILE, label="value")
    return [f"replace {path} in {file}[{index}]"]


# --- YAML-level mutations ---------------------------------------------------------------------

TAGS = [
    "!!int", "!!float", "!!bool", "!!str", "!!null", "!!binary", "!!timestamp", "!!set",
    "!!omap", "!!map", "!!seq", "!custom", "!!python/object/apply:os.system",
]  # fmt: skip


YAML_OPS = [
    "tag", "anchor", "merge", "dup-line", "truncate", "indent", "document", "byte", "huge-int",
]  # fmt: skip
SYMLINK_ODDS = 10  # one repository in this many gets a symlink out of it


def value_spots(text: str) -> list[int]:
    """Offsets just after ``key: `` on each line: where a value starts."""
    spots = []
    offset = 0
    for line in text.splitlines(keepends=True):
        at = line.find(": ")
        if at >= 0:
            spots.append(offset + at + 2)
        offset += len(line)
    return spots


def mutate_text(data: st.DataObject, text: str) -> tuple[str, str]:
    """One YAML-level mutation of a file's text; (new text, description)."""
    op = data.draw(st.sampled_from(YAML_OPS), label="yaml op")
    lines = text.splitlines(keepends=True)
    spots = value_spots(text)
    if op == "tag" and spots:
        at = data.draw(st.sampled_from(spots), label="spot")
        tag = data.draw(st.sampled_from(TAGS), label="tag")
        return text[:at] + tag + " " + text[at:], f"tag {tag} at {at}"
    if op in ("anchor", "merge") and len(spots) >= 2:
        first, second = sorted(
            data.draw(
                st.lists(st.sampled_from(spots), min_size=2, max_size=2, unique=True), label="spots"
            )
        )
        end = text.find("\n", second)
        end = len(text) if end < 0 else end
        alias = "*fz" if op == "anchor" else "{<<: *fz}"
        new = text[:first] + "&fz " + text[first:second] + alias + text[end:]
        return new, f"{op} {first}->{second}"
    if op == "huge-int" and spots:
        at = data.draw(st.sampled_from(spots), label="spot")
        end = text.find("\n", at)
        end = len(text) if end < 0 else end
        digits = data.draw(st.sampled_from([4301, 5000, 100_000]), label="digits")
        return text[:at] + "9" * digits + text[end:], f"{digits}-digit int at {at}"
    if op == "dup-line" and lines:
        i = data.draw(st.integers(0, len(lines) - 1), label="line")
        return "".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :]), f"dup line {i}"
    if op == "truncate" and text:
        at = data.draw(st.integers(0, len(text) - 1), label="cut")
        return text[:at], f"truncate at {at}"
    if op == "indent" and lines:
        i = data.draw(st.integers(0, len(lines) - 1), label="line")
        shift = data.draw(st.sampled_from([-2, -1, 1, 2, 4]), label="shift")
        line = lines[i]
        lines[i] = (
            " " * shift + line
            if shift > 0
            else line[min(-shift, len(line) - len(line.lstrip(" "))) :]
        )
        return "".join(lines), f"indent line {i} by {shift}"
    if op == "document":
        i = data.draw(st.integers(0, len(lines)), label="line")
        return "".join(lines[:i] + ["---\n"] + lines[i:]), f"--- before line {i}"
    at = data.draw(st.integers(0, len(text)), label="at")
    char = data.draw(
        st.sampled_from(["\x00", "\x07", "\t", "\ufeff", "\x85", "\u2028", "\r", "\x1b", "\uffff"]),
        label="char",
    )
    return text[:at] + char + text[at:], f"byte {char!r} at {at}"


# --- running one repository ---------------------------------------------------------------------


@dataclass
class Fleet:
    """The example fleet's text files, some replaced, plus filesystem oddities."""

    files: dict[str, Any]


def dump_objects(objects: list[Any]) -> str:
    return yaml.safe_dump_all(objects, allow_unicode=True, sort_keys=False, width=1_000_000)


@pytest.fixture(scope="module")
def compiled_example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example fleet after one successful compile (so that output/ exists)."""
    from click.testing import CliRunner

    from compiler.cli import cli

    root = tmp_path_factory.mktemp("example") / "repo"
    root.mkdir()
    write_files(root, EXAMPLE)
    result = CliRunner().invoke(cli, ["compile", "--repo", str(root)])
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    return root


@contextmanager
def scratch() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="fleetform-fuzz-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def sampled(files: dict[str, Any]) -> bool:
    """A deterministic third of the repositories get the real tools' read-back."""
    digest = hashlib.sha256(repr(sorted(files.items())).encode("utf-8", "replace")).digest()
    return digest[0] % 3 == 0


def check_success(repo: Path, files: dict[str, Any]) -> None:
    from helpers import compose_config, systemd_verify

    output = repo / "output"
    for path in output.rglob("*"):
        assert not path.is_symlink(), f"{path} is a symlink after a successful compile"
        assert path.resolve().is_relative_to(repo.resolve()), path
    compose_files = sorted(output.glob("*/compose.yaml"))
    for compose_file in compose_files:
        document = yaml.safe_load(compose_file.read_text(encoding="utf-8"))
        assert isinstance(document, dict) and isinstance(document.get("services"), dict)
    if sampled(files):
        for compose_file in compose_files:
            compose_config(compose_file)
        units = sorted(output.glob("*/systemd/*.service"))
        if units:
            assert systemd_verify(units) == []


def draw_fleet(data: st.DataObject) -> tuple[dict[str, Any], list[str]]:
    objects = copy.deepcopy(EXAMPLE_OBJECTS)
    notes: list[str] = []
    changed: set[str] = set()
    for _ in range(data.draw(st.integers(1, 3), label="model mutations")):
        before = copy.deepcopy(objects)
        notes += mutate_model(data, objects)
        changed |= {path for path in objects if objects[path] != before[path]}
    files: dict[str, Any] = {
        path: (dump_objects(objects[path]) if path in changed else text)
        for path, text in EXAMPLE.items()
    }
    for _ in range(data.draw(st.integers(0, 2), label="yaml mutations")):
        path = data.draw(st.sampled_from(sorted(files)), label="yaml file")
        files[path], note = mutate_text(data, files[path])
        notes.append(f"{path}: {note}")
    if SYMLINK_ODDS and data.draw(st.integers(1, SYMLINK_ODDS), label="filesystem") == 1:
        where = data.draw(
            st.sampled_from(
                [
                    "output/gpu-a",
                    "output/gpu-c/systemd",
                    "output",
                    "deployments.d/zz.yaml",
                    "output/gpu-b/compose.yaml",
                    "output/gpu-c/index.json",
                ]
            ),
            label="symlink",
        )
        target = "{outside}/secret.txt" if where.endswith((".yaml", ".json")) else "{outside}/host"
        files[where] = Link(target)
        notes.append(f"symlink {where} -> {target}")
    return files, notes


@seed(SEED)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=SEED == 0,
    database=None,
    report_multiple_bugs=False,
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(data=st.data())
def test_compile_keeps_the_contract_on_mutated_fleets(
    data: st.DataObject, compiled_example: Path
) -> None:
    files, notes = draw_fleet(data)
    with scratch() as folder:
        repo = folder / "repo"
        shutil.copytree(compiled_example, repo, symlinks=True)
        outside = make_outside(folder / "outside")
        for relative, content in files.items():
            path = repo / relative
            if isinstance(content, Link) and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
        write_files(repo, files, outside)
        output_before = tree_state(repo / "output")
        outside_before = tree_state(outside)

        run = run_forked(["compile", "--repo", str(repo)])

        violations = contract_violations(
            run,
            output_before=output_before,
            output_after=tree_state(repo / "output"),
            outside_before=outside_before,
            outside_after=tree_state(outside),
        )
        assert not violations, f"{violations}\nmutations: {notes}\nstderr: {run.stderr[:1500]}"
        if run.exit_code == 0:
            check_success(repo, files)


def test_the_example_fleet_is_parsed_whole() -> None:
    """The strategies start from every object of the example fleet."""
    kinds = {folder_of(path) for path, objects in EXAMPLE_OBJECTS.items() if objects}
    assert kinds == {*SOURCE_FOLDERS, SETTINGS_FILE}
    assert sum(len(objects) for objects in EXAMPLE_OBJECTS.values()) >= 10
