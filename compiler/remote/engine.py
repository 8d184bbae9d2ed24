"""A read-only Engine API client: GET requests to one Docker host over one connection.

How a host is reached is docker's own:

* ``unix:///path``: the engine's socket.
* ``ssh://[user@]host[:port]``: OpenSSH's ``ssh`` running ``docker system dial-stdio`` on
  the host, as the docker CLI does. The user's ``~/.ssh/config``, keys, agent and
  known_hosts apply as they do for ``ssh`` and ``docker``; an unknown host key is refused
  unless ``FLEETFORM_SSH_TRUST_UNKNOWN_HOSTS=1`` (see :mod:`compiler.remote.ssh`).
* ``tcp://host:port``: plain HTTP, or TLS from ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``
  as the docker CLI reads them.

Requests are versioned as Docker documents (``/v1.NN/...``): the first exchange asks
the engine's ``/_ping`` for its API version and uses it, capped at the newest this
client knows (:data:`MAX_API`); an engine older than :data:`MIN_API` (Docker 20.10) is
refused in one line. Every field fleetform reads or writes is the same across that range.

Every request of an observation goes over the one connection (HTTP/1.1 keep-alive): over
SSH that is one session and one ``dial-stdio`` per host. The SSH client runs in its own
process, so hosts' handshakes proceed in parallel with each other and with this process's
work; :meth:`Engine.send` puts the first request on the wire before its answer is needed.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from compiler.errors import FleetformError
from compiler.remote.ssh import ssh_message, ssh_options

TIMEOUT = 20.0  # seconds for any one answer, the SSH handshake included
MIN_API = (1, 41)  # Docker Engine 20.10, the oldest this client drives
MAX_API = (1, 47)  # Docker Engine 27: requests ask for no newer version than this
# What an abandoned stream may still hold before the connection is closed instead.
_DRAIN_SECONDS = 5.0
_DRAIN_BYTES = 1 << 20


class HostUnreachable(FleetformError):
    """The host's engine could not be reached, or the connection to it broke."""


class EngineError(FleetformError):
    """The engine answered a request with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Engine:
    """Requests to one engine over one connection. Not thread-safe: one caller at a time.

    Answers are decoded JSON (None for an empty one); an error status raises
    :class:`EngineError`, a broken or refused connection :class:`HostUnreachable`."""

    def __init__(self, base_url: str, timeout: float = TIMEOUT) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._connection = _connection(base_url, timeout)
        self._sent: str | None = None  # a GET on the wire whose answer is unread
        self._prefix: str | None = None  # "/v1.NN" once negotiated
        self._pinged = False  # the negotiation's ping is on the wire, unanswered
        self.api_version = ""  # the version requests use, once negotiated

    def send(self, path: str, **query: Any) -> None:
        """Start an exchange now: put a GET on the wire (or, before the API version is
        known, the ping that asks for it); :meth:`get` of the same path reads its answer."""
        if self._prefix is None:
            if not self._pinged:
                self._request("GET", "/_ping", None, {})
                self._pinged = True
            return
        self._finish_sent()
        target = _target(path, query)
        self._request("GET", self._prefix + target, None, {})
        self._sent = target

    def get(self, path: str, **query: Any) -> Any:
        return _json(self._exchange("GET", _target(path, query)), self.base_url)

    def read(self, path: str, **query: Any) -> bytes:
        """GET, the answer's bytes as they are (a container's logs)."""
        body: bytes = self._exchange("GET", _target(path, query))
        return body

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        timeout: float | None = None,
        **query: Any,
    ) -> Any:
        """POST ``body`` as JSON (or raw ``data``, a tar archive)."""
        return _json(
            self._exchange("POST", _target(path, query), body, data, timeout), self.base_url
        )

    def stat(self, container: str, path: str) -> dict[str, Any] | None:
        """What the engine says of ``path`` in ``container``'s file system (its binds
        included, even in a container never started): name, size, mode, mtime; None when
        there is no such path. One HEAD of the archive API, nothing copied."""
        target = _target(f"/containers/{container}/archive", {"path": path})
        try:
            response = self._exchange("HEAD", target, read=False)
        except EngineError as error:
            if error.status == 404:
                return None
            raise
        try:
            response.read()
        except (OSError, http.client.HTTPException) as error:
            raise self._unreachable(error) from None
        finally:
            self._restore_timeout()
        header = response.getheader("X-Docker-Container-Path-Stat")
        try:
            found = json.loads(base64.b64decode(header or ""))
        except ValueError:
            return None
        return found if isinstance(found, dict) else None

    def delete(self, path: str, **query: Any) -> None:
        self._exchange("DELETE", _target(path, query))

    def stream(
        self,
        path: str,
        *,
        data: bytes | None = None,
        timeout: float | None = None,
        headers: dict[str, str] | None = None,
        **query: Any,
    ) -> Iterator[Any]:
        """POST, then the answer's JSON lines as they come (a pull's progress).
        ``headers``: extra request headers (a pull's X-Registry-Auth)."""
        response = self._exchange(
            "POST", _target(path, query), data=data, timeout=timeout, read=False, extra=headers
        )
        try:
            while line := response.readline():
                if line.strip():
                    yield json.loads(line)
        except (OSError, http.client.HTTPException) as error:
            self._abandon(response)
            raise self._unreachable(error) from None
        finally:
            # A caller that stops early (a pull's error event) leaves the rest of the
            # answer on the connection, where the next answer would be read from.
            if not response.isclosed():
                self._abandon(response)
            response.close()
            self._restore_timeout()

    def _abandon(self, response: http.client.HTTPResponse) -> None:
        """Drain what is left of an answer (a short tail: the engine ends a stream after
        its error), else close the connection: the next request opens a new one."""
        try:
            if self._connection.sock is not None:
                self._connection.sock.settimeout(_DRAIN_SECONDS)
            left = response.read(_DRAIN_BYTES + 1)
            if len(left) <= _DRAIN_BYTES and response.isclosed():
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass
        self._connection.close()

    def close(self) -> None:
        self._connection.close()

    # --- one exchange ------------------------------------------------------------------

    def _exchange(
        self,
        method: str,
        target: str,
        body: Any = None,
        data: bytes | None = None,
        timeout: float | None = None,
        read: bool = True,
        extra: dict[str, str] | None = None,
    ) -> Any:
        """The answer's body (``read``) or the open response; errors raised."""
        prefix = self._negotiated()
        headers: dict[str, str] = dict(extra or {})
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            headers["Content-Type"] = "application/x-tar"
        if method == "GET" and self._sent == target and not data:
            self._sent = None  # sent early: its answer is the next one
        else:
            self._finish_sent()
            self._request(method, prefix + target, data, headers)
        try:
            if timeout is not None and self._connection.sock is not None:
                self._connection.sock.settimeout(timeout)
            response = self._connection.getresponse()
            if response.status >= 400:
                raise EngineError(_error_text(response.read(), response.status), response.status)
            if not read:
                return response
            return response.read()
        except (OSError, http.client.HTTPException) as error:
            raise self._unreachable(error) from None
        finally:
            if read:
                self._restore_timeout()

    def _negotiated(self) -> str:
        """The ``/v1.NN`` prefix of every request, asking the engine the first time."""
        if self._prefix is not None:
            return self._prefix
        if not self._pinged:
            self._request("GET", "/_ping", None, {})
        self._pinged = False
        try:
            response = self._connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as error:
            raise self._unreachable(error) from None
        header = response.getheader("API-Version") or ""
        found = _version(header)
        if found is None:
            raise HostUnreachable(
                f"{self.base_url}: the engine's /_ping gave no API version"
                f" (status {response.status}): is it a Docker Engine?"
            )
        if found < MIN_API:
            raise HostUnreachable(
                f"{self.base_url}: Docker Engine API {header} is older than"
                f" {_shown(MIN_API)} (Docker 20.10), the oldest fleetform drives"
            )
        self.api_version = _shown(min(found, MAX_API))
        self._prefix = f"/v{self.api_version}"
        return self._prefix

    def _request(
        self, method: str, target: str, data: bytes | None, headers: dict[str, str]
    ) -> None:
        try:
            self._connection.request(method, target, body=data, headers=headers)
        except (OSError, http.client.HTTPException) as error:
            raise self._unreachable(error) from None

    def _finish_sent(self) -> None:
        if self._sent is not None:
            self.get(self._sent)  # one request in flight at a time: read its answer

    def _restore_timeout(self) -> None:
        if self._connection.sock is not None:
            self._connection.sock.settimeout(self.timeout)

    def _unreachable(self, error: BaseException) -> HostUnreachable:
        reason = getattr(self._connection, "failure", lambda: None)()
        if reason is None and isinstance(error, TimeoutError):
            reason = f"no answer within {self._connection.timeout:.0f} s"
        hint = getattr(self._connection, "hint", "")
        return HostUnreachable(
            f"cannot reach {self.base_url}: {reason or _describe(error)}"
            + (f" ({hint})" if hint else "")
        )


def _json(body: bytes, base_url: str) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        raise HostUnreachable(f"{base_url}: the engine's answer is not JSON") from None


def demultiplex(raw: bytes) -> bytes:
    """A container's log stream without its frame headers (a container without a TTY
    sends each chunk as 8 bytes - stream, 0, 0, 0, size - then the chunk)."""
    out = bytearray()
    at = 0
    while at + 8 <= len(raw) and raw[at] in (0, 1, 2) and raw[at + 1 : at + 4] == b"\0\0\0":
        size = int.from_bytes(raw[at + 4 : at + 8], "big")
        out += raw[at + 8 : at + 8 + size]
        at += 8 + size
    return bytes(out) if at else raw


def _version(text: str) -> tuple[int, int] | None:
    major, dot, minor = text.strip().partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        return None
    return int(major), int(minor)


def _shown(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _target(path: str, query: dict[str, Any]) -> str:
    return quote(path, safe="/:@") + (f"?{urlencode(query)}" if query else "")


def _error_text(body: bytes, status: int) -> str:
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    text = message or body.decode("utf-8", "replace") or f"status {status}"
    return " ".join(str(text).split())[:400]


def _describe(error: BaseException) -> str:
    return " ".join((str(error) or type(error).__name__).split())[:400]


def _connection(base_url: str, timeout: float) -> http.client.HTTPConnection:
    scheme, _, rest = base_url.partition("://")
    if scheme == "unix":
        return _UnixConnection(rest, timeout)
    if scheme == "ssh":
        return _SshConnection(base_url, timeout)
    if scheme == "tcp":
        return _tcp_connection(rest, timeout)
    raise HostUnreachable(f"cannot reach {base_url}: not a unix://, ssh:// or tcp:// address")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _SshConnection(http.client.HTTPConnection):
    """HTTP over the stdin/stdout of ``ssh HOST docker system dial-stdio``.

    The ssh process gets one end of a socket pair as its stdin and stdout, so the
    connection is an ordinary socket on this side. It starts at construction: the
    handshake runs while the caller does other work."""

    def __init__(self, base_url: str, timeout: float) -> None:
        super().__init__("docker", timeout=timeout)
        parts = urlsplit(base_url)
        if not parts.hostname:
            raise HostUnreachable(f"cannot reach {base_url}: no host name in the address")
        self._argv = ["ssh", *ssh_options(connect_timeout=int(timeout))]
        if parts.username:
            self._argv += ["-l", parts.username]
        if parts.port:
            self._argv += ["-p", str(parts.port)]
        self._argv += ["-T", "--", parts.hostname, "docker", "system", "dial-stdio"]
        self._process: subprocess.Popen[bytes] | None = None
        self._failed: str | None = None
        self.connect()

    def connect(self) -> None:
        if self._process is not None:
            # The engine closed the connection: a new one needs a new session.
            self._stop()
        ours, theirs = socket.socketpair()
        try:
            self._process = subprocess.Popen(
                self._argv, stdin=theirs.fileno(), stdout=theirs.fileno(), stderr=subprocess.PIPE
            )
        except OSError as error:
            ours.close()
            raise HostUnreachable(f"cannot run ssh: {error}") from None
        finally:
            theirs.close()
        ours.settimeout(self.timeout)
        self.sock = ours

    def failure(self) -> str | None:
        """Why ssh ended, if it did: its own message, or the remote command's."""
        if self._process is not None:
            try:
                self._process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                return None  # still running: the failure is not ssh's
            self._stop()
        return self._failed

    def close(self) -> None:
        super().close()
        self._stop()

    def _stop(self) -> None:
        """End ssh (a closed socket is its end of input) and keep why it failed."""
        process, self._process = self._process, None
        if process is None:
            return
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        try:
            code = process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        stderr = process.stderr.read() if process.stderr else b""
        if process.stderr:
            process.stderr.close()
        if code not in (0, -9) and self._failed is None:
            self._failed = ssh_message(stderr) or f"ssh exited with {code}"


def _tcp_connection(address: str, timeout: float) -> http.client.HTTPConnection:
    host, _, port = address.rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise HostUnreachable(f"cannot reach tcp://{address}: expected tcp://HOST:PORT")
    verify = os.environ.get("DOCKER_TLS_VERIFY", "") != ""
    cert_path = os.environ.get("DOCKER_CERT_PATH", "")
    if not verify and not cert_path:
        return http.client.HTTPConnection(host, int(port), timeout=timeout)
    import ssl

    folder = cert_path or os.path.join(os.path.expanduser("~"), ".docker")
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    try:
        context = ssl.create_default_context(
            cafile=os.path.join(folder, "ca.pem") if verify else None
        )
        if not verify:  # as docker: certificates given, server not verified
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        has_cert = os.path.exists(cert) and os.path.exists(key)
        if has_cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise HostUnreachable(
            f"cannot reach tcp://{address}: the TLS files in {folder}: {_describe(error)}"
        ) from None
    connection = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context)
    if not has_cert:
        connection.hint = f"no client certificate (cert.pem, key.pem) in {folder}"  # type: ignore[attr-defined]
    return connection
