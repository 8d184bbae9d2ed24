"""GPUStack's REST API, as a GPUStack cluster's driver and ``import`` use it.

One small client over urllib: a Bearer API key (from the applying environment, never
the repository; never printed), JSON in and out, every failure one line naming the
server and what GPUStack said. Listing follows GPUStack's pagination.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from compiler.errors import FleetformError, describe

DEFAULT_KEY_ENV = "GPUSTACK_API_KEY"
TIMEOUT_SECONDS = 30.0
PAGE_SIZE = 100
MAX_PAGES = 1000  # 100,000 objects: a bound, so a server that never ends cannot hang us


class GPUStackError(FleetformError):
    """A GPUStack server that could not be reached, or refused a call."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class GPUStack:
    """A GPUStack server reached with an API key."""

    def __init__(self, url: str, api_key: str, timeout: float = TIMEOUT_SECONDS) -> None:
        self.url = url.rstrip("/")
        self._key = api_key
        self.timeout = timeout

    @classmethod
    def from_env(cls, url: str, key_env: str | None) -> GPUStack:
        name = key_env or DEFAULT_KEY_ENV
        key = os.environ.get(name, "").strip()
        if not key:
            raise GPUStackError(
                f"${name} is not set: export the API key of GPUStack at {url} (made in its UI,"
                f" or with POST /v2/api-keys) as {name}"
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
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                text = answer.read()
        except urllib.error.HTTPError as error:
            raise GPUStackError(self._refusal(method, path, error), error.code) from None
        except (OSError, ValueError) as error:
            raise GPUStackError(f"cannot reach GPUStack at {self.url}: {describe(error)}") from None
        if not text.strip():
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise GPUStackError(
                f"GPUStack at {self.url} answered {method} {path} with something not JSON"
            ) from None

    def _refusal(self, method: str, path: str, error: urllib.error.HTTPError) -> str:
        try:
            said = json.loads(error.read() or b"{}").get("message") or ""
        except (ValueError, AttributeError, OSError):
            said = ""
        said = " ".join(str(said).split())[:300]
        if error.code == 401:
            return (
                f"GPUStack at {self.url} refused the API key (401 Unauthorized): check the"
                " key in the environment"
            )
        where = path.split("?")[0]
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
            pages = (answer.get("pagination") or {}).get("totalPage") or 1
            if page >= pages:
                return found
        raise GPUStackError(f"GPUStack at {self.url}: GET {path} has too many pages")

    def cluster_id(self, cluster: str) -> int:
        """The id of the cluster of that name (or that id, written as a number)."""
        clusters = self.items("/v2/clusters")
        for item in clusters:
            if item.get("name") == cluster or str(item.get("id")) == cluster:
                return int(item["id"])
        names = ", ".join(sorted(str(item.get("name")) for item in clusters)) or "none"
        raise GPUStackError(f"GPUStack at {self.url} has no cluster '{cluster}' (it has: {names})")

    def custom_backends(self) -> list[dict[str, Any]]:
        return [
            item
            for item in self.items("/v2/inference-backends")
            if item.get("backend_source") == "custom" and not item.get("is_built_in")
        ]

    def models(self, cluster_id: int) -> list[dict[str, Any]]:
        return [
            item
            for item in self.items("/v2/models", cluster_id=cluster_id)
            if item.get("cluster_id") == cluster_id
        ]
