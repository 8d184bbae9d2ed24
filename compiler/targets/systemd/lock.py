"""The systemd driver's host lock: a directory on the host (``/run/lock``, so a reboot
frees it), made atomically by ``mkdir``, with the owner's name and start time inside."""

from __future__ import annotations

import time

from compiler.apply import HostLocked
from compiler.remote.ssh import Shell, write_file


def lock_dir(project: str) -> str:
    return f"/run/lock/fleetform-{project}.lock"


def acquire(shell: Shell, host: str, project: str, owner: str) -> None:
    path = lock_dir(project)
    made = shell.run(["mkdir", path])
    if made.code != 0:
        held = shell.run(["cat", f"{path}/owner"])
        if held.code == 0:
            owner_line, _, since = held.text.strip().rpartition(" since ")
            age = int(time.time() - float(since)) if since.isdigit() else 0
            raise HostLocked(
                f"host '{host}' is locked by {owner_line or 'unknown'} ({age // 60} min"
                f" {age % 60} s ago); if that apply is gone, `fleetform unlock {host}`"
                " breaks the lock"
            )
        if shell.run(["test", "-d", path]).code == 0:
            # mkdir succeeded for another apply that died (or is) before writing its name.
            raise HostLocked(
                f"host '{host}' is locked by an apply that left no owner in {path} (it died"
                f" taking the lock, or is taking it now); if no apply is running,"
                f" `fleetform unlock {host}` breaks the lock"
            )
        raise HostLocked(f"cannot lock host '{host}': {made.error}")
    write_file(shell, f"{path}/owner", f"{owner} since {time.time():.0f}\n".encode(), "0644")


def release(shell: Shell, project: str) -> None:
    shell.run(["rm", "-rf", "--", lock_dir(project)])


def break_lock(shell: Shell, project: str) -> bool:
    found = shell.run(["test", "-d", lock_dir(project)]).code == 0
    release(shell, project)
    return found
