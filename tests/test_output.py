"""output/: unchanged files untouched, stale files removed, --check reports."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from compiler import api
from compiler.cli import cli
from compiler.errors import FleetformError
from tests.helpers_repo import make_repo

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
    assert api.compile_repo(tmp_path).empty
    assert _stat(tmp_path) == before


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


def test_output_dir_symlinked_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.conf").write_text("do not delete")
    repo = make_repo(tmp_path / "repo", {"deployments.d/d.yaml": DEPLOYMENTS})
    (repo / "output").symlink_to(victim)
    with pytest.raises(FleetformError, match="outside the repository"):
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
    api.compile_repo(tmp_path)
    assert not left.exists()
    assert keep.read_text() == "mine"
