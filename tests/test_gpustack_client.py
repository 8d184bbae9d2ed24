"""GPUStack's client against answers a real server does not give: a hostile or broken
server on loopback (a real GPUStack cannot be made to misbehave). Where the key may go,
redirects, deadlines, size caps, the key never echoed, malformed objects as one-line
host errors. The well-behaved server is tests/test_gpustack.py's real one."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from compiler.remote import gpustack as client
from compiler.remote.gpustack import GPUStack, GPUStackError
from compiler.targets.gpustack.observe import observe_cluster

KEY = "gpustack_0123456789abcdef_secret"
Answer = Callable[[BaseHTTPRequestHandler], None]


@contextmanager
def serving(answer: Answer, host: str = "127.0.0.1") -> Iterator[tuple[str, list[str]]]:
    """A server on loopback that answers every request with ``answer``; its URL, and the
    Authorization headers it received."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            answer(self)

        do_PUT = do_POST = do_DELETE = do_GET

    server = ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def send(status: int, body: object, headers: dict[str, str] | None = None) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return answer


def test_the_key_goes_only_to_the_server_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GPUSTACK_API_KEY", KEY)
    monkeypatch.delenv("GPUSTACK_URL", raising=False)
    with pytest.raises(GPUStackError) as caught:
        GPUStack.from_env("http://attacker.example", None)
    assert caught.value.message == (
        "the key in $GPUSTACK_API_KEY is sent only to the server $GPUSTACK_URL names, and it"
        " is not set, not http://attacker.example: set it where the key belongs (a pull"
        " request cannot send the key elsewhere)"
    )
    monkeypatch.setenv("GPUSTACK_URL", "https://gpustack.example.com/")
    with pytest.raises(GPUStackError, match="names https://gpustack.example.com/, not"):
        GPUStack.from_env("http://attacker.example", None)
    assert GPUStack.from_env("https://GPUStack.example.com:443", None).url
    monkeypatch.setenv("GITHUB_TOKEN", "ghp_secret")
    with pytest.raises(GPUStackError, match="not a GPUStack key variable"):
        GPUStack.from_env("https://gpustack.example.com", "GITHUB_TOKEN")
    monkeypatch.setenv("GPUSTACK_API_KEY", "abc\ndef")
    with pytest.raises(GPUStackError) as caught:
        GPUStack.from_env("https://gpustack.example.com", None)
    assert "abc" not in caught.value.message


def test_a_redirect_is_not_followed_so_the_key_stays_with_the_server() -> None:
    with serving(send(200, {"items": []}), host="127.0.0.2") as (elsewhere, seen_there):
        moved = send(302, b"", {"Location": f"{elsewhere}/v2/clusters"})
        with serving(moved) as (url, seen), pytest.raises(GPUStackError) as caught:
            GPUStack(url, KEY).call("GET", "/v2/clusters")
    assert caught.value.message == (
        f"GPUStack at {url}: GET /v2/clusters: redirected (302), not followed"
    )
    assert seen == [f"Bearer {KEY}"] and seen_there == []


def test_the_key_is_masked_in_what_the_server_says() -> None:
    echo = send(500, {"message": f"bad token Bearer {KEY} [x](http://evil)"})
    with serving(echo) as (url, _), pytest.raises(GPUStackError) as caught:
        GPUStack(url, KEY).call("GET", "/v2/models")
    assert caught.value.message == (
        f"GPUStack at {url}: GET /v2/models: 500 bad token Bearer (the API key) ?x?(http://evil)"
    )


def test_a_slow_or_endless_answer_ends_at_the_deadline_or_the_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        for _ in range(1000):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.2)

    with serving(trickle) as (url, _):
        started = time.monotonic()
        with pytest.raises(GPUStackError, match=r"GET /v2/models took more than 1 s"):
            GPUStack(url, KEY, timeout=1.0).call("GET", "/v2/models")
        assert time.monotonic() - started < 5
    monkeypatch.setattr(client, "MAX_ANSWER_BYTES", 100_000)
    with (
        serving(send(200, b" " * 300_000)) as (url, _),
        pytest.raises(GPUStackError, match="answered more than"),
    ):
        GPUStack(url, KEY).call("GET", "/v2/models")


@pytest.mark.parametrize(
    ("clusters", "message"),
    [
        ({"items": [{"id": "1", "name": "c"}]}, "answered an object whose id is '1'"),
        ({"items": [{"id": 1.9, "name": "c"}]}, "answered an object whose id is 1.9"),
        ({"items": {"id": 1}}, "GET /v2/clusters is not a list"),
        (b"<html>", "with something not JSON"),
    ],
)
def test_malformed_answers_are_a_host_error_not_a_crash(clusters: object, message: str) -> None:
    with serving(send(200, clusters)) as (url, _):
        found = observe_cluster(GPUStack(url, KEY), "gs", "c", "p")
    assert found.error is not None and message in found.error, found.error


def test_odd_pages_and_descriptions_are_read_safely() -> None:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        if handler.path.startswith("/v2/clusters"):
            body: object = {"items": [{"id": 3, "name": "c"}], "pagination": "x"}
        elif handler.path.startswith("/v2/inference-backends"):
            items = [
                {"id": 5, "backend_name": "b-custom", "backend_source": "custom", "description": 7}
            ]
            body = {"items": items, "pagination": {"totalPage": "3"}}
        else:
            body = {"items": [{"id": 6, "name": "m", "cluster_id": 3, "description": ["x"]}]}
        send(200, body)(handler)

    with serving(answer) as (url, _):
        found = observe_cluster(GPUStack(url, KEY), "gs", "c", "p")
    assert found.error is None
    assert [(d.kind, d.name, d.owner) for d in found.documents] == [
        ("backend", "b-custom", None),
        ("model", "m", None),
    ]
