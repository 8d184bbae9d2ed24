"""The program the model helper container runs (``python3 -c``), on the host itself.

Not imported by fleetform: it runs in ``hub.helper_image`` with Python ≥ 3.9 and
``huggingface_hub`` (installed with pip first when the image lacks it). Its one argument
is JSON: ``root`` (the host's model_dir, mounted), ``repo_id``, ``revision``,
``patterns``. It prints ``progress <bytes> <total>`` lines while downloading, then
``done <commit> <bytes> <files>``, or ``error: <one line>`` and exits 1. Token and
endpoint come from its environment (``HF_TOKEN``, ``HF_ENDPOINT``).

1. Ask the hub what the revision is (its commit) and which files match, with their
   sizes and hashes (its tree API).
2. If ``<root>/<repo>`` already holds exactly that (its manifest says so and every file
   has its size), nothing more.
3. Refuse when the files still missing need more than the free space under ``root``.
4. In ``<root>/.fleetform-partial/<repo>@<commit>``, keep the files already whole
   there (an interrupted fetch) or in the folder in place (linked), download the rest,
   verify each file (size; SHA-256 for LFS files, the git blob id for the others),
   write the manifest, and swap the folder into place in one step (renameat2): a
   server sees the old model or the new one, never a partial one.
"""

from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, NoReturn

MANIFEST = ".fleetform-model.json"
PARTIAL = ".fleetform-partial"


def say(text: str) -> None:
    print(text, flush=True)


def fail(text: object) -> NoReturn:
    say("error: " + " ".join(str(text).split()))
    sys.exit(1)


def hub() -> Any:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "huggingface_hub>=0.23,<3"],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            fail(f"the helper image has no huggingface_hub and pip could not install it: {last}")
    import huggingface_hub

    return huggingface_hub


def describe(error: BaseException, repo: str, revision: str) -> str:
    """One line for a hub error; never the token (errors do not carry it)."""
    name = type(error).__name__
    status = getattr(getattr(error, "response", None), "status_code", None)
    if name == "GatedRepoError" or status == 403:
        return f"{repo} is gated: HF_TOKEN has no access to it ({status or 403})"
    if name == "RepositoryNotFoundError" or status == 401:
        return f"{repo}: no such repository, or HF_TOKEN is missing or wrong ({status or 404})"
    if name == "RevisionNotFoundError":
        return f"{repo}: no revision {revision!r}"
    if status:
        return f"{repo}: the hub answered HTTP {status}"
    return f"{repo}: cannot reach the hub ({name})"


def file_digest(entry: Any) -> tuple[str, str]:
    """How the hub lets a file be checked: the SHA-256 of an LFS file, else its git blob id."""
    lfs = getattr(entry, "lfs", None)
    if lfs is not None:
        sha256 = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        if sha256:
            return "sha256", sha256
    blob = getattr(entry, "blob_id", None)
    return ("git-blob", blob) if blob else ("", "")


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


def verified(path: str, entry: Any, size: int) -> str:
    """Why the file at ``path`` is not what the hub says ``entry`` is; "" when it is."""
    if os.path.islink(path):
        return "is a symbolic link (the helper image's huggingface_hub is older than 0.23)"
    try:
        actual = os.path.getsize(path)
    except OSError:
        return "is missing"
    if actual != size:
        return f"has {actual} bytes, the hub says {size}"
    kind, expected = file_digest(entry)
    if kind and file_hash(path, kind, size) != expected:
        return f"does not match its {kind} {expected[:12]}"
    return ""


def keep_present(entries: list[Any], files: dict[str, int], partial: str, final: str) -> list[Any]:
    """The entries still to download. A file already whole (as the hub says) in the
    partial folder (an interrupted fetch) or in the folder in place (another revision,
    fewer files, a model staged by hand) is kept: linked, else copied, into the partial
    folder."""
    todo = []
    for entry in entries:
        size = files[entry.path]
        target = os.path.join(partial, entry.path)
        if os.path.lexists(target) and not verified(target, entry, size):
            continue
        source = os.path.join(final, entry.path)
        if os.path.lexists(source) and not verified(source, entry, size):
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


def install(partial: str, final: str) -> None:
    """Put the verified folder in place: a server sees the old folder or the new one."""
    os.makedirs(os.path.dirname(final), exist_ok=True)
    if not os.path.lexists(final):
        os.rename(partial, final)
        return
    if exchange(partial, final):
        shutil.rmtree(partial, ignore_errors=True)  # now the old folder
        return
    old = final + ".fleetform-old"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(final, old)
    try:
        os.rename(partial, final)
    except OSError:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def main() -> None:
    args = json.loads(sys.argv[1])
    root, repo, revision = args["root"], args["repo_id"], args["revision"]
    patterns = args["patterns"]
    hf = hub()
    api = hf.HfApi()
    try:
        commit = api.model_info(repo, revision=revision).sha
        # The tree carries each file's size and hash (a mirror's model_info may not).
        tree = api.list_repo_tree(repo, revision=commit, recursive=True)
        entries = [e for e in tree if getattr(e, "size", None) is not None]
    except Exception as error:  # the hub's, or the network's: one line
        fail(describe(error, repo, revision))
    entries = [
        e for e in entries
        if not patterns or any(fnmatch.fnmatch(e.path, p) for p in patterns)
    ]  # fmt: skip
    if not entries:
        fail(f"{repo}@{revision}: no file matches {', '.join(patterns) or 'the repository'}")
    files = {e.path: int(e.size) for e in entries}
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
    todo = keep_present(entries, files, partial, final)
    needed = sum(files[e.path] for e in todo)
    free = shutil.disk_usage(root).free
    if needed > free:
        fail(
            f"not enough free space under the host's model_dir for {repo}: {needed / 1e6:,.1f} MB"
            f" needed, {free / 1e6:,.1f} MB free"
        )
    if todo:
        download(hf, repo, revision, commit, partial, todo, total)
    for entry in entries:
        wrong = verified(os.path.join(partial, entry.path), entry, files[entry.path])
        if wrong:
            fail(f"{repo}: {entry.path} {wrong}")
    shutil.rmtree(os.path.join(partial, ".cache"), ignore_errors=True)
    with open(os.path.join(partial, MANIFEST), "w") as handle:
        json.dump({"repo_id": repo, "revision": revision, "commit": commit,
                   "files": sorted(files), "fetched": int(time.time())}, handle)  # fmt: skip
    install(partial, final)
    say(f"done {commit} {total} {len(files)}")


def download(
    hf: Any, repo: str, revision: str, commit: str, partial: str, todo: list[Any], total: int
) -> None:
    """The files of ``todo`` into ``partial``, saying the bytes there every 2 s."""
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(2.0):
            say(f"progress {min(folder_size(partial), total)} {total}")

    threading.Thread(target=report, daemon=True).start()
    try:  # names as patterns match themselves only once escaped ("a[1].bin")
        names = sorted(glob.escape(e.path) for e in todo)
        hf.snapshot_download(repo, revision=commit, local_dir=partial, allow_patterns=names)
    except Exception as error:
        fail(describe(error, repo, revision))
    finally:
        stop.set()


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # a bug, or the file system's: still one line
        fail(f"the model helper failed: {type(error).__name__}: {error}")
