"""Engine connections opened early, in the background.

Over SSH a host takes a few tenths of a second to answer its first request (a
handshake, then a remote ``docker system dial-stdio``). Reading the hosts' addresses
needs only the YAML loader, so ``plan`` opens every connection and sends each host's
first request before it imports and compiles the rest; the hosts' answer time then
overlaps with that work.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from compiler.errors import FleetformError
from compiler.fields import is_docker_host
from compiler.load import FOLDERS, load_file, yaml_files

if TYPE_CHECKING:
    from compiler.remote.engine import Engine


class Connections:
    """Engine connections opened as soon as the hosts' addresses are read, each with its
    first request sent (see the module's docstring)."""

    def __init__(self, root: Path, hosts: Sequence[str]) -> None:
        urls: set[str] = set()
        for path in yaml_files(root / FOLDERS["host"]):
            try:
                documents = load_file(path, root, "host")
            except FleetformError:
                continue  # compiling reports it
            for doc in documents:
                url = doc.value.get("docker_host")
                # Not validated yet: only an address validation would accept is opened
                # (compiling reports the others), so no text of a pull request's reaches
                # ssh before the schema has checked it.
                if (
                    isinstance(url, str)
                    and is_docker_host(url)
                    and (not hosts or doc.value.get("name") in hosts)
                ):
                    urls.add(url)
        # ssh:// and unix:// open without blocking (a process started, a local socket),
        # so they open here: a thread would wait for the GIL while the caller imports.
        # tcp:// connects (and shakes hands for TLS) at once, so it opens in a thread.
        self._pool = ThreadPoolExecutor(max_workers=4)
        self._opened: dict[str, Future[Engine | None]] = {}
        for url in sorted(urls):
            if url.startswith("tcp://"):
                self._opened[url] = self._pool.submit(self._open, url)
            else:
                opened: Future[Engine | None] = Future()
                opened.set_result(self._open(url))
                self._opened[url] = opened

    @staticmethod
    def _open(url: str) -> Engine | None:
        from compiler.targets.compose.observe import open_engine

        try:
            return open_engine(url)
        except FleetformError:
            return None  # observing connects again and reports the error

    def take(self, url: str) -> Engine | None:
        opened = self._opened.pop(url, None)
        return opened.result() if opened is not None else None

    def close(self) -> None:
        for opened in self._opened.values():
            engine = opened.result()
            if engine is not None:
                engine.close()
        self._opened.clear()
        self._pool.shutdown(wait=False)
