"""Stage 5: write ``output/`` deterministically, or check that it is current.

Everything is rendered in memory before the first write, so a failed compile never
touches ``output/``. Each changed file is replaced atomically (write, fsync, rename);
unchanged files are not rewritten.

Removal is deliberately narrow: compile deletes only artifacts it owns — the
``compose.yaml``, ``index.json`` and ``systemd/*.service`` of a host folder that holds
fleetform's own ``index.json`` — and never anything else, whatever ``output/`` holds.
"""

from __future__ import annotations

import json
import os
import queue
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from compiler.errors import OutputError
from compiler.placement import Prior
from compiler.render.index import INDEX_FILE, INDEX_SCHEMA

_TEMP_PREFIX = ".fleetform-"


@dataclass
class Changes:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.created or self.updated or self.deleted)

    def lines(self) -> list[str]:
        out = [f"created {path}" for path in self.created]
        out += [f"updated {path}" for path in self.updated]
        out += [f"deleted {path}" for path in self.deleted]
        return sorted(out, key=lambda line: line.split(" ", 1)[1])


def managed_files(output_dir: Path) -> dict[str, Path]:
    """Artifacts a previous compile wrote: the only files compile may replace or remove."""
    found: dict[str, Path] = {}
    if not output_dir.is_dir():
        return found
    for index in sorted(output_dir.glob(f"*/{INDEX_FILE}")):
        host_dir = index.parent
        if host_dir.is_symlink() or not _is_our_index(index):
            continue
        candidates = [index, host_dir / "compose.yaml", *sorted(host_dir.glob("systemd/*.service"))]
        for path in candidates:
            if path.is_file() and not path.is_symlink():
                found[path.relative_to(output_dir).as_posix()] = path
    return found


def _is_our_index(index: Path) -> bool:
    try:
        document = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and document.get("schema") == INDEX_SCHEMA


def diff_output(output_dir: Path, files: dict[str, bytes]) -> Changes:
    managed = managed_files(output_dir)
    changes = Changes()
    for path, content in sorted(files.items()):
        target = output_dir / path
        if not (target.is_file() or target.is_symlink()):
            changes.created.append(path)
        elif target.is_symlink() or target.read_bytes() != content:
            changes.updated.append(path)
    changes.deleted = sorted(path for path in managed if path not in files)
    return changes


def write_output(output_dir: Path, files: dict[str, bytes]) -> Changes:
    """Bring ``output_dir`` to ``files`` (see :class:`Writer`)."""
    writer = Writer(output_dir)
    try:
        for path, content in sorted(files.items()):
            writer.add(path, content)
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


class Writer:
    """Writes ``output/`` while the caller is still rendering it.

    Each file added is compared with what ``output/`` holds and, when it differs,
    written to a temporary file beside its target, in a background thread (creating
    files is kernel time, which then overlaps with rendering). Only :meth:`commit`
    renames them into place and removes what is no longer produced, so a failure (or a
    kill) before that leaves ``output/`` as it was; :meth:`abort` removes the
    temporary files.

    Like git, compile does not fsync: the files are reproducible from the repository,
    and an fsync per file costs seconds on a large fleet. A file a power cut left
    empty shows up in ``compile --check`` and is rewritten by the next compile.
    """

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = output_dir
        self.managed = managed_files(output_dir)
        self.changes = Changes()
        self.paths: set[str] = set()
        self.staged: list[tuple[str, Path]] = []
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._stage_all, name="fleetform-writer")
        self._thread.start()

    def add(self, path: str, content: bytes) -> None:
        self.paths.add(path)
        self._queue.put((path, content))

    def _stage_all(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue
            path, content = item
            target = self.output_dir / path
            try:
                if not (target.is_file() or target.is_symlink()):
                    self.changes.created.append(path)
                elif target.is_symlink() or target.read_bytes() != content:
                    self.changes.updated.append(path)
                else:
                    continue
                self.staged.append((_stage(target, content), target))
            except BaseException as error:
                self.error = error

    def _finish(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def abort(self) -> None:
        self._finish()
        for temp, _ in self.staged:
            Path(temp).unlink(missing_ok=True)

    def commit(self) -> Changes:
        self._finish()
        changes = self.changes
        try:
            if self.error is not None:
                raise self.error
            for temp, target in self.staged:
                if target.is_symlink():
                    target.unlink()
                os.replace(temp, target)
            _remove_stale_temps(self.output_dir)
            changes.deleted = sorted(path for path in self.managed if path not in self.paths)
            # A host's index goes last: until then its folder still counts as fleetform's.
            for path in sorted(changes.deleted, key=lambda p: p.endswith(INDEX_FILE)):
                (self.output_dir / path).unlink()
            _remove_empty_dirs(self.output_dir, changes.deleted)
        except OSError as error:
            for temp, _ in self.staged:
                Path(temp).unlink(missing_ok=True)
            raise OutputError(f"cannot write {error.filename}: {error.strerror}") from None
        changes.created.sort()
        changes.updated.sort()
        return changes


def _remove_stale_temps(output_dir: Path) -> None:
    """Temporary files a killed compile left behind (this compile's are renamed by now)."""
    for pattern in (f"*/{_TEMP_PREFIX}*.tmp", f"*/systemd/{_TEMP_PREFIX}*.tmp"):
        for temp in output_dir.glob(pattern):
            temp.unlink(missing_ok=True)


def _stage(path: Path, content: bytes) -> str:
    """``content`` in a new temporary file in ``path``'s folder; its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(temp, 0o644)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return temp


def _remove_empty_dirs(output_dir: Path, deleted: list[str]) -> None:
    """Remove the folders that removing ``deleted`` left empty (and nothing else)."""
    folders = {(output_dir / path).parent for path in deleted}
    folders |= {folder.parent for folder in folders if folder.parent != output_dir}
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder != output_dir and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def read_prior(output_dir: Path) -> dict[tuple[str, int], Prior]:
    """Where the previous compile placed each replica (see :mod:`compiler.placement`).

    A missing or unreadable index only means there is nothing to keep.
    """
    prior: dict[tuple[str, int], Prior] = {}
    if not output_dir.is_dir():
        return prior
    for index in sorted(output_dir.glob(f"*/{INDEX_FILE}")):
        try:
            document = json.loads(index.read_text(encoding="utf-8"))
            if document.get("schema") != INDEX_SCHEMA:
                continue
            for entry in document["workloads"]:
                key = (str(entry["deployment"]), int(entry["replica"]))
                prior[key] = Prior(
                    host=str(document["host"]),
                    gpus=tuple(int(i) for i in entry["gpus"]),
                    port=int(entry["port"]),
                )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return prior
