"""Golden files: one list of scenarios feeds both the comparison and the refresh.

Run ``pytest tests/test_golden.py --update-goldens`` to rewrite the expected output
after an intended change, then review the diff in Git.
"""

from __future__ import annotations

import difflib
import shutil
from pathlib import Path

import pytest

from compiler import api

GOLDEN = Path(__file__).parent / "golden"
SCENARIOS = sorted(path.name for path in GOLDEN.iterdir() if (path / "repo").is_dir())


def _tree(folder: Path) -> dict[str, bytes]:
    if not folder.is_dir():
        return {}
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_scenarios_exist() -> None:
    assert len(SCENARIOS) >= 4


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_golden(scenario: str, tmp_path: Path, update_goldens: bool) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(GOLDEN / scenario / "repo", repo)
    api.compile_repo(repo)
    produced = _tree(repo / "output")
    expected_dir = GOLDEN / scenario / "output"
    if update_goldens:
        shutil.rmtree(expected_dir, ignore_errors=True)
        shutil.copytree(repo / "output", expected_dir)
        return
    expected = _tree(expected_dir)
    assert expected, f"no golden output for {scenario}: run pytest --update-goldens"
    problems = []
    for path in sorted(set(produced) | set(expected)):
        if path not in expected:
            problems.append(f"unexpected file {path}")
        elif path not in produced:
            problems.append(f"missing file {path}")
        elif produced[path] != expected[path]:
            diff = difflib.unified_diff(
                expected[path].decode().splitlines(keepends=True),
                produced[path].decode().splitlines(keepends=True),
                f"golden/{scenario}/output/{path}",
                f"compiled/{path}",
            )
            problems.append("".join(diff))
    assert not problems, "\n".join(problems)
