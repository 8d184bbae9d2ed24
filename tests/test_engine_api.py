"""The Engine API client (compiler/remote/engine.py) speaks versioned API, negotiated.

A real engine shows the negotiation's result; an HTTP server on a unix socket standing in
for engines of other versions shows each request's path, the cap and the refusal of an
engine that is too old (the fake answers only /_ping and /vX.Y/containers/json, and
records every request line; anything else is a 404 the test sees).
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from compiler.remote.engine import MAX_API, MIN_API, Engine, HostUnreachable
from compiler.targets.compose.observe import observe_docker_host
from testing.engines import EngineFactory


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class FakeEngine:
    def __init__(self, path: Path, version: str | None) -> None:
        self.path = path
        self.version = version
        self.requests: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake.requests.append(self.path)
                status, body = 404, {"message": "page not found"}
                if self.path == "/_ping":
                    status, body = 200, "OK"
                elif self.path.split("?")[0].endswith("/containers/json"):
                    status, body = 200, []
                data = (body if isinstance(body, str) else json.dumps(body)).encode()
                self.send_response(status)
                if fake.version is not None:
                    self.send_header("API-Version", fake.version)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def address_string(self) -> str:
                return "fake"

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = _Server(str(path), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"unix://{self.path}"


@pytest.fixture
def fake_engine(tmp_path: Path) -> Iterator[Any]:
    made: list[FakeEngine] = []

    def start(version: str | None) -> FakeEngine:
        fake = FakeEngine(tmp_path / f"e{len(made)}.sock", version)
        fake.thread.start()
        made.append(fake)
        return fake

    yield start
    for fake in made:
        fake.server.shutdown()
        fake.server.server_close()


@pytest.mark.parametrize(
    ("daemon", "used"),
    [("1.41", "1.41"), ("1.45", "1.45"), ("1.47", "1.47"), ("1.51", "1.47"), ("2.3", "1.47")],
)
def test_requests_use_the_engines_version_capped_at_what_fleetform_knows(
    fake_engine: Any, daemon: str, used: str
) -> None:
    fake = fake_engine(daemon)
    engine = Engine(fake.base_url)
    try:
        assert engine.get("/containers/json", all=1) == []
        assert engine.get("/containers/json") == []
        assert engine.api_version == used
    finally:
        engine.close()
    assert fake.requests == [
        "/_ping",
        f"/v{used}/containers/json?all=1",
        f"/v{used}/containers/json",
    ]


def test_an_observation_pings_first_then_asks_versioned(fake_engine: Any) -> None:
    """plan's early send() puts the ping on the wire; the container list follows it."""
    fake = fake_engine("1.43")
    seen = observe_docker_host("h", fake.base_url, "p", "io.fleetform", ["p-a-0"])
    assert seen.error is None, seen.error
    assert fake.requests == ["/_ping", "/v1.43/containers/json?all=1"]


@pytest.mark.parametrize(
    ("daemon", "message"),
    [
        ("1.40", "Docker Engine API 1.40 is older than 1.41 (Docker 20.10), the oldest"),
        (None, "the engine's /_ping gave no API version (status 200): is it a Docker Engine?"),
    ],
)
def test_an_engine_too_old_or_not_an_engine_is_one_line(
    fake_engine: Any, daemon: str | None, message: str
) -> None:
    fake = fake_engine(daemon)
    engine = Engine(fake.base_url)
    try:
        with pytest.raises(HostUnreachable) as caught:
            engine.get("/containers/json")
    finally:
        engine.close()
    assert caught.value.message.startswith(f"{fake.base_url}: {message}")
    assert fake.requests == ["/_ping"]  # nothing else was asked of it
    seen = observe_docker_host("h", fake.base_url, "p", "io.fleetform", [])
    assert seen.error is not None and message in seen.error


def test_a_real_engine_is_driven_at_its_own_version(engines: EngineFactory) -> None:
    real = engines("versioned", image=False)
    client = real.client()
    try:
        daemon = client.version()["ApiVersion"]
    finally:
        client.close()
    engine = Engine(real.base_url)
    try:
        assert engine.get("/version")["ApiVersion"] == daemon
        major, minor = (int(x) for x in daemon.split("."))
        assert (major, minor) >= MIN_API
        used = min((major, minor), MAX_API)
        assert engine.api_version == f"{used[0]}.{used[1]}"
    finally:
        engine.close()
