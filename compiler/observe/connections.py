"""Engine connections opened early, in the background.

Over SSH a host takes a few tenths of a second to answer its first request (a session,
then a remote ``docker system dial-stdio``). Reading the hosts' addresses needs only
the YAML loader, so ``plan`` opens every connection before it imports and compiles
the rest; the hosts' answer time then overlaps with that work.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from compiler.errors import FleetformError
from compiler.load import FOLDERS, load_file, yaml_files


class Connections:
    """Engine connections opened in the background as soon as the hosts' addresses are
    read, so that the hosts' answer time (over SSH, a session and a remote
    ``docker system dial-stdio`` per host) overlaps with compiling the repository."""

    def __init__(self, root: Path, hosts: Sequence[str]) -> None:
        urls: set[str] = set()
        for path in yaml_files(root / FOLDERS["host"]):
            try:
                documents = load_file(path, root, "host")
            except FleetformError:
                continue  # compiling reports it
            for doc in documents:
                url = doc.value.get("docker_host")
                if isinstance(url, str) and (not hosts or doc.value.get("name") in hosts):
                    urls.add(url)
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(len(urls), 8)))
        self._opened: dict[str, Future[Any]] = {
            url: self._pool.submit(self._open, url) for url in sorted(urls)
        }

    @staticmethod
    def _open(url: str) -> Any:
        from compiler.observe.docker import connect

        try:
            return connect(url)
        except FleetformError:
            return None  # observing connects again and reports the error

    def take(self, url: str) -> Any:
        opened = self._opened.pop(url, None)
        return opened.result() if opened is not None else None

    def close(self) -> None:
        for opened in self._opened.values():
            client = opened.result()
            if client is not None:
                client.close()
        self._opened.clear()
        self._pool.shutdown(wait=False)
