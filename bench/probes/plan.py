"""``fleetform plan`` in-process, with counters and stage timers.

Used by the live suite (``bench/suites/live.py``) to say where a no-op plan's time goes;
not a fleetform command. Run as::

    python bench/probes/plan.py OUT.json plan --repo REPO ...

OUT.json receives: exit code, stage seconds (build, observe, plan), the ssh processes
started and the Engine API requests sent, and per host (averages) how long the first
answer took after the connection was opened (the SSH handshake, or a session on a
master connection, then the host's ``docker system dial-stdio``) and the later requests'
seconds. The plan's own output goes to stdout/stderr as usual.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

STARTED = time.perf_counter()


def main() -> None:
    out_path, argv = sys.argv[1], sys.argv[2:]
    counts = {"ssh": 0, "requests": 0}
    timers: dict[str, float] = {}

    from compiler.remote import engine as engine_module

    opened: dict[int, float] = {}  # per Engine: when it was opened
    first: list[float] = []
    later: dict[int, float] = {}
    engine_init = engine_module.Engine.__init__
    ssh_connect = engine_module._SshConnection.connect
    get = engine_module.Engine.get

    def timed_init(self: Any, *args: Any, **kwargs: Any) -> None:
        opened[id(self)] = time.perf_counter()
        engine_init(self, *args, **kwargs)

    def counting_connect(self: Any) -> None:
        counts["ssh"] += 1
        ssh_connect(self)

    def timed_get(self: Any, path: str, **query: Any) -> Any:
        counts["requests"] += 1
        began = time.perf_counter()
        try:
            return get(self, path, **query)
        finally:
            now = time.perf_counter()
            if id(self) in opened:
                first.append(now - opened.pop(id(self)))
            else:
                later[id(self)] = later.get(id(self), 0.0) + now - began

    engine_module.Engine.__init__ = timed_init  # type: ignore[method-assign]
    engine_module._SshConnection.connect = counting_connect  # type: ignore[method-assign]
    engine_module.Engine.get = timed_get  # type: ignore[method-assign]

    def timed(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timers[name] = timers.get(name, 0.0) + time.perf_counter() - began

        return wrapper

    from compiler.remote import connections

    connections_init = connections.Connections.__init__

    def then_timers(self: Any, *args: Any, **kwargs: Any) -> None:
        """The timers go in once the connections are open: the command imports the rest
        only then, and the probe keeps that order."""
        connections_init(self, *args, **kwargs)
        import compiler.plan
        from compiler import api

        # plan_repo calls these through its module's globals / a call-time import.
        api.build = timed("build", api.build)
        api.observe = timed("observe", api.observe)
        compiler.plan.make_plan = timed("plan", compiler.plan.make_plan)

    connections.Connections.__init__ = then_timers  # type: ignore[method-assign]
    from compiler import cli

    code: Any = 0
    try:
        cli.cli(argv, prog_name="fleetform")
    except SystemExit as done:
        code = done.code
    report = {
        "exit": code if isinstance(code, int) else (0 if code is None else 1),
        "stages": timers,
        "in_process": time.perf_counter() - STARTED,
        "first_answer": sum(first) / max(1, len(first)),
        "later_requests": sum(later.values()) / max(1, len(later)),
        **counts,
    }
    with open(out_path, "w", encoding="utf-8") as out:
        json.dump(report, out)


if __name__ == "__main__":
    main()
