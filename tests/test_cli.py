"""The CLI's contract: exit codes, one-line errors, bugs reported with a traceback file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from compiler import api
from compiler.cli import cli
from tests.helpers_repo import make_repo


def test_help_lists_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for command in ("validate", "compile", "explain"):
        assert command in result.output


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from compiler.cli import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('pydantic', 'yaml', 'docker', 'deepdiff', 'jinja2')"
        " if m in sys.modules]\n"
        "print('heavy=' + ','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "heavy="


def test_unexpected_exception_exits_3_with_traceback_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_repo(tmp_path, {"deployments.d/d.yaml": "- {name: d, backend: srv, local_path: /m}\n"})

    def broken(root: Path) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(api, "build", broken)
    result = CliRunner().invoke(cli, ["validate", "--repo", str(tmp_path)])
    assert result.exit_code == 3
    line = result.stderr.strip()
    assert line.startswith(
        "fleetform: internal error (this is a bug): RuntimeError: simulated bug;"
    )
    path = Path(line.rsplit("traceback written to ", 1)[1])
    assert "Traceback" in path.read_text() and "simulated bug" in path.read_text()
    path.unlink()


def test_interrupt_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(root: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "build", interrupted)
    result = CliRunner().invoke(cli, ["validate", "--repo", str(tmp_path)])
    assert result.exit_code == 130


def test_explain_unknown_deployment_is_exit_1(tmp_path: Path) -> None:
    make_repo(tmp_path, {"deployments.d/d.yaml": "- {name: d, backend: srv, local_path: /m}\n"})
    result = CliRunner().invoke(cli, ["explain", "nope", "--repo", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr == "no deployment 'nope' (deployments: d)\n"
