"""Stage 2: the schemas of backends, deployments, hosts and settings.

Every model forbids unknown keys; a typo is an error with a "did you mean" hint.
Each document is validated on its own, so that an error points at the exact node;
inheritance (``extends``) is merged later, in :mod:`compiler.resolve`.
"""

from __future__ import annotations

import difflib
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
)

from compiler import fields
from compiler.errors import ErrorList, FleetformError, ValidationError
from compiler.load import Document, KeyPath, RawRepo, dotted

Framework = Literal[
    "cuda", "rocm", "cann", "musa", "corex", "maca", "dtk", "neuware", "hggc", "cpu"
]
FRAMEWORKS: tuple[str, ...] = Framework.__args__  # type: ignore[attr-defined]

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PORT_RANGE = re.compile(r"^([0-9]{1,5})-([0-9]{1,5})$")

# GPUStack's read-only and UI keys: accepted on import, with no meaning here.
GPUSTACK_IGNORED_KEYS = (
    "is_built_in",
    "icon",
    "framework_index_map",
    "built_in_version_configs",
    "built_in_frameworks",
    "common_parameters",
    "enabled",
    "backend_source",
    "owner_principal_id",
    # What GPUStack 2.3 itself writes: its API's dump fields, per-version origins.
    "allowed_proxy_uris",
    "source_name",
    "source_type",
    "id",
    "created_at",
    "updated_at",
    "deleted_at",
)

Port = Annotated[int, Field(ge=1, le=65535)]
# "" where GPUStack reads an empty value as not set (its API and UI exports write them).
Unset = Literal[""]

# Text fields checked by compiler/fields.py: what docker, compose and ssh accept.
Address = Annotated[str, AfterValidator(fields.address)]
ApiUrl = Annotated[str, AfterValidator(fields.api_url)]
Device = Annotated[str, AfterValidator(fields.device)]
DockerHost = Annotated[str, AfterValidator(fields.docker_host)]
HostFolder = Annotated[str, AfterValidator(fields.host_folder)]
HttpPath = Annotated[str, AfterValidator(fields.http_path)]
HubEndpoint = Annotated[str, AfterValidator(fields.hub_endpoint)]
ModelScopeEndpoint = Annotated[str, AfterValidator(fields.modelscope_endpoint)]
HubFile = Annotated[str, AfterValidator(fields.hub_file)]
HubPattern = Annotated[str, AfterValidator(fields.hub_pattern)]
HubRevision = Annotated[str, AfterValidator(fields.hub_revision)]
ImageRef = Annotated[str, AfterValidator(fields.image_reference)]
LabelKey = Annotated[str, AfterValidator(fields.label_key)]
ModelId = Annotated[str, AfterValidator(fields.model_id)]
Name = Annotated[str, AfterValidator(fields.name)]
NetworkMode = Annotated[str, AfterValidator(fields.network_mode)]
PortSpec = Annotated[str, AfterValidator(fields.port_spec)]
Size = Annotated[str, AfterValidator(fields.size)]
SshTarget = Annotated[str, AfterValidator(fields.ssh_target)]
Volume = Annotated[str, AfterValidator(fields.volume)]


def _known_kind(kind: str) -> str:
    from compiler.targets import DRIVERS

    if kind not in DRIVERS:
        kinds = [repr(k) for k in DRIVERS]
        known = ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]
        raise ValueError(f"{kind!r} is not a kind of host fleetform drives ({known})")
    return kind


def _kinds_schema(schema: dict[str, Any]) -> None:
    from compiler.targets import DRIVERS

    schema["enum"] = list(DRIVERS)


# A kind of host: any registered driver's (compiler/targets).
HostKind = Annotated[str, AfterValidator(_known_kind), Field(json_schema_extra=_kinds_schema)]
# How many deployments one deployment may name in extends, and a GPU's highest index.
MAX_EXTENDS = 64
MAX_GPU_INDEX = 65_535
MAX_HOST_GPUS = 1024


def _env_name(name: str) -> str:
    if not ENV_NAME.match(name):
        raise ValueError(f"invalid environment variable name '{name}'")
    return name


EnvName = Annotated[str, AfterValidator(_env_name)]
EnvMap = dict[EnvName, str]


def _secret_name(name: str) -> str:
    if not ENV_NAME.match(name):
        raise ValueError(
            f"invalid secret name '{name}' (letters, digits and '_', not starting with a digit)"
        )
    return name


SecretName = Annotated[str, AfterValidator(_secret_name)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SecretRef(_Model):
    """A deployment env value that is the value of a secret, given at apply time."""

    secret: SecretName


def _env_value_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "[text]"
    if isinstance(value, (dict, SecretRef)):
        return "[secret]"
    return None


# The tags hold '[', so _translate drops them from error paths (as pydantic's own
# 'list[...]' parts); no variable name holds one, so no key is dropped with them.
EnvValue = Annotated[
    Annotated[str, Tag("[text]")] | Annotated[SecretRef, Tag("[secret]")],
    Discriminator(
        _env_value_kind,
        custom_error_type="env_value_type",
        custom_error_message="expected a string or {secret: NAME}",
    ),
]
# Deployments only: a backend's env keeps GPUStack's plain format.
DeploymentEnvMap = dict[EnvName, EnvValue]


class VersionConfig(_Model):
    image_name: ImageRef | Unset | None = None
    run_command: str | None = None
    entrypoint: str | None = None
    env: EnvMap | None = None
    custom_framework: Framework | None = None
    built_in_frameworks: Any = Field(default=None, exclude=True)
    source_name: Any = Field(default=None, exclude=True)
    source_type: Any = Field(default=None, exclude=True)


class Backend(_Model):
    backend_name: Name
    description: str | None = None
    health_check_path: HttpPath | Unset | None = None
    default_version: Name | Unset | None = None
    default_env: EnvMap | None = None
    default_entrypoint: str | None = None
    default_run_command: str | None = None
    default_backend_param: list[str] | None = None
    parameter_format: Literal["space", "equal"] | None = None
    version_configs: dict[Name, VersionConfig] | None = None
    extends: Name | None = None

    is_built_in: Any = Field(default=None, exclude=True)
    icon: Any = Field(default=None, exclude=True)
    framework_index_map: Any = Field(default=None, exclude=True)
    built_in_version_configs: Any = Field(default=None, exclude=True)
    built_in_frameworks: Any = Field(default=None, exclude=True)
    common_parameters: Any = Field(default=None, exclude=True)
    enabled: Any = Field(default=None, exclude=True)
    backend_source: Any = Field(default=None, exclude=True)
    owner_principal_id: Any = Field(default=None, exclude=True)
    allowed_proxy_uris: Any = Field(default=None, exclude=True)
    source_name: Any = Field(default=None, exclude=True)
    source_type: Any = Field(default=None, exclude=True)
    id: Any = Field(default=None, exclude=True)
    created_at: Any = Field(default=None, exclude=True)
    updated_at: Any = Field(default=None, exclude=True)
    deleted_at: Any = Field(default=None, exclude=True)


class GpuSelector(_Model):
    gpu_ids: list[str] | None = Field(default=None, min_length=1, max_length=4096)
    gpus_per_replica: int | None = Field(default=None, ge=0, le=1024)


class Deployment(_Model):
    """One deployment document as written; every field optional until merged."""

    name: str
    abstract: bool = False
    extends: list[str] | None = Field(default=None, max_length=MAX_EXTENDS)
    source: Literal["local_path", "huggingface", "model_scope"] | None = None
    local_path: HostFolder | None = None
    huggingface_repo_id: ModelId | None = None
    huggingface_filename: HubFile | None = None
    model_scope_model_id: ModelId | None = None
    model_scope_file_path: HubFile | None = None
    # A hub model's branch, tag or commit (default: the repository's main branch).
    revision: HubRevision | None = None
    # Which of the repository's files to fetch (fnmatch patterns; default: all of them).
    allow_patterns: list[HubPattern] | None = Field(default=None, min_length=1, max_length=64)
    # auto: apply fetches a hub model onto each host before its replicas start; none: the
    # model is staged there by other means.
    model_provisioning: Literal["auto", "none"] | None = None
    # The name clients ask for ({{model_name}}): free text, as GPUStack's model name.
    served_name: Name | None = None
    backend: Name | None = None
    backend_version: Name | Unset | None = None
    backend_parameters: list[str] | None = None
    image_name: ImageRef | Unset | None = None
    run_command: str | None = None
    entrypoint: str | None = None
    env: DeploymentEnvMap | None = None
    replicas: int | None = Field(default=None, ge=0, le=1000)
    gpu_selector: GpuSelector | None = None
    worker_selector: dict[LabelKey, str] | None = None
    port: Port | None = None
    volumes: list[Volume] | None = None
    devices: list[Device] | None = None
    ports: list[PortSpec] | None = None
    shm_size: Size | None = None
    labels: dict[LabelKey, str] | None = None
    network_mode: NetworkMode | None = None
    restart: Literal["no", "always", "on-failure", "unless-stopped"] | None = None
    health_check_path: HttpPath | Unset | None = None
    health_timeout: int | None = Field(default=None, ge=1, le=86_400)
    # Seconds a replica gets to stop on SIGTERM before it is killed: `docker stop --time`
    # in its unit, compose's stop_grace_period, the container's StopTimeout. Unset: 30
    # in units, `apply --stop-timeout` for containers, compose's own 10 s.
    stop_timeout: int | None = Field(default=None, ge=0, le=3600)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        if len(name) > 63 or not DNS_LABEL.match(name):
            raise ValueError(
                f"'{name}' is not a DNS label (lowercase letters, digits and '-',"
                " starting and ending with a letter or digit, at most 63)"
            )
        return name

    @field_validator("extends", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class GpuSpec(_Model):
    index: int = Field(ge=0, le=MAX_GPU_INDEX)
    framework: Framework
    uuid: Name | None = None
    memory_mib: int | None = Field(default=None, ge=0)


class GpuCount(_Model):
    framework: Framework
    count: int = Field(ge=0, le=1024)


def _gpu_item_kind(value: Any) -> str:
    return "gpu-count" if isinstance(value, dict) and "count" in value else "gpu-spec"


def _gpus_kind(value: Any) -> str | None:
    if isinstance(value, list):
        return "gpu-list"
    if isinstance(value, dict):
        return "gpu-count"
    return None


GpuItem = Annotated[
    Annotated[GpuSpec, Tag("gpu-spec")] | Annotated[GpuCount, Tag("gpu-count")],
    Discriminator(_gpu_item_kind),
]
Gpus = Annotated[
    Annotated[list[GpuItem], Tag("gpu-list")] | Annotated[GpuCount, Tag("gpu-count")],
    Discriminator(
        _gpus_kind,
        custom_error_type="gpus_type",
        custom_error_message="expected a list of GPUs or a {framework, count} mapping",
    ),
]


# The hosts.d fields of a host fleetform reaches itself (a Docker or systemd host).
MACHINE_FIELDS = (
    "address",
    "docker_host",
    "ssh",
    "gpus",
    "labels",
    "port_range",
    "model_dir",
    "unit_dir",
)


class Host(_Model):
    name: str
    # Required for a host fleetform reaches itself; a GPUStack cluster has none.
    address: Address | None = None
    target: HostKind | None = None
    # A GPUStack cluster (target: gpustack): its server, which of its clusters, and the
    # variable of the applying environment that holds its API key.
    url: ApiUrl | None = None
    cluster: Name | None = None
    api_key_env: EnvName | None = None
    docker_host: DockerHost | None = None
    ssh: SshTarget | None = None
    gpus: Gpus | None = None
    labels: dict[LabelKey, str] | None = None
    port_range: str | None = None
    model_dir: HostFolder | None = None
    unit_dir: HostFolder | None = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        if len(name) > 63 or not DNS_LABEL.match(name):
            raise ValueError(f"'{name}' is not a DNS label (lowercase, digits and '-')")
        return name

    @field_validator("api_key_env")
    @classmethod
    def _gpustack_key(cls, value: str | None) -> str | None:
        from compiler.remote.gpustack import KEY_ENV

        if value is not None and not KEY_ENV.fullmatch(value):
            raise ValueError(
                f"'{value}' is not a GPUStack API key variable (GPUSTACK_…API_KEY, for example"
                " GPUSTACK_PROD_API_KEY): a repository cannot send another secret to a server"
            )
        return value

    @field_validator("port_range")
    @classmethod
    def _range(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = PORT_RANGE.match(value)
        if not match:
            raise ValueError(f"'{value}' is not a port range like 40000-40063")
        low, high = int(match.group(1)), int(match.group(2))
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"'{value}' is not a port range within 1-65535, low to high")
        return value

    @field_validator("gpus")
    @classmethod
    def _gpu_count(cls, gpus: Any) -> Any:
        items = [gpus] if isinstance(gpus, GpuCount) else list(gpus or ())
        total = sum(item.count if isinstance(item, GpuCount) else 1 for item in items)
        if total > MAX_HOST_GPUS:
            raise ValueError(f"{total} GPUs; a host has at most {MAX_HOST_GPUS}")
        return gpus

    def gpu_list(self) -> list[GpuSpec]:
        """The host's GPUs with the ``{framework, count}`` shorthand expanded."""
        items: list[GpuSpec | GpuCount]
        if self.gpus is None:
            items = []
        elif isinstance(self.gpus, GpuCount):
            items = [self.gpus]
        else:
            items = list(self.gpus)
        out: list[GpuSpec] = []
        for item in items:
            if isinstance(item, GpuCount):
                start = max((g.index for g in out), default=-1) + 1
                out.extend(
                    GpuSpec(index=start + i, framework=item.framework) for i in range(item.count)
                )
            else:
                out.append(item)
        return out


class Hub(_Model):
    """Where apply fetches hub models from, and with what."""

    # A Hugging Face mirror (HF_ENDPOINT); default: huggingface_hub's own (the hub).
    endpoint: HubEndpoint | None = None
    # ModelScope's site or a mirror of it (MODELSCOPE_ENDPOINT); default modelscope.cn.
    modelscope_endpoint: ModelScopeEndpoint | None = None
    # The short-lived container that downloads on each host: python3 with huggingface_hub
    # or modelscope-hub (installed with pip at its start when the image lacks it).
    helper_image: ImageRef = "python:3.12-slim"


class Defaults(_Model):
    target: HostKind = "compose"
    model_dir: HostFolder = "/var/lib/fleetform/models"
    port_range: str = "40000-40063"

    _range = field_validator("port_range")(Host._range.__func__)  # type: ignore[attr-defined]
    shm_size: Size = "10g"
    restart: Literal["no", "always", "on-failure", "unless-stopped"] = "unless-stopped"
    network_mode: NetworkMode = "host"
    unit_dir: HostFolder = "/etc/systemd/system"


class Settings(_Model):
    project: str = "fleetform"
    output_dir: str = "output"
    label_prefix: str = "io.fleetform"
    defaults: Defaults = Defaults()
    hub: Hub = Hub()

    @field_validator("project")
    @classmethod
    def _project(cls, name: str) -> str:
        if len(name) > 63 or not DNS_LABEL.match(name):
            raise ValueError(
                f"'{name}' is not a valid project name (lowercase, digits, '-', at most 63)"
            )
        return name

    @field_validator("output_dir")
    @classmethod
    def _inside_repo(cls, value: str) -> str:
        # compile prunes what it no longer produces here: it must never be a folder the
        # user keeps anything else in, so it stays a plain folder inside the repository.
        parts = PurePosixPath(value).parts
        if not value.isprintable():
            raise ValueError("must be a folder name without control characters or NUL")
        if len(value.encode("utf-8", "surrogatepass")) > 1024 or any(
            len(part.encode("utf-8", "surrogatepass")) > 255 for part in parts
        ):
            raise ValueError("is too long: at most 255 bytes per folder name and 1024 in all")
        if (
            not value
            or value.startswith(("/", "~"))
            or "\\" in value
            or not parts
            or any(part in (".", "..") for part in parts)
            or parts[0] in ("backends.d", "deployments.d", "hosts.d", ".git")
        ):
            raise ValueError(
                f"'{value}' must be a folder inside the repository, like 'output'"
                " (not absolute, no '..', not the repository itself or a source folder)"
            )
        return value

    @field_validator("label_prefix")
    @classmethod
    def _prefix(cls, prefix: str) -> str:
        if len(prefix) > 128 or not re.match(r"^[a-z0-9]+([.-][a-z0-9]+)*$", prefix):
            raise ValueError(f"'{prefix}' is not a label prefix like io.fleetform")
        # Docker's and compose's own labels: fleetform's would mix with theirs.
        reserved = ("com.docker", "io.docker", "org.dockerproject", "org.opencontainers")
        if any(prefix == word or prefix.startswith(word + ".") for word in reserved):
            raise ValueError(
                f"'{prefix}' is under {', '.join(reserved)}, which Docker keeps for its own"
                " labels; use your own, like io.fleetform"
            )
        return prefix


M = TypeVar("M", bound=BaseModel)


class Repo(BaseModel):
    """A validated repository: each object beside the document it came from."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    settings: Settings
    backends: list[tuple[Backend, Document]]
    deployments: list[tuple[Deployment, Document]]
    hosts: list[tuple[Host, Document]]


def validate_repo(raw: RawRepo) -> Repo:
    """Validate every document; all schema errors in the repository at once."""
    errors: list[FleetformError] = []

    def each(model: type[M], kind: str) -> list[tuple[M, Document]]:
        out = []
        for doc in raw.of_kind(kind):  # type: ignore[arg-type]
            try:
                out.append((validate_document(model, doc), doc))
            except FleetformError as error:
                errors.append(error)
        return out

    settings = Settings()
    if raw.settings is not None:
        try:
            settings = validate_document(Settings, raw.settings)
        except FleetformError as error:
            errors.append(error)
    backends = each(Backend, "backend")
    deployments = each(Deployment, "deployment")
    hosts = each(Host, "host")
    errors.extend(_impersonating_labels(settings, deployments))
    if errors:
        raise ErrorList(errors)
    return Repo(settings=settings, backends=backends, deployments=deployments, hosts=hosts)


def _impersonating_labels(
    settings: Settings, deployments: list[tuple[Deployment, Document]]
) -> list[FleetformError]:
    """A user label under the ownership prefix would let a container pass for another
    (fleetform's own labels win on the container, but a reader of the artifact or a
    tool filtering by label would be misled): refused."""
    prefix = settings.label_prefix + "."
    return [
        ValidationError(
            f"label key '{key}' is under '{prefix}', which fleetform keeps for its own"
            " ownership labels",
            doc.source.mark(("labels", key), key=True),
            f"labels.{key}",
        )
        for deployment, doc in deployments
        for key in (deployment.labels or {})
        if key.startswith(prefix) or key == settings.label_prefix
    ]


def validate_document(model: type[M], doc: Document) -> M:
    """``doc`` as a ``model``, or the first schema error mapped onto its YAML position."""
    value = _env_as_text(model, doc)
    try:
        return model.model_validate(value)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        # A typo'd key also makes a required key "missing": report the typo, not that.
        unknown = [e for e in errors if e["type"] == "extra_forbidden"]
        if len(unknown) > 1:
            raise ErrorList([_translate(model, doc, value, e) for e in unknown]) from None
        raise _translate(model, doc, value, (unknown or errors)[0]) from None


def _env_as_text(model: type[BaseModel], doc: Document) -> dict[str, Any]:
    """Env values written as YAML numbers or booleans become their text as written."""
    if model not in (Backend, Deployment):
        return doc.value
    value = dict(doc.value)

    def text_of(env: Any, path: KeyPath) -> Any:
        if not isinstance(env, dict):
            return env
        return {
            key: (doc.source.raw.get(path + (key,), item) if _is_plain_scalar(item) else item)
            for key, item in env.items()
        }

    for key in ("env", "default_env"):
        if key in value:
            value[key] = text_of(value[key], (key,))
    versions = value.get("version_configs")
    if isinstance(versions, dict):
        value["version_configs"] = {
            name: (
                {**config, "env": text_of(config["env"], ("version_configs", name, "env"))}
                if isinstance(config, dict) and "env" in config
                else config
            )
            for name, config in versions.items()
        }
    return value


def _is_plain_scalar(item: Any) -> bool:
    return isinstance(item, (bool, int, float)) and not isinstance(item, str)


def _translate(model: type[BaseModel], doc: Document, value: Any, error: Any) -> ValidationError:
    path, on_key = _written_path(value, error["loc"])
    kind = error["type"]
    key = dotted(path)
    if kind == "extra_forbidden" and path:
        name = str(path[-1])
        allowed = _allowed_keys(model, path[:-1])
        hint = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        message = f"unknown key '{name}'"
        if hint:
            message += f" (did you mean '{hint[0]}'?)"
        elif _models_at(model, path[:-1]) == [SecretRef]:
            message += " (an env value is a string, or {secret: NAME} for a secret)"
        return ValidationError(message, doc.source.mark(path, key=True), key)
    if kind == "missing":
        return ValidationError("required key is missing", doc.source.mark(path[:-1]), key)
    return ValidationError(_message(error), doc.source.mark(path, key=on_key), key)


def _written_path(value: Any, loc: tuple[Any, ...]) -> tuple[KeyPath, bool]:
    """pydantic's ``loc`` as the path of keys and list indices written in the document,
    and whether the error is about a mapping key rather than its value.

    ``loc`` mixes the written path with pydantic's own parts (union tags such as
    ``gpu-spec``, ``function-after[…]``, ``[key]``). They are told apart by walking the
    document itself, never by their text: a user's key may read ``[x]`` or ``gpu-spec``.
    The last part may name a key that is not written (a missing one).
    """
    path: list[str | int] = []
    current = value
    on_key = False
    for index, part in enumerate(loc):
        last = index == len(loc) - 1
        written = (isinstance(current, dict) and isinstance(part, str) and part in current) or (
            isinstance(current, list) and type(part) is int and 0 <= part < len(current)
        )
        if written:
            path.append(part)
            current = current[part]
        elif last and part == "[key]":
            on_key = True
        elif last and isinstance(part, str) and not _is_union_tag(part):
            path.append(part)
            current = None
    return tuple(path), on_key


def _is_union_tag(part: str) -> bool:
    # pydantic's names for union members and validators: 'list[...]', 'gpu-spec', …
    return "[" in part or part in ("gpu-spec", "gpu-count", "gpu-list", "function-after")


def _message(error: Any) -> str:
    kind = error["type"]
    value = error.get("input")
    simple = {
        "string_type": "expected a string",
        "int_type": "expected an integer",
        "bool_type": "expected true or false",
        "list_type": "expected a list",
        "dict_type": "expected a mapping",
        "model_type": "expected a mapping",
        "model_attributes_type": "expected a mapping",
    }
    if kind in simple:
        return f"{simple[kind]}, got {_show(value)}"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"{_show(value)} is not one of {expected}"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    if kind == "gpus_type":
        return f"{error['msg']}, got {_show(value)}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return f"{_show(value)} is out of range ({error['msg'].lower()})"
    if kind == "too_short":
        return "must not be empty (leave the key out instead)"
    if kind == "too_long":
        context = error.get("ctx", {})
        return f"{context.get('actual_length')} items; at most {context.get('max_length')}"
    if kind == "string_too_short":
        return "must not be empty"
    return f"{error['msg']}, got {_show(value)}"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    if isinstance(value, int) and abs(value) >= 10**40:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else f"{text[:60]}… ({len(text)} characters)"


def _allowed_keys(model: type[BaseModel], path: KeyPath) -> list[str]:
    """The field names of the (sub)models that can sit at ``path`` below ``model``."""
    names = {name for candidate in _models_at(model, path) for name in candidate.model_fields}
    return sorted(names - set(GPUSTACK_IGNORED_KEYS))


def _models_at(model: type[BaseModel], path: KeyPath) -> list[type[BaseModel]]:
    """The (sub)models that can sit at ``path`` below ``model``."""
    current: list[type[BaseModel]] = [model]
    for part in path:
        if isinstance(part, int):
            continue
        below = [
            inner
            for candidate in current
            if part in candidate.model_fields
            for inner in _models_in(candidate.model_fields[part].annotation)
        ]
        # Not a field name: a key of a dict of models (a version name), so stay put.
        current = below or current
    return current


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Every pydantic model inside an annotation such as ``dict[str, X] | list[Y | Z]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()):
        found.extend(m for m in _models_in(arg) if m not in found)
    return found
