"""Running commands on a systemd host: over SSH, or on this machine (agent mode).

SSH is OpenSSH's own client, so the user's ``~/.ssh/config``, keys, agent and
known_hosts apply as they do for ``ssh``. An unknown host key is refused
(``StrictHostKeyChecking=yes``) unless ``FLEETFORM_SSH_TRUST_UNKNOWN_HOSTS=1`` says to
accept and remember it.

One master connection per host carries every session to it (``ControlMaster``), and
stays open ``FLEETFORM_SSH_PERSIST`` seconds (default 60) after its last session, as
Ansible's does: a plan, the apply after it and the next reconcile pass shake hands
once. Its socket is in ``~/.cache/fleetform-ssh`` (mode 0700). ``FLEETFORM_SSH_PERSIST=0``
adds no multiplexing options: each command then connects as the ssh config says.

Commands are argv lists. Locally they run without a shell; over SSH the remote side
always goes through the login shell, so every word is quoted with ``shlex.quote``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Protocol

from compiler.errors import FleetformError

TRUST_ENV = "FLEETFORM_SSH_TRUST_UNKNOWN_HOSTS"
PERSIST_ENV = "FLEETFORM_SSH_PERSIST"
DEFAULT_PERSIST = 60
# A unix socket path has at most 107 bytes; OpenSSH adds ".XXXXXXXXXXXXXXXX" to the
# 40-character %C while it sets a master up.
_MAX_CONTROL_FOLDER = 107 - 40 - 18
COMMAND_TIMEOUT = 120


class TransportError(FleetformError):
    """The host could not be reached, or a command failed."""


@dataclass(frozen=True)
class Result:
    code: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def error(self) -> str:
        return " ".join(self.stderr.decode("utf-8", "replace").split())[:400]


class Shell(Protocol):
    where: str

    def run(
        self, argv: list[str], *, data: bytes | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> Result: ...

    def close(self) -> None: ...


def ssh_options(connect_timeout: int = 10) -> list[str]:
    """The options every ssh of fleetform's runs with: no prompts, known hosts only, and
    a shared master connection per host (see the module's docstring)."""
    trust = os.environ.get(TRUST_ENV) == "1"
    return [
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={connect_timeout}",
        "-o", "ServerAliveInterval=10",
        "-o", f"StrictHostKeyChecking={'accept-new' if trust else 'yes'}",
        *multiplexing(),
    ]  # fmt: skip


def persist_seconds() -> int:
    text = os.environ.get(PERSIST_ENV, "").strip()
    if not text:
        return DEFAULT_PERSIST
    if not text.isdigit():
        raise TransportError(f"{PERSIST_ENV}={text!r}: expected a number of seconds")
    return int(text)


def multiplexing() -> list[str]:
    """``ControlMaster`` options for a master that outlives this process, or none.

    None when persisting is off, or when no private folder for the sockets can be
    had (a home too deep for a socket path): ssh then connects as its config says."""
    seconds = persist_seconds()
    folder = control_folder() if seconds > 0 else None
    if folder is None:
        return []
    return [
        "-o", "ControlMaster=auto",
        "-o", f"ControlPath={folder}/%C",
        "-o", f"ControlPersist={seconds}",
    ]  # fmt: skip


def control_folder() -> str | None:
    """``~/.cache/fleetform-ssh``, made private to this user."""
    folder = os.path.join(os.path.expanduser("~"), ".cache", "fleetform-ssh")
    if len(folder.encode()) > _MAX_CONTROL_FOLDER:
        return None
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        status = os.stat(folder)
    except OSError:
        return None
    if status.st_uid != os.getuid() or status.st_mode & 0o077:
        return None  # not ours alone: another user could reach our hosts through it
    return folder


def ssh_message(stderr: bytes) -> str:
    """OpenSSH's reason for failing, in one line.

    Its host-key warnings are a banner of ``@`` lines and advice; the line that says
    which host's key is unknown or changed is the one to show."""
    lines = [
        line.strip()
        for line in stderr.decode("utf-8", "replace").splitlines()
        if line.strip() and not line.startswith("@")
    ]
    reason = [line for line in lines if "requested strict checking" in line]
    return " ".join(" ".join(reason or lines[-1:]).split())[:300]


def check(result: Result, what: str) -> Result:
    if result.code != 0:
        raise TransportError(f"{what} failed (exit {result.code}): {result.error or 'no message'}")
    return result


class LocalShell:
    """This machine: argv run directly, no shell."""

    where = "this machine"

    def run(
        self, argv: list[str], *, data: bytes | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> Result:
        try:
            done = subprocess.run(argv, input=data, capture_output=True, timeout=timeout)
        except FileNotFoundError as error:
            return Result(127, b"", str(error).encode())
        except subprocess.TimeoutExpired:
            return Result(124, b"", f"timed out after {timeout:.0f} s".encode())
        return Result(done.returncode, done.stdout, done.stderr)

    def close(self) -> None:
        pass


class SshShell:
    """``user@host[:port]`` through one reused OpenSSH connection."""

    def __init__(self, target: str) -> None:
        user_host, _, port = target.partition(":")
        self.where = target
        self._base = ["ssh", *ssh_options()]
        self._control: str | None = None
        if "ControlMaster=auto" not in self._base:
            # No shared master: one of this shell's own, for its many commands.
            self._control = tempfile.mkdtemp(prefix="fleetform-ssh-")
            self._base += [
                "-o", "ControlMaster=auto",
                "-o", f"ControlPath={self._control}/%C",
                "-o", "ControlPersist=120",
            ]  # fmt: skip
        if port:
            self._base += ["-p", port]
        # The destination after "--": whatever it holds, ssh reads no option from it.
        self._base += ["--", user_host]

    def run(
        self, argv: list[str], *, data: bytes | None = None, timeout: float = COMMAND_TIMEOUT
    ) -> Result:
        command = " ".join(shlex.quote(word) for word in argv)
        try:
            done = subprocess.run(
                [*self._base, command], input=data, capture_output=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise TransportError(
                f"{self.where}: no answer within {timeout:.0f} s to {argv[0]}"
            ) from None
        if done.returncode == 255:
            message = ssh_message(done.stderr)
            raise TransportError(f"cannot reach {self.where} over ssh: {message}")
        return Result(done.returncode, done.stdout, done.stderr)

    def close(self) -> None:
        if self._control is None:
            return  # the shared master stays for the next command (FLEETFORM_SSH_PERSIST)
        subprocess.run(
            [*self._base[:-2], "-O", "exit", *self._base[-2:]],
            capture_output=True,
            timeout=10,
            check=False,
        )
        shutil.rmtree(self._control, ignore_errors=True)


def shell_for(ssh: str | None) -> Shell:
    return SshShell(ssh) if ssh else LocalShell()


def write_file(shell: Shell, path: str, content: bytes, mode: str) -> None:
    """``content`` to ``path`` atomically: a temporary file beside it, then a rename."""
    temp = f"{path}.fleetform-tmp"
    check(
        shell.run(["install", "-D", "-m", mode, "/dev/stdin", temp], data=content),
        f"writing {shlex.quote(path)}",
    )
    check(shell.run(["mv", "-f", "--", temp, path]), f"writing {shlex.quote(path)}")
