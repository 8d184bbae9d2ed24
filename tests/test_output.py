"""output/: unchanged files untouched, stale files removed, --check reports."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from compiler import api
from compiler.cli import main
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
    - {name: h2, address: 10.9.0.2, target: systemd, labels: {kind: unit}, gpus: {framework: cuda, count: 1}}
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
    (tmp_path / "hosts.d" / "h.yaml").write_text(hosts.replace("    - {name: h2", "#"))
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
    result = runner.invoke(main, ["compile", "--check", "--repo", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "stale: would be created h1/compose.yaml",
        "stale: would be created h1/index.json",
        "output/ is stale: run `fleetform compile` and commit the result",
    ]
    assert not (tmp_path / "output").exists()
    assert runner.invoke(main, ["compile", "--repo", str(tmp_path)]).exit_code == 0
    result = runner.invoke(main, ["compile", "--check", "--repo", str(tmp_path)])
    assert result.exit_code == 0
    assert result.stdout == "output/ is up to date\n"
    (tmp_path / "output" / "h1" / "compose.yaml").write_text("# edited by hand\n")
    result = runner.invoke(main, ["compile", "--check", "--repo", str(tmp_path)])
    assert result.exit_code == 1
    assert "stale: would be updated h1/compose.yaml" in result.stderr
