"""GPUStack 2.3.0's own answer to "which container would this deployment run?".

Runs INSIDE the venv that ``tests/gpustack_oracle.py`` builds (``gpustack==2.3.0``,
``gpustack-runtime==0.2.6``); never imported by the test process itself. Reads
``{"cases": [...]}`` as JSON on stdin and writes ``{"results": [...], ...}`` on stdout,
one result per case, in order. The case and result formats are documented in
``tests/gpustack_oracle.py``.

Everything that decides an output field is GPUStack's own code, called the way the
server and the worker call it. What this script supplies instead of a server, a worker
machine and a Docker daemon:

* the backend: the mapping is dumped to YAML text and posted to the real coroutine of
  ``POST /inference-backends/from-yaml`` (``create_inference_backend_from_yaml``), or for
  a marketplace card put through ``_parse_backend_yaml`` and ``_upsert_community_backend``
  (the community-source reconcile), with ``InferenceBackend.one_by_fields`` /
  ``InferenceBackend.create`` patched to "no such row" / "return the row". The row then
  travels to the worker as GPUStack sends it: ``model_dump(mode="json")`` of the row
  (the ``/inference-backends/all`` response) and ``InferenceBackend.model_validate`` (the
  worker's ``InferenceBackendManager._fetch_backends``).
* the model: ``ModelCreate.model_validate`` (the create API's body validation; the
  route's database checks are not run), then ``ModelPublic`` as the worker reads it.
* the worker: ``CustomServer.__init__`` runs for real against a fake ``ClientSet`` (the
  worker, model and instance are served from memory; the instance reaches STARTING
  through the real ``_stop_when_starting`` with ``resolved_path`` = the case's
  ``model_path``); then ``CustomServer.start()`` runs for real. Its writes to the server
  (``_update_model_instance``, the backend-version write-back) are recorded.
  ``setup_logging``/``setup_runtime_logging`` are no-ops (log handlers only).
* the host: ``detect_devices``/``detect_backend`` return the case's devices (vendor of
  the case's ``framework``, indices 0..host_gpus-1, made-up UUIDs) in every module that
  imported them.
* Docker: ``docker.from_env`` returns a fake client that answers ``ping``, serves the
  worker's own container (``gpustack-worker``, for the mirrored deployment) and records
  ``containers.create`` instead of creating anything. So ``create_workload`` and the real
  ``DockerDeployer._create`` (pause container, run container, create options,
  visible-device env, mirroring) run end to end.
* the network: every socket connect / name lookup raises before anything is imported;
  nothing here can reach another address.

The process environment is the harness's clean one (PATH, HOME, LANG and the
GPUSTACK_RUNTIME_* settings below), so the worker's own ``os.environ`` cannot leak in:
``GPUSTACK_RUNTIME_DEPLOY_MIRRORED_DEPLOYMENT=true`` (how GPUStack runs in its
container image) makes ``_get_configured_env`` start from ``{}`` instead of
``filter_env_vars(os.environ)`` and leaves the model directory unmounted (the worker's
own mounts are mirrored instead; the case's ``worker_container`` says what they are).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import socket
import sys
import time
import traceback
from types import SimpleNamespace
from typing import Any

# --- no network, ever ------------------------------------------------------------------


class NetworkDisabled(OSError):
    pass


def _refuse(*_args: Any, **_kwargs: Any) -> Any:
    raise NetworkDisabled("the GPUStack oracle opens no connections")


socket.socket.connect = _refuse  # type: ignore[method-assign]
socket.socket.connect_ex = _refuse  # type: ignore[method-assign]
socket.create_connection = _refuse  # type: ignore[assignment]
socket.getaddrinfo = _refuse  # type: ignore[assignment]
socket.gethostbyname = _refuse  # type: ignore[assignment]
socket.gethostbyname_ex = _refuse  # type: ignore[assignment]

# --- a Docker SDK client that records instead of creating ------------------------------

import docker  # noqa: E402
import docker.errors  # noqa: E402

SELF_CONTAINER_NAME = "gpustack-worker"


class FakeImage:
    def __init__(self, name: str, env: list[str] | None = None) -> None:
        self.name = name
        self.tags = [name]
        self.attrs = {"Config": {"Env": list(env or [])}}


class FakeContainer:
    def __init__(self, cid: str, name: str, attrs: dict[str, Any] | None = None,
                 image: FakeImage | None = None) -> None:
        self.id = cid
        self.short_id = cid[:12]
        self.name = name
        self.status = "created"
        self.attrs = attrs or {}
        self.labels: dict[str, str] = {}
        self.image = image

    def start(self) -> None:
        self.status = "running"

    def restart(self) -> None:
        self.status = "running"

    def unpause(self) -> None:
        self.status = "running"

    def put_archive(self, path: str, data: bytes) -> bool:
        return True


class FakeContainers:
    def __init__(self, client: FakeDockerClient) -> None:
        self._client = client

    def get(self, name: str) -> FakeContainer:
        if name == SELF_CONTAINER_NAME:
            return self._client.self_container
        raise docker.errors.NotFound(f"No such container: {name}")

    def list(self, *args: Any, **kwargs: Any) -> list[FakeContainer]:
        return [self._client.self_container]

    def create(self, image: Any = None, detach: bool = False, **options: Any) -> FakeContainer:
        name = options.get("name", "")
        self._client.created.append(
            {"image": getattr(image, "name", image), "detach": detach, "options": options}
        )
        return FakeContainer(f"{len(self._client.created):064x}", name)


class FakeImages:
    def get(self, name: str) -> FakeImage:
        return FakeImage(name)


class FakeVolumes:
    def __init__(self, client: FakeDockerClient) -> None:
        self._client = client

    def create(self, name: str, **kwargs: Any) -> SimpleNamespace:
        self._client.volume_names.append(name)
        return SimpleNamespace(name=name)


class FakeDockerClient:
    """What ``docker.from_env()`` returns: pings, serves the worker's container and
    records every ``containers.create``."""

    def __init__(self, worker_container: dict[str, Any] | None = None) -> None:
        wc = worker_container or {}
        image_env = [f"{k}={v}" for k, v in (wc.get("image_env") or {}).items()]
        env = image_env + [f"{k}={v}" for k, v in (wc.get("env") or {}).items()]
        self.self_container = FakeContainer(
            "f" * 64,
            SELF_CONTAINER_NAME,
            attrs={
                "Config": {"Env": env, "Hostname": socket.gethostname()},
                "HostConfig": {
                    "Runtime": wc.get("runtime", ""),
                    "Devices": wc.get("devices") or [],
                    "DeviceRequests": wc.get("device_requests") or [],
                    "CapAdd": wc.get("cap_add"),
                    "CapDrop": wc.get("cap_drop"),
                    "GroupAdd": wc.get("group_add") or [],
                },
                "Mounts": wc.get("mounts") or [],
            },
            image=FakeImage("gpustack/gpustack", image_env),
        )
        self.created: list[dict[str, Any]] = []
        self.volume_names: list[str] = []
        self.containers = FakeContainers(self)
        self.images = FakeImages()
        self.volumes = FakeVolumes(self)
        self.api = SimpleNamespace(pull=_refuse)

    def ping(self) -> bool:
        return True

    def version(self) -> dict[str, str]:
        return {"Version": "fake"}

    def close(self) -> None:
        pass


_CURRENT_CLIENT: list[FakeDockerClient] = [FakeDockerClient()]


def _fake_from_env(*_args: Any, **_kwargs: Any) -> FakeDockerClient:
    return _CURRENT_CLIENT[0]


docker.from_env = _fake_from_env  # type: ignore[assignment]
docker.DockerClient.from_env = staticmethod(_fake_from_env)  # type: ignore[method-assign]


# --- GPUStack ----------------------------------------------------------------------------

import gpustack  # noqa: E402
import gpustack.worker.backends.base as gs_base  # noqa: E402
import gpustack.worker.backends.custom as gs_custom  # noqa: E402
import gpustack.worker.serve_manager as gs_serve  # noqa: E402
import yaml  # noqa: E402
from gpustack.config.config import Config  # noqa: E402
from gpustack.routes import inference_backend as gs_backend_routes  # noqa: E402
from gpustack.schemas import inference_backend_source as gs_backend_source  # noqa: E402
from gpustack.schemas.inference_backend import (  # noqa: E402
    InferenceBackend,
    VersionConfig,
    VersionConfigDict,
)
from gpustack.schemas.models import (  # noqa: E402
    BackendEnum,
    ModelCreate,
    ModelInstance,
    ModelInstanceStateEnum,
    ModelPublic,
)
from gpustack.schemas.source import SourceTypeEnum  # noqa: E402
from gpustack.schemas.workers import WorkerPublic  # noqa: E402
from gpustack.server.bus import Event, EventType  # noqa: E402
from gpustack_runtime import detector as rt_detector  # noqa: E402
from gpustack_runtime import envs as rt_envs  # noqa: E402
from gpustack_runtime.deployer import docker as rt_docker  # noqa: E402
from gpustack_runtime.deployer.__utils__ import compare_versions  # noqa: E402
from gpustack_runtime.detector import Device, ManufacturerEnum  # noqa: E402
from gpustack_runtime.detector.__types__ import backend_to_manufacturer  # noqa: E402

# --- fake devices ----------------------------------------------------------------------

_STATE: dict[str, Any] = {"devices": []}


def _fake_detect_devices(fast: bool = True, manufacturer: Any = None, usage: bool = True) -> list:
    devices = list(_STATE["devices"])
    if manufacturer:
        devices = [d for d in devices if d.manufacturer == manufacturer]
    return devices


def _fake_detect_backend(fast: bool = True, manufacturer: Any = None) -> Any:
    backends = []
    for d in _STATE["devices"]:
        b = rt_detector.manufacturer_to_backend(d.manufacturer)
        if manufacturer and d.manufacturer != manufacturer:
            continue
        if b not in backends:
            backends.append(b)
    if fast or manufacturer:
        return backends[0] if backends else ""
    return backends


_ORIGINAL_DETECT = {
    "detect_devices": rt_detector.detect_devices,
    "detect_backend": rt_detector.detect_backend,
}
_FAKE_DETECT = {"detect_devices": _fake_detect_devices, "detect_backend": _fake_detect_backend}


def _patch_detection() -> None:
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        if not name.startswith(("gpustack_runtime", "gpustack")):
            continue
        for attr, original in _ORIGINAL_DETECT.items():
            if getattr(module, attr, None) is original:
                setattr(module, attr, _FAKE_DETECT[attr])


def _uuid(framework: str, index: int) -> str:
    seed = sum(ord(c) for c in framework)
    body = f"{seed:08x}-{index:04x}-4000-8000-{index:012x}"
    return f"GPU-{body}" if framework == "cuda" else body


def _devices(framework: str | None, count: int) -> list[Device]:
    if not framework or framework == "cpu" or count <= 0:
        return []
    manufacturer = backend_to_manufacturer(framework)
    if manufacturer == ManufacturerEnum.UNKNOWN:
        raise ValueError(f"unknown framework {framework!r}")
    return [
        Device(
            manufacturer=manufacturer,
            index=i,
            name=f"{manufacturer.value} test device",
            uuid=_uuid(framework, i),
            appendix={},
        )
        for i in range(count)
    ]


# --- recording log records -------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append(f"{record.name}: {record.getMessage()}")
        except Exception:  # noqa: BLE001
            self.records.append(f"{record.name}: {record.msg}")


_CAPTURE = _Capture()
logging.getLogger().addHandler(_CAPTURE)
logging.getLogger().setLevel(logging.WARNING)
gs_base.setup_logging = lambda *a, **k: None  # log handlers only
gs_base.setup_runtime_logging = lambda *a, **k: None


# --- backends: GPUStack's import paths ---------------------------------------------------


class _BackendRejected(Exception):
    pass


async def _no_row(*_args: Any, **_kwargs: Any) -> None:
    return None


async def _return_row(_session: Any, backend: Any, *args: Any, **kwargs: Any) -> Any:
    return backend


InferenceBackend.one_by_fields = classmethod(  # type: ignore[method-assign]
    lambda cls, *a, **k: _no_row()
)
InferenceBackend.create = classmethod(  # type: ignore[method-assign]
    lambda cls, session, source, *a, **k: _return_row(session, source)
)


def _exception_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    return str(message if message else exc)


def _yaml_text(case: dict[str, Any]) -> str:
    if case.get("backend_yaml") is not None:
        return str(case["backend_yaml"])
    return yaml.safe_dump(case["backend"], sort_keys=False, allow_unicode=True)


_LOOP = asyncio.new_event_loop()
# (import mode, the case's backend) -> (the row as JSON, or the rejection, and GPUStack's
# warnings while importing it)
_IMPORTED: dict[tuple[str, str], tuple[Any, list[str]]] = {}


def import_backend(case: dict[str, Any]) -> InferenceBackend:
    """The backend row GPUStack stores for ``case``, as the worker receives it.

    The import is deterministic in its input, so each distinct backend is imported once
    per process; every case still gets its own row object (and the import's warnings).
    """
    mode = case.get("import", "yaml")
    key = (mode, json.dumps([case.get("backend"), case.get("backend_yaml")], sort_keys=True))
    if key not in _IMPORTED:
        before = len(_CAPTURE.records)
        try:
            wire: Any = _import_backend(mode, _yaml_text(case))
        except _BackendRejected as e:
            wire = e
        _IMPORTED[key] = (wire, _CAPTURE.records[before:])
        _CAPTURE.records = _CAPTURE.records[:before]
    wire, warnings = _IMPORTED[key]
    _CAPTURE.records.extend(warnings)
    if isinstance(wire, _BackendRejected):
        raise wire
    return InferenceBackend.model_validate(copy.deepcopy(wire))


def _import_backend(mode: str, text: str) -> Any:
    if mode == "yaml":
        ctx = SimpleNamespace(is_platform_admin=True, current_principal_id=None)
        route = gs_backend_routes.create_inference_backend_from_yaml
        try:
            row = _LOOP.run_until_complete(
                route(session=None, ctx=ctx, payload={"content": text})
            )
        except Exception as e:  # noqa: BLE001 - the API's 4xx/5xx
            raise _BackendRejected(_exception_message(e)) from e
    elif mode == "community":
        try:
            document = yaml.safe_load(text)
            if isinstance(document, dict):
                document = [document]
            configs = gs_backend_source._parse_backend_yaml(
                yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
            )
        except (ValueError, yaml.YAMLError) as e:
            raise _BackendRejected(str(e)) from e
        rows: list[Any] = []

        async def _capture_create(_session: Any, backend: Any, *a: Any, **k: Any) -> Any:
            rows.append(backend)
            return backend

        saved = InferenceBackend.__dict__["create"]
        InferenceBackend.create = classmethod(  # type: ignore[method-assign]
            lambda cls, session, source, *a, **k: _capture_create(session, source)
        )
        try:
            for config in configs:
                _LOOP.run_until_complete(
                    gs_backend_source._upsert_community_backend(
                        None,
                        config,
                        gs_backend_source.BUILTIN_BACKEND_SOURCE_NAME,
                        SourceTypeEnum.BUILTIN,
                    )
                )
        except Exception as e:  # noqa: BLE001
            raise _BackendRejected(_exception_message(e)) from e
        finally:
            InferenceBackend.create = saved  # type: ignore[method-assign]
        if not rows:
            raise _BackendRejected("the community reconcile skipped this card")
        row = rows[0]
        # A marketplace card lands disabled; deploying it means the user enabled it.
        row.enabled = True
    else:
        raise ValueError(f"unknown import mode {mode!r}")
    # The row as the /inference-backends/all response carries it to the worker.
    return json.loads(json.dumps(row.model_dump(mode="json")))


# --- the worker --------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.instance_updates: list[dict[str, Any]] = []
        self.model_updates: list[dict[str, Any]] = []


class _FakeResponse:
    def __init__(self, payload: Any) -> None:
        self._payload = payload
        self.status_code = 200

    def raise_for_status(self) -> None:
        pass

    def json(self) -> Any:
        return self._payload


class _FakeHttpx:
    def get(self, url: str, params: Any = None) -> _FakeResponse:
        if url == "/runner-override-entries":
            # No runner overrides configured on the server: the packaged catalogue.
            return _FakeResponse(
                {"items": [], "pagination": {"page": 1, "perPage": -1, "total": 0,
                                              "totalPage": 1}}
            )
        raise NetworkDisabled(f"the oracle has no server to GET {url}")


class FakeClientSet:
    """The parts of ``gpustack.client.ClientSet`` a backend server touches."""

    def __init__(self, worker: WorkerPublic, model: ModelPublic, instance: dict[str, Any],
                 recorder: _Recorder) -> None:
        self._instance = instance
        recorder_ = recorder
        outer = self

        class Workers:
            def get(self, id: int = 0, **kwargs: Any) -> WorkerPublic:  # noqa: A002
                return worker

        class Models:
            def get(self, id: int = 0, use_cache: bool = True) -> ModelPublic:  # noqa: A002
                return model.model_copy(deep=True)

            def update(self, id: int, model_update: Any) -> None:  # noqa: A002
                recorder_.model_updates.append(model_update.model_dump(mode="json"))

        class Instances:
            def get(self, id: int = 0, **kwargs: Any) -> ModelInstance:  # noqa: A002
                return ModelInstance.model_validate(outer._instance)

            def update(self, id: int = 0, model_update: Any = None) -> None:  # noqa: A002
                before = ModelInstance.model_validate(outer._instance).model_dump(mode="json")
                after = model_update.model_dump(mode="json")
                recorder_.instance_updates.append(
                    {k: v for k, v in after.items() if before.get(k) != v}
                )

            def watch(self, callback: Any = None, stop_condition: Any = None,
                      params: Any = None) -> None:
                event = Event(type=EventType.UPDATED, data=copy.deepcopy(outer._instance))
                stop_condition(event)

            def list(self, *args: Any, **kwargs: Any) -> list:
                return []

        self.workers = Workers()
        self.models = Models()
        self.model_instances = Instances()
        self.http_client = SimpleNamespace(get_httpx_client=lambda: _FakeHttpx())


def _config(case: dict[str, Any]) -> Config:
    data_dir = case.get("data_dir", "/var/lib/gpustack")
    # model_construct: a real Config() creates its data directories and secrets.
    return Config.model_construct(
        data_dir=data_dir,
        cache_dir=os.path.join(data_dir, "cache"),
        debug=False,
        system_default_container_registry=case.get("system_default_container_registry"),
    )


def _worker(case: dict[str, Any], framework: str | None, host_gpus: int) -> WorkerPublic:
    manufacturer = backend_to_manufacturer(framework) if framework else None
    gpu_devices = []
    for device in _devices(framework, host_gpus):
        gpu_devices.append(
            {
                "vendor": manufacturer.value if manufacturer else "",
                "type": framework,
                "index": device.index,
                "device_index": device.index,
                "name": device.name,
                "uuid": device.uuid,
                "runtime_version": case.get("runtime_version"),
                "arch_family": case.get("arch_family"),
            }
        )
    now = "2025-01-01T00:00:00Z"
    return WorkerPublic.model_validate(
        {
            "id": 1,
            "name": "worker-1",
            "hostname": "worker-1",
            "ip": case.get("worker_ip", "10.0.0.2"),
            "ifname": "eth0",
            "port": 10150,
            "worker_uuid": "00000000-0000-4000-8000-000000000001",
            "status": {"gpu_devices": gpu_devices},
            "created_at": now,
            "updated_at": now,
        }
    )


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return dict(value)
    if hasattr(value, "__dict__"):
        return {k: v for k, v in vars(value).items() if not k.startswith("_")}
    return str(value)


def _reset_runtime(devices: list[Device], worker_container: dict[str, Any] | None) -> None:
    _STATE["devices"] = devices
    _CURRENT_CLIENT[0] = FakeDockerClient(worker_container)
    from gpustack_runtime.deployer import _DEPLOYERS
    from gpustack_runtime.deployer import __utils__ as rt_utils

    for deployer in _DEPLOYERS:
        if isinstance(deployer, rt_docker.DockerDeployer):
            deployer._client = _CURRENT_CLIENT[0]
            deployer._materials = None
            deployer._mutate_create_options = None
    for fn in (getattr(rt_utils, "_get_backend", None),
               getattr(rt_utils, "_get_backend_version_and_variant", None)):
        if fn is not None and hasattr(fn, "cache_clear"):
            fn.cache_clear()


def deploy(case: dict[str, Any]) -> dict[str, Any]:
    """A deploy case; ``"mirrored": false`` runs it as a worker installed on the host:
    the process environment is the case's ``worker_env`` while the worker starts it."""
    _CAPTURE.records = []
    if case.get("mirrored", True):
        return _deploy(case)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in (case.get("worker_env") or {}).items()})
    os.environ["GPUSTACK_RUNTIME_DEPLOY_MIRRORED_DEPLOYMENT"] = "false"
    rt_envs.__getattr__.cache_clear()
    try:
        return _deploy(case)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        rt_envs.__getattr__.cache_clear()


def _deploy(case: dict[str, Any]) -> dict[str, Any]:  # noqa: C901 - one straight story
    result: dict[str, Any] = {}
    framework = case.get("framework", "cuda")
    if framework in (None, "", "cpu"):
        framework = None
    host_gpus = int(case.get("host_gpus", 1 if framework else 0))
    gpu_indexes = list(case.get("gpu_indexes", [0] if framework else []))
    if framework and backend_to_manufacturer(framework) == ManufacturerEnum.UNKNOWN:
        return {"error": f"unknown framework {framework!r}", "stage": "case"}

    # 1. The backend, through GPUStack's import path.
    backend: InferenceBackend | None = None
    if case.get("backend") is not None or case.get("backend_yaml") is not None:
        try:
            backend = import_backend(case)
        except _BackendRejected as e:
            return {"error": str(e), "stage": "backend", "warnings": _CAPTURE.records}

    # 2. The model, through the create API's validation.
    model_in = dict(case.get("model") or {})
    if backend is not None:
        model_in.setdefault("backend", backend.backend_name)
    model_in.setdefault("backend", BackendEnum.CUSTOM.value)
    model_in.setdefault("name", "model")
    if not any(model_in.get(k) for k in ("huggingface_repo_id", "model_scope_model_id",
                                         "local_path")):
        model_in.setdefault("source", "local_path")
        model_in.setdefault("local_path", case.get("model_path", "/models/model"))
    try:
        created = ModelCreate.model_validate(model_in)
    except Exception as e:  # noqa: BLE001 - pydantic's ValidationError
        return {"error": str(e), "stage": "model", "warnings": _CAPTURE.records}
    now = "2025-01-01T00:00:00Z"
    model = ModelPublic.model_validate(
        {**created.model_dump(mode="json", exclude={"enable_model_route"}), "id": 1,
         "created_at": now, "updated_at": now}
    )

    # 3. What the scheduler decided, and the instance at STARTING.
    port = int(case.get("port", 40000))
    worker = _worker(case, framework, host_gpus)
    instance = ModelInstance.model_validate(
        {
            "id": 1,
            "name": f"{model.name}-0",
            "source": model.source,
            "huggingface_repo_id": model.huggingface_repo_id,
            "huggingface_filename": model.huggingface_filename,
            "model_scope_model_id": model.model_scope_model_id,
            "model_scope_file_path": model.model_scope_file_path,
            "local_path": model.local_path,
            "model_id": model.id,
            "model_name": model.name,
            "worker_id": worker.id,
            "worker_name": worker.name,
            "worker_ip": worker.ip,
            "port": port,
            "ports": [port],
            "gpu_type": framework,
            "gpu_indexes": gpu_indexes,
            "backend": model.backend,
            "backend_version": model.backend_version,
            "state": ModelInstanceStateEnum.STARTING.value,
            "resolved_path": case.get("model_path", "/models/model"),
        }
    ).model_dump(mode="json")

    devices = _devices(framework, host_gpus)
    _reset_runtime(devices, case.get("worker_container"))
    recorder = _Recorder()
    clientset = FakeClientSet(worker, model, instance, recorder)

    # The version GPUStack resolves for the model's backend_version.
    if backend is not None:
        try:
            _, resolved = backend.get_version_config(model.backend_version)
            result["version"] = resolved
        except KeyError as e:
            result["version"] = None
            result["version_error"] = str(e.args[0]) if e.args else str(e)
    else:
        result["version"] = None

    # 4. The worker starts the instance.
    try:
        server = gs_custom.CustomServer(
            clientset, ModelInstance.model_validate(instance), _config(case), worker.id, backend
        )
    except SystemExit:
        message = next(
            (u.get("state_message") for u in recorder.instance_updates
             if u.get("state_message")),
            "the worker failed to initialise the instance",
        )
        return {**result, "error": message, "stage": "init", "warnings": _CAPTURE.records}

    plans: list[Any] = []
    real_create_workload = gs_custom.create_workload

    def _create_workload(plan: Any) -> None:
        plans.append(copy.deepcopy(plan))
        real_create_workload(plan)

    gs_custom.create_workload = _create_workload
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - start() re-raises after recording the error
        message = next(
            (u.get("state_message") for u in recorder.instance_updates
             if u.get("state_message")),
            _exception_message(e),
        )
        return {**result, "error": message, "stage": "start", "warnings": _CAPTURE.records,
                "traceback": traceback.format_exc(limit=6)}
    finally:
        gs_custom.create_workload = real_create_workload

    created_containers = _CURRENT_CLIENT[0].created
    run = next(c for c in created_containers if c["options"].get("name", "").endswith("-run-0"))
    pause = next(c for c in created_containers if c["options"].get("name", "").endswith("-pause"))
    opts = _json_safe(run["options"])
    pause_opts = _json_safe(pause["options"])
    plan = plans[0]
    injected = next(
        (u["injected_backend_parameters"] for u in recorder.instance_updates
         if "injected_backend_parameters" in u),
        None,
    )

    result.update(
        {
            "image": run["image"],
            "entrypoint": opts.get("entrypoint"),
            "args": opts.get("command") or [],
            "env": opts.get("environment") or {},
            "privileged": bool(opts.get("privileged")),
            "shm_size": opts.get("shm_size"),
            "host_ipc": bool(plan.host_ipc),
            "ipc_mode": pause_opts.get("ipc_mode"),
            "host_network": bool(plan.host_network),
            "network_mode": pause_opts.get("network_mode"),
            "user": opts.get("user"),
            "group_add": opts.get("group_add"),
            "devices": opts.get("devices"),
            "device_requests": opts.get("device_requests"),
            "mounts": opts.get("mounts"),
            "runtime": opts.get("runtime"),
            "restart_policy": opts.get("restart_policy"),
            "healthcheck": opts.get("healthcheck"),
            "backend_version": server._model.backend_version,
            "injected_backend_parameters": injected,
            "model_writes": recorder.model_updates,
            "create_options": opts,
            "pause_create_options": pause_opts,
            "workload_plan": _json_safe(plan.to_dict() if hasattr(plan, "to_dict") else plan),
            "warnings": _CAPTURE.records,
        }
    )
    result.update(_health(backend, model, instance))
    return result


def _health(backend: InferenceBackend | None, model: ModelPublic,
            instance: dict[str, Any]) -> dict[str, Any]:
    """The readiness probe: ``ServeManager._get_health_check_path`` (the backend row's
    ``health_check_path``), the model's ``GPUSTACK_MODEL_HEALTH_CHECK_PATH`` override
    (serve_manager.py's two-line check, mirrored here), then ``is_ready`` with
    ``requests.get`` recording the URL it would poll."""
    manager = SimpleNamespace(
        _inference_backend_manager=SimpleNamespace(
            get_backend_by_name=lambda name, owner=None: backend
        )
    )
    backend_name = gs_serve.get_backend(model)
    path = gs_serve.ServeManager._get_health_check_path(
        manager, backend_name, model.owner_principal_id
    )
    if model.env and "GPUSTACK_MODEL_HEALTH_CHECK_PATH" in model.env:
        path = model.env["GPUSTACK_MODEL_HEALTH_CHECK_PATH"]
    polled: list[str] = []

    def _get(url: str, timeout: Any = None, **kwargs: Any) -> Any:
        polled.append(url)
        return SimpleNamespace(status_code=200)

    saved = gs_serve.requests.get
    gs_serve.requests.get = _get
    try:
        gs_serve.is_ready(backend_name, ModelInstance.model_validate(instance), path, model)
    finally:
        gs_serve.requests.get = saved
    return {"health_check_path": path, "health_check_url": polled[0] if polled else None}


# --- small questions ---------------------------------------------------------------------


def op_compare_versions(case: dict[str, Any]) -> dict[str, Any]:
    return {"result": compare_versions(case["a"], case["b"])}


def op_latest_version(case: dict[str, Any]) -> dict[str, Any]:
    """``resolve_target_version`` of a non-built-in backend with these versions and no
    default: GPUStack's "latest" pick."""
    backend = InferenceBackend(
        backend_name="oracle-custom",
        version_configs=VersionConfigDict(
            root={str(v): VersionConfig(image_name="x") for v in case["versions"]}
        ),
        default_version=case.get("default_version"),
        is_built_in=False,
    )
    return {"result": backend.resolve_target_version(case.get("requested"))}


def op_parse_backend(case: dict[str, Any]) -> dict[str, Any]:
    try:
        backend = import_backend(case)
    except _BackendRejected as e:
        return {"error": str(e), "stage": "backend"}
    return {"backend": backend.model_dump(mode="json")}


OPS = {
    "deploy": deploy,
    "compare_versions": op_compare_versions,
    "latest_version": op_latest_version,
    "parse_backend": op_parse_backend,
}


def main() -> int:
    request = json.load(sys.stdin)
    # Anything GPUStack prints goes to stderr: stdout carries the JSON answer only.
    answer = sys.stdout
    sys.stdout = sys.stderr
    _patch_detection()
    results = []
    started = time.monotonic()
    for case in request.get("cases", []):
        op = case.get("op", "deploy")
        try:
            result = OPS[op](case)
        except Exception as e:  # noqa: BLE001 - a harness bug, reported per case
            result = {"error": f"oracle failure: {type(e).__name__}: {e}",
                      "stage": "oracle", "traceback": traceback.format_exc()}
        if "id" in case:
            result["id"] = case["id"]
        results.append(result)
    json.dump(
        {
            "gpustack": gpustack.__version__,
            "seconds": round(time.monotonic() - started, 3),
            "results": results,
        },
        answer,
        default=_default,
    )
    answer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
