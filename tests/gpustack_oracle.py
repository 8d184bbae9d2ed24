"""An oracle for tests: what container GPUStack 2.3.0 itself would run for a deployment.

``run(cases)`` answers, for each case (a GPUStack backend YAML as written, a model
deployment, a worker's GPUs), which container GPUStack 2.3.0 with gpustack-runtime 0.2.6
and its Docker deployer would create — computed by *executing GPUStack's code*, never by
re-implementing it. The code runs in a venv of its own (GPUStack's dependencies are not
fleetform's) through one subprocess, ``tests/oracle/gpustack_run.py``, which documents
exactly which GPUStack function produces what and what it fakes (no server, no daemon,
no network: it opens no sockets).

The venv
--------
Built on first use into ``<cache>/gpustack-2.3.0-venv-<key>`` (``<cache>`` is
``$FLEETFORM_TEST_CACHE`` or ``/var/cache/fleetform-test``, as for the systemd-host
image; ``<key>`` hashes the pinned requirements, this Python's version and the recipe):
``python -m venv`` + ``pip install gpustack==2.3.0 gpustack-runtime==0.2.6`` from PyPI
(about 80 s and 920 MB). It is built in a temporary folder beside it and renamed into
place only once GPUStack imports in it, so a half-built venv is never used; a lock file
serialises concurrent builders. Only ``<venv>/bin/python`` is used after the rename (the
scripts in ``bin/`` keep the temporary path in their ``#!`` lines).

Case format (``run``)
---------------------
``{"op": "deploy", ...}`` (the default op)::

    id              anything; echoed back in the result
    backend         the backend YAML mapping exactly as written; it travels as JSON and
                    is dumped back to YAML text for GPUStack, so pass "backend_yaml": the
                    text instead where YAML-only typing matters (an unquoted version key
                    like 1.10 is the float 1.1 to GPUStack's yaml.safe_load). Omitted/None:
                    a "Custom" deployment whose image and run command are on the model
                    (GPUStack synthesises the backend).
    import          "yaml" (default): Add Backend -> YAML import (the from-yaml API, which
                    requires backend names ending in -custom); "community": a marketplace
                    card (the community-source reconcile; the card is then enabled)
    model           the deployment as the create API takes it (ModelCreate fields): name,
                    backend_version, run_command, image_name, env, backend_parameters,
                    source + huggingface_repo_id/.../local_path, replicas, ...; "backend"
                    defaults to the backend's name, a source to local_path=model_path
    model_path      the resolved model path on the worker (default "/models/model")
    port            the instance's port (default 40000)
    worker_ip       default "10.0.0.2"
    framework       cuda | rocm | cann | musa | corex | maca | dtk | neuware | hggc, or
                    "cpu"/None for a worker without GPUs (default "cuda")
    host_gpus       GPUs of that vendor on the worker, indices 0..n-1 (default 1)
    gpu_indexes     the GPUs the scheduler gave the replica (default [0])
    runtime_version, arch_family   the GPU devices' (default None)
    data_dir        the worker's data dir, for "{data_dir}" in backend_parameters
                    (default "/var/lib/gpustack")
    worker_container  what the worker's own container carries that the mirrored
                    deployment copies: {"runtime", "env", "image_env", "mounts" (Docker
                    inspect form), "devices", "device_requests", "cap_add", "group_add"};
                    default: nothing
    mirrored        true (default): GPUStack's container image
                    (GPUSTACK_RUNTIME_DEPLOY_MIRRORED_DEPLOYMENT=true): the container env
                    starts empty, the model directory is not mounted. false: a worker
                    installed on the host; the container env starts from
                    filter_env_vars(worker_env) and dirname(model_path) is bind-mounted.
    worker_env      with "mirrored": false, the worker process's environment (default {})

Result of a deploy: ``{"error": str, "stage": "backend"|"model"|"init"|"start", ...}``
when GPUStack refuses or fails, else::

    version         the version GPUStack resolves for model.backend_version
                    (InferenceBackend.get_version_config; None when it resolves none,
                    with "version_error")
    backend_version model.backend_version after the start (written back when empty)
    image           the image the run container is created from
    entrypoint      Docker entrypoint (list) or None: the image's own
    args            Docker command (list)
    env             the run container's final environment, visible-device variables
                    and CUDA_DEVICE_ORDER included
    privileged, shm_size (bytes or None), host_ipc, ipc_mode (the pause container's:
                    "host" or "shareable"; the run container joins it), host_network,
                    network_mode (the pause container's: "host"), user ("uid[:gid]" or
                    None), group_add, devices, device_requests, mounts, runtime,
                    restart_policy, healthcheck (Docker's; GPUStack mutes the image's)
    health_check_path  the path the worker polls, or None (then "always ready")
    health_check_url   the URL GPUStack's readiness probe would GET, or None
    injected_backend_parameters  what GPUStack reports as injected (not the user's)
    model_writes    ModelUpdate bodies the worker sent back (version write-back)
    create_options, pause_create_options  the full docker-py create() keywords
    workload_plan   the WorkloadPlan CustomServer handed to create_workload
    warnings        GPUStack's WARNING+ log lines for this case (e.g. unresolved
                    placeholders)

Other ops: ``{"op": "compare_versions", "a", "b"}`` -> ``{"result": -1|0|1}``;
``{"op": "latest_version", "versions": [...], "default_version"?, "requested"?}`` ->
``{"result": str|None}`` (``resolve_target_version`` of a custom backend);
``{"op": "parse_backend", "backend"|"backend_yaml", "import"?}`` -> ``{"backend": the
stored row}`` or an error.
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from testing.engines import REQUIRE_TOOLS_ENV
from testing.systemd_hosts import cache_dir_default

GPUSTACK_VERSION = "2.3.0"
GPUSTACK_RUNTIME_VERSION = "0.2.6"
REQUIREMENTS = (f"gpustack=={GPUSTACK_VERSION}", f"gpustack-runtime=={GPUSTACK_RUNTIME_VERSION}")
SCRIPT = Path(__file__).resolve().parent / "oracle" / "gpustack_run.py"
CATALOGUE = Path("gpustack", "assets", "community-inference-backends.yaml")
_RECIPE_VERSION = "1"
_MARKER = ".fleetform-oracle"
# pip: retries per request and a per-request timeout; the whole install is tried twice.
_PIP_OPTIONS = ("--retries", "8", "--timeout", "60", "--no-input", "--disable-pip-version-check")
_INSTALL_ATTEMPTS = 2
_INSTALL_TIMEOUT = 1800
_LOG_TAIL = 40
# The oracle's own environment: nothing of this process's (so the worker's os.environ
# cannot reach a container) but these settings. See tests/oracle/gpustack_run.py.
_ORACLE_ENV = {
    "LANG": "C.UTF-8",
    "PYTHONNOUSERSITE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "GPUSTACK_RUNTIME_DEPLOY_MIRRORED_DEPLOYMENT": "true",
    "GPUSTACK_RUNTIME_DEPLOY_MIRRORED_NAME": "gpustack-worker",
}

_failure: list[str] = []


class OracleUnavailable(RuntimeError):
    """The GPUStack venv could not be built (no PyPI, no disk, ...)."""


class OracleError(RuntimeError):
    """The oracle process failed (a bug in the harness, not a GPUStack answer)."""


# --- the venv --------------------------------------------------------------------------


def venv_key() -> str:
    recipe = json.dumps(
        [_RECIPE_VERSION, REQUIREMENTS, list(sys.version_info[:2])], sort_keys=True
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def venv_dir(cache_dir: Path | None = None) -> Path:
    cache_dir = cache_dir or cache_dir_default()
    return cache_dir / f"gpustack-{GPUSTACK_VERSION}-venv-{venv_key()}"


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _usable(venv: Path) -> bool:
    # exists() follows bin/python's symlink: a venv whose base Python is gone is unusable.
    return (venv / _MARKER).is_file() and _venv_python(venv).exists()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(text: str) -> str:
    return "\n".join(text.splitlines()[-_LOG_TAIL:])


def _build(target: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(tmp)],
            check=True, capture_output=True, text=True, timeout=300,
        )
        python = str(_venv_python(tmp))
        log = ""
        for attempt in range(1, _INSTALL_ATTEMPTS + 1):
            proc = subprocess.run(
                [python, "-m", "pip", "install", *_PIP_OPTIONS, *REQUIREMENTS],
                capture_output=True, text=True, timeout=_INSTALL_TIMEOUT,
            )
            log = proc.stdout + proc.stderr
            if proc.returncode == 0:
                break
            if attempt < _INSTALL_ATTEMPTS:
                time.sleep(5)
        else:
            raise OracleUnavailable(
                f"pip install {' '.join(REQUIREMENTS)} failed {_INSTALL_ATTEMPTS} times "
                f"(PyPI unreachable?); last output:\n{_tail(log)}"
            )
        check = subprocess.run(
            [python, "-c", "import gpustack.worker.backends.custom, "
             "gpustack.routes.inference_backend, gpustack_runtime.deployer.docker"],
            capture_output=True, text=True, timeout=300, env=_oracle_env(tmp),
        )
        if check.returncode != 0:
            raise OracleUnavailable(
                f"GPUStack {GPUSTACK_VERSION} installed but does not import:\n"
                f"{_tail(check.stderr)}"
            )
        (tmp / _MARKER).write_text(json.dumps(REQUIREMENTS) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        os.rename(tmp, target)
    except subprocess.CalledProcessError as e:
        raise OracleUnavailable(f"{e.cmd[:3]} failed:\n{_tail(e.stdout + e.stderr)}") from e
    except subprocess.TimeoutExpired as e:
        raise OracleUnavailable(f"building the GPUStack venv timed out: {e.cmd[:4]}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_venv(cache_dir: Path | None = None) -> Path:
    """The GPUStack venv, built first if needed; raises :class:`OracleUnavailable`.

    A failed build is remembered for the rest of the process: it is not retried per test.
    """
    target = venv_dir(cache_dir)
    if _usable(target):
        return target
    if _failure:
        raise OracleUnavailable(_failure[0])
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _lock(target.parent / f"{target.name}.lock"):
            if not _usable(target):
                if target.exists():  # a marker-less or broken leftover
                    shutil.rmtree(target)
                _build(target)
    except OracleUnavailable as e:
        _failure.append(str(e))
        raise
    except OSError as e:
        _failure.append(f"cannot build the GPUStack venv in {target.parent}: {e}")
        raise OracleUnavailable(_failure[0]) from e
    return target


def require_oracle(cache_dir: Path | None = None) -> Path:
    """For tests: the venv, or skip — or fail under ``FLEETFORM_REQUIRE_TOOLS=1`` (CI)."""
    import pytest

    try:
        return ensure_venv(cache_dir)
    except OracleUnavailable as e:
        message = f"the GPUStack {GPUSTACK_VERSION} oracle is unavailable: {e}"
        if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
            pytest.fail(f"{message} ({REQUIRE_TOOLS_ENV}=1)")
        pytest.skip(message)
        raise  # unreachable: skip raises


def site_packages(venv: Path | None = None) -> Path:
    venv = venv or ensure_venv()
    found = sorted(venv.glob("lib/python3*/site-packages"))
    if not found:
        raise OracleError(f"no site-packages in {venv}")
    return found[0]


# --- asking GPUStack -------------------------------------------------------------------


def catalogue(venv: Path | None = None) -> list[dict[str, Any]]:
    """GPUStack 2.3.0's marketplace: its packaged ``community-inference-backends.yaml``."""
    text = (site_packages(venv) / CATALOGUE).read_text(encoding="utf-8")
    backends = yaml.safe_load(text)
    if not isinstance(backends, list):
        raise OracleError(f"{CATALOGUE} is not a list of backends")
    return backends


def _oracle_env(venv: Path) -> dict[str, str]:
    home = venv / ".home"
    home.mkdir(exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TMPDIR": tempfile.gettempdir(),
        "GPUSTACK_RUNTIME_DEPLOY_CDI_SPECS_DIRECTORY": str(home / "cdi"),
        **_ORACLE_ENV,
    }


def run(cases: Sequence[dict[str, Any]], venv: Path | None = None,
        timeout: float | None = None) -> list[dict[str, Any]]:
    """One oracle process for all ``cases``; one result per case, in order."""
    venv = venv or ensure_venv()
    request = json.dumps({"cases": list(cases)})
    try:
        proc = subprocess.run(
            [str(_venv_python(venv)), str(SCRIPT)],
            input=request, capture_output=True, text=True, env=_oracle_env(venv),
            timeout=timeout if timeout is not None else 120 + 0.5 * len(cases),
        )
    except subprocess.TimeoutExpired as e:
        raise OracleError(f"the GPUStack oracle timed out after {e.timeout} s") from e
    if proc.returncode != 0:
        raise OracleError(
            f"the GPUStack oracle exited with {proc.returncode}:\n{_tail(proc.stderr)}"
        )
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise OracleError(
            f"the GPUStack oracle wrote no JSON ({e}):\n{_tail(proc.stdout + proc.stderr)}"
        ) from e
    results = answer.get("results")
    if not isinstance(results, list) or len(results) != len(cases):
        raise OracleError(f"expected {len(cases)} results, got {answer!r:.500}")
    return results


def compare_versions_case(a: str, b: str) -> dict[str, Any]:
    return {"op": "compare_versions", "a": a, "b": b}


def latest_version_case(versions: Sequence[str]) -> dict[str, Any]:
    return {"op": "latest_version", "versions": list(versions)}


def compare_versions(a: str, b: str, venv: Path | None = None) -> int:
    """``gpustack_runtime.deployer.__utils__.compare_versions(a, b)``: -1, 0 or 1."""
    return int(run([compare_versions_case(a, b)], venv)[0]["result"])


def latest_version(versions: Sequence[str], venv: Path | None = None) -> str | None:
    """The version a custom backend with these versions and no default resolves to
    (``InferenceBackend.resolve_target_version``)."""
    result = run([latest_version_case(versions)], venv)[0]["result"]
    return None if result is None else str(result)
