"""GPUStack 2.3.0 from PyPI in a venv of its own, shared by the tests that run GPUStack's code.

Two users: the oracle (``tests/gpustack_oracle.py``), which executes GPUStack's functions
in one subprocess, and the real server (:mod:`testing.gpustack_server`). GPUStack's
dependencies are not fleetform's, so neither imports it into the test process.

The venv is built on first use into ``<cache>/gpustack-2.3.0-venv-<key>`` (``<cache>`` is
``$FLEETFORM_TEST_CACHE`` or ``/var/cache/fleetform-test``, as for the systemd-host image;
``<key>`` hashes the pinned requirements, this Python's version and the recipe):
``python -m venv`` + ``pip install gpustack==2.3.0 gpustack-runtime==0.2.6`` (about 80 s
and 920 MB). It is built in a temporary folder beside it and renamed into place only once
GPUStack imports in it, so a half-built venv is never used; a lock file serialises
concurrent builders. Only ``<venv>/bin/python`` is used after the rename (the scripts in
``bin/`` keep the temporary path in their ``#!`` lines).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from testing.engines import REQUIRE_TOOLS_ENV
from testing.systemd_hosts import cache_dir_default

GPUSTACK_VERSION = "2.3.0"
GPUSTACK_RUNTIME_VERSION = "0.2.6"
REQUIREMENTS = (f"gpustack=={GPUSTACK_VERSION}", f"gpustack-runtime=={GPUSTACK_RUNTIME_VERSION}")
# The recipe version and the marker are part of the cache's identity: the oracle built
# the first venvs with them.
_RECIPE_VERSION = "1"
_MARKER = ".fleetform-oracle"
# pip: retries per request and a per-request timeout; the whole install is tried twice.
_PIP_OPTIONS = ("--retries", "8", "--timeout", "60", "--no-input", "--disable-pip-version-check")
_INSTALL_ATTEMPTS = 2
_INSTALL_TIMEOUT = 1800
_LOG_TAIL = 40
# What GPUStack's code sees of the environment: nothing of this process's but these.
_BASE_ENV = {
    "LANG": "C.UTF-8",
    "PYTHONNOUSERSITE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}

_failure: list[str] = []


class GPUStackUnavailable(RuntimeError):
    """The GPUStack venv could not be built (no PyPI, no disk, ...)."""


def venv_key() -> str:
    recipe = json.dumps([_RECIPE_VERSION, REQUIREMENTS, list(sys.version_info[:2])], sort_keys=True)
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def venv_dir(cache_dir: Path | None = None) -> Path:
    cache_dir = cache_dir or cache_dir_default()
    return cache_dir / f"gpustack-{GPUSTACK_VERSION}-venv-{venv_key()}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def gpustack_env(home: Path) -> dict[str, str]:
    """An environment for GPUStack's code with ``home`` (made here) as its ``HOME``: no
    variable of this process leaks into it (a ``GPUSTACK_*`` one would configure it)."""
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": tempfile.gettempdir(),
        "GPUSTACK_RUNTIME_DEPLOY_CDI_SPECS_DIRECTORY": str(home / "cdi"),
        **_BASE_ENV,
    }


def text_tail(text: str) -> str:
    return "\n".join(text.splitlines()[-_LOG_TAIL:])


def _usable(venv: Path) -> bool:
    # exists() follows bin/python's symlink: a venv whose base Python is gone is unusable.
    return (venv / _MARKER).is_file() and venv_python(venv).exists()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(tmp)],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        python = str(venv_python(tmp))
        log = ""
        for attempt in range(1, _INSTALL_ATTEMPTS + 1):
            proc = subprocess.run(
                [python, "-m", "pip", "install", *_PIP_OPTIONS, *REQUIREMENTS],
                capture_output=True,
                text=True,
                timeout=_INSTALL_TIMEOUT,
            )
            log = proc.stdout + proc.stderr
            if proc.returncode == 0:
                break
            if attempt < _INSTALL_ATTEMPTS:
                time.sleep(5)
        else:
            raise GPUStackUnavailable(
                f"pip install {' '.join(REQUIREMENTS)} failed {_INSTALL_ATTEMPTS} times "
                f"(PyPI unreachable?); last output:\n{text_tail(log)}"
            )
        check = subprocess.run(
            [
                python,
                "-c",
                "import gpustack.worker.backends.custom, gpustack.routes.inference_backend, "
                "gpustack_runtime.deployer.docker",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=gpustack_env(tmp / ".home"),
        )
        if check.returncode != 0:
            raise GPUStackUnavailable(
                f"GPUStack {GPUSTACK_VERSION} installed but does not import:\n"
                f"{text_tail(check.stderr)}"
            )
        (tmp / _MARKER).write_text(json.dumps(REQUIREMENTS) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        os.rename(tmp, target)
    except subprocess.CalledProcessError as e:
        raise GPUStackUnavailable(f"{e.cmd[:3]} failed:\n{text_tail(e.stdout + e.stderr)}") from e
    except subprocess.TimeoutExpired as e:
        raise GPUStackUnavailable(f"building the GPUStack venv timed out: {e.cmd[:4]}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_venv(cache_dir: Path | None = None) -> Path:
    """The GPUStack venv, built first if needed; raises :class:`GPUStackUnavailable`.

    A failed build is remembered for the rest of the process: it is not retried per test.
    """
    target = venv_dir(cache_dir)
    if _usable(target):
        return target
    if _failure:
        raise GPUStackUnavailable(_failure[0])
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _lock(target.parent / f"{target.name}.lock"):
            if not _usable(target):
                if target.exists():  # a marker-less or broken leftover
                    shutil.rmtree(target)
                _build(target)
    except GPUStackUnavailable as e:
        _failure.append(str(e))
        raise
    except OSError as e:
        _failure.append(f"cannot build the GPUStack venv in {target.parent}: {e}")
        raise GPUStackUnavailable(_failure[0]) from e
    return target


def require_venv(what: str, cache_dir: Path | None = None) -> Path:
    """For tests: the venv, or skip — or fail under ``FLEETFORM_REQUIRE_TOOLS=1`` (CI);
    ``what`` names the user in the message ("the GPUStack 2.3.0 oracle")."""
    import pytest

    try:
        return ensure_venv(cache_dir)
    except GPUStackUnavailable as e:
        message = f"{what} is unavailable: {e}"
        if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_TOOLS_ENV}=1)")
        pytest.skip(message)
        raise  # unreachable: skip raises
