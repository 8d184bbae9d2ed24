"""The live suite's hosts: real engines, each behind a real sshd on a loopback address.

Two fleets of 3 ``dockerd`` (the harness of ``testing/engines.py``, with the offline
busybox image), fleet A on 127.0.77.1–3 and fleet B on 127.0.78.1–3; every tool reaches a
host as ``ssh://root@127.0.7x.i:PORT`` with the harness's client key. Also what the suite
reads from the hosts, through the engines' own sockets (not measured): the workload
containers, their health, and the machine's load. Nothing leaves the loopback range.
This is the benchmark's one import of the test harness.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fleets.live import HOSTS, PER_HOST
from measure import BenchError

from testing import engines as E

# Fleet A (fleetform) and fleet B (compose-farm, plain compose): host i of a fleet
# listens (sshd) and serves (httpd) on SUBNETS[fleet].i.
SUBNETS = {"A": "127.0.77", "B": "127.0.78"}
PORT_BASE = 41000  # host i's port_range: 41000 + 100*i .. +19
LABEL = "io.fleetform.deployment"  # every workload container carries it


@dataclass
class Host:
    fleet: str
    name: str
    address: str
    engine: E.Engine
    ssh: E.SshHost
    port_range: tuple[int, int]

    @property
    def url(self) -> str:
        return self.ssh.url


def start_fleets(root: Path, docker_config: Path) -> dict[str, list[Host]]:
    """Fleets A and B: 3 engines each with the busybox image (started in parallel), each
    behind an sshd on its fleet's 127.0.x.i."""
    E.build_rootfs(root)  # once, before the threads (they would race on its temporary file)
    names = [(fleet, host) for fleet in SUBNETS for host in HOSTS]

    def engine(fleet: str, host: str) -> E.Engine:
        started = E.start_engine(root, f"{fleet.lower()}{host[1:]}")  # a1 … b3: short paths
        try:
            E.load_test_image(started)
        except BaseException:
            started.stop()
            raise
        return started

    engines: dict[tuple[str, str], E.Engine] = {}
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = {key: pool.submit(engine, *key) for key in names}
        for key, future in futures.items():
            try:
                engines[key] = future.result()
            except Exception as error:  # stop the ones that did start, then report
                errors.append(error)
    if errors:
        stop_hosts([], list(engines.values()))
        raise errors[0]
    fleets: dict[str, list[Host]] = {fleet: [] for fleet in SUBNETS}
    try:
        for fleet, subnet in SUBNETS.items():
            for index, host in enumerate(HOSTS, 1):
                address = f"{subnet}.{index}"
                started = engines[(fleet, host)]
                ssh = E.start_sshd(
                    root, address, E.free_port(address), docker_socket=started.socket
                )
                low = PORT_BASE + 100 * index
                fleets[fleet].append(
                    Host(fleet, host, address, started, ssh, (low, low + PER_HOST + 9))
                )
                session_env(ssh, "DOCKER_CONFIG", str(docker_config))
    except BaseException:
        stop_hosts([h for hosts in fleets.values() for h in hosts], list(engines.values()))
        raise
    return fleets


def stop_hosts(hosts: list[Host], engines: Sequence[E.Engine] = ()) -> None:
    for host in hosts:
        with contextlib.suppress(Exception):
            host.ssh.stop()
    for started in {id(e): e for e in [*(h.engine for h in hosts), *engines]}.values():
        with contextlib.suppress(Exception):
            started.stop()


def session_env(ssh: E.SshHost, name: str, value: str, timeout: float = 15.0) -> None:
    """Add ``name=value`` to every session's environment of a running harness sshd.

    sshd takes only its first ``SetEnv`` line, so the variable joins the harness's
    ``SetEnv DOCKER_HOST=…`` line; SIGHUP makes sshd re-exec itself (same pid) with
    the new file. Used for ``DOCKER_CONFIG``: the folder whose ``cli-plugins`` holds
    the ``docker compose`` plugin that compose-farm runs on the remote side.
    """
    config = ssh.dir / "sshd_config"
    lines = config.read_text(encoding="utf-8").splitlines()
    lines = [f"{line} {name}={value}" if line.startswith("SetEnv ") else line for line in lines]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    ssh.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while True:  # bounded by the deadline
        probe = remote(ssh, f"printenv {name}", check=False, timeout=5)
        if probe.returncode == 0 and probe.stdout.strip() == value:
            return
        if time.monotonic() > deadline or ssh.process.poll() is not None:
            raise BenchError(
                f"sshd {ssh.address}:{ssh.port} did not take {name} after SIGHUP: "
                f"{probe.stdout.strip()!r} {probe.stderr.strip()!r}"
            )
        time.sleep(0.2)


def remote(
    ssh: E.SshHost, command: str, *, check: bool = True, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``command`` on the host through the harness's ssh client configuration."""
    env = {**os.environ, **ssh.env}
    done = subprocess.run(
        ["ssh", "-p", str(ssh.port), f"{ssh.user}@{ssh.address}", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and done.returncode != 0:
        raise BenchError(f"ssh {ssh.address}: {command}: exit {done.returncode}: {done.stderr}")
    return done


@dataclass(frozen=True)
class Seen:
    id: str
    state: str
    started: str


def observe(hosts: list[Host]) -> dict[tuple[str, str], Seen]:
    """Every workload container on every host (through the engines' unix sockets)."""
    found: dict[tuple[str, str], Seen] = {}
    for host in hosts:
        client = host.engine.client(timeout=30)
        try:
            for summary in client.api.containers(all=True, filters={"label": LABEL}):
                details = client.api.inspect_container(summary["Id"])
                name = details["Name"].lstrip("/")
                state = details["State"]
                found[(host.name, name)] = Seen(
                    details["Id"], state["Status"], state.get("StartedAt", "")
                )
        finally:
            client.close()
    return found


@dataclass(frozen=True)
class Change:
    recreated: list[str]
    restarted: list[str]  # same container, started again
    created: list[str]
    removed: list[str]

    @property
    def touched(self) -> int:
        return len(self.recreated) + len(self.restarted) + len(self.created) + len(self.removed)

    def describe(self) -> str:
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("recreated", self.recreated),
                ("restarted", self.restarted),
                ("created", self.created),
                ("removed", self.removed),
            )
            if names
        ]
        return "; ".join(parts) or "none"


def compare(before: dict[tuple[str, str], Seen], after: dict[tuple[str, str], Seen]) -> Change:
    def label(key: tuple[str, str]) -> str:
        return f"{key[0]}/{key[1]}"

    common = sorted(set(before) & set(after))
    return Change(
        recreated=[label(k) for k in common if before[k].id != after[k].id],
        restarted=[
            label(k)
            for k in common
            if before[k].id == after[k].id and before[k].started != after[k].started
        ],
        created=[label(k) for k in sorted(set(after) - set(before))],
        removed=[label(k) for k in sorted(set(before) - set(after))],
    )


def expect_running(hosts: list[Host], what: str) -> dict[tuple[str, str], Seen]:
    seen = observe(hosts)
    running = [k for k, s in seen.items() if s.state == "running"]
    want = len(HOSTS) * PER_HOST
    if len(seen) != want or len(running) != want:
        states = sorted({s.state for s in seen.values()})
        raise BenchError(
            f"after {what}: {len(running)} of {len(seen)} containers running, expected"
            f" {want} (states: {', '.join(states) or 'none'})"
        )
    return seen


def check_health(endpoints: list[tuple[str, int]], what: str, timeout: float = 15.0) -> None:
    """GET /health on every workload (loopback only, each retried until a deadline)."""
    deadline = time.monotonic() + timeout
    for address, port in endpoints:
        if not address.startswith("127."):
            raise BenchError(f"refusing to send traffic off loopback: {address}")
        while True:  # bounded by the deadline
            try:
                with urllib.request.urlopen(f"http://{address}:{port}/health", timeout=2) as r:
                    if r.status == 200 and r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"after {what}: http://{address}:{port}/health does not answer")
            time.sleep(0.2)


# The image fleetform imports for its host lock on its first apply to a host.
LOCK_IMAGE = "fleetform/lock:1"


def wipe(hosts: list[Host]) -> None:
    """Remove every container (and non-default network) so that the next tool starts empty,
    and fleetform's lock image, so that its next apply is a first one too."""
    for host in hosts:
        client = host.engine.client(timeout=60)
        try:
            for summary in client.api.containers(all=True):
                client.api.remove_container(summary["Id"], force=True)
            client.api.prune_networks()
            if client.api.images(name=LOCK_IMAGE, quiet=True):
                client.api.remove_image(LOCK_IMAGE, force=True)
        finally:
            client.close()


def load_text(root: Path) -> str:
    """Load average, and the engines other than this run's (other sessions' tests)."""
    others = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if Path(argv[0].decode(errors="replace")).name == "dockerd" and not any(
                str(root).encode() in arg for arg in argv
            ):
                others += 1
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min); {others} other dockerd running"
