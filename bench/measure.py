"""Run one command in a fresh process and measure wall time and peak RSS.

Peak RSS is the ``ru_maxrss`` that ``wait4`` returns for the child: the largest
resident set of the child or of any descendant it waited for (exactly what
``/usr/bin/time -v`` prints as "Maximum resident set size"). For tools that fork
workers (kapitan's multiprocessing pool) that is the biggest single process, so
:func:`run` can also sample the summed RSS of the whole process tree from /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Result:
    argv: list[str]
    wall: float  # seconds
    max_rss_mb: float  # largest single process (wait4 ru_maxrss)
    tree_rss_mb: float | None  # peak of the summed RSS of the process tree (sampled)
    returncode: int
    timed_out: bool
    output: str  # tail of stdout+stderr


class _TreeSampler(threading.Thread):
    """Polls /proc for the summed RSS of ``root`` and all its descendants."""

    def __init__(self, root: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.peak_bytes = 0
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak_bytes = max(self.peak_bytes, self._sample())
            self._halt.wait(self.interval)

    def _sample(self) -> int:
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    stat = handle.read()
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            parents[int(entry)] = int(fields[1])
        tree = {self.root}
        changed = True
        while changed:
            changed = False
            for pid, ppid in parents.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        total = 0
        for pid in tree:
            try:
                with open(f"/proc/{pid}/statm", "rb") as handle:
                    total += int(handle.read().split()[1]) * PAGE
            except (OSError, IndexError, ValueError):
                continue
        return total


def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    timeout: float | None = None,
    sample_tree: bool = False,
) -> Result:
    """Run ``argv`` to completion (or ``timeout``), output to ``log``; measure it."""
    log = log or Path(os.devnull)
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a timeout kills all of it
        )
        sampler = _TreeSampler(proc.pid) if sample_tree else None
        if sampler:
            sampler.start()
        timed_out = False
        timer: threading.Timer | None = None
        if timeout is not None:

            def kill() -> None:
                nonlocal timed_out
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

            timer = threading.Timer(timeout, kill)
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if timer:
            timer.cancel()
        if sampler:
            sampler.stop()
    tail = ""
    if log != Path(os.devnull):
        text = log.read_text(errors="replace")
        tail = "\n".join(text.splitlines()[-20:])
    return Result(
        argv=list(argv),
        wall=wall,
        max_rss_mb=usage.ru_maxrss / 1024,  # Linux: KiB
        tree_rss_mb=(sampler.peak_bytes / 2**20) if sampler else None,
        returncode=proc.returncode,
        timed_out=timed_out,
        output=tail,
    )


Snapshot = dict[str, tuple[int, int, int, int]]


def snapshot(folder: Path) -> Snapshot:
    """Every file under ``folder`` (dotfiles too) → (inode, mtime_ns, ctime_ns, size)."""
    found: Snapshot = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            found[os.path.relpath(path, folder)] = (
                st.st_ino,
                st.st_mtime_ns,
                st.st_ctime_ns,
                st.st_size,
            )
    return found


def files_written(before: Snapshot, after: Snapshot) -> list[str]:
    """Files created, replaced, modified or removed between two snapshots."""
    changed = [path for path, stat in after.items() if before.get(path) != stat]
    removed = [path for path in before if path not in after]
    return sorted(changed + removed)


# --- what is measured: fleetform's code, and the other tools ---------------------------------

ROOT = Path(__file__).resolve().parent.parent


def fleetform_argv() -> list[str]:
    """The installed console script itself (not a pyenv shim), else ``python -m``."""
    import shutil
    import sys

    direct = Path(sys.executable).parent / "fleetform"
    if direct.exists():
        return [str(direct)]
    found = shutil.which("fleetform")
    return [found] if found else [sys.executable, "-m", "compiler.cli"]


def compiler_digest(folder: Path) -> str:
    """A short hash of the ``*.py`` files below ``folder``: which code was measured."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def git_state() -> str:
    """The checkout's commit, and whether compiler/ has uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True
        ).stdout.strip()

    dirty = git("status", "--porcelain", "compiler")
    return (git("rev-parse", "--short", "HEAD") or "?") + (
        " + uncommitted changes in compiler/" if dirty else ""
    )


def pin_compiler(work: Path, live: bool) -> tuple[str, str | None]:
    """Which code the run measures, and the PYTHONPATH that makes fleetform run it.

    By default a snapshot of compiler/ taken now, first on PYTHONPATH (ahead of the
    editable install's finder), so concurrent edits cannot mix in; ``live``: the working
    tree as it is (no PYTHONPATH)."""
    import shutil
    import sys

    if live:
        return (
            f"live working tree: {git_state()}, sha256 {compiler_digest(ROOT / 'compiler')}",
            None,
        )
    pinned = work / "pinned"
    shutil.rmtree(pinned, ignore_errors=True)
    shutil.copytree(
        ROOT / "compiler", pinned / "compiler", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(pinned)], check=True)
    path = os.environ.get("PYTHONPATH")
    pythonpath = str(pinned) + (os.pathsep + path if path else "")
    where = subprocess.run(
        [sys.executable, "-c", "import compiler; print(compiler.__file__)"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": pythonpath},
        cwd=work,
    ).stdout.strip()
    if not where.startswith(str(pinned)):
        raise RuntimeError(f"pinned compiler/ is not the one imported ({where})")
    code = f"snapshot of compiler/ taken at start: {git_state()}, sha256 {compiler_digest(pinned)}"
    return code, pythonpath


class BenchError(RuntimeError):
    """A step went wrong in a way that makes the numbers meaningless."""


@dataclass(frozen=True)
class Competitor:
    """Another tool, installed by its script in ``bench/competitors/``."""

    exe: Path
    version: str
    notes: list[str]  # for the results: how it was installed, when worth saying


def competitor(script: str, exe: Path) -> Competitor:
    """Run ``bench/competitors/<script>``, which installs the pinned tool into its venv
    under bench/.work/ (once) and prints notes, then the tool's version, on stdout.

    Its stderr (pip's progress and errors) is passed through as it comes and kept: a
    :class:`BenchError` carries its tail when the tool is not there afterwards."""
    import sys

    process = subprocess.Popen(
        ["bash", str(ROOT / "bench" / "competitors" / script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert process.stdout is not None and process.stderr is not None
    said: list[str] = []
    for line in process.stderr:  # stdout stays small: notes and a version
        sys.stderr.write(line)
        said.append(line)
    printed = process.stdout.read().strip().splitlines()
    if process.wait() != 0 or not exe.exists():
        tail = "".join(said).strip()[-500:] or f"no {exe}"
        raise BenchError(f"bench/competitors/{script} exited {process.returncode}: {tail}")
    return Competitor(exe, printed[-1] if printed else "?", printed[:-1])
