"""Stage 5: write ``output/`` atomically and confined to the repository, or check it.

``output/`` is committed to Git, so a pull request controls what it holds: symbolic
links (``output/gpu-a/systemd -> /etc/systemd/system``), fifos, hand-edited indexes.
What this module guarantees, whatever it holds:

- **Confinement.** No link is ever followed in or under ``output/``, nor on the way from
  the repository to it: the old tree is scanned with ``lstat`` semantics first, and any
  link, fifo, socket or device there refuses the compile (one line naming it, nothing
  written). New files are only ever created inside a staging folder fleetform made.
- **Atomicity.** The complete new tree is built beside ``output/`` (in its parent, as
  ``.fleetform-<name>-XXXXXXXX``): changed files written, every other file of the old
  tree hard-linked (cheap, and the user's own files keep their identity). Then one
  ``renameat2(RENAME_EXCHANGE)`` swaps the two folders and the old tree is deleted. A
  compile that fails or is killed at any moment leaves ``output/`` exactly old or
  exactly new; what a kill leaves beside it is removed by the next compile. Where the
  file system refuses the exchange (EINVAL, ENOSYS: NFS, some FUSE), two renames and a
  small journal (``.fleetform-<name>-swap.json``) do it; the next compile completes
  the swap, and read-only commands refuse to read the folder until then.
- **A no-change compile writes nothing**: files are compared as they are rendered (in
  a thread, overlapping rendering), and the staging folder is made only at the first
  difference.
- **One compile at a time** per output folder: ``flock`` on the output folder's parent
  (a directory fd: no lock file left behind, and a killed compile releases it).
  Read-only commands take it shared, so they never read a half-swapped state.
- **Deletes are narrow**: a file is dropped from ``output/`` only when fleetform wrote
  it, i.e. it is ``index.json``, ``compose.yaml`` or an artifact listed in a host
  folder's valid fleetform index, and the new compile no longer produces it.
- **Untrusted state**: ``index.json`` is read through a strict pydantic model with a
  size cap; anything it may not say makes it ignored with a warning, and placement
  starts fresh for its replicas.

``os`` and ``ctypes`` are used directly because no library offers ``renameat2`` or
no-follow scans; Python's ``shutil.rmtree`` is used for deletes (it never follows links).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import queue
import re
import shutil
import stat
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticError

from compiler.errors import FleetformWarning, Mark, OutputError, printable
from compiler.load import SETTINGS_FILE
from compiler.model import HostKind
from compiler.placement import Prior
from compiler.render.index import INDEX_FILE, INDEX_SCHEMA
from compiler.targets import driver_for

MAX_INDEX_BYTES = 16 * 2**20
WAIT_NOTICE_AFTER = 1.0  # seconds of waiting for the lock before saying so
WAITING = "waiting for another compile of this repository"
# Set to 0 to use the two-rename fallback even where RENAME_EXCHANGE works (tests).
EXCHANGE_ENV = "FLEETFORM_RENAME_EXCHANGE"

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_OLD_TEMP = re.compile(r"\.fleetform-[A-Za-z0-9_]+\.tmp")  # a killed older compile's temps


class IndexIgnored(FleetformWarning):
    """A host folder's ``index.json`` that fleetform does not trust."""


class Waiting(FleetformWarning):
    """Another compile holds the repository's output lock."""


# --- changes --------------------------------------------------------------------------


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


# --- where output/ is, and the path to it -----------------------------------------------


@dataclass(frozen=True)
class OutputPlace:
    """The output folder: its path, how messages name it, and where its setting is."""

    path: Path
    shown: str  # the output_dir setting as written: messages name paths under it
    setting: Mark | None  # where fleetform.yaml sets output_dir (None: the default)

    @property
    def parent(self) -> Path:
        return self.path.parent

    def error(self, message: str) -> OutputError:
        """An error about the output folder, the path to it or anything in it: named,
        as every error is, by a position, that of the ``output_dir`` setting (the top
        of ``fleetform.yaml`` where the default is in force)."""
        return OutputError(message, self.setting or Mark(SETTINGS_FILE, 1, 1), "output_dir")

    def staging_pattern(self) -> re.Pattern[str]:
        return re.compile(rf"{re.escape(self.prefix)}[a-z0-9_]{{8}}")

    @property
    def prefix(self) -> str:
        """Names beside ``output/`` start so: ``.fleetform-<its name, cut to fit>-``.

        Cut so that a 255-byte folder name still leaves room for the suffixes.
        """
        tag = os.fsencode(self.path.name)[:160]
        return f".fleetform-{os.fsdecode(tag).encode('utf-8', 'ignore').decode()}-"

    @property
    def journal(self) -> Path:
        return self.parent / f"{self.prefix}swap.json"


def _link_message(display: str, path: Path) -> str:
    try:
        target = printable(os.readlink(path))
    except OSError:
        target = "?"
    return f"{display}: is a symbolic link (to {target}); fleetform never writes through links"


def confine(root: Path, place: OutputPlace) -> None:
    """Refuse a link, or anything but a folder, from the repository down to ``output/``.

    The repository folder itself is the user's choice and is not checked.
    """
    path = root
    parts = PurePosixPath(place.shown).parts
    for depth, part in enumerate(parts, 1):
        path = path / part
        display = printable("/".join(parts[:depth]))
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as error:
            raise place.error(f"{display}: cannot be read ({error.strerror})") from None
        if stat.S_ISLNK(info.st_mode):
            raise place.error(_link_message(display, path))
        if not stat.S_ISDIR(info.st_mode):
            raise place.error(f"{display}: is not a folder")


# --- the lock ---------------------------------------------------------------------------


@contextmanager
def locked(root: Path, place: OutputPlace, *, exclusive: bool) -> Iterator[int | None]:
    """Hold the output folder's lock; yields a descriptor of its parent folder.

    An exclusive holder (compile) creates the parent folder when missing; a shared one
    (validate, plan, ``compile --check``) reads nothing when it is missing, and yields None.
    """
    parent = place.parent
    if exclusive:
        _make_parents(root, place)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    if parent != root:
        flags |= os.O_NOFOLLOW
    fd: int | None = None
    try:
        fd = os.open(parent, flags)
    except FileNotFoundError:
        if exclusive:
            raise place.error(f"{printable(place.shown)}: its folder vanished") from None
    except OSError as error:
        raise place.error(
            f"{printable(place.shown)}: its folder cannot be opened ({error.strerror})"
        ) from None
    if fd is None:  # nothing to read, nothing to lock
        yield None
        return
    try:
        _lock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, mode: int) -> None:
    deadline = time.monotonic() + WAIT_NOTICE_AFTER
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)
    warnings.warn(WAITING, Waiting, stacklevel=4)
    fcntl.flock(fd, mode)


def _make_parents(root: Path, place: OutputPlace) -> None:
    """Create the folders above ``output/`` that do not exist yet (never through a link)."""
    path = root
    parts = PurePosixPath(place.shown).parts[:-1]
    for depth, part in enumerate(parts, 1):
        path = path / part
        try:
            os.mkdir(path)
        except FileExistsError:
            pass
        except OSError as error:
            raise place.error(
                f"{printable('/'.join(parts[:depth]))}: cannot be created ({error.strerror})"
            ) from None
        confine(root, place)  # what is there now is a folder, not a link


# --- what output/ holds -----------------------------------------------------------------


@dataclass
class OutputTree:
    """``output/`` as scanned without following links: only folders and regular files."""

    place: OutputPlace
    exists: bool = False
    dirs: dict[str, int] = field(default_factory=dict)  # relative path → permission bits
    empty_dirs: set[str] = field(default_factory=set)
    files: set[str] = field(default_factory=set)

    @property
    def path(self) -> Path:
        return self.place.path

    def display(self, relative: str) -> str:
        return printable(f"{self.place.shown}/{relative}" if relative else self.place.shown)


_KINDS = {
    stat.S_IFIFO: "a fifo",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def scan_output(place: OutputPlace) -> OutputTree:
    """Every folder and file of ``output/``; a link or special file there is refused."""
    tree = OutputTree(place)
    try:
        info = os.lstat(place.path)
    except FileNotFoundError:
        return tree
    except OSError as error:
        raise place.error(f"{printable(place.shown)}: cannot be read ({error.strerror})") from None
    if stat.S_ISLNK(info.st_mode):
        raise place.error(_link_message(printable(place.shown), place.path))
    if not stat.S_ISDIR(info.st_mode):
        raise place.error(f"{printable(place.shown)}: is not a folder")
    tree.exists = True
    tree.dirs[""] = stat.S_IMODE(info.st_mode)
    pending = [""]
    while pending:  # iterative: the depth of output/ is the pull request's to choose
        relative = pending.pop()
        folder = place.path / relative if relative else place.path
        try:
            entries = list(os.scandir(folder))
        except OSError as error:
            raise OutputError(
                f"{tree.display(relative)}: cannot be read ({error.strerror})"
            ) from None
        if not entries:
            tree.empty_dirs.add(relative)
        for entry in entries:
            child = f"{relative}/{entry.name}" if relative else entry.name
            if entry.is_symlink():
                raise OutputError(_link_message(tree.display(child), Path(entry.path)))
            if entry.is_dir(follow_symlinks=False):
                tree.dirs[child] = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
                pending.append(child)
            elif entry.is_file(follow_symlinks=False):
                tree.files.add(child)
            else:
                kind = _KINDS.get(stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode), "special")
                raise OutputError(
                    f"{tree.display(child)}: is {kind}; fleetform keeps only folders and"
                    " regular files in output/"
                )
    return tree


# --- the previous compile's index (untrusted) -------------------------------------------

_Count = Annotated[int, Field(ge=0, le=1_000_000)]
_Gpu = Annotated[int, Field(ge=0, le=65_535)]
_Text = Annotated[str, Field(max_length=4096)]


class _IndexEntry(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    name: _Text
    deployment: _Text
    replica: _Count
    spec_hash: _Text
    container: _Text
    # A driver's artifact_path: one or two plain names below output/<host>/, none
    # starting with "." (so never ".." or a hidden file), whatever the kind of host.
    artifact: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9@_:-][A-Za-z0-9@_.:-]{0,199}(/[A-Za-z0-9@_:-][A-Za-z0-9@_.:-]{0,199})?$"
        ),
    ]
    image: _Text
    framework: _Text
    gpus: tuple[_Gpu, ...]
    port: Annotated[int, Field(ge=1, le=65_535)]
    secrets: tuple[_Text, ...] = ()


class _Index(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    schema_: Literal["fleetform.index/v1"] = Field(alias="schema")
    project: _Text
    host: _Text
    target: HostKind  # a registered driver's (compiler/targets)
    address: _Text
    workloads: tuple[_IndexEntry, ...]


assert INDEX_SCHEMA == "fleetform.index/v1"  # the Literal above


@dataclass
class PriorState:
    """What the previous compile left: placement memory and the files it wrote."""

    prior: dict[tuple[str, int], Prior] = field(default_factory=dict)
    managed: set[str] = field(default_factory=set)  # relative paths compile may remove
    ignored: list[str] = field(default_factory=list)  # the warnings given


class _Ignored(Exception):
    """An index not to trust; the message says why."""


def read_state(tree: OutputTree) -> PriorState:
    """Placement memory and owned files from each ``output/<host>/index.json``.

    An index that is not exactly what fleetform writes is ignored with a warning: its
    replicas are placed afresh, and nothing in its folder counts as fleetform's to delete.
    """
    state = PriorState()
    owner: dict[tuple[str, int], str] = {}
    for host in sorted(d for d in tree.dirs if d and "/" not in d):
        relative = f"{host}/{INDEX_FILE}"
        if relative not in tree.files:
            continue
        try:
            index = _read_index(tree.path / relative)
            if index.host != host:
                raise _Ignored(f"it is for host '{printable(index.host)}', not its folder's")
            used_gpus: set[int] = set()
            used_ports: set[int] = set()
            keys: set[tuple[str, int]] = set()
            kind = driver_for(index.target)
            for entry in index.workloads:
                if not kind.is_artifact_path(entry.artifact):
                    raise _Ignored(
                        f"'{printable(entry.artifact)}' is not a {index.target} host's artifact"
                    )
                key = (entry.deployment, entry.replica)
                if key in keys or key in owner:
                    where = f" and in {tree.display(owner[key])}" if key in owner else " twice"
                    raise _Ignored(
                        f"replica {entry.replica} of '{printable(entry.deployment)}' listed{where}"
                    )
                keys.add(key)
                for gpu in entry.gpus:
                    if gpu in used_gpus:
                        raise _Ignored(f"GPU {gpu} listed twice")
                    used_gpus.add(gpu)
                if entry.port in used_ports:
                    raise _Ignored(f"port {entry.port} listed twice")
                used_ports.add(entry.port)
        except _Ignored as why:
            message = (
                f"warning: {tree.display(relative)}: ignored ({why});"
                " placement starts fresh for its replicas"
            )
            state.ignored.append(message)
            warnings.warn(message, IndexIgnored, stacklevel=2)
            continue
        for entry in index.workloads:
            key = (entry.deployment, entry.replica)
            owner[key] = relative
            state.prior[key] = Prior(host=index.host, gpus=entry.gpus, port=entry.port)
        owned = {relative, f"{host}/compose.yaml"}
        owned |= {f"{host}/{entry.artifact}" for entry in index.workloads}
        state.managed |= owned & tree.files
    return state


def _read_index(path: Path) -> _Index:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(MAX_INDEX_BYTES + 1)
    except OSError as error:
        raise _Ignored(f"cannot be read: {error.strerror}") from None
    if len(data) > MAX_INDEX_BYTES:
        raise _Ignored(f"larger than {MAX_INDEX_BYTES // 2**20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Ignored("not UTF-8") from None
    try:
        # pydantic's own JSON parser: bounded nesting, numbers out of range refused.
        return _Index.model_validate_json(text, strict=True)
    except PydanticError as error:
        first = error.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        message = printable(first["msg"])[:200]
        raise _Ignored(f"{printable(where)[:120]}: {message}" if where else message) from None


def read_prior(output_dir: Path) -> dict[tuple[str, int], Prior]:
    """Where the previous compile placed each replica (see :mod:`compiler.placement`)."""
    place = OutputPlace(output_dir, output_dir.name, None)
    return read_state(scan_output(place)).prior


def managed_files(output_dir: Path) -> dict[str, Path]:
    """Artifacts a previous compile wrote: the only files compile may remove."""
    place = OutputPlace(output_dir, output_dir.name, None)
    managed = read_state(scan_output(place)).managed
    return {relative: output_dir / relative for relative in sorted(managed)}


# --- comparing -------------------------------------------------------------------------


def _same(tree: OutputTree, relative: str, content: bytes) -> bool:
    """Whether ``output/relative`` (a regular file when scanned) holds ``content``."""
    fd = os.open(tree.path / relative, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if os.fstat(handle.fileno()).st_size != len(content):
            return False
        return handle.read() == content


def _obstruction(tree: OutputTree, relative: str) -> str | None:
    """Why ``relative`` cannot be written as a file in ``output/``, if it cannot."""
    if relative in tree.dirs:
        return f"{tree.display(relative)}: is a folder where fleetform writes a file"
    parts = relative.split("/")
    for depth in range(1, len(parts)):
        folder = "/".join(parts[:depth])
        if folder in tree.files:
            return f"{tree.display(folder)}: is a file where fleetform needs a folder"
    return None


def diff_output(output: Path | OutputTree, files: dict[str, bytes]) -> Changes:
    """What a compile of ``files`` would change (``compile --check``; writes nothing)."""
    if isinstance(output, Path):
        output = scan_output(OutputPlace(output, output.name, None))
        managed = read_state(output).managed
    else:
        with warnings.catch_warnings():  # already given by the caller's read_state
            warnings.simplefilter("ignore", IndexIgnored)
            managed = read_state(output).managed
    changes = Changes()
    for path, content in sorted(files.items()):
        problem = _obstruction(output, path)
        if problem is not None:
            raise OutputError(problem)
        if path not in output.files:
            changes.created.append(path)
        elif not _same(output, path, content):
            changes.updated.append(path)
    changes.deleted = sorted(managed - files.keys())
    return changes


# --- writing ----------------------------------------------------------------------------


class Writer:
    """Builds the new ``output/`` beside the old one while the caller is still rendering.

    Each file added is compared with the old tree in a background thread (reading and
    creating files is kernel time, which then overlaps with rendering); the first
    difference creates the staging folder and each changed file is written there.
    :meth:`commit` hard-links everything else that stays, swaps the folders and deletes
    the old tree; :meth:`abort` (or a kill) leaves ``output/`` as it was.

    Like git, compile does not fsync: the files are reproducible from the repository,
    and an fsync per file costs seconds on a large fleet. After a power cut, a file may
    be empty: ``compile --check`` shows it and the next compile rewrites it.
    """

    def __init__(self, tree: OutputTree, managed: set[str], parent_fd: int) -> None:
        self.tree = tree
        self.managed = managed
        self.parent_fd = parent_fd
        self.changes = Changes()
        self.produced: set[str] = set()
        self.same: set[str] = set()
        self.kept: set[str] = set()  # old files linked into the staging folder
        self._folder_mode = _usual_folder_mode()
        self.staging: Path | None = None
        self._made: set[str] = set()
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue[tuple[str, bytes] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._stage_all, name="fleetform-writer")
        self._thread.start()

    def add(self, path: str, content: bytes) -> None:
        self.produced.add(path)
        self._queue.put((path, content))

    def _stage_all(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue
            try:
                self._stage(*item)
            except BaseException as error:
                self.error = error

    def _stage(self, path: str, content: bytes) -> None:
        tree = self.tree
        problem = _obstruction(tree, path)
        if problem is not None:
            raise OutputError(problem)
        try:
            same = path in tree.files and _same(tree, path, content)
        except OSError as error:
            raise OutputError(f"{tree.display(path)}: cannot be read ({error.strerror})") from None
        if same:
            self.same.add(path)
            if self.staging is not None:  # linked now, while rendering goes on
                try:
                    self._keep(path)
                except OSError as error:
                    raise OutputError(
                        f"{tree.display(path)}: cannot be kept ({error.strerror})"
                    ) from None
            return
        changed = self.changes.updated if path in tree.files else self.changes.created
        target = self._staged_path(path)
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
        except OSError as error:
            raise OutputError(
                f"{tree.display(path)}: cannot be written ({error.strerror})"
            ) from None
        changed.append(path)

    def _staged_path(self, relative: str) -> Path:
        """Where ``relative`` goes in the staging folder (made on first use), parents made."""
        if self.staging is None:
            self.staging = _make_staging(self.tree.place, self._folder_mode)
        folder = relative.rpartition("/")[0]
        if folder and folder not in self._made:
            try:
                os.makedirs(self.staging / folder, exist_ok=True)
            except OSError as error:
                raise OutputError(
                    f"{self.tree.display(folder)}: cannot be created ({error.strerror})"
                ) from None
            parts = folder.split("/")
            self._made.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
        return self.staging / relative

    def _finish(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def abort(self) -> None:
        self._finish()
        self._discard()

    def _discard(self) -> None:
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None

    def commit(self) -> Changes:
        self._finish()
        changes = self.changes
        try:
            if self.error is not None:
                raise self.error
            changes.deleted = sorted(self.managed - self.produced)
            dropped = set(changes.deleted) | {
                path for path in self.tree.files if _OLD_TEMP.fullmatch(path.rpartition("/")[2])
            }
            if self.staging is None and not dropped:
                return changes  # nothing differs: nothing is written
            self._keep_the_rest(dropped)
            assert self.staging is not None
            _swap(self.tree, self.staging, self.parent_fd)
            self.staging = None
        except OSError as error:  # one line naming the path; output/ is as it was
            named = self._named(error.filename)
            self._discard()
            raise OutputError(f"{named}: cannot be written ({error.strerror})") from None
        except BaseException:
            self._discard()
            raise
        changes.created.sort()
        changes.updated.sort()
        return changes

    def _keep(self, relative: str) -> None:
        """The old file ``relative``, hard-linked into the staging folder as it is."""
        source = self.tree.path / relative
        target = self._staged_path(relative)
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError as error:
            if error.errno not in (errno.EPERM, errno.EMLINK, errno.EXDEV, errno.EACCES):
                raise
            # A file the kernel will not link (immutable, another user's): copied.
            shutil.copy2(source, target, follow_symlinks=False)
        self.kept.add(relative)

    def _named(self, filename: object) -> str:
        """How a message names ``filename``: as the ``output/`` path it stands for."""
        if not isinstance(filename, str):
            return self.tree.display("")
        path = Path(filename)
        for base in (self.staging, self.tree.path):
            if base is not None and (path == base or base in path.parents):
                relative = path.relative_to(base).as_posix()
                return self.tree.display("" if relative == "." else relative)
        return printable(filename)

    def _keep_the_rest(self, dropped: set[str]) -> None:
        """Hard-link into the staging folder every old file that stays as it is."""
        tree = self.tree
        written = self.produced - self.same
        for relative in sorted(tree.files - written - dropped - self.kept):
            self._keep(relative)
        if self.staging is None:  # every file dropped: the new output/ is empty
            self.staging = _make_staging(tree.place, self._folder_mode)
        for relative in sorted(tree.empty_dirs - {""}):  # the user's empty folders stay
            os.makedirs(self.staging / relative, exist_ok=True)
        for relative, mode in tree.dirs.items():  # folders keep their permissions
            folder = self.staging / relative if relative else self.staging
            if folder.is_dir():
                os.chmod(folder, mode)


def _make_staging(place: OutputPlace, mode: int) -> Path:
    staging = Path(tempfile.mkdtemp(prefix=place.prefix, dir=place.parent))
    if not place.staging_pattern().fullmatch(staging.name):  # mkdtemp's names: 8 of [a-z0-9_]
        os.rmdir(staging)
        raise OutputError(f"unexpected temporary folder name {printable(staging.name)}")
    os.chmod(staging, mode)  # mkdtemp makes it 0700; a new output/ gets a folder's usual mode
    return staging


def _usual_folder_mode() -> int:
    """0777 less the umask (read by setting it, so only from the main thread)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


# --- swapping ----------------------------------------------------------------------------

_libc: Any = None


def _renameat2(fd: int, source: str, target: str, flags: int) -> int:
    """Linux ``renameat2``; 0, or the errno (ENOSYS where libc lacks it)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    function = getattr(_libc, "renameat2", None)
    if function is None:
        return errno.ENOSYS
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    if function(fd, os.fsencode(source), fd, os.fsencode(target), flags) == 0:
        return 0
    return ctypes.get_errno()


def _swap(tree: OutputTree, staging: Path, parent_fd: int) -> None:
    """Make the staging folder ``output/`` in one step; delete the old tree."""
    place = tree.place
    name = place.path.name
    if not tree.exists:
        failed = _renameat2(parent_fd, staging.name, name, _RENAME_NOREPLACE)
        if failed in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            try:
                os.rename(staging.name, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
                failed = 0
            except OSError as error:
                failed = error.errno or errno.EIO
        if failed:
            raise place.error(
                f"{printable(place.shown)}: cannot be created ({os.strerror(failed)})"
            )
        return
    failed = errno.ENOSYS
    if os.environ.get(EXCHANGE_ENV) != "0":
        failed = _renameat2(parent_fd, staging.name, name, _RENAME_EXCHANGE)
    if failed in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        _swap_by_journal(place, staging, parent_fd)
    elif failed:
        raise place.error(f"{printable(place.shown)}: cannot be replaced ({os.strerror(failed)})")
    else:
        _remove_tree(staging)  # the old tree, now under the staging folder's name


def _swap_by_journal(place: OutputPlace, staging: Path, parent_fd: int) -> None:
    """Two renames, with a journal that :func:`recover` uses to finish a killed swap."""
    old = Path(tempfile.mkdtemp(prefix=place.prefix, dir=place.parent))
    os.rmdir(old)  # only the unused name is wanted
    journal = place.journal
    fd, name = tempfile.mkstemp(prefix=f"{place.prefix}swap-", dir=place.parent)  # O_EXCL
    temp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"new": staging.name, "old": old.name}))
        os.rename(temp, journal)  # replaces whatever had the name; never follows it
        os.rename(place.path.name, old.name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except OSError as error:
        journal.unlink(missing_ok=True)
        temp.unlink(missing_ok=True)
        raise place.error(
            f"{printable(place.shown)}: cannot be replaced ({error.strerror})"
        ) from None
    try:
        os.rename(staging.name, place.path.name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    except OSError as error:  # put the old tree back
        os.rename(old.name, place.path.name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
        journal.unlink(missing_ok=True)
        raise place.error(
            f"{printable(place.shown)}: cannot be replaced ({error.strerror})"
        ) from None
    journal.unlink()
    _remove_tree(old)


def _remove_tree(path: Path) -> None:
    """Delete a tree fleetform moved aside; what cannot be deleted is left with a warning."""
    failures: list[str] = []

    def failed(*args: Any) -> None:
        failures.append(str(args[1]))

    shutil.rmtree(path, onerror=failed)
    if failures:
        warnings.warn(
            f"warning: {printable(str(path))}: could not be removed entirely"
            f" ({printable(failures[0])}); the next compile tries again",
            FleetformWarning,
            stacklevel=2,
        )


def interrupted(place: OutputPlace) -> bool:
    """Whether a killed fallback swap left ``output/`` missing (see :func:`recover`)."""
    return place.journal.is_file() and not os.path.lexists(place.path)


def recover(place: OutputPlace) -> None:
    """Finish what a killed compile left beside ``output/`` (the caller holds the lock).

    A journal with ``output/`` missing means the old tree was moved aside and the
    complete new one not yet moved in: move it in. Then every staging or old tree of
    fleetform's own naming is deleted (never through a link).
    """
    try:
        _recover(place)
    except OSError as error:
        where = printable(str(error.filename)) if error.filename else printable(place.shown)
        raise place.error(
            f"{printable(place.shown)}: what a killed compile left beside it cannot be cleared"
            f" ({where}: {error.strerror})"
        ) from None


def _recover(place: OutputPlace) -> None:
    pattern = place.staging_pattern()
    journal = place.journal
    if os.path.lexists(journal):
        names: dict[str, Any] = {}
        try:
            if journal.is_file() and not journal.is_symlink():
                with open(journal, "rb") as handle:
                    loaded = json.loads(handle.read(4096))
                names = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError, RecursionError):
            names = {}
        if not os.path.lexists(place.path):
            for key in ("new", "old"):
                name = names.get(key)
                if isinstance(name, str) and pattern.fullmatch(name):
                    candidate = place.parent / name
                    if candidate.is_dir() and not candidate.is_symlink():
                        os.rename(candidate, place.path)
                        break
        if stat.S_ISREG(os.lstat(journal).st_mode):
            journal.unlink()
    temps = re.compile(rf"{re.escape(place.prefix)}swap-[a-z0-9_]{{8}}")
    with os.scandir(place.parent) as entries:
        for entry in list(entries):
            if pattern.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                _remove_tree(Path(entry.path))
            elif temps.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)


def check_not_interrupted(place: OutputPlace) -> None:
    if interrupted(place):
        raise place.error(
            f"{printable(place.shown)}: a compile was killed while replacing it; run"
            " `fleetform compile` to finish"
        )
