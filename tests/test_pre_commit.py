""".pre-commit-hooks.yaml, run by the real pre-commit (``try-repo``) on a fleet
repository: it passes on a good one, and fails on an invalid or a stale one."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def pre_commit_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("pre-commit-home")
    return {
        **os.environ,
        "PRE_COMMIT_HOME": str(home),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }


def test_try_repo_passes_then_fails(tmp_path: Path, pre_commit_env: dict[str, str]) -> None:
    fleet = tmp_path / "fleet"
    fleet.mkdir()
    for name in ("backends.d", "deployments.d", "hosts.d", "output"):
        shutil.copytree(ROOT / name, fleet / name)
    shutil.copy(ROOT / "fleetform.yaml", fleet / "fleetform.yaml")
    env = pre_commit_env
    _run(["git", "init", "-q"], fleet, env)
    _run(["git", "add", "-A"], fleet, env)
    pre_commit = [sys.executable, "-m", "pre_commit", "try-repo", str(ROOT), "--all-files"]

    good = _run(pre_commit, fleet, env)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "fleetform validate" in good.stdout and "fleetform compile --check" in good.stdout

    # A typo in a deployment: validate fails with fleetform's own one-line error.
    typo = fleet / "deployments.d" / "typo.yaml"
    typo.write_text("name: typo\nbackend: vllm\nreplicass: 1\n")
    _run(["git", "add", "-A"], fleet, env)
    bad = _run(pre_commit, fleet, env)
    assert bad.returncode == 1, bad.stdout
    assert "deployments.d/typo.yaml:3:1: replicass: unknown key" in bad.stdout, bad.stdout

    # A valid change not compiled: compile --check fails, naming what is stale.
    typo.unlink()
    (fleet / "output" / "gpu-a" / "compose.yaml").write_text("# edited by hand\n")
    _run(["git", "add", "-A"], fleet, env)
    stale = _run(pre_commit, fleet, env)
    assert stale.returncode == 1, stale.stdout
    assert re.search(r"fleetform validate\.+Passed", stale.stdout), stale.stdout
    assert "output/ is stale" in stale.stdout, stale.stdout
