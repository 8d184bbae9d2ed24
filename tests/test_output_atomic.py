"""output/ is replaced in one step: kill -9 at any moment, a late failure, concurrent compiles.

Real child processes (``python -m compiler.cli compile``) on fleets made by
``bench/fleets/synthetic.py``; every check compares complete snapshots of ``output/`` (each
file's bytes and the set of folders and files), so a mix of old and new, or a temporary
file left inside, fails.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from click.testing import CliRunner

from compiler import api
from compiler.cli import cli
from compiler.output import EXCHANGE_ENV, WAITING

PROJECT = Path(__file__).resolve().parents[1]
Snapshot = dict[str, bytes | None]  # relative path → bytes (None: a folder)


def _synthetic() -> ModuleType:
    path = PROJECT / "bench" / "fleets" / "synthetic.py"
    spec = importlib.util.spec_from_file_location("bench_synthetic_fleet", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look themselves up there.
    sys.modules.setdefault("bench_synthetic_fleet", module)
    spec.loader.exec_module(module)
    return module


def _generate(root: Path, deployments: int, hosts: int, files: int) -> Path:
    synthetic = _synthetic()
    synthetic.write_repo(synthetic.generate_fleet(deployments, hosts, files, seed=7), root)
    return root


def _set_images(repo: Path, suffix: str) -> None:
    """Every backend image tagged ``…<suffix>``: every artifact of the fleet changes."""
    for path in sorted((repo / "backends.d").glob("*.yaml")):
        text = re.sub(r"(image_name: \S+?)(-old)?$", r"\1", path.read_text(), flags=re.M)
        if suffix:
            text = re.sub(r"(image_name: \S+)$", rf"\1{suffix}", text, flags=re.M)
        path.write_text(text)


def snapshot(out: Path) -> Snapshot:
    found: Snapshot = {}
    for folder, dirs, files in os.walk(out):
        base = Path(folder).relative_to(out)
        for name in dirs:
            assert not (Path(folder) / name).is_symlink()
            found[(base / name).as_posix()] = None
        for name in files:
            found[(base / name).as_posix()] = (Path(folder) / name).read_bytes()
    return found


def _leftovers(repo: Path) -> list[str]:
    return sorted(p.name for p in repo.iterdir() if p.name.startswith(".fleetform-"))


def _compile(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "compiler.cli", "compile", *args, "--repo", str(repo)],
        cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": str(PROJECT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(repo: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = _compile(repo, *args, env=env)
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def _describe(found: Snapshot, old: Snapshot, new: Snapshot) -> str:
    """Why ``found`` is neither ``old`` nor ``new`` (for the assertion message)."""
    as_old = sorted(k for k in found.keys() | old.keys() if found.get(k, 0) != old.get(k, 0))
    as_new = sorted(k for k in found.keys() | new.keys() if found.get(k, 0) != new.get(k, 0))
    return (
        f"{len(as_old)} entries differ from old ({as_old[:3]}),"
        f" {len(as_new)} from new ({as_new[:3]})"
    )


@dataclass
class BigFleet:
    repo: Path
    old: Snapshot
    new: Snapshot
    duration: float  # a compile that changes every file, start to exit
    writing: float  # the part of it after its staging folder appeared (write, swap, delete)


def _staging_appeared(repo: Path) -> bool:
    return any(name.startswith(".fleetform-output-") for name in os.listdir(repo))


def _wait_for_staging(repo: Path, process: subprocess.Popen[str]) -> None:
    while process.poll() is None and not _staging_appeared(repo):
        time.sleep(0.002)


@pytest.fixture(scope="module")
def big_fleet(tmp_path_factory: pytest.TempPathFactory) -> BigFleet:
    """5,000 deployments compiled twice: state "old" (images …-old), then "new"."""
    repo = _generate(tmp_path_factory.mktemp("kill") / "repo", 5_000, 500, 50)
    _set_images(repo, "-old")
    assert _run(repo)[0] == 0
    old = snapshot(repo / "output")
    _set_images(repo, "")
    started = time.perf_counter()
    process = _compile(repo)
    _wait_for_staging(repo, process)
    staged = time.perf_counter()
    _, err = process.communicate(timeout=120)
    ended = time.perf_counter()
    assert process.returncode == 0, err
    new = snapshot(repo / "output")
    assert len(old) == len(new) > 1_400
    assert all(old[k] != new[k] for k in old if k.endswith(".json"))
    return BigFleet(repo, old, new, ended - started, ended - staged)


def _kill_at(
    repo: Path, delay: float, *, after_staging: bool = False, env: dict[str, str] | None = None
) -> None:
    process = _compile(repo, env=env)
    if after_staging:
        _wait_for_staging(repo, process)
    time.sleep(delay)
    process.kill()
    process.communicate()


def test_kill_9_at_30_moments_leaves_output_old_or_new(big_fleet: BigFleet) -> None:
    """20 moments spread over the whole run (start-up, load, resolve, render), 10 over its
    writing phase (files written, links made, the swap, the old tree's delete)."""
    repo, old, new = big_fleet.repo, big_fleet.old, big_fleet.new
    states = {"old": old, "new": new}
    rng = random.Random(20240609)
    moments = [(rng.uniform(0, big_fleet.duration), False) for _ in range(20)]
    moments += [(rng.uniform(0, 1.1 * big_fleet.writing), True) for _ in range(10)]
    current = "new"
    seen = {"old": 0, "new": 0}
    for delay, after_staging in moments:
        target = "old" if current == "new" else "new"
        _set_images(repo, "-old" if target == "old" else "")
        _kill_at(repo, delay, after_staging=after_staging)
        found = snapshot(repo / "output")
        if found == states[current]:
            seen["old"] += 1
        elif found == states[target]:
            seen["new"] += 1
            current = target
        else:
            pytest.fail(f"killed at {delay:.2f} s: output/ is mixed: " + _describe(found, old, new))
    # The next compile finishes the job and clears what the kills left beside output/.
    target = "old" if current == "new" else "new"
    _set_images(repo, "-old" if target == "old" else "")
    code, _, err = _run(repo)
    assert (code, err) == (0, "")
    assert snapshot(repo / "output") == states[target]
    assert _leftovers(repo) == []
    assert seen["old"] > 0, seen
    print(
        f"compile {big_fleet.duration:.2f} s (writing {big_fleet.writing:.2f} s);"
        f" kills that left output/ as it was / as the new compile wants it: {seen}"
    )


@pytest.fixture
def fleet_1000(tmp_path: Path) -> tuple[Path, Snapshot]:
    """1,000 deployments compiled with images …-old; the input then says the new images."""
    repo = _generate(tmp_path / "repo", 1_000, 100, 20)
    _set_images(repo, "-old")
    assert _run(repo)[0] == 0
    old = snapshot(repo / "output")
    _set_images(repo, "")
    return repo, old


def _expected(repo: Path, tmp_path: Path) -> Snapshot:
    """What one compile of ``repo`` as it stands makes (compiled in a copy)."""
    copy = tmp_path / "expected"
    shutil.copytree(repo, copy, symlinks=True)
    assert _run(copy)[0] == 0
    return snapshot(copy / "output")


def test_kill_9_with_the_two_rename_fallback_is_finished_by_the_next_compile(
    fleet_1000: tuple[Path, Snapshot], tmp_path: Path
) -> None:
    """Where RENAME_EXCHANGE is refused: output/ may be missing between the two renames;
    read-only commands then refuse, and the next compile completes the swap."""
    repo, old = fleet_1000
    new = _expected(repo, tmp_path)
    states = {"old": old, "new": new}
    fallback = {EXCHANGE_ENV: "0"}
    started = time.perf_counter()
    assert _run(repo, "--check")[0] == 1
    duration = time.perf_counter() - started  # about a compile's time, writing nothing
    rng = random.Random(77)
    current = "new" if snapshot(repo / "output") == new else "old"
    for _ in range(8):
        target = "old" if current == "new" else "new"
        _set_images(repo, "-old" if target == "old" else "")
        _kill_at(repo, rng.uniform(0.5 * duration, 1.3 * duration), env=fallback)
        if not (repo / "output").exists():
            assert (repo / ".fleetform-output-swap.json").is_file()
            code, _, err = _run(repo, "--check")
            assert (code, err) == (
                1,
                "fleetform.yaml:3:13: output_dir: output: a compile was killed while replacing"
                " it; run `fleetform compile` to finish\n",
            )
            code, _, err = _run(repo, env=fallback)
            assert (code, err) == (0, "")
            current = target
            assert snapshot(repo / "output") == states[target]
            continue
        found = snapshot(repo / "output")
        if found == states[target]:
            current = target
        else:
            assert found == states[current], _describe(found, old, new)
    code, _, err = _run(repo, env=fallback)
    assert (code, err) == (0, "")
    assert _leftovers(repo) == []


def test_a_late_obstruction_leaves_output_byte_for_byte_untouched(
    fleet_1000: tuple[Path, Snapshot],
) -> None:
    repo, old = fleet_1000
    # A host rendered last, whose index.json place holds a folder of the user's.
    (repo / "hosts.d" / "zz.yaml").write_text(
        "name: zz-late\naddress: 10.250.0.1\ngpus: {framework: cuda, count: 1}\n"
    )
    (repo / "output" / "zz-late" / "index.json").mkdir(parents=True)
    (repo / "output" / "zz-late" / "index.json" / "mine").write_text("kept")
    before = snapshot(repo / "output")
    code, out, err = _run(repo)
    assert (code, out) == (1, "")
    assert err == (
        "fleetform.yaml:3:13: output_dir: output/zz-late/index.json: is a folder where"
        " fleetform writes a file\n"
    )
    assert snapshot(repo / "output") == before
    assert _leftovers(repo) == []
    assert {k: v for k, v in before.items() if not k.startswith("zz-late")} == old


@pytest.mark.parametrize("count", [2, 4])
def test_concurrent_compiles_one_writes_the_others_wait(
    fleet_1000: tuple[Path, Snapshot], tmp_path: Path, count: int
) -> None:
    repo, old = fleet_1000
    expected = _expected(repo, tmp_path)
    assert expected != old
    processes = [_compile(repo) for _ in range(count)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    assert [code for code, _, _ in results] == [0] * count, results
    for _, _, err in results:
        assert err in ("", WAITING + "\n"), err
    wrote = [out for _, out, _ in results if out != "output/ is up to date; nothing written\n"]
    assert len(wrote) == 1, [out[:200] for _, out, _ in results]
    assert snapshot(repo / "output") == expected
    assert _leftovers(repo) == []


def test_a_compile_waits_for_the_lock_and_says_so_once(fleet_1000: tuple[Path, Snapshot]) -> None:
    repo, _ = fleet_1000
    fd = os.open(repo, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        process = _compile(repo)
        time.sleep(2.5)
        assert process.poll() is None  # still waiting
        assert snapshot(repo / "output") == fleet_1000[1]
    finally:
        os.close(fd)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0
    assert err == WAITING + "\n"
    assert out.startswith("updated ")


def test_the_fallback_swap_works_and_a_hand_made_journal_is_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers_repo import make_repo

    repo = make_repo(
        tmp_path / "repo", {"deployments.d/d.yaml": "- {name: a, backend: srv, local_path: /m}\n"}
    )
    monkeypatch.setenv(EXCHANGE_ENV, "0")
    api.compile_repo(repo)
    first = snapshot(repo / "output")
    (repo / "deployments.d" / "d.yaml").write_text("- {name: b, backend: srv, local_path: /m}\n")
    changes = api.compile_repo(repo)
    assert changes.updated == ["h1/compose.yaml", "h1/index.json"]
    second = snapshot(repo / "output")
    assert second != first and _leftovers(repo) == []
    # A swap killed between its two renames: output/ moved aside, the new tree beside it.
    (repo / "output").rename(repo / ".fleetform-output-oldtree1")
    shutil.copytree(repo / ".fleetform-output-oldtree1", repo / ".fleetform-output-newtree2")
    (repo / ".fleetform-output-newtree2" / "h1" / "note.txt").write_text("the new tree")
    (repo / ".fleetform-output-swap.json").write_text(
        json.dumps({"new": ".fleetform-output-newtree2", "old": ".fleetform-output-oldtree1"})
    )
    result = CliRunner().invoke(cli, ["validate", "--repo", str(repo)])
    assert (result.exit_code, result.stderr) == (
        1,
        "fleetform.yaml:1:1: output_dir: output: a compile was killed while replacing it;"
        " run `fleetform compile` to finish\n",
    )
    assert api.compile_repo(repo).empty  # completed: the new tree is output/, as it should be
    assert (repo / "output" / "h1" / "note.txt").read_text() == "the new tree"
    assert _leftovers(repo) == []
