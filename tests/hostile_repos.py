"""Building and running hostile repositories: the machinery of ``test_hostile`` and
``test_fuzz`` (the scenarios themselves live in the tests).

The contract both tests check, for every input repository (issue 9):

- exit 0, with artifacts inside the repository, or
- exit 1 with one line per problem, ``file:line:col: key.path: message``, nothing on
  stdout and ``output/`` byte for byte (and symlink for symlink) untouched;
- never exit 3, a traceback, more than 20 s or 2 GB, nor a change outside the
  repository.

Every compile runs in a child process with ``RLIMIT_AS`` at 2 GB and a 20 s timeout,
so a memory bomb or a hang fails its test instead of taking the machine with it.
The child is either a fork of a fork server running the click command (cheap: the
compiler is imported already) or a real ``python -m compiler.cli``.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import resource
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

TIME_LIMIT = 20.0  # seconds, the contract's
MEMORY_LIMIT = 2 * 1024**3  # bytes of address space, the contract's

# One error line: file:line:col: then the key path and message.
ERROR_LINE = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): (?P<rest>.*)$")


# --- repositories ---------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """A symlink to commit into a repository. ``target`` may name ``{outside}``: the
    sentinel folder beside the repository (never a real system path)."""

    target: str


Content = str | bytes | Link | None  # None deletes the file

# The content of the sentinel's "secret": no output of a compile may show it.
SECRET_MARKER = "s3cret-outside-the-repository"

OUTSIDE_FILES: dict[str, bytes] = {
    # What a symlink out of the repository would reach: a fake unit folder, a fake
    # host folder of another repository, a secret.
    "systemd/sshd.service": b"[Service]\nExecStart=/usr/sbin/sshd -D\n",
    "systemd/fleet-chat-0.service": b"# not fleetform's\n",
    "host/compose.yaml": b"# another project's compose file\n",
    "host/index.json": b'{"schema": "not-ours"}\n',
    "secret.txt": SECRET_MARKER.encode() + b"\n",
}


def write_files(root: Path, files: Mapping[str, Content], outside: Path | None = None) -> None:
    for relative, content in files.items():
        path = root / relative
        if content is None:
            if path.is_symlink() or path.is_file():
                path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.is_file():
            path.unlink()
        if isinstance(content, Link):
            target = content.target.format(outside=str(outside) if outside else "/nonexistent")
            os.symlink(target, path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def make_outside(folder: Path) -> Path:
    """The sentinel folder beside a repository, which no compile may change."""
    for relative, content in OUTSIDE_FILES.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return folder


def tree_state(folder: Path) -> dict[str, tuple[str, object]]:
    """Every entry below ``folder`` without following symlinks: files with their bytes
    and mode, symlinks with their target, folders."""
    state: dict[str, tuple[str, object]] = {}
    if not folder.exists() and not folder.is_symlink():
        return state
    if folder.is_symlink():
        return {".": ("link", os.readlink(folder))}
    for top, dirs, names in os.walk(folder, followlinks=False):
        for name in sorted(dirs + names):
            path = Path(top) / name
            relative = path.relative_to(folder).as_posix()
            if path.is_symlink():
                state[relative] = ("link", os.readlink(path))
            elif path.is_dir():
                state[relative] = ("dir", None)
            else:
                try:
                    state[relative] = ("file", (path.read_bytes(), path.stat().st_mode & 0o777))
                except OSError as error:
                    state[relative] = ("unreadable", error.strerror)
    return state


def state_diff(before: Mapping[str, object], after: Mapping[str, object]) -> list[str]:
    """What changed between two :func:`tree_state` results, one line per path."""
    lines = []
    for path in sorted(set(before) | set(after)):
        if path not in after:
            lines.append(f"deleted {path}")
        elif path not in before:
            lines.append(f"created {path}")
        elif before[path] != after[path]:
            lines.append(f"changed {path}")
    return lines


# --- running a compile ----------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    exit_code: int  # negative: killed by that signal
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    crashed: str = ""  # an exception that escaped the click command (in a fork)
    max_rss_mib: float = 0.0


def _limit_child() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_subprocess(
    args: list[str], *, timeout: float = TIME_LIMIT, env: Mapping[str, str] | None = None
) -> Run:
    """``python -m compiler.cli ARGS`` as CI runs it, within the contract's limits."""
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "compiler.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8", **(env or {})},
        preexec_fn=_limit_child,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
    seconds = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Run(
        child.returncode,
        out.decode("utf-8", "replace"),
        err.decode("utf-8", "replace"),
        seconds,
        timed_out,
        max_rss_mib=usage.ru_maxrss / 1024,
    )


def _run_click(args: list[str], connection: Connection) -> None:
    """In the child: the click command, its outcome sent back as one message."""
    from click.testing import CliRunner

    from compiler.cli import cli

    _limit_child()
    result = CliRunner().invoke(cli, args)
    crashed = ""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        crashed = "".join(
            traceback.format_exception(type(result.exception), result.exception, result.exc_info[2])
        )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    connection.send(
        {
            "exit_code": result.exit_code,
            "stdout": result.stdout,
            "stderr": result.stderr,
            "crashed": crashed,
            "max_rss_mib": usage.ru_maxrss / 1024,
        }
    )
    connection.close()


# Children are forked from a fork server: a fresh interpreter that imported the
# compiler once and runs no thread. Forking the test process itself deadlocks once an
# earlier test has left a thread holding a lock (the engine tests' forwarders): the
# child then waits forever on that lock.
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(
    ["compiler.cli", "compiler.api", "compiler.explain", "click.testing", "hostile_repos"]
)


def run_forked(args: list[str], *, timeout: float = TIME_LIMIT) -> Run:
    """The click command in a forked child (RLIMIT_AS 2 GB, killed after ``timeout``).

    Much cheaper than a new interpreter, and as safe for the test process: a memory
    bomb, a hang or a crash ends the child only.
    """
    receiver, sender = _FORKS.Pipe(duplex=False)
    started = time.monotonic()
    child = _FORKS.Process(target=_run_click, args=(args, sender), daemon=True)
    child.start()
    sender.close()
    data: dict[str, Any] | None = None
    timed_out = False
    try:
        if receiver.poll(max(0.0, started + timeout - time.monotonic())):
            data = receiver.recv()
        else:
            timed_out = child.is_alive()
    except EOFError:  # the child died before it answered
        pass
    finally:
        receiver.close()
    if timed_out:
        child.kill()
    child.join()
    seconds = time.monotonic() - started
    if data is None:
        code = child.exitcode if child.exitcode is not None else -9
        what = "timed out" if timed_out else f"child died (status {code}, out of memory?)"
        return Run(-9 if timed_out else code, "", what, seconds, timed_out, crashed=what)
    return Run(
        data["exit_code"],
        data["stdout"],
        data["stderr"],
        seconds,
        crashed=data["crashed"],
        max_rss_mib=data["max_rss_mib"],
    )


# --- the contract -----------------------------------------------------------------------


def contract_violations(
    run: Run,
    *,
    output_before: Mapping[str, object],
    output_after: Mapping[str, object],
    outside_before: Mapping[str, object],
    outside_after: Mapping[str, object],
) -> list[str]:
    """Every way ``run`` breaks the contract, whatever the scenario meant (empty: kept)."""
    problems: list[str] = []
    if run.timed_out:
        problems.append(f"took more than {TIME_LIMIT:.0f} s (killed)")
    elif run.seconds > TIME_LIMIT:
        problems.append(f"took {run.seconds:.1f} s (limit {TIME_LIMIT:.0f} s)")
    if run.crashed:
        problems.append(f"crashed: {run.crashed.strip().splitlines()[-1]}")
    if run.exit_code not in (0, 1):
        problems.append(f"exit code {run.exit_code} (contract: 0 or 1)")
    if "Traceback" in run.stderr or "internal error" in run.stderr:
        problems.append("a traceback or internal error on stderr")
    if SECRET_MARKER in run.stdout or SECRET_MARKER in run.stderr:
        problems.append("printed the content of a file outside the repository")
    changed_outside = state_diff(outside_before, outside_after)
    if changed_outside:
        problems.append("changed outside the repository: " + ", ".join(changed_outside[:5]))
    if run.exit_code == 1:
        if run.stdout:
            problems.append(f"stdout not empty on failure: {run.stdout[:200]!r}")
        lines = run.stderr.splitlines()
        if not lines:
            problems.append("exit 1 without an error line")
        bad = [line for line in lines if not ERROR_LINE.match(line)]
        if bad:
            problems.append(f"not file:line:col lines: {bad[:3]!r}")
        changed = state_diff(output_before, output_after)
        if changed:
            problems.append("output/ changed by a failed compile: " + ", ".join(changed[:5]))
    return problems


def error_positions(stderr: str) -> list[tuple[str, int]]:
    """(file, line) of each error line; lines that are not error lines are skipped."""
    found = []
    for line in stderr.splitlines():
        match = ERROR_LINE.match(line)
        if match:
            found.append((match["file"], int(match["line"])))
    return found
