"""Running commands on a systemd host: over SSH, or on this machine (agent mode).

SSH is OpenSSH's own client, so the user's ``~/.ssh/config``, keys, agent and
known_hosts apply as they do for ``ssh``. One master connection per host is reused
for every command of a plan or an apply (``ControlMaster``). An unknown host key is
refused (``StrictHostKeyChecking=yes``) unless ``FLEETFORM_SSH_TRUST_UNKNOWN_HOSTS=1``
says to accept and remember it.

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
        self._control = tempfile.mkdtemp(prefix="fleetform-ssh-")
        trust = os.environ.get(TRUST_ENV) == "1"
        self._base = [
            "ssh",
            "-o", "BatchMode=yes",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self._control}/%C",
            "-o", "ControlPersist=120",
            "-o", "ConnectTimeout=10",
            "-o", "ServerAliveInterval=10",
            "-o", f"StrictHostKeyChecking={'accept-new' if trust else 'yes'}",
        ]  # fmt: skip
        if port:
            self._base += ["-p", port]
        self._base.append(user_host)

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
            message = " ".join(done.stderr.decode("utf-8", "replace").split())
            raise TransportError(f"cannot reach {self.where} over ssh: {message[:300]}")
        return Result(done.returncode, done.stdout, done.stderr)

    def close(self) -> None:
        subprocess.run(
            [*self._base[:-1], "-O", "exit", self._base[-1]],
            capture_output=True,
            timeout=10,
            check=False,
        )
        shutil.rmtree(self._control, ignore_errors=True)


def shell_for(ssh: str | None) -> Shell:
    return SshShell(ssh) if ssh else LocalShell()
