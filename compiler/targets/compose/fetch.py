"""Fetch a hub model onto one Docker host, on the host itself: a short-lived helper
container (``hub.helper_image``: python3 with huggingface_hub or modelscope-hub) with the host's
``model_dir`` mounted runs :mod:`compiler.targets.compose.fetch_helper`, which downloads
into a partial folder, verifies every file against the sizes and hashes the hub
publishes, and only then moves the folder into place. A record container (never
started, like the lock) then says which revision and files the folder holds: what the
next plan reads.

The token (``HF_TOKEN``, or ``MODELSCOPE_API_TOKEN`` for a ModelScope model, of apply's
environment) reaches the helper's environment only:
never a label, the record, the plan or a message; the helper is removed when it ends.
A helper left running by an interrupted apply is removed by the next fetch, which
resumes from the partial folder.
"""

from __future__ import annotations

import json
import os
import time
from importlib import resources
from typing import TYPE_CHECKING, Any

from compiler.apply import Options, Progress, StepFailed
from compiler.errors import FleetformError
from compiler.hub import DEFAULT_ENDPOINT, MANIFEST, TOKEN_VARIABLE, HubModel, stamp
from compiler.labels import (
    FETCH,
    MODEL,
    MODEL_COMMIT,
    MODEL_FOLDER,
    MODEL_KEY,
    MODEL_REPO,
    MODEL_STAMP,
    PROJECT,
    label,
)
from compiler.plan import Step
from compiler.remote.engine import Engine, EngineError, demultiplex
from compiler.targets.compose import lock
from compiler.targets.compose.fetch_helper import redact

if TYPE_CHECKING:
    from compiler.targets.compose.apply import DockerExecutor

POLL_SECONDS = 1.0
REPORT_SECONDS = 5.0  # a progress line this often
IDLE_SECONDS = 1800  # a download that gains no byte for this long has stalled
MOUNT = "/models"  # where the helper sees the host's model_dir


def fetch_model(executor: DockerExecutor, model: HubModel, project: str, commit: str = "") -> None:
    """Make ``model``'s folder present and verified on the executor's host, and record it.
    ``commit``: the one to fetch (a changed folder restored), else the revision's newest."""
    engine, options = executor.engine, executor.options
    prefix = options.label_prefix
    name = f"fleetform-fetch-{project}-{model.key}"
    # Helpers an interrupted apply left (this host is locked: none is another apply's).
    # Their partial downloads stay, and the next helper keeps what is whole.
    helpers = json.dumps({"label": [label(prefix, FETCH), f"{label(prefix, PROJECT)}={project}"]})
    for left in engine.get("/containers/json", all=1, filters=helpers):
        executor.remove(left["Id"])
    executor.ensure_image(options.helper_image)
    variable = TOKEN_VARIABLE[model.source]
    token = os.environ.get(variable, "")
    env = ["PYTHONUNBUFFERED=1", *_hub_env(model, options)]
    if token:
        env.append(f"{variable}={token}")
    arguments = {
        "source": model.source,
        "root": MOUNT,
        "repo_id": model.repo_id,
        "revision": commit or model.revision,
        "patterns": list(model.patterns),
    }
    body = {
        "Image": options.helper_image,
        "Cmd": ["python3", "-c", _script(), json.dumps(arguments)],
        "Env": env,
        "Labels": {label(prefix, PROJECT): project, label(prefix, FETCH): model.key},
        "HostConfig": {**_model_dir_mount(model.model_dir), "NetworkMode": "host"},
    }
    try:
        created = str(engine.post("/containers/create", body, name=name)["Id"])
    except EngineError as error:
        raise StepFailed(f"cannot create the model helper: {error.message}") from None
    try:
        engine.post(f"/containers/{created}/start")
        commit = _watch(executor, created, model, token)
        stamp = engine_stamp(engine, created, model.repo_id)
    finally:
        executor.remove(created)
    _record(executor, model, project, commit, stamp)


def _hub_env(model: HubModel, options: Options) -> list[str]:
    """The helper's settings for its hub: the endpoint (the one the plan showed), quiet,
    no time limit but fleetform's own stall watch (IDLE_SECONDS)."""
    if model.source == "model_scope":
        endpoint = options.modelscope_endpoint or DEFAULT_ENDPOINT["model_scope"]
        return [
            f"MODELSCOPE_ENDPOINT={endpoint}",
            "TQDM_DISABLE=1",
            "MODELSCOPE_DOWNLOAD_INTRA_CLOUD=false",  # no probe of the hub's cloud regions
            "MODELSCOPE_DOWNLOAD_FILE_LOCK=false",  # the host's lock is fleetform's
            f"MODELSCOPE_DOWNLOAD_TOTAL_TIMEOUT={30 * 24 * 3600}",  # its default: 1 h a file
        ]
    env = [
        "HF_HUB_DISABLE_TELEMETRY=1",
        "HF_HUB_DISABLE_PROGRESS_BARS=1",
        f"HF_HOME={MOUNT}/.fleetform-partial/.hf-home",  # its caches outlive the helper
    ]
    if options.hub_endpoint:  # a mirror: plain HTTP downloads (mirrors serve no Xet storage)
        env += [f"HF_ENDPOINT={options.hub_endpoint}", "HF_HUB_DISABLE_XET=1"]
    return env


def engine_stamp(engine: Engine, container: str, repo_id: str) -> str:
    """The model folder's stamp (:func:`compiler.hub.stamp`) as ``container`` sees it at
    MOUNT (the helper, or a record: never started, it still has the bind); "" when the
    folder is gone."""
    try:
        folder = engine.stat(container, f"{MOUNT}/{repo_id}")
        if folder is None:
            return ""
        manifest = engine.stat(container, f"{MOUNT}/{repo_id}/{MANIFEST}") or {}
    except EngineError:  # model_dir itself gone: the engine cannot mount it
        return ""
    return stamp(str(folder.get("mtime", "")), str(manifest.get("mtime", "")))


def fetch_on_host(
    base_url: str,
    steps: list[Step],
    models: dict[str, HubModel],
    project: str,
    options: Options,
    progress: Progress,
) -> None:
    """Carry out fetch ``steps`` through the engine at ``base_url``: for a host whose
    replicas the engine runs under another manager (a systemd host's own docker)."""
    from compiler.targets.compose.apply import DockerExecutor

    engine = Engine(base_url)
    try:
        executor = DockerExecutor(engine, options, progress, project)
        for step in steps:
            fetch_model(executor, models[step.model_key], project, step.current)
    finally:
        engine.close()


def _watch(executor: DockerExecutor, container: str, model: HubModel, token: str) -> str:
    """Wait for the helper to end, saying its progress; the commit it fetched."""
    engine = executor.engine
    last: tuple[float, int] | None = None  # (when, bytes) of the last progress shown
    shown = gained = time.monotonic()
    while True:
        state = engine.get(f"/containers/{container}/json")["State"]
        if state.get("Status") in ("exited", "dead"):
            break
        now = time.monotonic()
        if now - shown >= REPORT_SECONDS:
            shown = now
            progress = _progress(_last(_lines(executor, container, 5), "progress "))
            if progress is not None:
                have, total = progress
                rate = (have - last[1]) / (now - last[0]) if last else 0.0
                if last is None or have > last[1]:
                    gained = now
                last = (now, have)
                executor.progress(
                    f"fetching {model.title}: {_mb(have)} of {_mb(total)}"
                    + (f", {_mb(rate)}/s" if rate > 0 else "")
                )
        if now - gained > IDLE_SECONDS:
            raise StepFailed(f"the download made no progress for {IDLE_SECONDS // 60} min")
        time.sleep(POLL_SECONDS)
    lines = [redact(line, token) for line in _lines(executor, container, 20)]
    code = state.get("ExitCode")
    if code != 0:
        raise StepFailed(_last(lines, "error: ") or f"the model helper exited with code {code}")
    for line in lines:
        if line.startswith("note: "):
            executor.progress(line.removeprefix("note: "))
    done = _last(lines, "done ")
    if not done:
        raise StepFailed("the model helper ended without saying what it fetched")
    commit = done.split()[0]
    executor.progress(f"fetched {model.title} (commit {commit[:12]}) into {model.folder}")
    return commit


def _record(
    executor: DockerExecutor, model: HubModel, project: str, commit: str, stamp: str
) -> None:
    """Replace the folder's records (another revision's) with this fetch's."""
    engine, prefix = executor.engine, executor.options.label_prefix
    folder_label = f"{label(prefix, MODEL_FOLDER)}={model.folder}"
    filters = json.dumps({"label": [folder_label, f"{label(prefix, PROJECT)}={project}"]})
    for old in engine.get("/containers/json", all=1, filters=filters):
        executor.remove(old["Id"])
    lock.ensure_lock_image(engine)
    body: dict[str, Any] = {
        "Image": lock.LOCK_IMAGE,
        "Cmd": ["fleetform-model"],
        "Labels": {
            label(prefix, PROJECT): project,
            label(prefix, MODEL_KEY): model.key,
            label(prefix, MODEL): model.title,
            label(prefix, MODEL_FOLDER): model.folder,
            label(prefix, MODEL_COMMIT): commit,
            label(prefix, MODEL_REPO): model.repo_id,
            label(prefix, MODEL_STAMP): stamp,
        },
        "NetworkDisabled": True,
        # model_dir mounted (never started, so never used): the next plan looks at the
        # folder through it (:func:`engine_stamp`).
        "HostConfig": _model_dir_mount(model.model_dir),
    }
    try:
        engine.post("/containers/create", body, name=f"fleetform-model-{project}-{model.key}")
    except EngineError as error:
        raise StepFailed(f"fetched, but cannot record {model.title}: {error.message}") from None


def _lines(executor: DockerExecutor, container: str, tail: int) -> list[str]:
    try:
        raw = executor.engine.read(f"/containers/{container}/logs", stdout=1, tail=tail)
    except FleetformError:
        return []
    return demultiplex(raw).decode("utf-8", "replace").splitlines()


def _last(lines: list[str], prefix: str) -> str:
    found = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
    return found[-1].strip() if found else ""


def _progress(line: str) -> tuple[int, int] | None:
    words = line.split()
    if len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
        return int(words[0]), int(words[1])
    return None


def _model_dir_mount(model_dir: str) -> dict[str, Any]:
    """The host's model_dir at MOUNT, read-write: as a bind (the engine makes the folder
    if it is missing), or, for a path with ':' (which a bind's text cannot hold), through
    the mount API (the folder must exist)."""
    if ":" not in model_dir:
        return {"Binds": [f"{model_dir}:{MOUNT}"]}
    return {"Mounts": [{"Type": "bind", "Source": model_dir, "Target": MOUNT}]}


def _mb(size: float) -> str:
    return f"{size / 1e6:,.1f} MB"


def _script() -> str:
    return resources.files("compiler.targets.compose").joinpath("fetch_helper.py").read_text()
