"""A real Hugging Face–compatible hub on loopback, serving model repositories a test makes.

* :func:`make_model_repo` writes a repository as a hub stores it: a git repository (made
  with git's plumbing, no git-lfs needed) whose big files are Git LFS pointers with
  their objects under ``.git/lfs/objects``.
* :class:`HubServer` runs `olah <https://pypi.org/project/olah/>`_ (a self-hosted
  Hugging Face mirror) in its offline local-mirror mode over those repositories, on
  127.0.0.1, from a venv of its own cached like the other test tools; every upstream
  address of its configuration is a closed loopback port. In front of it runs a small
  proxy (:class:`Gate`) that olah lacks: a token check (401 as the hub answers an
  unknown or private repository), a byte rate (to interrupt a download half way) and a
  log of the files served. Clients use it through ``HF_ENDPOINT``.

olah serves no ``Range`` (it sends whole files) and answers ``model_info`` without file
sizes; the tree API carries them (sizes, LFS SHA-256, git blob ids), as the hub's does.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from testing.systemd_hosts import cache_dir_default

OLAH = "olah==0.5.4"
_CLOSED = "127.0.0.1:9"  # discard: nothing listens there
_GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@invalid",
}


# --- repositories ------------------------------------------------------------------------


def _git(repo: Path, *args: str, data: bytes | None = None) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        input=data,
        capture_output=True,
        env={**os.environ, **_GIT_ENV},
        check=True,
    )
    return done.stdout.decode().strip()


def make_model_repo(
    mirrors: Path, repo_id: str, files: dict[str, bytes], lfs: tuple[str, ...] = ()
) -> str:
    """``repo_id`` under ``mirrors`` with ``files`` on branch main; those ending in one of
    ``lfs`` (".gguf", ".safetensors") stored as Git LFS. Returns the commit."""
    repo = mirrors / "models" / repo_id
    repo.mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    for path, content in sorted(files.items()):
        blob = content
        if path.endswith(lfs):
            oid = hashlib.sha256(content).hexdigest()
            store = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4]
            store.mkdir(parents=True, exist_ok=True)
            (store / oid).write_bytes(content)
            blob = (
                f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\n"
                f"size {len(content)}\n"
            ).encode()
        sha = _git(repo, "hash-object", "-w", "--no-filters", "--stdin", data=blob)
        _git(repo, "update-index", "--add", "--cacheinfo", f"100644,{sha},{path}")
    tree = _git(repo, "write-tree")
    commit = _git(repo, "commit-tree", tree, "-m", "files")
    _git(repo, "update-ref", "refs/heads/main", commit)
    return commit


def add_commit(mirrors: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """A new commit on main of a repository :func:`make_model_repo` made, changing
    ``files`` (plain git files); returns it."""
    repo = mirrors / "models" / repo_id
    for path, content in sorted(files.items()):
        sha = _git(repo, "hash-object", "-w", "--no-filters", "--stdin", data=content)
        _git(repo, "update-index", "--add", "--cacheinfo", f"100644,{sha},{path}")
    tree = _git(repo, "write-tree")
    parent = _git(repo, "rev-parse", "refs/heads/main")
    commit = _git(repo, "commit-tree", tree, "-p", parent, "-m", "more")
    _git(repo, "update-ref", "refs/heads/main", commit)
    return commit


# --- olah's venv --------------------------------------------------------------------------


def olah_venv(cache_dir: Path | None = None) -> Path:
    """A venv with olah, built once per machine (under a lock) and kept in the test cache."""
    cache = cache_dir or cache_dir_default()
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps([OLAH, sys.version_info[:2]]).encode()).hexdigest()[:12]
    venv = cache / f"olah-venv-{key}"
    with (cache / f"olah-venv-{key}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if (venv / "ok").is_file():
            return venv
        tmp = Path(tempfile.mkdtemp(prefix=f".{venv.name}.", dir=cache))
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True, timeout=300)
        installed = subprocess.run(
            [str(tmp / "bin" / "python"), "-m", "pip", "install", "--quiet", OLAH],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if installed.returncode != 0:
            raise RuntimeError(f"pip install {OLAH} failed:\n{installed.stderr[-2000:]}")
        (tmp / "ok").write_text(OLAH + "\n")
        os.chmod(tmp, 0o755)
        os.rename(tmp, venv)
        return venv


# --- the gate in front of olah ------------------------------------------------------------


@dataclass
class Gate:
    """What the proxy in front of olah does: ``token`` (None: none needed), ``rate``
    (bytes per second of each file body, None: as fast as it goes), and what it served
    (``served``: each GET of a file, as its path)."""

    token: str | None = None
    rate: float | None = None
    served: list[str] = field(default_factory=list)
    seen_tokens: list[str] = field(default_factory=list)


def _gate_server(upstream: int, gate: Gate) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _refuse(self) -> None:
            body = b'{"error":"Invalid credentials in Authorization header"}'
            self.send_response(401)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _forward(self) -> None:
            given = self.headers.get("Authorization", "")
            if given:
                gate.seen_tokens.append(given.removeprefix("Bearer "))
            if gate.token is not None and given != f"Bearer {gate.token}":
                self._refuse()
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            upstream_connection = http.client.HTTPConnection("127.0.0.1", upstream, timeout=60)
            # The client's Host too: olah builds its redirects from it (through the gate).
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            upstream_connection.request(self.command, self.path, body=body, headers=headers)
            answer = upstream_connection.getresponse()
            is_file = "/resolve/" in self.path
            if is_file and self.command == "GET":
                gate.served.append(self.path.split("/resolve/", 1)[1].split("/", 1)[-1])
            self.send_response(answer.status)
            for key, value in answer.getheaders():
                if key.lower() not in ("connection", "transfer-encoding", "keep-alive"):
                    self.send_header(key, value)
            chunked = self.command != "HEAD" and answer.getheader("Content-Length") is None
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                while chunk := answer.read(65536):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    if gate.rate and is_file:
                        time.sleep(len(chunk) / gate.rate)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            upstream_connection.close()

        def _handle(self) -> None:
            try:
                self._forward()
            except OSError:  # the client went away (an interrupted download)
                self.close_connection = True

        do_GET = do_HEAD = do_POST = _handle

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# --- the server ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class HubServer:
    """olah over ``mirrors`` with a :class:`Gate` in front; ``endpoint`` is the gate's URL."""

    def __init__(self, work: Path, mirrors: Path, gate: Gate | None = None) -> None:
        self.gate = gate or Gate()
        self.mirrors = mirrors
        self._work = work
        port = _free_port()
        # The gate first: olah writes its own address into redirects (the tree API's)
        # and links, and they must lead back through the gate, as a host sees only it.
        self._gate = _gate_server(port, self.gate)
        front = f"127.0.0.1:{self._gate.server_address[1]}"
        config = work / "olah.toml"
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {port}\n"
            f'repos-path = "{work / "cache"}"\n'
            f'mirrors-path = ["{mirrors}"]\n'
            'hf-scheme = "http"\n'
            f'hf-netloc = "{_CLOSED}"\n'
            f'hf-lfs-netloc = "{_CLOSED}"\n'
            'mirror-scheme = "http"\n'
            f'mirror-netloc = "{front}"\n'
            f'mirror-lfs-netloc = "{front}"\n'
            "\n[accessibility]\noffline = true\n",
            encoding="utf-8",
        )
        python = olah_venv() / "bin" / "python"
        self._log = (work / "olah.log").open("wb")
        self._process = subprocess.Popen(
            [str(python), "-m", "olah.server", "-c", str(config), "--log-path", str(work / "logs")],
            cwd=work,
            env={**os.environ, "HOME": str(work)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._upstream = f"http://127.0.0.1:{port}"
        self._wait_ready()
        self.endpoint = f"http://{front}"

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:  # any answer will do: olah is up
                with urllib.request.urlopen(f"{self._upstream}/api/models", timeout=2):
                    return
            except urllib.error.HTTPError:
                return
            except (urllib.error.URLError, OSError):
                pass
            if self._process.poll() is not None:
                break
            time.sleep(0.1)
        self.close()
        log = (self._work / "olah.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"olah did not start:\n{log}")

    def close(self) -> None:
        if getattr(self, "_gate", None) is not None:
            self._gate.shutdown()
            self._gate.server_close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()


@contextlib.contextmanager
def hub_server(work: Path, mirrors: Path, gate: Gate | None = None) -> Iterator[HubServer]:
    server = HubServer(work, mirrors, gate)
    try:
        yield server
    finally:
        server.close()
