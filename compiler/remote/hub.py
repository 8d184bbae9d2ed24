"""What a Hugging Face hub says of a model's files, for the plan: their total size.

Read-only and without a token: a plan runs on a pull request, whose ``hub.endpoint``
must not receive ``HF_TOKEN`` before a review (apply sends it, from the helper only).
A gated or private model, a hub that cannot be reached in a few seconds, or an answer
that is not the tree API's: no size, and the plan says nothing of it.
"""

from __future__ import annotations

import fnmatch
import json
import re
import urllib.error
import urllib.request
from urllib.parse import quote

from compiler.hub import HubModel

HUB = "https://huggingface.co"
TIMEOUT = 5.0
MAX_PAGES = 20  # the tree API answers up to 1,000 entries a page
_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


def model_sizes(models: list[HubModel], endpoint: str | None) -> dict[str, int]:
    """The bytes each of ``models`` (by key) will fetch, for those the hub answers."""
    sizes: dict[str, int] = {}
    trees: dict[tuple[str, str], list[tuple[str, int]] | None] = {}
    for model in models:
        where = (model.repo_id, model.revision)
        if where not in trees:
            trees[where] = _tree(endpoint or HUB, *where)
        files = trees[where]
        if files is None:
            continue
        sizes[model.key] = sum(
            size
            for path, size in files
            if not model.patterns or any(fnmatch.fnmatch(path, p) for p in model.patterns)
        )
    return sizes


def _tree(base: str, repo_id: str, revision: str) -> list[tuple[str, int]] | None:
    url: str | None = (
        f"{base}/api/models/{quote(repo_id, safe='/')}/tree/{quote(revision, safe='')}"
        "?recursive=true"
    )
    files: list[tuple[str, int]] = []
    for _ in range(MAX_PAGES):
        if url is None:
            return files
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:  # noqa: S310
                entries = json.loads(answer.read(16 << 20))
                link = answer.headers.get("Link") or ""
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
