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
GPUStack's own venv, shared with the real-server harness: see :mod:`testing.gpustack_venv`
(built on first use into ``<cache>/gpustack-2.3.0-venv-<key>``, about 80 s and 920 MB).

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

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from testing.gpustack_venv import (
    GPUSTACK_VERSION,
    GPUStackUnavailable,
    ensure_venv,
    gpustack_env,
    require_venv,
    text_tail,
    venv_python,
)

SCRIPT = Path(__file__).resolve().parent / "oracle" / "gpustack_run.py"
CATALOGUE = Path("gpustack", "assets", "community-inference-backends.yaml")
# The oracle's own environment: gpustack_env (nothing of this process's, so the worker's
# os.environ cannot reach a container) and these settings. See tests/oracle/gpustack_run.py.
_ORACLE_ENV = {
    "GPUSTACK_RUNTIME_DEPLOY_MIRRORED_DEPLOYMENT": "true",
    "GPUSTACK_RUNTIME_DEPLOY_MIRRORED_NAME": "gpustack-worker",
}

# The GPUStack venv could not be built (no PyPI, no disk, ...).
OracleUnavailable = GPUStackUnavailable


class OracleError(RuntimeError):
    """The oracle process failed (a bug in the harness, not a GPUStack answer)."""


# --- the venv --------------------------------------------------------------------------


def require_oracle(cache_dir: Path | None = None) -> Path:
    """For tests: the venv, or skip — or fail under ``FLEETFORM_REQUIRE_TOOLS=1`` (CI)."""
    return require_venv(f"the GPUStack {GPUSTACK_VERSION} oracle", cache_dir)


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
    return {**gpustack_env(venv / ".home"), **_ORACLE_ENV}


def run(cases: Sequence[dict[str, Any]], venv: Path | None = None,
        timeout: float | None = None) -> list[dict[str, Any]]:
    """One oracle process for all ``cases``; one result per case, in order."""
    venv = venv or ensure_venv()
    request = json.dumps({"cases": list(cases)})
    try:
        proc = subprocess.run(
            [str(venv_python(venv)), str(SCRIPT)],
            input=request, capture_output=True, text=True, env=_oracle_env(venv),
            timeout=timeout if timeout is not None else 120 + 0.5 * len(cases),
        )
    except subprocess.TimeoutExpired as e:
        raise OracleError(f"the GPUStack oracle timed out after {e.timeout} s") from e
    if proc.returncode != 0:
        raise OracleError(
            f"the GPUStack oracle exited with {proc.returncode}:\n{text_tail(proc.stderr)}"
        )
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise OracleError(
            f"the GPUStack oracle wrote no JSON ({e}):\n{text_tail(proc.stdout + proc.stderr)}"
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
