"""The program the model helper container runs (``python3 -c``), on the host itself.

Not imported by fleetform: it runs in ``hub.helper_image`` with Python ≥ 3.10 and the
hub's client library, ``huggingface_hub`` or ``modelscope-hub`` (installed with pip first
when the image lacks it). Its one argument is JSON: ``source`` (``huggingface`` or
``model_scope``), ``root`` (the host's model_dir, mounted), ``repo_id``, ``revision``,
``patterns``. It prints ``progress <bytes> <total>`` lines while downloading, then
``done <commit> <bytes> <files>``, or ``error: <one line>`` and exits 1. Token and
endpoint come from its environment (``HF_TOKEN`` and ``HF_ENDPOINT``;
``MODELSCOPE_API_TOKEN`` and ``MODELSCOPE_ENDPOINT``).

1. Ask the hub what the revision is (its commit) and which files match, with their
   sizes and hashes (Hugging Face's tree API; ModelScope's file list).
2. If ``<root>/<repo>`` already holds exactly that (its manifest says so and every file
   has its size), nothing more.
3. Refuse when the files still missing need more than the free space under ``root``.
4. In ``<root>/.fleetform-partial/<repo>@<commit>``, keep the files already whole
   there (an interrupted fetch) or in the folder in place (linked), download the rest,
   verify each file (size; the SHA-256 the hub publishes, else the git blob id), write
   the manifest, and swap the folder into place in one step (renameat2): a server sees
   the old model or the new one, never a partial one.
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import glob
import hashlib
import importlib
import json
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, NoReturn

MANIFEST = ".fleetform-model.json"
PARTIAL = ".fleetform-partial"
REPLACED = ".fleetform-replaced"


def say(text: str) -> None:
    print(text, flush=True)


def fail(text: object) -> NoReturn:
    line = " ".join(str(text).split())
    for hub in HUBS.values():  # every hub's token, whichever this fetch uses
        line = redact(line, os.environ.get(hub.token, ""))
    say("error: " + line)
    sys.exit(1)


def redact(text: str, token: str, shortest: int = 8) -> str:
    """``text`` without the token, or any run of ``shortest`` or more of its characters:
    a hub's error page may echo the request's token, whole or cut short. (fleetform's
    apply redacts the helper's lines with this too.)"""
    if len(token) < shortest:
        return text.replace(token, "(secret)") if token else text
    pieces = {token[i : i + shortest] for i in range(len(token) - shortest + 1)}
    start = 0
    while start <= len(text) - shortest:
        if text[start : start + shortest] not in pieces:
            start += 1
            continue
        end = start + shortest
        while end < len(text) and text[start : end + 1] in token:
            end += 1
        text = text[:start] + "(secret)" + text[end:]
        start += len("(secret)")
    return text


@dataclass(frozen=True)
class Remote:
    """One file of the revision as the hub describes it: how big, and how to check it
    (``sha256``: the SHA-256 of its bytes; ``git-blob``: its git blob id; "": no hash)."""

    path: str
    size: int
    kind: str
    digest: str


COMMIT = re.compile(r"[0-9a-f]{40}")
_DIGEST = {"sha256": re.compile(r"[0-9a-f]{64}"), "git-blob": re.compile(r"[0-9a-f]{40}")}
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f\\]+")


def checked(repo: str, entry: Remote) -> Remote:
    """``entry`` if the hub's description of it is one this helper can act on safely: a
    relative path that stays in the model's folder (no ``..``, ``.``, empty or absolute
    part, no backslash or control character, nothing of fleetform's own), a size, a hash
    of its kind. A hub or mirror that lists anything else is refused as a whole."""
    parts = entry.path.split("/")
    if (
        not _PRINTABLE.fullmatch(entry.path)
        or len(entry.path) > 1024
        or any(part in ("", ".", "..") for part in parts)
        or parts[0].startswith(".fleetform")
    ):
        fail(f"{repo}: the hub lists a file {entry.path[:120]!r} outside the model's folder")
    if not 0 <= entry.size < 1 << 50:
        fail(f"{repo}: the hub gives {entry.path} a size of {entry.size}")
    pattern = _DIGEST.get(entry.kind)
    if entry.kind and (pattern is None or not pattern.fullmatch(entry.digest)):
        fail(f"{repo}: the hub gives {entry.path} a {entry.kind} that is not one")
    return entry


def checked_commit(repo: str, commit: object) -> str:
    if not isinstance(commit, str) or not COMMIT.fullmatch(commit):
        fail(f"{repo}: the hub names a commit {str(commit)[:80]!r} that is not a commit id")
    return commit


def library(module: str, requirement: str) -> Any:
    """The hub's client library, installed with pip first when the image lacks it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         requirement],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        fail(f"the helper image has no {module} and pip could not install it: {last}")
    return importlib.import_module(module)


class HuggingFace:
    """A Hugging Face hub (or a mirror: ``HF_ENDPOINT``), through huggingface_hub."""

    token = "HF_TOKEN"

    def __init__(self, repo: str) -> None:
        self.hf = library("huggingface_hub", "huggingface_hub>=0.23,<3")
        self.api = self.hf.HfApi()
        self.repo = repo

    def revision(self, revision: str) -> tuple[str, list[Remote]]:
        """The revision's commit, and its files."""
        commit = checked_commit(self.repo, self.api.model_info(self.repo, revision=revision).sha)
        # The tree carries each file's size and hash (a mirror's model_info may not).
        tree = self.api.list_repo_tree(self.repo, revision=commit, recursive=True)
        return commit, [
            Remote(e.path, int(e.size), *self.digest(e))
            for e in tree
            if getattr(e, "size", None) is not None
        ]

    @staticmethod
    def digest(entry: Any) -> tuple[str, str]:
        """The SHA-256 of an LFS file, else its git blob id."""
        lfs = getattr(entry, "lfs", None)
        if lfs is not None:
            sha256 = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
            if sha256:
                return "sha256", str(sha256).lower()
        blob = getattr(entry, "blob_id", None)
        return ("git-blob", str(blob).lower()) if blob else ("", "")

    def download(self, commit: str, names: list[str], folder: str) -> None:
        # Names as patterns match themselves only once escaped ("a[1].bin").
        patterns = sorted(glob.escape(name) for name in names)
        self.hf.snapshot_download(
            self.repo, revision=commit, local_dir=folder, allow_patterns=patterns
        )

    def describe(self, error: BaseException, revision: str) -> str:
        """One line for a hub error; never the token (errors do not carry it)."""
        name = type(error).__name__
        status = getattr(getattr(error, "response", None), "status_code", None)
        if name == "GatedRepoError" or status == 403:
            return f"{self.repo} is gated: HF_TOKEN has no access to it ({status or 403})"
        if name == "RepositoryNotFoundError" or status == 401:
            return (
                f"{self.repo}: no such repository, or HF_TOKEN is missing or wrong"
                f" ({status or 404})"
            )
        if name == "RevisionNotFoundError":
            return f"{self.repo}: no revision {revision!r}"
        if status:
            return f"{self.repo}: the hub answered HTTP {status}"
        return f"{self.repo}: cannot reach the hub ({name})"


class ModelScope:
    """ModelScope (or a mirror: ``MODELSCOPE_ENDPOINT``), through modelscope-hub's
    ``HubApi``, the client ``modelscope`` itself delegates to. Its caches and session go
    to a scratch folder of the helper's own, removed with the helper."""

    token = "MODELSCOPE_API_TOKEN"

    def __init__(self, repo: str) -> None:
        # Pinned: the helper reads its legacy listing, which the client calls internals.
        ms = library("modelscope_hub", "modelscope-hub==0.5.1")
        logging.getLogger("modelscope_hub").setLevel(logging.WARNING)
        scratch = pathlib.Path(tempfile.mkdtemp(prefix="fleetform-modelscope-"))
        config = ms.HubConfig(
            endpoint=os.environ.get("MODELSCOPE_ENDPOINT") or None,
            token=os.environ.get(self.token, ""),  # "": no token, never a stored login
            cache_dir=scratch / "cache",
            config_dir=scratch / "home",
        )
        self.api = ms.HubApi(config=config)
        self.repo = repo
        self.listed: list[dict[str, Any]] = []

    def revision(self, revision: str) -> tuple[str, list[Remote]]:
        """The revision's commit, and its files. A listing of a revision the repository
        does not have is empty, not an error, so the revision is looked up first."""
        commit = revision if COMMIT.fullmatch(revision) else ""
        if not commit:
            refs = self.api.list_repo_revisions(self.repo, "model")
            named = [r for r in refs if isinstance(r, dict) and r.get("Revision") == revision]
            if not named:
                fail(f"{self.repo}: no revision {revision!r}")
            commit = named[0].get("CommitId") or ""
        listed = self.api.legacy.list_repo_files(
            self.repo, "model", revision=commit or revision, recursive=True
        )
        try:
            self.listed = [e for e in listed if e.get("Type", "blob") != "tree"]
            entries = [
                Remote(
                    str(e["Path"]),
                    int(e["Size"]),
                    "sha256" if e.get("Sha256") else "",
                    str(e.get("Sha256") or "").lower(),
                )
                for e in self.listed
            ]
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            fail(f"{self.repo}: ModelScope's file list is not as its API describes ({error!r:.80})")
        if not commit:
            # A hub that names no commit for the branch: the newest of its files' own
            # last commits. The files the branch lists are downloaded at it, and no file
            # changed after it, so they are the branch's files.
            newest = max(self.listed, key=lambda e: e.get("CommittedDate") or 0, default={})
            commit = newest.get("Revision") or ""
        return checked_commit(self.repo, commit), entries

    def download(self, commit: str, names: list[str], folder: str) -> None:
        wanted = set(names)
        self.api.download_repo(
            self.repo,
            "model",
            revision=commit,
            local_dir=folder,
            allow_patterns=sorted(glob.escape(name) for name in names),
            file_list=[e for e in self.listed if e["Path"] in wanted],
        )

    def describe(self, error: BaseException, revision: str) -> str:
        """One line for a hub error; never the token (errors do not carry it)."""
        name = type(error).__name__
        status = getattr(error, "status_code", None)
        if status == 401 or name == "AuthenticationError":
            return f"{self.repo}: MODELSCOPE_API_TOKEN is wrong (401)"
        if status == 403 or name in ("PermissionDeniedError", "PermissionError"):
            return f"{self.repo}: MODELSCOPE_API_TOKEN has no access to it (403)"
        if status == 404 or name in ("NotExistError", "NotFoundError"):
            return (
                f"{self.repo}: no such repository or revision {revision!r}, or it is private"
                " and MODELSCOPE_API_TOKEN is missing (404)"
            )
        # Never the server's own words: an error page may echo the request's token.
        failed = getattr(error, "failed_files", None)
        if isinstance(failed, dict) and failed:
            path, cause = sorted(failed.items())[0]
            code = getattr(cause, "status_code", None)
            why = f"HTTP {code}" if code else type(cause).__name__
            return f"{self.repo}: {len(failed)} file(s) failed, {str(path)[:120]!r} first ({why})"
        if status or name == "ServerError":
            return f"{self.repo}: ModelScope answered HTTP {status or '5xx'}"
        return f"{self.repo}: cannot reach ModelScope ({name})"


HUBS: dict[str, type[HuggingFace | ModelScope]] = {
    "huggingface": HuggingFace,
    "model_scope": ModelScope,
}


def file_hash(path: str, kind: str, size: int) -> str:
    digest = hashlib.sha256() if kind == "sha256" else hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_size(folder: str) -> int:
    total = 0
    for base, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(base, name)).st_size
    return total


def current(final: str, commit: str, files: dict[str, int]) -> bool:
    """Whether ``final`` already holds exactly these files at this commit."""
    try:
        with open(os.path.join(final, MANIFEST)) as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        return False
    if manifest.get("commit") != commit or manifest.get("files") != sorted(files):
        return False
    for name, size in files.items():
        try:
            if os.path.getsize(os.path.join(final, name)) != size:
                return False
        except OSError:
            return False
    return True


def verified(path: str, entry: Remote) -> str:
    """Why the file at ``path`` is not what the hub says ``entry`` is; "" when it is."""
    if os.path.islink(path):
        return "is a symbolic link (the helper image's hub library is too old)"
    try:
        actual = os.path.getsize(path)
    except OSError:
        return "is missing"
    if actual != entry.size:
        return f"has {actual} bytes, the hub says {entry.size}"
    if entry.kind and file_hash(path, entry.kind, entry.size) != entry.digest:
        return f"does not match its {entry.kind} {entry.digest[:12]}"
    return ""


def keep_present(entries: list[Remote], partial: str, final: str) -> list[Remote]:
    """The entries still to download. A file already whole (as the hub says) in the
    partial folder (an interrupted fetch) or in the folder in place (another revision,
    fewer files, a model staged by hand) is kept: linked, else copied, into the partial
    folder."""
    todo = []
    for entry in entries:
        target = os.path.join(partial, entry.path)
        if os.path.lexists(target) and not verified(target, entry):
            continue
        source = os.path.join(final, entry.path)
        if os.path.lexists(source) and not verified(source, entry):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(target):
                os.remove(target)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
            continue
        if os.path.lexists(target):  # not what the hub says: fetched again
            os.remove(target)
        todo.append(entry)
    return todo


def exchange(first: str, second: str) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False if refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return bool(
        renameat2(at_fdcwd, first.encode(), at_fdcwd, second.encode(), rename_exchange) == 0
    )


def prune(partial: str, files: dict[str, int]) -> None:
    """Remove from ``partial`` all but the verified files: the libraries' bookkeeping
    (``.cache``), a file another fetch of this commit began (``*.incomplete``)."""
    keep = {os.path.join(partial, name) for name in files}
    for base, folders, names in os.walk(partial, topdown=False):
        for name in names:
            path = os.path.join(base, name)
            if path not in keep:
                os.remove(path)
        for name in folders:
            with contextlib.suppress(OSError):  # not empty: it holds kept files
                os.rmdir(os.path.join(base, name))


def install(partial: str, final: str, root: str) -> None:
    """Put the verified folder in place: a server sees the old folder or the new one.
    A folder fleetform did not fetch (no manifest: staged by hand) is kept aside under
    ``<root>/.fleetform-replaced``, not deleted."""
    os.makedirs(os.path.dirname(final), exist_ok=True)
    if not os.path.lexists(final):
        os.rename(partial, final)
        return
    staged = os.path.isdir(final) and not os.path.lexists(os.path.join(final, MANIFEST))
    if exchange(partial, final):
        old = partial  # the old folder, now
    else:
        old = final + ".fleetform-old"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        try:
            os.rename(partial, final)
        except OSError:
            os.rename(old, final)
            raise
    if not staged:
        shutil.rmtree(old, ignore_errors=True)
        return
    aside = os.path.join(root, REPLACED, os.path.basename(partial))
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(old, aside)
    say(f"note: the folder that was there, not fetched by fleetform, is kept as {aside}")


def main() -> None:
    args = json.loads(sys.argv[1])
    root, repo, revision = args["root"], args["repo_id"], args["revision"]
    patterns = args["patterns"]
    hub = HUBS[args.get("source", "huggingface")](repo)
    try:
        commit, entries = hub.revision(revision)
    except Exception as error:  # the hub's, or the network's: one line
        fail(hub.describe(error, revision))
    if not entries:
        fail(f"{repo}: no revision {revision!r}, or no file in it")
    entries = [
        checked(repo, e) for e in entries
        if not patterns or any(fnmatch.fnmatch(e.path, p) for p in patterns)
    ]  # fmt: skip
    if len({e.path for e in entries}) != len(entries):
        fail(f"{repo}: the hub lists a file twice")
    if not entries:
        fail(f"{repo}@{revision}: no file matches {', '.join(patterns) or 'the repository'}")
    files = {e.path: e.size for e in entries}
    total = sum(files.values())
    final = os.path.join(root, repo)
    if current(final, commit, files):
        say(f"done {commit} {total} {len(files)}")
        return
    stem = repo.replace("/", "--") + "@"
    partial = os.path.join(root, PARTIAL, stem + commit)
    os.makedirs(partial, exist_ok=True)
    for other in os.listdir(os.path.join(root, PARTIAL)):  # another commit's, unfinished
        if other.startswith(stem) and other != stem + commit:
            shutil.rmtree(os.path.join(root, PARTIAL, other), ignore_errors=True)
    todo = keep_present(entries, partial, final)
    needed = sum(e.size for e in todo)
    free = shutil.disk_usage(root).free
    if needed > free:
        fail(
            f"not enough free space under the host's model_dir for {repo}: {needed / 1e6:,.1f} MB"
            f" needed, {free / 1e6:,.1f} MB free"
        )
    if todo:
        download(hub, revision, commit, partial, todo, total)
    for entry in entries:
        wrong = verified(os.path.join(partial, entry.path), entry)
        if wrong:
            fail(f"{repo}: {entry.path} {wrong}")
    prune(partial, files)
    with open(os.path.join(partial, MANIFEST), "w") as handle:
        json.dump({"repo_id": repo, "revision": revision, "commit": commit,
                   "files": sorted(files), "fetched": int(time.time())}, handle)  # fmt: skip
    install(partial, final, root)
    say(f"done {commit} {total} {len(files)}")


def download(
    hub: Any, revision: str, commit: str, partial: str, todo: list[Remote], total: int
) -> None:
    """The files of ``todo`` into ``partial``, saying the bytes there every 2 s."""
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(2.0):
            say(f"progress {min(folder_size(partial), total)} {total}")

    threading.Thread(target=report, daemon=True).start()
    try:
        hub.download(commit, sorted(e.path for e in todo), partial)
    except Exception as error:
        fail(hub.describe(error, revision))
    finally:
        stop.set()


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # a bug, or the file system's: still one line
        fail(f"the model helper failed: {type(error).__name__}: {error}")
