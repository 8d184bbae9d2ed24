"""``fleetform plan`` in-process, with counters, stage timers and optional fixes applied.

Used by ``bench/live.py`` to say where a no-op plan's time goes, and what two candidate
fixes would save; not a fleetform command. Run as::

    python bench/live_probe.py FLAGS OUT.json plan --repo REPO ...

FLAGS is ``-`` or a comma-separated list of:

* ``one-pool`` — one connection pool per ssh:// host. docker-py's paramiko adapter keys
  its pools by the full request URL (docker/docker-py#2966), so every distinct request
  (each ``inspect`` of another container) opens a new SSH channel, and the host runs a
  new ``docker system dial-stdio`` process for it.
* ``equal-no-deepdiff`` — compare a container's observed and desired views with ``==``
  first and call deepdiff only when they differ (deepdiff's import alone pulls numpy).

OUT.json receives: exit code, stage seconds (build, observe, plan), SSH channels
opened and HTTP requests sent, and per host the SSH handshake, the first request's and
the later requests' seconds. The plan's own output goes to stdout/stderr as usual.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

STARTED = time.perf_counter()


def main() -> None:
    flags = {f for f in sys.argv[1].split(",") if f and f != "-"}
    out_path, argv = sys.argv[2], sys.argv[3:]
    unknown = flags - {"one-pool", "equal-no-deepdiff"}
    if unknown:
        raise SystemExit(f"live_probe: unknown flag(s) {', '.join(sorted(unknown))}")
    counts = {"channels": 0, "requests": 0}
    timers: dict[str, float] = {}

    import paramiko
    import requests.adapters

    handshakes: list[float] = []
    sends: dict[int, list[float]] = {}  # per thread (observe runs one thread per host)
    ssh_connect = paramiko.SSHClient.connect

    def timed_connect(self: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return ssh_connect(self, *args, **kwargs)
        finally:
            handshakes.append(time.perf_counter() - began)

    paramiko.SSHClient.connect = timed_connect
    open_session = paramiko.Transport.open_session

    def counting_open(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["channels"] += 1
        return open_session(self, *args, **kwargs)

    paramiko.Transport.open_session = counting_open
    send = requests.adapters.HTTPAdapter.send

    def counting_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["requests"] += 1
        began = time.perf_counter()
        try:
            return send(self, *args, **kwargs)
        finally:
            sends.setdefault(threading.get_ident(), []).append(time.perf_counter() - began)

    requests.adapters.HTTPAdapter.send = counting_send  # type: ignore[method-assign]

    if "one-pool" in flags:
        from docker.transport import sshconn

        get_connection = sshconn.SSHHTTPAdapter.get_connection

        def one_pool(self: Any, url: str, proxies: Any = None) -> Any:
            return get_connection(self, "ssh://docker", proxies)

        sshconn.SSHHTTPAdapter.get_connection = one_pool

    import compiler.plan
    from compiler import api, cli

    if "equal-no-deepdiff" in flags:
        changes = compiler.plan._changes

        def equal_first(before: dict[str, Any], after: dict[str, Any]) -> Any:
            return () if before == after else changes(before, after)

        compiler.plan._changes = equal_first

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timers[name] = timers.get(name, 0.0) + time.perf_counter() - began

        return wrapper

    # plan_repo calls these through its module's globals / a call-time import.
    api.build = timed("build", api.build)
    api.observe = timed("observe", api.observe)
    compiler.plan.make_plan = timed("plan", compiler.plan.make_plan)

    code: Any = 0
    try:
        cli.cli(argv, prog_name="fleetform")
    except SystemExit as done:
        code = done.code
    report = {
        "exit": code if isinstance(code, int) else (0 if code is None else 1),
        "flags": sorted(flags),
        "stages": timers,
        "in_process": time.perf_counter() - STARTED,
        # Per host (averages): the SSH handshake, the first API request on the new
        # channel (the host starts `docker system dial-stdio` for it), all later ones.
        "ssh_handshake": sum(handshakes) / max(1, len(handshakes)),
        "first_request": sum(t[0] for t in sends.values()) / max(1, len(sends)),
        "later_requests": sum(sum(t[1:]) for t in sends.values()) / max(1, len(sends)),
        **counts,
    }
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(report, out)


if __name__ == "__main__":
    main()
