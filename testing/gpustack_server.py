"""A real GPUStack 2.3.0 server on loopback, backed by a throw-away PostgreSQL 15 cluster.

The GPUStack driver's tests talk to GPUStack's real REST API rather than to a fake of it:
:class:`GPUStackServer` runs ``gpustack start`` from the venv the oracle uses
(:mod:`testing.gpustack_venv`) as a server only — no worker, no gateway, no GPU:

* **Database.** GPUStack takes only PostgreSQL or MySQL (no SQLite), and the pip install
  has no embedded one (the Docker image's s6 starts it). Each server gets its own cluster
  from Debian's ``postgresql-15`` binaries: ``initdb`` (trust auth, superuser ``root``,
  no fsync: nothing here must survive), listening on 127.0.0.1 on a free port only, with
  its socket in the run folder, and a ``gpustack`` database; GPUStack's migrations run at
  its start. ``initdb`` refuses to run as root, so as root the cluster runs as the
  ``postgres`` user (``setpriv``), which must be able to reach ``work``: a folder from
  :func:`testing.engines.make_root` (``/tmp/ffe-*``, mode 0755) can be, one under pytest's
  ``tmp_path`` (mode 0700) cannot. The Debian package's own cluster is never used.
* **Loopback only.** GPUStack 2.3.0 binds its API (with the gateway disabled) and its
  worker-tunnel proxy to 0.0.0.0 and has no flag against it; it runs through
  ``testing/gpustack_launch.py``, which pins both to 127.0.0.1. The metrics exporter
  (0.0.0.0 too), the update check, the built-in observability and the registry probe are
  switched off, and the OTA index points at a closed local port: its logs show no
  attempt to reach anything off the machine. Its environment is
  :func:`~testing.gpustack_venv.gpustack_env`: no ``GPUSTACK_*`` variable of the test
  process configures it.
* **Ready.** ``GET /healthz`` answers 200 after 12-14 s on two cores (11 s of it is
  Python importing GPUStack, then its migrations); then the harness logs in as ``admin``
  with the bootstrap password, makes an API key (``POST /v2/api-keys``) and a cluster
  (``POST /v2/clusters``): a server-only install has none, and ``POST /v2/models`` needs
  an explicit ``cluster_id``. If GPUStack exits first, the error holds its log's tail.
* **Stop.** On SIGTERM GPUStack cancels its tasks and SIGKILLs itself 3 s later
  (``utils/process.py``: ``terminate_process_tree(os.getpid())``), so -9 (137 in a shell)
  is its clean exit. Then ``pg_ctl stop -m fast`` and the run folder is removed.
"""

from __future__ import annotations

import contextlib
import http.cookies
import ipaddress
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from testing.engines import MAX_SOCKET_PATH, _log_tail, require_tools
from testing.gpustack_venv import (
    GPUSTACK_VERSION,
    ensure_venv,
    gpustack_env,
    require_venv,
    venv_python,
)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
LAUNCHER = Path(__file__).resolve().parent / "gpustack_launch.py"
ADMIN = "admin"
CLUSTER_NAME = "fleetform-test"
_PG_TOOLS = ("initdb", "pg_ctl", "postgres", "createdb")
_CLOSED_PORT_URL = "http://127.0.0.1:9/ota"  # discard: nothing listens there
_READY_TIMEOUT = 120.0
_STOP_TIMEOUT = 10.0
_REQUEST_TIMEOUT = 30.0
# The exits of a stopped server: its own SIGKILL after our SIGTERM (-9; 137 through a
# shell), or a plain end.
_CLEAN_EXITS = frozenset(
    {0, -signal.SIGTERM, -signal.SIGKILL, 128 + signal.SIGTERM, 128 + signal.SIGKILL}
)
_TCP_LISTEN = "0A"  # st of a listening socket in /proc/net/tcp


class GPUStackStartError(RuntimeError):
    """PostgreSQL or GPUStack did not come up; the message holds the tail of the log."""


class GPUStackStopError(RuntimeError):
    """GPUStack had exited on its own before close() (it crashed during the test)."""


# --- tools --------------------------------------------------------------------------------


def missing_gpustack_server_tools() -> list[str]:
    """What this machine lacks to run the server (the venv aside), one readable line each."""
    missing = []
    absent = [tool for tool in _PG_TOOLS if not os.access(PG_BIN / tool, os.X_OK)]
    if absent:
        missing.append(f"PostgreSQL 15's {', '.join(absent)} in {PG_BIN} (apt: postgresql-15)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            missing.append(f"a {PG_USER} user to run PostgreSQL as (apt: postgresql-15)")
        if shutil.which("setpriv") is None:
            missing.append("setpriv (apt: util-linux)")
    return missing


def require_gpustack_server() -> None:
    """Skip — or fail under ``FLEETFORM_REQUIRE_TOOLS=1`` (CI) — when PostgreSQL 15 or the
    GPUStack venv is missing (the venv is built here on first use)."""
    require_tools("the GPUStack server harness", missing_gpustack_server_tools())
    require_venv(f"the GPUStack {GPUSTACK_VERSION} server harness")


# --- sockets ------------------------------------------------------------------------------


def _proc_address(text: str) -> str:
    raw = bytes.fromhex(text)
    # The kernel prints each 32-bit word of the address in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """The TCP addresses process ``pid`` listens on, as ``(address, port)``, sorted."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == _TCP_LISTEN and fields[9] in inodes:
                address, port = fields[1].split(":")
                found.append((_proc_address(address), int(port, 16)))
    return sorted(found)


def is_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- the server ---------------------------------------------------------------------------


class GPUStackServer:
    """GPUStack 2.3.0 and its PostgreSQL, both on 127.0.0.1, in a run folder under ``work``.

    ``url`` is the API's base URL; ``api_key`` an admin API key (scope ``*``);
    ``cluster_id``/``cluster_name`` the Docker cluster made for it; ``password`` the
    ``admin`` user's; ``log`` GPUStack's output. ``timings`` holds seconds: "postgres"
    (initdb to database), "server" (the cold start, process to ``/healthz``), "bootstrap"
    (login, key, cluster), "total", and after :meth:`close` "stop".
    """

    def __init__(self, work: Path, cache_dir: Path | None = None) -> None:
        began = time.monotonic()
        self.timings: dict[str, float] = {}
        self.password = f"Ff-{secrets.token_hex(8)}-Pw1!"
        self.cluster_name = CLUSTER_NAME
        self.api_key = ""
        self.cluster_id = 0
        self.run_dir = Path(tempfile.mkdtemp(prefix="gpustack-", dir=work))
        self.run_dir.chmod(0o755)  # PostgreSQL's user passes through it
        self.log = self.run_dir / "server.log"
        self._pg_dir = self.run_dir / "pg"
        self._pg_data = self._pg_dir / "data"
        self._pg_started = False
        self._process: subprocess.Popen[bytes] | None = None
        self._closed = False
        try:
            venv = ensure_venv(cache_dir)
            self._start_postgres()
            self._start_server(venv)
            self._bootstrap()
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise
        self.timings["total"] = time.monotonic() - began

    @property
    def pid(self) -> int:
        """GPUStack's process (a single one: the server starts no children)."""
        assert self._process is not None
        return self._process.pid

    @property
    def postgres_pid(self) -> int:
        """The postmaster's process."""
        return int((self._pg_data / "postmaster.pid").read_text().split()[0])

    # --- PostgreSQL -----------------------------------------------------------------------

    def _as_pg_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["setpriv", f"--reuid={PG_USER}", f"--regid={PG_USER}", "--init-groups", *argv]

    def _pg(self, argv: list[str], what: str) -> None:
        done = subprocess.run(
            self._as_pg_user(argv),
            cwd=self._pg_dir,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise GPUStackStartError(
                f"{what} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
                f"{_log_tail(self._pg_dir / 'postgres.log')}"
            )

    def _start_postgres(self) -> None:
        began = time.monotonic()
        self._pg_dir.mkdir()
        if len(str(self._pg_dir / ".s.PGSQL.65535")) > MAX_SOCKET_PATH:
            raise GPUStackStartError(f"{self._pg_dir}: too long for PostgreSQL's socket")
        if os.geteuid() == 0:
            user = pwd.getpwnam(PG_USER)
            os.chown(self._pg_dir, user.pw_uid, user.pw_gid)
            reach = subprocess.run(self._as_pg_user(["test", "-w", str(self._pg_dir)]))
            if reach.returncode != 0:
                raise GPUStackStartError(
                    f"the {PG_USER} user cannot reach {self._pg_dir} (PostgreSQL refuses to "
                    "run as root): every folder above it must be searchable by all, as "
                    "testing.engines.make_root() makes them; pytest's tmp_path is not"
                )
        self.postgres_port = _free_port()
        self._pg(
            [
                str(PG_BIN / "initdb"),
                f"--pgdata={self._pg_data}",
                "--username=root",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
                "--no-instructions",
            ],
            "initdb",
        )
        socket_dir = str(self._pg_dir).replace("'", "''")
        with (self._pg_data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                "\n# fleetform's GPUStack harness: loopback only, nothing kept\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.postgres_port}\n"
                f"unix_socket_directories = '{socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        self._pg(
            [
                str(PG_BIN / "pg_ctl"),
                f"--pgdata={self._pg_data}",
                f"--log={self._pg_dir / 'postgres.log'}",
                "--wait",
                "--timeout=60",
                "start",
            ],
            "pg_ctl start",
        )
        self._pg_started = True
        created = subprocess.run(
            [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.postgres_port)]
            + ["-U", "root", "gpustack"],
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise GPUStackStartError(f"createdb gpustack failed:\n{created.stderr}")
        self.database_url = (
            f"postgresql://root@127.0.0.1:{self.postgres_port}/gpustack?sslmode=disable"
        )
        self.timings["postgres"] = time.monotonic() - began

    def _stop_postgres(self) -> None:
        pid = self.postgres_pid if (self._pg_data / "postmaster.pid").is_file() else None
        stop = [str(PG_BIN / "pg_ctl"), f"--pgdata={self._pg_data}", "--mode=fast"]
        done = subprocess.run(
            self._as_pg_user([*stop, "--wait", "--timeout=30", "stop"]),
            cwd=self._pg_dir,
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
            capture_output=True,
            timeout=60,
        )
        if pid is None:
            return
        if done.returncode != 0:
            # Its backends exit when they see the postmaster gone.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # pg_ctl returns once the pid file is gone, a moment before the process is.
        deadline = time.monotonic() + _STOP_TIMEOUT
        while is_running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    # --- GPUStack -------------------------------------------------------------------------

    def _start_server(self, venv: Path) -> None:
        api_port, gateway_port, proxy_port = _free_port(), _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{api_port}"
        argv = [
            str(venv_python(venv)),
            "-I",  # no script folder on sys.path: testing/ must not shadow GPUStack's modules
            str(LAUNCHER),
            "start",
            "--gateway-mode=disabled",
            f"--database-url={self.database_url}",
            f"--data-dir={self.run_dir / 'data'}",
            "--advertise-address=127.0.0.1",
            f"--api-port={api_port}",
            f"--port={gateway_port}",  # the gateway's: unused when disabled, kept off defaults
            f"--proxy-port={proxy_port}",
            "--disable-metrics",
            "--disable-update-check",
            "--disable-builtin-observability",
            "--system-default-container-registry=docker.io",
            f"--ota-server-url={_CLOSED_PORT_URL}",
            f"--bootstrap-password={self.password}",
        ]
        env = gpustack_env(self.run_dir / "home")
        env["TMPDIR"] = str(self.run_dir / "tmp")
        Path(env["TMPDIR"]).mkdir()
        began = time.monotonic()
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                argv,
                cwd=self.run_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = began + _READY_TIMEOUT
        while time.monotonic() < deadline:
            # URLError, refused, reset, an error status: not yet.
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as answer,
            ):
                if answer.status == 200:
                    self.timings["server"] = time.monotonic() - began
                    return
            if self._process.poll() is not None:
                self._start_failed(f"GPUStack exited with {self._process.returncode}")
            time.sleep(0.2)
        self._start_failed(f"GPUStack was not ready after {_READY_TIMEOUT:.0f} s")

    def _start_failed(self, what: str) -> None:
        tail = _log_tail(self.log)
        if "address already in use" in tail.lower():  # what CI's rerun filter looks for
            what += " (a port was taken: Address already in use)"
        raise GPUStackStartError(f"{what}\n{tail}")

    def _call(
        self, method: str, path: str, data: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, Any, Any]:
        request = urllib.request.Request(
            self.url + path, data=data, headers=dict(headers), method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=_REQUEST_TIMEOUT) as answer:
                status, answer_headers, raw = answer.status, answer.headers, answer.read()
        except urllib.error.HTTPError as error:
            status, answer_headers, raw = error.code, error.headers, error.read()
        return status, answer_headers, json.loads(raw) if raw.strip() else None

    def request(
        self, method: str, path: str, body: Any = None, key: str | None = None
    ) -> tuple[int, Any]:
        """``method path`` with ``body`` as JSON (None: no body) and ``key`` (default: the
        API key) as a Bearer token; returns the status and the decoded JSON answer (None
        when empty). Error statuses are returned, not raised."""
        headers = {"Authorization": f"Bearer {self.api_key if key is None else key}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        status, _, payload = self._call(method, path, data, headers)
        return status, payload

    def _bootstrap(self) -> None:
        began = time.monotonic()
        form = urllib.parse.urlencode({"username": ADMIN, "password": self.password}).encode()
        form_type = {"Content-Type": "application/x-www-form-urlencoded"}
        status, headers, payload = self._call("POST", "/auth/login", form, form_type)
        session = http.cookies.SimpleCookie()
        for cookie in headers.get_all("Set-Cookie") or []:
            session.load(cookie)
        if status != 200 or "gpustack_session" not in session:
            raise GPUStackStartError(f"login as {ADMIN}: {status} {payload!r}")
        cookie = f"gpustack_session={session['gpustack_session'].value}"
        status, _, payload = self._call(
            "POST",
            "/v2/api-keys",
            json.dumps({"name": "tests"}).encode(),
            {"Cookie": cookie, "Content-Type": "application/json"},
        )
        if status != 200:
            raise GPUStackStartError(f"POST /v2/api-keys: {status} {payload!r}")
        self.api_key = str(payload["value"])
        body = {"name": self.cluster_name, "provider": "Docker"}
        status, payload = self.request("POST", "/v2/clusters", body)
        if status != 200:
            raise GPUStackStartError(f"POST /v2/clusters: {status} {payload!r}")
        self.cluster_id = int(payload["id"])
        self.timings["bootstrap"] = time.monotonic() - began

    # --- stop -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop GPUStack (SIGTERM; SIGKILL after 10 s) and PostgreSQL, remove the run folder.

        Idempotent. Raises :class:`GPUStackStopError` (after cleaning up) when GPUStack had
        exited on its own with an unclean status before this call.
        """
        if self._closed:
            return
        self._closed = True
        began = time.monotonic()
        crashed = None
        try:
            process = self._process
            if process is not None:
                if process.poll() is not None and process.returncode not in _CLEAN_EXITS:
                    crashed = f"GPUStack exited with {process.returncode}\n{_log_tail(self.log)}"
                elif process.poll() is None:
                    process.send_signal(signal.SIGTERM)
                    try:
                        process.wait(_STOP_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
        finally:
            try:
                if self._pg_started:
                    self._stop_postgres()
            finally:
                shutil.rmtree(self.run_dir, ignore_errors=True)
                self.timings["stop"] = time.monotonic() - began
        if crashed:
            raise GPUStackStopError(crashed)


@contextlib.contextmanager
def gpustack_server(work: Path, cache_dir: Path | None = None) -> Iterator[GPUStackServer]:
    """A :class:`GPUStackServer` under ``work`` for the ``with`` block, closed after it."""
    server = GPUStackServer(work, cache_dir)
    try:
        yield server
    finally:
        server.close()
