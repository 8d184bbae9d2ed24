"""Stage 5: write ``output/`` deterministically, or check that it is current.

Everything is rendered in memory before the first write, so a failed compile never
touches ``output/``. Each changed file is replaced atomically (write, fsync, rename);
unchanged files are not rewritten; files no longer produced are removed. Files and
folders starting with ``.`` (``.gitkeep``, ``.gitattributes``) are left alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from compiler.errors import OutputError
from compiler.placement import Prior
from compiler.render.index import INDEX_FILE, INDEX_SCHEMA


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


def existing_files(output_dir: Path) -> dict[str, Path]:
    if not output_dir.is_dir():
        return {}
    found = {}
    for path in output_dir.rglob("*"):
        relative = path.relative_to(output_dir)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if path.is_file() or path.is_symlink():
            found[relative.as_posix()] = path
    return found


def diff_output(output_dir: Path, files: dict[str, bytes]) -> Changes:
    current = existing_files(output_dir)
    changes = Changes()
    for path, content in sorted(files.items()):
        if path not in current:
            changes.created.append(path)
        elif current[path].is_symlink() or current[path].read_bytes() != content:
            changes.updated.append(path)
    changes.deleted = sorted(path for path in current if path not in files)
    return changes


def write_output(output_dir: Path, files: dict[str, bytes]) -> Changes:
    changes = diff_output(output_dir, files)
    try:
        for path in changes.created + changes.updated:
            _atomic_write(output_dir / path, files[path])
        for path in changes.deleted:
            (output_dir / path).unlink()
        _remove_empty_dirs(output_dir)
    except OSError as error:
        raise OutputError(f"cannot write {error.filename}: {error.strerror}") from None
    return changes


def _atomic_write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".fleetform-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _remove_empty_dirs(output_dir: Path) -> None:
    if not output_dir.is_dir():
        return
    for folder in sorted(output_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not folder.name.startswith(".") and not any(folder.iterdir()):
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
