"""A fake of the slice of GitHub's REST API that the workflows' scripts call, on loopback.

The workflows (``.github/workflows/``) post the pull-request comment and keep the drift
issue with ``actions/github-script``. Under ``act`` that action is replaced by a stand-in
(``tests/standins/github-script``) that runs the workflow's script with the real GitHub
client (``@actions/github``'s Octokit, from npm) pointed at this server instead of
api.github.com. So the scripts' requests are real HTTP, and this server keeps the state
they act on: comments per issue, issues with labels and state.

It serves exactly the endpoints below, as GitHub documents them; any other request, or one
without the run's token, is answered 404/401 *and* recorded in :attr:`FakeGitHub.unexpected`,
which the tests assert is empty — a fake that fails loudly.

    GET    /repos/{owner}/{repo}/issues/{number}/comments
    POST   /repos/{owner}/{repo}/issues/{number}/comments
    PATCH  /repos/{owner}/{repo}/issues/comments/{id}
    GET    /repos/{owner}/{repo}/issues?state=&labels=
    POST   /repos/{owner}/{repo}/issues
    PATCH  /repos/{owner}/{repo}/issues/{number}
    GET    /repos/{owner}/{repo}/actions/workflows/{file}/runs?branch=&status=success
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

BOT = {"login": "github-actions[bot]", "id": 41898282, "type": "Bot"}


@dataclass
class Comment:
    id: int
    issue: int
    body: str
    user: dict[str, Any] = field(default_factory=lambda: dict(BOT))

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "body": self.body, "user": self.user}


@dataclass
class Issue:
    number: int
    title: str
    body: str
    labels: list[str]
    state: str = "open"
    state_reason: str | None = None

    def json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "title": self.title,
            "body": self.body,
            "labels": [{"name": name} for name in self.labels],
            "state": self.state,
            "state_reason": self.state_reason,
        }


class FakeGitHub:
    """The server, its state and its request log. ``with FakeGitHub(...) as fake:``."""

    def __init__(self, repository: str, token: str, address: str = "127.0.0.1") -> None:
        self.repository = repository
        self.token = token
        self.comments: dict[int, Comment] = {}
        self.issues: dict[int, Issue] = {}
        # Workflow runs the test says happened, newest last: (workflow file, branch,
        # head commit, conclusion).
        self.runs: list[tuple[str, str, str, str]] = []
        self.requests: list[tuple[str, str]] = []
        self.unexpected: list[str] = []
        self._next_id = 1000
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((address, 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeGitHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- state the tests set up and read ---

    def add_comment(self, issue: int, body: str, user: dict[str, Any] | None = None) -> Comment:
        with self._lock:
            comment = Comment(self._new_id(), issue, body, user or dict(BOT))
            self.comments[comment.id] = comment
            return comment

    def comments_on(self, issue: int) -> list[Comment]:
        return sorted((c for c in self.comments.values() if c.issue == issue), key=lambda c: c.id)

    def issues_labelled(self, label: str) -> list[Issue]:
        return sorted(
            (i for i in self.issues.values() if label in i.labels), key=lambda i: i.number
        )

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # --- the API ---

    def answer(self, method: str, target: str, payload: Any) -> tuple[int, Any]:
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        prefix = f"/repos/{self.repository}/issues"
        path = parts.path
        workflow = re.fullmatch(rf"/repos/{self.repository}/actions/workflows/([\w.-]+)/runs", path)
        if workflow and method == "GET":
            found = [
                {"id": 9000 + i, "head_sha": sha, "head_branch": branch, "conclusion": end}
                for i, (file, branch, sha, end) in reversed(list(enumerate(self.runs)))
                if file == workflow[1]
                and branch == query.get("branch", branch)
                and end == query.get("status", end)
            ][: int(query.get("per_page", 30))]
            return 200, {"total_count": len(found), "workflow_runs": found}
        if not path.startswith(prefix):
            return 404, {"message": "Not Found"}
        rest = path[len(prefix) :]
        with self._lock:
            if m := re.fullmatch(r"/(\d+)/comments", rest):
                issue = int(m[1])
                if method == "GET":
                    return 200, [c.json() for c in self.comments_on(issue)]
                if method == "POST":
                    comment = Comment(self._new_id(), issue, str(payload["body"]))
                    self.comments[comment.id] = comment
                    return 201, comment.json()
            if (m := re.fullmatch(r"/comments/(\d+)", rest)) and method == "PATCH":
                found = self.comments.get(int(m[1]))
                if found is None:
                    return 404, {"message": "Not Found"}
                if found.user.get("type") != "Bot":
                    return 403, {"message": "Resource not accessible by integration"}
                found.body = str(payload["body"])
                return 200, found.json()
            if rest == "" and method == "GET":
                labels = {x for x in query.get("labels", "").split(",") if x}
                state = query.get("state", "open")
                listed = [
                    i.json()
                    for i in sorted(self.issues.values(), key=lambda i: i.number)
                    if (state == "all" or i.state == state) and labels <= set(i.labels)
                ]
                return 200, listed
            if rest == "" and method == "POST":
                number = max([*self.issues, 0]) + 1
                issue = Issue(
                    number, str(payload["title"]), str(payload.get("body") or ""),
                    [str(x) for x in payload.get("labels") or []],
                )  # fmt: skip
                self.issues[number] = issue
                return 201, issue.json()
            if (m := re.fullmatch(r"/(\d+)", rest)) and method == "PATCH":
                found_issue = self.issues.get(int(m[1]))
                if found_issue is None:
                    return 404, {"message": "Not Found"}
                if "body" in payload:
                    found_issue.body = str(payload["body"])
                if "state" in payload:
                    found_issue.state = str(payload["state"])
                    found_issue.state_reason = payload.get("state_reason")
                return 200, found_issue.json()
        return 404, {"message": "Not Found"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                record = f"{self.command} {self.path}"
                fake.requests.append((self.command, self.path))
                if self.headers.get("Authorization") != f"token {fake.token}":
                    fake.unexpected.append(f"{record}: no or wrong token")
                    code, answer = 401, {"message": "Bad credentials"}
                else:
                    try:
                        payload = json.loads(raw) if raw else {}
                        code, answer = fake.answer(self.command, self.path, payload)
                    except (ValueError, KeyError, TypeError) as e:
                        code, answer = 422, {"message": f"unreadable request: {e}"}
                    if code >= 400:
                        fake.unexpected.append(f"{record}: {code} {answer['message']}")
                data = json.dumps(answer).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the request log is fake.requests

        return Handler
