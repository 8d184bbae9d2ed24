"""GPUStack's REST API, as a GPUStack cluster's driver and ``import`` use it.

One small client over urllib: a Bearer API key, JSON in and out, every failure one line
naming the server and what GPUStack said. Listing follows GPUStack's pagination.

Where the key goes is the applying environment's decision, never the repository's: a
pull request's ``plan`` runs with the CI's secrets, and the repository says which URL a
cluster is at. So the key in ``$GPUSTACK_API_KEY`` (or the ``GPUSTACK_…API_KEY`` variable
a host names) is sent only to the server ``$GPUSTACK_URL`` (``…URL``) names, and a
redirect is never followed (urllib would carry the header to another host). What the
server answers is untrusted: a size cap and an overall deadline per call, ids and
pages checked for their type, and the key masked in anything the server says back.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from compiler.errors import FleetformError, describe, printable
from compiler.targets.gpustack.documents import same_server

DEFAULT_KEY_ENV = "GPUSTACK_API_KEY"
TIMEOUT_SECONDS = 30.0  # for a whole call, not per read
WAIT_SECONDS = 10.0  # for one wait for bytes
MAX_ANSWER_BYTES = 64 * 1024 * 1024
PAGE_SIZE = 100
MAX_PAGES = 1000  # 100,000 objects: a bound, so a server that never ends cannot hang us
# The API key variables a repository may name: GPUStack's, never another secret.
KEY_ENV = re.compile(r"GPUSTACK_[A-Z0-9_]*API_KEY")
_KEY = re.compile(r"[\x21-\x7e]{1,4096}")


class GPUStackError(FleetformError):
    """A GPUStack server that could not be reached, or refused a call."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def url_env(key_env: str) -> str:
    """The variable that names the server a key is for: ``GPUSTACK_API_KEY`` →
    ``GPUSTACK_URL``, ``GPUSTACK_PROD_API_KEY`` → ``GPUSTACK_PROD_URL``."""
    return key_env.removesuffix("API_KEY").rstrip("_") + "_URL"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then an HTTPError: reported, not followed


_OPENER = urllib.request.build_opener(_NoRedirect)


class GPUStack:
    """A GPUStack server reached with an API key."""

    def __init__(self, url: str, api_key: str, timeout: float = TIMEOUT_SECONDS) -> None:
        self.url = url.rstrip("/")
        self._key = api_key
        self.timeout = timeout

    @classmethod
    def from_env(cls, url: str, key_env: str | None) -> GPUStack:
        """The server at ``url`` with the key the environment holds for it."""
        name = key_env or DEFAULT_KEY_ENV
        if not KEY_ENV.fullmatch(name):
            raise GPUStackError(
                f"api_key_env {name!r} is not a GPUStack key variable (GPUSTACK_…API_KEY):"
                " a repository cannot send another secret to a server"
            )
        key = os.environ.get(name, "").strip()
        if not key:
            raise GPUStackError(
                f"${name} is not set: export the API key of GPUStack at {url} (made in its UI,"
                f" or with POST /v2/api-keys) as {name}, and the server's URL as {url_env(name)}"
            )
        if not _KEY.fullmatch(key):
            raise GPUStackError(f"${name} is not an API key (spaces or control characters)")
        allowed = os.environ.get(url_env(name), "").strip()
        if not allowed or not same_server(allowed, url):
            said = f"names {allowed}" if allowed else "is not set"
            raise GPUStackError(
                f"the key in ${name} is sent only to the server ${url_env(name)} names, and it"
                f" {said}, not {url}: set it where the key belongs (a pull request cannot"
                " send the key elsewhere)"
            )
        return cls(url, key)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One request; its JSON answer (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self._key}",
                "Accept": "application/json",
                **({"Content-Type": "application/json"} if data is not None else {}),
            },
        )
        deadline = time.monotonic() + self.timeout
        try:
            # Each wait for bytes is bounded too, so a silent server ends near the deadline.
            with _OPENER.open(request, timeout=min(self.timeout, WAIT_SECONDS)) as answer:
                text = self._read(answer, deadline, method, path)
        except urllib.error.HTTPError as error:
            raise GPUStackError(self._refusal(method, path, error), error.code) from None
        except (OSError, ValueError) as error:
            said = self._masked(describe(error))
            raise GPUStackError(f"cannot reach GPUStack at {self.url}: {said}") from None
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise GPUStackError(
                f"GPUStack at {self.url} answered {method} {path} with something not JSON"
            ) from None

    def _read(self, answer: Any, deadline: float, method: str, path: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while chunk := answer.read1(65536):  # what has come: the deadline is checked often
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise GPUStackError(
                    f"GPUStack at {self.url}: {method} {path.split('?')[0]} answered more"
                    f" than {MAX_ANSWER_BYTES // 2**20} MiB"
                )
            if time.monotonic() > deadline:
                raise GPUStackError(
                    f"GPUStack at {self.url}: {method} {path.split('?')[0]} took more than"
                    f" {self.timeout:.0f} s"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _masked(self, text: str) -> str:
        return text.replace(self._key, "(the API key)") if self._key else text

    def _refusal(self, method: str, path: str, error: urllib.error.HTTPError) -> str:
        try:
            found = json.loads(error.read(65536) or b"{}")
            said = found.get("message") if isinstance(found, dict) else ""
        except (ValueError, OSError):
            said = ""
        said = untrusted(self._masked(" ".join(str(said or "").split())))[:300]
        if error.code == 401:
            return (
                f"GPUStack at {self.url} refused the API key (401 Unauthorized): check the"
                " key in the environment"
            )
        where = path.split("?")[0]
        if 300 <= error.code < 400:
            code = error.code
            return f"GPUStack at {self.url}: {method} {where}: redirected ({code}), not followed"
        return f"GPUStack at {self.url}: {method} {where}: {error.code}" + (
            f" {said}" if said else f" {error.reason}"
        )

    def items(self, path: str, **query: Any) -> list[dict[str, Any]]:
        """Every item of a paginated list."""
        found: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            params = urllib.parse.urlencode({**query, "page": page, "perPage": PAGE_SIZE})
            answer = self.call("GET", f"{path}?{params}")
            if not isinstance(answer, dict) or not isinstance(answer.get("items"), list):
                raise GPUStackError(f"GPUStack at {self.url}: GET {path} is not a list")
            found.extend(item for item in answer["items"] if isinstance(item, dict))
            pagination = answer.get("pagination")
            pages = pagination.get("totalPage") if isinstance(pagination, dict) else 1
            if not isinstance(pages, int) or isinstance(pages, bool):
                pages = 1
            if page >= pages:
                return found
        raise GPUStackError(f"GPUStack at {self.url}: GET {path} has too many pages")

    def cluster_id(self, cluster: str) -> int:
        """The id of the cluster of that name (or that id, written as a number)."""
        clusters = self.items("/v2/clusters")
        for item in clusters:
            if item.get("name") == cluster or str(item.get("id")) == cluster:
                return object_id(item, self.url)
        names = ", ".join(sorted(untrusted(str(item.get("name"))) for item in clusters)) or "none"
        raise GPUStackError(f"GPUStack at {self.url} has no cluster '{cluster}' (it has: {names})")

    def custom_backends(self) -> list[dict[str, Any]]:
        return [
            item
            for item in self.items("/v2/inference-backends")
            if item.get("backend_source") == "custom" and not item.get("is_built_in")
        ]

    def models(self, cluster_id: int | None = None) -> list[dict[str, Any]]:
        """The models of one cluster (of every cluster when None)."""
        if cluster_id is None:
            return self.items("/v2/models")
        return [
            item
            for item in self.items("/v2/models", cluster_id=cluster_id)
            if item.get("cluster_id") == cluster_id
        ]


def untrusted(text: str) -> str:
    """A server's text inside a message: printable, and nothing markdown acts on (a plan
    is posted as a pull request's comment)."""
    return "".join("?" if c in "`[]<>!|" else c for c in printable(text))


def object_id(item: dict[str, Any], url: str) -> int:
    """An object's id, which must be a whole number."""
    found = item.get("id")
    if isinstance(found, bool) or not isinstance(found, int) or found < 0:
        raise GPUStackError(f"GPUStack at {url} answered an object whose id is {found!r}")
    return found
