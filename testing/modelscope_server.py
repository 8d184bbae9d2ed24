"""A stand-in for the ModelScope hub on loopback, serving model repositories a test makes.

No ModelScope server runs offline (there is no olah for it), so this one serves, from
memory, the few endpoints that the official client — ``modelscope_hub`` (PyPI
``modelscope-hub``, which ``modelscope`` delegates to) — calls to list and download a
model, with the status codes and JSON bodies that client reads. Clients use it through
``MODELSCOPE_ENDPOINT`` (or ``HubApi(endpoint=...)``); everything runs on 127.0.0.1.

Served (``{id}`` is ``owner/name``; models only)::

    GET /api/v1/models/{id}/revisions          branches and tags: Data.RevisionMap.{Branches,Tags}
                                               [{Revision, CreatedAt, CommitId}]
    GET /api/v1/models/{id}/repo/files         ?Revision=&Recursive=&Root= the file list:
                                               Data.Files[{Path, Name, Type, Size, Sha256,
                                               IsLFS, Revision (the file's last commit), ...}]
    GET /api/v1/models/{id}/repo               ?Revision=&FilePath= one file; Range answered 206
    HEAD likewise
    GET /api/v1/models/{id}                    repository info (the client's fallback)
    GET /openapi/v1/models/{owner}/{name}      repository info (``get_repo``, ``repo_exists``)
    GET /api/v1/repos/internalAccelerationInfo the download manager's region probe: no region

The client uses the OpenAPI surface only for repository info; listing and downloading
are the legacy ``/api/v1`` endpoints (``modelscope_hub`` has no OpenAPI equivalent). It
sends the token both as ``Authorization: Bearer`` and as the ``m_session_id`` cookie.

Answers, as the client maps them to its errors: an unknown repository, or a private one
asked without a token, 404 (``NotExistError``; ModelScope answers both so, "may not exist
or may be private"); a private one asked with a wrong token, 401 (``AuthenticationError``;
this stand-in's choice, the hub's own answer cannot be checked offline); one in
:attr:`ModelScopeServer.forbidden` asked with the right token, 403
(``PermissionDeniedError``); a missing file, 404. A public repository is served whatever
the token. An unknown revision is listed as ModelScope is reported to list it — HTTP 200
with no files, which the client takes for an empty repository — and its files are 404. A
revision is a branch, a tag or a full commit id; a commit's id is the sha1 of its parent
and its file listing.

Also: a byte rate (:attr:`ModelScopeServer.rate`) and a one-shot cut
(:attr:`ModelScopeServer.cut_after`) to interrupt a download half way, a hook that
rewrites the revisions and file lists it sends (:attr:`ModelScopeServer.tamper`: a
hostile hub), and logs of the file
bodies served (:attr:`ModelScopeServer.served`) and of every credential seen
(:attr:`ModelScopeServer.authorizations`, :attr:`ModelScopeServer.cookies`).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".onnx")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Blob:
    content: bytes
    sha256: str
    commit: str  # the last commit that changed this path, as ModelScope lists it
    committed_at: int  # and when (CommittedDate)


@dataclass(frozen=True)
class Commit:
    id: str
    files: dict[str, Blob]
    created_at: int
    message: str


@dataclass
class Repo:
    private: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch, a tag or a full commit id; None if it names none."""
        commit = self.branches.get(revision) or self.tags.get(revision)
        if commit is None and _COMMIT.fullmatch(revision):
            commit = revision
        return self.commits.get(commit or "")


@dataclass
class Served:
    """One file body sent: ``start`` is its first byte (a Range), ``bytes`` those sent."""

    repo: str
    revision: str
    path: str
    status: int
    start: int
    bytes: int


class ModelScopeServer:
    """The hub's endpoints for the repositories added here; ``endpoint`` is its URL.

    ``root``: folders ``root/<owner>/<name>/`` are served as public repositories (branch
    master) from the start. ``token``: the one valid token (None: no token is valid).
    """

    def __init__(self, root: Path | None = None, *, token: str | None = None) -> None:
        self.root = root
        self.token = token
        self.rate: float | None = None  # bytes per second of each file body
        self.cut_after: int | None = None  # drop the next file body after this many bytes
        self.forbidden: set[str] = set()  # repositories the token may not read: 403
        # A hostile or broken hub: called with (repo id, "revisions" or "files", the JSON
        # data about to be sent), returns the data to send instead.
        self.tamper: Callable[[str, str, Any], Any] | None = None
        self.served: list[Served] = []
        self.authorizations: list[str] = []  # every Authorization header value
        self.cookies: list[str] = []  # every m_session_id / modelscope_session value
        self.requests: list[str] = []  # "METHOD /path?query[ Range: ...]" of each request
        # Requests for an endpoint this stand-in does not serve: a client that asks for one
        # has moved past what the stand-in knows, and a test should say so (``unexpected``).
        self.unexpected: list[str] = []
        self._repos: dict[str, Repo] = {}
        self._lock = threading.Lock()
        self._clock = int(time.time())
        if root is not None:
            for folder in sorted(p for p in root.glob("*/*") if p.is_dir()):
                self.add_repo(f"{folder.parent.name}/{folder.name}", folder=folder)
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None

    # --- repositories -------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes] | None = None,
        *,
        folder: Path | None = None,
        revision: str = "master",
        private: bool = False,
    ) -> str:
        """A repository with ``files`` (or those under ``folder``, by default
        ``root/<owner>/<name>``) as the first commit of branch ``revision``; returns the
        commit id."""
        if files is None:
            base = folder or (self.root / repo_id if self.root is not None else None)
            if base is None or not base.is_dir():
                raise ValueError(f"add_repo({repo_id!r}) needs files or a folder")
            files = {
                p.relative_to(base).as_posix(): p.read_bytes()
                for p in sorted(base.rglob("*"))
                if p.is_file()
            }
        with self._lock:
            self._repos[repo_id] = Repo(private=private)
        return self.commit(repo_id, files, branch=revision, message="initial commit")

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes | None],
        *,
        branch: str = "master",
        message: str = "update",
    ) -> str:
        """A new commit on ``branch`` (made if missing) changing ``files`` (None deletes a
        path); returns its id: the sha1 of its parent and its file listing."""
        with self._lock:
            repo = self._repos[repo_id]
            parent = repo.commits.get(repo.branches.get(branch, ""))
            old = dict(parent.files) if parent else {}
            listing = {p: b.sha256 for p, b in old.items()}
            for path, content in files.items():
                if content is None:
                    listing.pop(path, None)
                else:
                    listing[path] = hashlib.sha256(content).hexdigest()
            head = json.dumps([parent.id if parent else None, sorted(listing.items())])
            commit_id = hashlib.sha1(head.encode()).hexdigest()
            self._clock += 1
            new: dict[str, Blob] = {}
            for path, sha in sorted(listing.items()):
                content = files.get(path)
                if content is None or (path in old and old[path].sha256 == sha):
                    new[path] = old[path]  # unchanged: its last commit stays
                else:
                    new[path] = Blob(content, sha, commit_id, self._clock)
            repo.commits[commit_id] = Commit(commit_id, new, self._clock, message)
            repo.branches[branch] = commit_id
            return commit_id

    def add_tag(self, repo_id: str, tag: str, revision: str = "master") -> str:
        """Tag ``revision`` (branch, tag or commit) as ``tag``; returns the commit id."""
        with self._lock:
            repo = self._repos[repo_id]
            found = repo.resolve(revision)
            if found is None:
                raise KeyError(f"{repo_id} has no revision {revision}")
            repo.tags[tag] = found.id
            return found.id

    def resolve(self, repo_id: str, revision: str = "master") -> str:
        """The commit id ``revision`` names in ``repo_id``."""
        with self._lock:
            found = self._repos[repo_id].resolve(revision)
        if found is None:
            raise KeyError(f"{repo_id} has no revision {revision}")
        return found.id

    def _repo(self, repo_id: str) -> Repo | None:
        with self._lock:
            return self._repos.get(repo_id)

    # --- life -----------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def start(self) -> ModelScopeServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._http.server_close()

    def __enter__(self) -> ModelScopeServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# --- HTTP -----------------------------------------------------------------------------------


def _envelope(data: Any) -> dict[str, Any]:
    """The legacy API's envelope, as ModelScope sends it."""
    return {
        "Code": 200,
        "Data": data,
        "Message": "success",
        "RequestId": uuid.uuid4().hex,
        "Success": True,
    }


def _file_entry(path: str, blob: Blob | None, created_at: int) -> dict[str, Any]:
    name = path.rsplit("/", 1)[-1]
    if blob is None:
        return {
            "Name": name,
            "Path": path,
            "Type": "tree",
            "Size": 0,
            "Sha256": "",
            "IsLFS": False,
            "Mode": "16384",
        }
    return {
        "Name": name,
        "Path": path,
        "Type": "blob",
        "Size": len(blob.content),
        "Sha256": blob.sha256,
        "IsLFS": path.endswith(LFS_SUFFIXES),
        "Mode": "33188",
        "Revision": blob.commit,
        "CommitMessage": "",
        "CommittedDate": blob.committed_at,
        "CommitterName": "test",
        "InCheck": False,
    }


def _listing(commit: Commit, recursive: bool, root: str) -> list[dict[str, Any]]:
    """``repo/files``: blobs and the directories above them, under ``root``."""
    prefix = f"{root.strip('/')}/" if root.strip("/") else ""
    entries: dict[str, dict[str, Any]] = {}
    for path, blob in commit.files.items():
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        depth = len(parts) if recursive else 1
        for i in range(1, min(depth, len(parts) - 1) + 1):
            tree = prefix + "/".join(parts[:i])
            entries.setdefault(tree, _file_entry(tree, None, commit.created_at))
        if recursive or len(parts) == 1:
            entries[path] = _file_entry(path, blob, commit.created_at)
    return [entries[p] for p in sorted(entries)]


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """The one range of a ``Range`` header: (first, last); None: whole; "bad": 416."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":
        return (max(0, size - int(last)), size - 1) if size and int(last) else "bad"
    start, end = int(first), int(last) if last else size - 1
    if start >= size or end < start:
        return "bad"
    return start, min(end, size - 1)


def _handler(server: ModelScopeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: Any) -> None:
            self._send(status, json.dumps(payload).encode())

        def _error(
            self, status: int, message: str, *, code: int | None = None, openapi: bool = False
        ) -> None:
            if openapi:  # the OpenAPI surface's envelope and string codes
                codes = {
                    401: "InvalidAuthentication",
                    403: "OperationNotAllowed",
                    404: "ResourceNotFound",
                }
                self._json(
                    status,
                    {
                        "success": False,
                        "code": codes.get(status, "Error"),
                        "message": message,
                        "request_id": uuid.uuid4().hex,
                    },
                )
                return
            self._json(
                status,
                {
                    "Code": code or status,
                    "Data": None,
                    "Message": message,
                    "RequestId": uuid.uuid4().hex,
                    "Success": False,
                },
            )

        def _credentials(self) -> list[str]:
            """The tokens this request carries (header and session cookies), logged."""
            given: list[str] = []
            authorization = self.headers.get("Authorization")
            if authorization is not None:
                server.authorizations.append(authorization)
                given.append(authorization.removeprefix("Bearer "))
            jar: SimpleCookie = SimpleCookie()
            jar.load(self.headers.get("Cookie", ""))
            for name in ("m_session_id", "modelscope_session"):
                if name in jar:
                    server.cookies.append(jar[name].value)
                    given.append(jar[name].value)
            return given

        def _open(self, repo_id: str, given: list[str], *, openapi: bool = False) -> Repo | None:
            """The repository if this request may read it; else answers and None."""
            repo = server._repo(repo_id)
            if repo is not None and repo.private:
                if not given:
                    repo = None  # a private repository is not there for the anonymous
                elif any(token != server.token for token in given) or server.token is None:
                    self._error(401, "Invalid token: authentication failed", openapi=openapi)
                    return None
            if repo is None:
                self._error(404, "模型不存在", openapi=openapi)  # "Model does not exist."
                return None
            if repo_id in server.forbidden:
                self._error(403, "access denied", openapi=openapi)
                return None
            return repo

        def _handle(self) -> None:
            byte_range = self.headers.get("Range")
            server.requests.append(
                f"{self.command} {self.path}" + (f" Range: {byte_range}" if byte_range else "")
            )
            given = self._credentials()
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            path = unquote(url.path).rstrip("/")
            if path == "/api/v1/repos/internalAccelerationInfo":
                self._json(200, _envelope({"InternalRegionQueryAddress": ""}))
                return
            match = re.fullmatch(r"/openapi/v1/models/([^/]+/[^/]+)", path)
            if match:
                repo = self._open(match[1], given, openapi=True)
                if repo is not None:
                    self._json(
                        200,
                        {
                            "success": True,
                            "request_id": uuid.uuid4().hex,
                            "data": {"id": match[1], "private": repo.private},
                        },
                    )
                return
            match = re.fullmatch(
                r"/api/v1/models/([^/]+/[^/]+)(/revisions|/repo/files|/repo)?", path
            )
            if match is None:
                server.unexpected.append(f"{self.command} {self.path}")
                self._error(404, f"no route for {path}")
                return
            repo_id, what = match[1], match[2]
            repo = self._open(repo_id, given)
            if repo is None:
                return
            owner, name = repo_id.split("/")
            if what is None:
                self._json(
                    200,
                    _envelope(
                        {"Path": owner, "Name": name, "Visibility": 1 if repo.private else 5}
                    ),
                )
            elif what == "/revisions":

                def refs(names: dict[str, str]) -> list[dict[str, Any]]:
                    return [
                        {
                            "Revision": ref,
                            "CommitId": commit,
                            "CreatedAt": repo.commits[commit].created_at,
                        }
                        for ref, commit in sorted(names.items())
                    ]

                data = {"RevisionMap": {"Branches": refs(repo.branches), "Tags": refs(repo.tags)}}
                self._json(200, _envelope(self._tampered(repo_id, "revisions", data)))
            elif what == "/repo/files":
                commit = repo.resolve(query.get("Revision") or "master")
                if commit is None:  # as ModelScope answers an unknown revision
                    self._json(200, _envelope({"Files": None}))
                    return
                recursive = query.get("Recursive", "False").lower() == "true"
                files = _listing(commit, recursive, query.get("Root") or "")
                if not files and (query.get("Root") or "").strip("/"):
                    self._error(404, "目录不存在")  # no such directory
                    return
                self._json(200, _envelope(self._tampered(repo_id, "files", {"Files": files})))
            else:
                self._file(
                    repo_id, repo, query.get("Revision") or "master", query.get("FilePath", "")
                )

        def _tampered(self, repo_id: str, what: str, data: Any) -> Any:
            return data if server.tamper is None else server.tamper(repo_id, what, data)

        def _file(self, repo_id: str, repo: Repo, revision: str, file_path: str) -> None:
            commit = repo.resolve(revision)
            blob = commit.files.get(file_path) if commit else None
            if blob is None:
                self._error(404, "获取模型文件失败，文件内容为空", code=10990101007)
                return
            size = len(blob.content)
            span = _byte_range(self.headers.get("Range"), size)
            headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
            if span == "bad":
                self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
                return
            start, end = span if isinstance(span, tuple) else (0, size - 1)
            status = 206 if isinstance(span, tuple) else 200
            if status == 206:
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            if self.command == "HEAD":
                return
            record = Served(repo_id, revision, file_path, status, start, 0)
            server.served.append(record)
            for chunk in _chunks(blob.content[start : end + 1], server.rate):
                cut = server.cut_after
                if cut is not None and record.bytes + len(chunk) > cut:
                    server.cut_after = None
                    self.wfile.write(chunk[: cut - record.bytes])
                    record.bytes = cut
                    self.close_connection = True
                    return
                self.wfile.write(chunk)
                record.bytes += len(chunk)

        def _safely(self) -> None:
            try:
                self._handle()
            except OSError:  # the client went away (an interrupted download)
                self.close_connection = True

        do_GET = do_HEAD = _safely

    return Handler


def _chunks(body: bytes, rate: float | None) -> Iterator[bytes]:
    """``body`` in pieces, at ``rate`` bytes a second if given."""
    size = 65536 if not rate else max(1024, min(65536, int(rate / 20)))
    for offset in range(0, len(body), size):
        piece = body[offset : offset + size]
        yield piece
        if rate:
            time.sleep(len(piece) / rate)
