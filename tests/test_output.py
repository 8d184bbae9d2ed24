"""output/: unchanged files untouched, stale files removed, --check reports; nothing
followed through a link, nothing trusted in a hand-edited index."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from compiler import api
from compiler.cli import cli
from compiler.errors import FleetformError
from tests.helpers_repo import make_repo

# Where an output/ problem is reported when fleetform.yaml does not set output_dir.
DEFAULT_SETTING = "fleetform.yaml:1:1: output_dir: "

DEPLOYMENTS = """\
- {name: alpha, backend: srv, local_path: /m/a}
- {name: beta, backend: srv, local_path: /m/b}
"""


def _stat(root: Path) -> dict[str, tuple[int, int]]:
    return {
        p.relative_to(root / "output").as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in (root / "output").rglob("*")
        if p.is_file()
    }


def test_no_change_recompile_writes_no_file(tmp_path: Path) -> None:
    make_repo(tmp_path, {"deployments.d/d.yaml": DEPLOYMENTS})
    api.compile_repo(tmp_path)
    before = _stat(tmp_path)
    folders = [(tmp_path / p).stat().st_mtime_ns for p in (".", "output", "output/h1")]
    assert api.compile_repo(tmp_path).empty
    assert _stat(tmp_path) == before
    # Not even a staging folder made and removed beside output/.
    assert [(tmp_path / p).stat().st_mtime_ns for p in (".", "output", "output/h1")] == folders


def test_only_changed_files_are_rewritten_and_stale_ones_removed(tmp_path: Path) -> None:
    hosts = """\
    - {name: h1, address: 10.9.0.1, gpus: {framework: cuda, count: 4}}
    - {name: h2, address: 10.9.0.2, target: systemd, labels: {kind: unit},
       gpus: {framework: cuda, count: 1}}
    """
    make_repo(
        tmp_path,
        {
            "hosts.d/h.yaml": hosts,
            "deployments.d/d.yaml": DEPLOYMENTS
            + "- {name: gamma, backend: srv, local_path: /m/c, worker_selector: {kind: unit}}\n",
        },
    )
    api.compile_repo(tmp_path)
    (tmp_path / "output" / ".gitkeep").write_text("")
    before = _stat(tmp_path)
    assert "h2/systemd/fleetform-gamma-0.service" in before
    (tmp_path / "deployments.d" / "d.yaml").write_text(DEPLOYMENTS)
    (tmp_path / "hosts.d" / "h.yaml").write_text(hosts.split("    - {name: h2")[0])
    changes = api.compile_repo(tmp_path)
    assert changes.deleted == [
        "h2/index.json",
        "h2/systemd/fleetform-gamma-0.service",
    ]
    assert changes.updated == [] and changes.created == []
    after = _stat(tmp_path)
    assert after["h1/compose.yaml"] == before["h1/compose.yaml"]
    assert not (tmp_path / "output" / "h2").exists()
    assert (tmp_path / "output" / ".gitkeep").exists()


def test_check_writes_nothing_and_lists_stale_files(tmp_path: Path) -> None:
    make_repo(tmp_path, {"deployments.d/d.yaml": DEPLOYMENTS})
    runner = CliRunner()
    result = runner.invoke(cli, ["compile", "--check", "--repo", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "stale: would be created h1/compose.yaml",
        "stale: would be created h1/index.json",
        "output/ is stale: run `fleetform compile` and commit the result",
    ]
    assert not (tmp_path / "output").exists()
    assert runner.invoke(cli, ["compile", "--repo", str(tmp_path)]).exit_code == 0
    result = runner.invoke(cli, ["compile", "--check", "--repo", str(tmp_path)])
    assert result.exit_code == 0
    assert result.stdout == "output/ is up to date\n"
    (tmp_path / "output" / "h1" / "compose.yaml").write_text("# edited by hand\n")
    result = runner.invoke(cli, ["compile", "--check", "--repo", str(tmp_path)])
    assert result.exit_code == 1
    assert "stale: would be updated h1/compose.yaml" in result.stderr


def test_files_fleetform_did_not_write_are_never_removed(tmp_path: Path) -> None:
    make_repo(tmp_path, {"deployments.d/d.yaml": DEPLOYMENTS})
    api.compile_repo(tmp_path)
    foreign = {
        "output/README.md": "notes",
        "output/other/thing.txt": "kept",
        "output/h1/notes.txt": "kept too",
        "output/h1/systemd/custom.conf": "kept as well",
        "output/ghost/compose.yaml": "no index: not ours",
    }
    for relative, text in foreign.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    (tmp_path / "deployments.d" / "d.yaml").write_text("")
    (tmp_path / "hosts.d" / "h.yaml").write_text("")
    changes = api.compile_repo(tmp_path)
    assert changes.deleted == ["h1/compose.yaml", "h1/index.json"]
    for relative, text in foreign.items():
        assert (tmp_path / relative).read_text() == text


@pytest.mark.parametrize(
    "output_dir",
    [".", "", "..", "../elsewhere", "sub/../..", "backends.d", ".git", "~/out"],
)
def test_output_dir_must_be_a_folder_inside_the_repository(tmp_path: Path, output_dir: str) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {
            "deployments.d/d.yaml": DEPLOYMENTS,
            "fleetform.yaml": f"output_dir: '{output_dir}'\n",
        },
    )
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(FleetformError) as caught:
        api.compile_repo(repo)
    assert str(caught.value).startswith("fleetform.yaml:1:13: output_dir: ")
    assert sorted(p for p in tmp_path.rglob("*")) == before


def test_absolute_output_dir_is_refused_and_nothing_is_touched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.conf").write_text("do not delete")
    repo = make_repo(
        tmp_path / "repo",
        {"deployments.d/d.yaml": DEPLOYMENTS, "fleetform.yaml": f"output_dir: {victim}\n"},
    )
    with pytest.raises(FleetformError, match="must be a folder inside the repository"):
        api.compile_repo(repo)
    assert [p.name for p in victim.iterdir()] == ["precious.conf"]


def test_temporary_files_of_a_killed_compile_are_removed(tmp_path: Path) -> None:
    make_repo(tmp_path, {"deployments.d/d.yaml": DEPLOYMENTS})
    api.compile_repo(tmp_path)
    out = tmp_path / "output"
    host = next(p for p in out.iterdir() if p.is_dir())
    left = host / ".fleetform-abc123.tmp"
    left.write_text("half")
    keep = host / ".notes"
    keep.write_text("mine")
    (host / "index.json").write_bytes(b"{}")  # make the next compile write something
    with pytest.warns(UserWarning, match="ignored"):
        api.compile_repo(tmp_path)
    assert not left.exists()
    assert keep.read_text() == "mine"


# --- confinement: links and special files in or on the way to output/ ---------------------

SYSTEMD_HOSTS = """\
- {name: h1, address: 10.9.0.1, gpus: {framework: cuda, count: 4}}
- {name: h2, address: 10.9.0.2, target: systemd, labels: {kind: unit},
   gpus: {framework: cuda, count: 1}}
"""
WITH_UNIT = DEPLOYMENTS + (
    "- {name: gamma, backend: srv, local_path: /m/c, worker_selector: {kind: unit}}\n"
)
UNIT = "h2/systemd/fleetform-gamma-0.service"


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root`` (not following links): file bytes, link targets, folders."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[relative] = f"-> {os.readlink(path)}"
        elif path.is_dir():
            found[relative] = "dir"
        elif path.is_file():
            found[relative] = path.read_bytes()
        else:
            found[relative] = "special"
    return found


@pytest.fixture
def linked(tmp_path: Path) -> tuple[Path, Path]:
    """A compiled repository with a systemd host, and a victim folder outside it."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.service").write_text("[Unit]\nDescription=not fleetform's\n")
    (victim / "fleetform-gamma-0.service").write_text("a unit of the same name\n")
    (victim / "index.json").write_text("{}\n")
    repo = make_repo(
        tmp_path / "repo", {"hosts.d/h.yaml": SYSTEMD_HOSTS, "deployments.d/d.yaml": WITH_UNIT}
    )
    api.compile_repo(repo)
    # The next compile would change every file (another image) if it ran.
    (repo / "deployments.d" / "d.yaml").write_text(WITH_UNIT.replace("/m/", "/models/"))
    return repo, victim


def _replace_with_link(path: Path, target: Path | str) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize(
    ("where", "target", "message"),
    [
        ("output", "{victim}", "output: is a symbolic link (to {victim})"),
        ("output/h1", "{victim}", "output/h1: is a symbolic link (to {victim})"),
        ("output/h2/systemd", "{victim}", "output/h2/systemd: is a symbolic link (to {victim})"),
        (
            f"output/{UNIT}",
            "{victim}/fleetform-gamma-0.service",
            f"output/{UNIT}: is a symbolic link (to {{victim}}/fleetform-gamma-0.service)",
        ),
        (
            "output/h1/index.json",
            "{victim}/index.json",
            "output/h1/index.json: is a symbolic link (to {victim}/index.json)",
        ),
        (
            "output/h1/notes",
            "/nonexistent/x",
            "output/h1/notes: is a symbolic link (to /nonexistent/x)",
        ),
        (
            "output/h1/relative",
            "../../../victim",
            "output/h1/relative: is a symbolic link (to ../../../victim)",
        ),
    ],
)
def test_a_link_in_output_is_refused_and_nothing_is_touched(
    linked: tuple[Path, Path], where: str, target: str, message: str
) -> None:
    repo, victim = linked
    _replace_with_link(repo / where, target.format(victim=victim))
    victim_before, repo_before = _tree(victim), _tree(repo)
    for args in (["compile"], ["compile", "--check"], ["validate"]):
        result = CliRunner().invoke(cli, [*args, "--repo", str(repo)])
        assert result.exit_code == 1, result.output
        assert result.stderr == (
            DEFAULT_SETTING
            + message.format(victim=victim)
            + "; fleetform never writes through links\n"
        )
    assert _tree(victim) == victim_before
    assert _tree(repo) == repo_before


def test_a_link_above_a_nested_output_dir_is_refused_at_its_setting(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "out").mkdir()
    (victim / "out" / "keep.txt").write_text("mine")
    repo = make_repo(
        tmp_path / "repo",
        {
            "deployments.d/d.yaml": DEPLOYMENTS,
            "fleetform.yaml": "project: demo\n\noutput_dir: build/out\n",
        },
    )
    (repo / "build").symlink_to(victim)
    before = _tree(victim)
    result = CliRunner().invoke(cli, ["compile", "--repo", str(repo)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"fleetform.yaml:3:13: output_dir: build: is a symbolic link (to {victim});"
        " fleetform never writes through links\n"
    )
    assert _tree(victim) == before


def test_a_nested_output_dir_is_created_and_its_parent_locked(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        {"deployments.d/d.yaml": DEPLOYMENTS, "fleetform.yaml": "output_dir: build/out\n"},
    )
    assert api.compile_repo(repo).created == ["h1/compose.yaml", "h1/index.json"]
    assert sorted(p.name for p in (repo / "build").iterdir()) == ["out"]
    assert api.compile_repo(repo).empty


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_special_file_in_output_is_refused(tmp_path: Path, kind: str) -> None:
    repo = make_repo(tmp_path, {"deployments.d/d.yaml": DEPLOYMENTS})
    api.compile_repo(repo)
    special = repo / "output" / "h1" / "special"
    if kind == "fifo":
        os.mkfifo(special)
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(special))
        server.close()
    (repo / "deployments.d" / "d.yaml").write_text(DEPLOYMENTS.replace("/m/", "/models/"))
    before = _tree(repo)
    result = CliRunner().invoke(cli, ["compile", "--repo", str(repo)])
    assert result.exit_code == 1
    assert result.stderr == (
        f"{DEFAULT_SETTING}output/h1/special: is a {kind}; fleetform keeps only folders and"
        " regular files in output/\n"
    )
    assert _tree(repo) == before


def test_the_output_dir_setting_is_named_where_it_is_written(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path,
        {"deployments.d/d.yaml": DEPLOYMENTS, "fleetform.yaml": "project: p\noutput_dir: out\n"},
    )
    (repo / "out").write_text("a file, not a folder")
    result = CliRunner().invoke(cli, ["compile", "--repo", str(repo)])
    assert result.exit_code == 1
    assert result.stderr == "fleetform.yaml:2:13: output_dir: out: is not a folder\n"
    (repo / "fleetform.yaml").write_text("project: p\n")
    (repo / "output").write_text("a file")
    result = CliRunner().invoke(cli, ["compile", "--repo", str(repo)])
    assert result.stderr == f"{DEFAULT_SETTING}output: is not a folder\n"


CONTROL = "must be a folder name without control characters or NUL"
TOO_LONG = "is too long: at most 255 bytes per folder name and 1024 in all"


@pytest.mark.parametrize(
    ("value", "messages"),
    [
        # NUL may be refused by the YAML reader already, as a control character.
        ('"out\\0put"', (CONTROL, "control character U+0000 is not allowed")),
        ('"out\\nput"', (CONTROL,)),
        ("o" + "x" * 299, (TOO_LONG,)),
        ("/".join(["d" * 200] * 6), (TOO_LONG,)),
    ],
)
def test_an_output_dir_no_file_system_takes_is_a_validation_error(
    tmp_path: Path, value: str, messages: tuple[str, ...]
) -> None:
    repo = make_repo(
        tmp_path, {"deployments.d/d.yaml": DEPLOYMENTS, "fleetform.yaml": f"output_dir: {value}\n"}
    )
    before = _tree(repo)
    result = CliRunner().invoke(cli, ["compile", "--repo", str(repo)])
    assert result.exit_code == 1
    assert result.stderr.startswith("fleetform.yaml:1:13: output_dir: ")
    assert any(message in result.stderr for message in messages), result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert _tree(repo) == before


@pytest.mark.parametrize(
    ("obstruction", "message"),
    [
        (
            "output/h1/compose.yaml/",
            "output/h1/compose.yaml: is a folder where fleetform writes a file",
        ),
        ("output/h1", "output/h1: is a file where fleetform needs a folder"),
    ],
)
def test_an_obstruction_in_output_is_one_line_and_nothing_changes(
    tmp_path: Path, obstruction: str, message: str
) -> None:
    repo = make_repo(tmp_path, {"deployments.d/d.yaml": DEPLOYMENTS})
    if obstruction.endswith("/"):
        (repo / obstruction).mkdir(parents=True)
        (repo / obstruction / "mine.txt").write_text("mine")
    else:
        (repo / obstruction).parent.mkdir(parents=True)
        (repo / obstruction).write_text("a file")
    before = _tree(repo)
    for args in (["compile"], ["compile", "--check"]):
        result = CliRunner().invoke(cli, [*args, "--repo", str(repo)])
        assert (result.exit_code, result.stderr) == (1, DEFAULT_SETTING + message + "\n")
    assert _tree(repo) == before


# --- untrusted index.json ----------------------------------------------------------------

PLACED = """\
- {name: alpha, backend: srv, local_path: /m/a}
- {name: beta, backend: srv, local_path: /m/b, replicas: 2}
"""
# Where a fresh compile puts them: lowest free GPU and port, in name order.
FRESH = {("alpha", 0): ([0], 40000), ("beta", 0): ([1], 40001), ("beta", 1): ([2], 40002)}
# A valid index that moved them: trusted, so kept.
MOVED = {("alpha", 0): ([3], 40050), ("beta", 0): ([2], 40051), ("beta", 1): ([1], 40052)}


def _placement(repo: Path, host: str = "h1") -> dict[tuple[str, int], tuple[list[int], int]]:
    index = json.loads((repo / "output" / host / "index.json").read_text())
    return {(w["deployment"], w["replica"]): (w["gpus"], w["port"]) for w in index["workloads"]}


@pytest.fixture
def placed(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    repo = make_repo(tmp_path, {"deployments.d/d.yaml": PLACED})
    api.compile_repo(repo)
    assert _placement(repo) == FRESH
    index = json.loads((repo / "output" / "h1" / "index.json").read_text())
    for entry in index["workloads"]:
        entry["gpus"], entry["port"] = MOVED[(entry["deployment"], entry["replica"])]
    return repo, index


def test_a_valid_hand_edited_index_is_followed(placed: tuple[Path, dict[str, Any]]) -> None:
    repo, index = placed
    (repo / "output" / "h1" / "index.json").write_text(json.dumps(index))
    result = CliRunner().invoke(cli, ["compile", "--repo", str(repo)])
    assert (result.exit_code, result.stderr) == (0, "")
    assert _placement(repo) == MOVED


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(index: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = index
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = value

    return edit


HOSTILE: list[tuple[str, Callable[[dict[str, Any]], None] | str, str]] = [
    ("a list", "[]", "Input should be an object"),
    ("null", "null", "Input should be an object"),
    ("1e400", "1e400", "Input should be an object"),
    (
        "deep nesting",
        "[" * 100_000 + "]" * 100_000,
        "Invalid JSON: recursion limit exceeded at line 1 column 202",
    ),
    (
        "deep nesting in a value",
        '{"schema": ' + '{"a":' * 3000 + "1" + "}" * 3000 + "}",
        "Invalid JSON: recursion limit exceeded at line 1 column 1012",
    ),
    (
        "a port of 1e400",
        _set("workloads.0.port", 1e400),
        "workloads.0.port: Input should be a valid integer",
    ),
    (
        "a huge port",
        _set("workloads.0.port", 10**30),
        "workloads.0.port: Input should be less than or equal to 65535",
    ),
    ("a number too long", "NUMBER", "Invalid JSON: number out of range at line 1 column 4651"),
    (
        "a negative GPU",
        _set("workloads.0.gpus", [-1]),
        "workloads.0.gpus.0: Input should be greater than or equal to 0",
    ),
    (
        "a bool as replica",
        _set("workloads.0.replica", True),
        "workloads.0.replica: Input should be a valid integer",
    ),
    (
        "a text replica",
        _set("workloads.0.replica", "0"),
        "workloads.0.replica: Input should be a valid integer",
    ),
    (
        "a non-ASCII digit",
        _set("workloads.0.replica", "٣"),
        "workloads.0.replica: Input should be a valid integer",
    ),
    ("a GPU twice in an entry", _set("workloads.0.gpus", [3, 3]), "GPU 3 listed twice"),
    ("a GPU in two entries", _set("workloads.1.gpus", [3]), "GPU 3 listed twice"),
    ("a port twice", _set("workloads.1.port", 40050), "port 40050 listed twice"),
    ("another host's entry", _set("host", "h9"), "it is for host 'h9', not its folder's"),
    ("a replica twice", _set("workloads.2.replica", 0), "replica 0 of 'beta' listed twice"),
    (
        "workloads a mapping",
        _set("workloads", {"a": 1}),
        "workloads: Input should be a valid array",
    ),
    ("an unknown key", _set("extra", 1), "extra: Extra inputs are not permitted"),
    (
        "an artifact outside",
        _set("workloads.0.artifact", "../../etc/passwd"),
        "workloads.0.artifact: String should match pattern"
        " '^[A-Za-z0-9@_:-][A-Za-z0-9@_.:-]{0,199}(/[A-Za-z0-9@_:-][A-Za-z0-9@_.:-]{0,199})?$'",
    ),
    (
        "another schema",
        _set("schema", "fleetform.index/v2"),
        "schema: Input should be 'fleetform.index/v1'",
    ),
    ("not UTF-8", "BYTES", "not UTF-8"),
    ("a huge file", "HUGE", "larger than 16 MiB"),
]


@pytest.mark.parametrize(("why", "edit", "reason"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_index_is_ignored_with_a_warning_and_placement_starts_fresh(
    placed: tuple[Path, dict[str, Any]],
    why: str,
    edit: Callable[[dict[str, Any]], None] | str,
    reason: str,
) -> None:
    repo, index = placed
    path = repo / "output" / "h1" / "index.json"
    if edit == "NUMBER":
        path.write_text(json.dumps(index).replace('"port": 40050', '"port": ' + "9" * 5000))
    elif edit == "BYTES":
        path.write_bytes(json.dumps(index).encode().replace(b"h1", b"h\xff"))
    elif edit == "HUGE":
        path.write_text(json.dumps(index) + " " * (16 * 2**20))
    elif isinstance(edit, str):
        path.write_text(edit)
    else:
        edit(index)
        path.write_text(json.dumps(index))
    warning = (
        f"warning: output/h1/index.json: ignored ({reason}); placement starts fresh for its"
        " replicas\n"
    )
    runner = CliRunner()
    for args in (["validate"], ["compile", "--check"]):
        result = runner.invoke(cli, [*args, "--repo", str(repo)])
        assert result.stderr.startswith(warning), result.stderr
    result = runner.invoke(cli, ["compile", "--repo", str(repo)])
    assert (result.exit_code, result.stderr) == (0, warning)
    assert _placement(repo) == FRESH


def test_a_replica_in_two_indexes_ignores_the_second(placed: tuple[Path, dict[str, Any]]) -> None:
    repo, index = placed
    (repo / "output" / "h1" / "index.json").write_text(json.dumps(index))
    other = dict(index, host="h0")
    (repo / "output" / "h0").mkdir()
    (repo / "output" / "h0" / "index.json").write_text(json.dumps(other))
    (repo / "output" / "h0" / "compose.yaml").write_text("# the PR's\n")
    result = CliRunner().invoke(cli, ["compile", "--repo", str(repo)])
    assert result.exit_code == 0
    assert result.stderr == (
        "warning: output/h1/index.json: ignored (replica 0 of 'alpha' listed and in"
        " output/h0/index.json); placement starts fresh for its replicas\n"
    )
    assert _placement(repo) == FRESH
    # h0's index was valid: its folder is fleetform's, and h0 is no host any more.
    assert not (repo / "output" / "h0").exists()


def test_an_ignored_index_makes_nothing_in_its_folder_deletable(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"hosts.d/h.yaml": SYSTEMD_HOSTS, "deployments.d/d.yaml": WITH_UNIT})
    api.compile_repo(repo)
    (repo / "output" / "h2" / "index.json").write_text("[]")
    (repo / "hosts.d" / "h.yaml").write_text(SYSTEMD_HOSTS.split("- {name: h2")[0])
    (repo / "deployments.d" / "d.yaml").write_text(DEPLOYMENTS)
    with pytest.warns(UserWarning, match="output/h2/index.json: ignored"):
        changes = api.compile_repo(repo)
    assert changes.deleted == []
    assert (repo / "output" / UNIT).is_file()


def test_only_listed_artifacts_of_a_valid_index_are_deleted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"hosts.d/h.yaml": SYSTEMD_HOSTS, "deployments.d/d.yaml": WITH_UNIT})
    api.compile_repo(repo)
    mine = repo / "output" / "h2" / "systemd" / "my-own.service"
    mine.write_text("[Unit]\n")
    (repo / "deployments.d" / "d.yaml").write_text(DEPLOYMENTS)
    changes = api.compile_repo(repo)
    assert changes.deleted == [UNIT]
    assert mine.read_text() == "[Unit]\n"


def test_an_output_dir_of_255_bytes_is_written_and_replaced(tmp_path: Path) -> None:
    name = "o" * 255
    repo = make_repo(
        tmp_path, {"deployments.d/d.yaml": DEPLOYMENTS, "fleetform.yaml": f"output_dir: {name}\n"}
    )
    assert api.compile_repo(repo).created == ["h1/compose.yaml", "h1/index.json"]
    (repo / "deployments.d" / "d.yaml").write_text(DEPLOYMENTS.replace("/m/", "/models/"))
    assert api.compile_repo(repo).updated == ["h1/compose.yaml", "h1/index.json"]
    assert sorted(p.name for p in repo.iterdir() if p.name.startswith(".")) == []


def test_the_last_host_removed_leaves_an_empty_output(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"deployments.d/d.yaml": DEPLOYMENTS})
    api.compile_repo(repo)
    (repo / "deployments.d" / "d.yaml").write_text("")
    (repo / "hosts.d" / "h.yaml").write_text("")
    assert api.compile_repo(repo).deleted == ["h1/compose.yaml", "h1/index.json"]
    assert list((repo / "output").iterdir()) == []
    assert _tree(repo / "output") == {}
