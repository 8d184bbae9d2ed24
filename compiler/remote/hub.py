"""What a hub says of a model's files, for the plan: their total size.

Hugging Face's tree API (``/api/models/<repo>/tree/<revision>?recursive=true``, paged)
and ModelScope's file list (``/api/v1/models/<repo>/repo/files?Revision=…&Recursive=True``).
Read-only and without a token: a plan runs on a pull request, whose hub endpoints must
not receive ``HF_TOKEN`` or ``MODELSCOPE_API_TOKEN`` before a review (apply sends them,
from the helper only). A gated or private model, a hub that cannot be reached in a few
seconds, or an answer that is not the API's: no size, and the plan says nothing of it.
"""

from __future__ import annotations

import fnmatch
import json
import re
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from compiler.hub import HubModel, endpoint_of

if TYPE_CHECKING:
    from compiler.model import Settings

TIMEOUT = 5.0  # each wait for bytes
BUDGET = 15.0  # every request of one plan
MAX_BYTES = 16 << 20
MAX_PAGES = 20  # the tree API answers up to 1,000 entries a page
_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


def model_sizes(models: list[HubModel], settings: Settings) -> dict[str, int]:
    """The bytes each of ``models`` (by key) will fetch, for those the hub answers."""
    sizes: dict[str, int] = {}
    trees: dict[tuple[str, str, str], list[tuple[str, int]] | None] = {}
    deadline = time.monotonic() + BUDGET
    for model in models:
        where = (model.source, model.repo_id, model.revision)
        if where not in trees:
            listing = _modelscope_files if model.source == "model_scope" else _tree
            try:
                trees[where] = listing(endpoint_of(settings, model.source), *where[1:], deadline)
            except Exception:  # noqa: BLE001 - whatever a hub answers, the plan goes on
                trees[where] = None
        files = trees[where]
        if files is None:
            continue
        sizes[model.key] = sum(
            size
            for path, size in files
            if not model.patterns or any(fnmatch.fnmatch(path, p) for p in model.patterns)
        )
    return sizes


def _tree(base: str, repo_id: str, revision: str, deadline: float) -> list[tuple[str, int]] | None:
    url: str | None = (
        f"{base}/api/models/{quote(repo_id, safe='/')}/tree/{quote(revision, safe='')}"
        "?recursive=true"
    )
    files: list[tuple[str, int]] = []
    for _ in range(MAX_PAGES):
        if url is None:
            return files
        try:
            entries, link = _get(url, deadline)
        except (OSError, ValueError, urllib.error.URLError):
            return None
        if not isinstance(entries, list):
            return None
        for entry in entries:
            if isinstance(entry, dict) and entry.get("type") == "file":
                size = entry.get("size")
                if isinstance(size, int) and isinstance(entry.get("path"), str):
                    files.append((entry["path"], size))
        found = _NEXT.search(link)
        url = found.group(1) if found and found.group(1).startswith(base) else None
    return None


def _modelscope_files(
    base: str, repo_id: str, revision: str, deadline: float
) -> list[tuple[str, int]] | None:
    url = (
        f"{base}/api/v1/models/{quote(repo_id, safe='/')}/repo/files"
        f"?Revision={quote(revision, safe='')}&Recursive=True"
    )
    try:
        answer, _ = _get(url, deadline)
    except (OSError, ValueError, urllib.error.URLError):
        return None
    data = answer.get("Data") if isinstance(answer, dict) else None
    entries = data.get("Files") if isinstance(data, dict) else data
    if not isinstance(entries, list) or (isinstance(answer, dict) and answer.get("Code") != 200):
        return None
    files: list[tuple[str, int]] = []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("Type", "blob") == "blob":
            size, path = entry.get("Size"), entry.get("Path")
            if isinstance(size, int) and isinstance(path, str):
                files.append((path, size))
    return files


def _get(url: str, deadline: float) -> tuple[Any, str]:
    """The JSON at ``url`` and its ``Link`` header; TimeoutError past ``deadline``,
    ValueError past MAX_BYTES."""
    if time.monotonic() > deadline:
        raise TimeoutError(url)
    body = bytearray()
    with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:  # noqa: S310
        while chunk := answer.read1(65536):  # what has come: the deadline is checked often
            body += chunk
            if len(body) > MAX_BYTES:
                raise ValueError(f"{url}: more than {MAX_BYTES} bytes")
            if time.monotonic() > deadline:
                raise TimeoutError(url)
        return json.loads(body), answer.headers.get("Link") or ""
