"""Stage 3: inheritance, env precedence, placeholders and placement → frozen workloads.

The result, a :class:`Fleet`, is the single intermediate form both renderers consume:
one :class:`Workload` per deployment replica, with the exact image, argv, env, GPUs,
mounts and port, plus where each value came from (for ``explain``).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from compiler import inheritance, runtime_env, template
from compiler.errors import ErrorList, FleetformError, Mark, ResolveError
from compiler.gpus import visibility as gpu_visibility
from compiler.load import Document, KeyPath, dotted
from compiler.model import Backend, Deployment, Repo, SecretRef, Settings
from compiler.placement import HostSlots, Placed, Prior, Request, place
from compiler.versions import gpustack_latest

# Linux refuses an execve() argument (with its NUL) over MAX_ARG_STRLEN, 128 KiB.
MAX_ARGUMENT_BYTES = 131_071
# All of one container's arguments, env and labels: a systemd unit holds them in one
# ExecStart line, which systemd caps at 1 MiB; quoting makes a text at most four times
# longer (a noncharacter's 3 bytes become 12 characters of escapes).
MAX_CONTAINER_BYTES = 196_608
# Replicas, and GPUs, in one fleet.
MAX_WORKLOADS = 100_000
MAX_FLEET_GPUS = 262_144


class ResolvedHost(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    address: str
    target: str  # a kind of host: a registered driver's (compiler/targets)
    docker_host: str | None
    ssh: str | None
    model_dir: str
    port_range: str
    unit_dir: str
    gpus: tuple[tuple[int, str], ...]
    labels: dict[str, str]


class Workload(BaseModel):
    """One replica of one deployment, fully resolved: what a host must run."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    replica: int
    host: str
    target: str  # a kind of host: a registered driver's (compiler/targets)
    image: str
    entrypoint: tuple[str, ...] | None
    command: tuple[str, ...]
    env: dict[str, str]
    framework: str
    gpus: tuple[int, ...]
    port: int
    network_mode: str
    shm_size: str
    restart: str
    model_mount: str | None  # bind-mounted read-only at the same path
    volumes: tuple[str, ...]
    devices: tuple[str, ...]
    ports: tuple[str, ...]
    labels: dict[str, str]
    health_check_path: str | None
    # Seconds `apply --wait` gives the health check; not part of what runs.
    health_timeout: int = 600
    # Environment variables filled at apply time from secrets: variable → secret name.
    secrets: dict[str, str] = {}
    # "uid" or "uid:gid" the server runs as (GPUStack's GPUSTACK_MODEL_RUNTIME_UID/GID);
    # None keeps the image's own user.
    user: str | None = None
    # "host" joins the host's IPC namespace (GPUStack's GPUSTACK_HOST_IPC); None keeps a
    # private one (with shm_size).
    ipc: Literal["host"] | None = None
    # Seconds to stop before a kill (the deployment's stop_timeout); None: each
    # artifact's default. Counts in the hash only when set.
    stop_timeout: int | None = None

    @property
    def name(self) -> str:
        return f"{self.deployment}-{self.replica}"

    def spec(self) -> dict[str, Any]:
        """The canonical desired spec: what the content hash covers."""
        # Fields left at their default (no secrets) do not count: adding a field to
        # fleetform must not change, and so recreate, every existing container.
        return self.model_dump(mode="json", exclude={"health_timeout"}, exclude_defaults=True)

    def spec_hash(self) -> str:
        return self._spec_hash

    @cached_property
    def _spec_hash(self) -> str:
        canonical = _CANONICAL_JSON.encode(self.spec())
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a resolved value was written: position, layer, and its key as written."""

    mark: Mark
    via: str
    key: str = ""

    def __str__(self) -> str:
        return f"{self.mark} ({self.via})"


@dataclass
class Explanation:
    """How one deployment was resolved, for ``fleetform explain``."""

    deployment: str
    backend: str
    version: str
    version_reason: str
    chain: list[str]
    origins: dict[str, Origin] = field(default_factory=dict)
    # Per merged key, where a layer wrote it null or "" and so fell back to the next.
    fallbacks: dict[str, list[Origin]] = field(default_factory=dict)


@dataclass(frozen=True)
class Fleet:
    settings: Settings
    hosts: dict[str, ResolvedHost]
    workloads: tuple[Workload, ...]
    explanations: Mapping[str, Explanation]

    def on_host(self, host: str) -> list[Workload]:
        return list(self._by_host.get(host, ()))

    @cached_property
    def _by_host(self) -> dict[str, list[Workload]]:
        grouped: dict[str, list[Workload]] = {}
        for workload in self.workloads:
            grouped.setdefault(workload.host, []).append(workload)
        return grouped


# --- layers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layer:
    """One source of values: a (sub)document, its position prefix, and a label."""

    values: dict[str, Any]
    doc: Document
    prefix: KeyPath
    via: str
    renamed: tuple[tuple[str, str], ...] = ()  # (merged key, key as written)
    # Merged keys this layer writes as null or "": they fall back to the layers below.
    empty: tuple[str, ...] = ()

    def origin(self, path: KeyPath) -> Origin:
        written = dict(self.renamed).get(str(path[0]), path[0]) if path else None
        source = path if written is None else (written,) + path[1:]
        return Origin(
            self.doc.source.mark(self.prefix + source), self.via, dotted(self.prefix + source)
        )


class Origins(Mapping[str, Origin]):
    """Where each merged key came from.

    The table is large (a record per key of every layer) and a compile needs none of
    it unless something fails or ``explain`` asks, so it is built from the layers on
    the first look-up, and an :class:`Origin` only for the keys asked for.
    """

    def __init__(self, layers: list[_Layer]) -> None:
        self.layers = layers
        self._sources: dict[str, tuple[_Layer, KeyPath]] | None = None
        self._fallbacks: dict[str, Origin] = {}

    def fallback(self, key: str, origin: Origin) -> None:
        """``origin`` stands for ``key`` when no layer writes it."""
        self._fallbacks[key] = origin

    def below(self, key: str, *path: str | int) -> Origin:
        """Where ``path`` inside the merged value ``key`` was written (a list item)."""
        source = self._table().get(key)
        if source is None:
            return self[key]
        layer, at = source
        return layer.origin(at + path)

    def _table(self) -> dict[str, tuple[_Layer, KeyPath]]:
        if self._sources is None:
            sources: dict[str, tuple[_Layer, KeyPath]] = {}
            _merge(self.layers, sources=sources)
            self._sources = sources
        return self._sources

    def __getitem__(self, key: str) -> Origin:
        source = self._table().get(key)
        if source is None:
            return self._fallbacks[key]
        layer, path = source
        return layer.origin(path)

    def __iter__(self) -> Iterator[str]:
        return iter({**dict.fromkeys(self._table()), **dict.fromkeys(self._fallbacks)})

    def __len__(self) -> int:
        return len(set(self._table()) | set(self._fallbacks))


def _merge(
    layers: list[_Layer],
    base: dict[str, Any] | None = None,
    sources: dict[str, tuple[_Layer, KeyPath]] | None = None,
) -> dict[str, Any]:
    """Merge layers, lowest precedence first: maps key by key, lists/scalars replaced.

    ``base`` is an earlier merge to start from (it is not changed). ``sources``, when
    given, is filled with where each merged key (dotted) was written: layer and path.
    """
    merged = {} if base is None else _copy_maps(base)
    for layer in layers:
        _merge_layer(merged, layer.values, layer, (), sources)
    return merged


def _merge_layer(
    target: dict[str, Any],
    values: dict[str, Any],
    layer: _Layer,
    path: KeyPath,
    sources: dict[str, tuple[_Layer, KeyPath]] | None,
) -> None:
    # Layer values are shared between deployments: maps are copied as they merge,
    # other values are never mutated and so are shared as they are.
    for key, value in values.items():
        here = path + (key,)
        if type(value) is dict:
            existing = target.get(key)
            if type(existing) is not dict:
                existing = target[key] = {}
                if sources is not None:
                    sources[dotted(here)] = (layer, here)
            _merge_layer(existing, value, layer, here, sources)
        else:
            target[key] = value
            if sources is not None:
                sources[dotted(here)] = (layer, here)


def _copy_maps(value: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy_maps(v) if type(v) is dict else v for k, v in value.items()}


# GPUStack treats a null or empty command, entrypoint or image as not set: a version's
# falls back to the backend's default (``version_config.run_command or
# default_run_command``), a model's to the version's. Its API and UI exports write such
# nulls, so a pasted backend must not lose its default to them.
_FALLS_BACK_WHEN_EMPTY = ("run_command", "entrypoint", "image_name")


def _falling_back(values: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``values`` without the keys that fall back when null or empty, and those keys."""
    empty = tuple(k for k in _FALLS_BACK_WHEN_EMPTY if k in values and values[k] in (None, ""))
    if not empty:
        return values, ()
    return {k: v for k, v in values.items() if k not in empty}, empty


def _set_fields(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_unset=True, exclude_none=False, exclude={"extends", "abstract"})


# --- the resolver -------------------------------------------------------------------


@dataclass
class _Backend:
    name: str
    layers: list[tuple[Backend, Document]]
    _version_layers: dict[str, list[_Layer]] = field(default_factory=dict)
    _bases: dict[str, dict[str, Any]] = field(default_factory=dict)

    @cached_property
    def versions(self) -> dict[str, list[_Layer]]:
        """Each version's layers (root of the extends chain first), as written."""
        versions: dict[str, list[_Layer]] = {}
        for backend, doc in self.layers:
            for version, config in (backend.version_configs or {}).items():
                values, empty = _falling_back(_set_fields(config))
                versions.setdefault(version, []).append(
                    _Layer(
                        values,
                        doc,
                        ("version_configs", version),
                        f"backend '{backend.backend_name}' version '{version}'",
                        empty=empty,
                    )
                )
        return versions

    @cached_property
    def default_layers(self) -> list[_Layer]:
        """The backend defaults, renamed to the deployment's field names so that one
        merge orders every source."""
        layers = []
        for backend_model, backend_doc in self.layers:
            written = _set_fields(backend_model)
            renames = tuple(
                (target, source) for target, source in _BACKEND_DEFAULTS if source in written
            )
            values, empty = _falling_back({target: written[source] for target, source in renames})
            layers.append(
                _Layer(
                    values,
                    backend_doc,
                    (),
                    f"backend '{backend_model.backend_name}'",
                    renames,
                    empty,
                )
            )
        return layers

    def base(self, version: str) -> dict[str, Any]:
        """The backend defaults and ``version`` merged: what every deployment of that
        version starts from (merged once, not once per deployment)."""
        if version not in self._bases:
            self._bases[version] = _merge(self.base_layers(version))
        return self._bases[version]

    def base_layers(self, version: str) -> list[_Layer]:
        return [*self.default_layers, *self.version_layers(version)]

    def version_layers(self, version: str) -> list[_Layer]:
        """A version's layers with ``custom_framework`` renamed to ``framework``."""
        if version not in self._version_layers:
            layers = []
            for version_layer in self.versions[version]:
                renamed = dict(version_layer.values)
                if "custom_framework" in renamed:
                    renamed["framework"] = renamed.pop("custom_framework")
                layers.append(
                    _Layer(
                        renamed,
                        version_layer.doc,
                        version_layer.prefix,
                        version_layer.via,
                        (("framework", "custom_framework"),),
                        version_layer.empty,
                    )
                )
            self._version_layers[version] = layers
        return self._version_layers[version]

    def field(self, name: str) -> Any:
        """A backend field's value: the last layer of the chain that sets it wins."""
        setter = self._setter(name)
        return None if setter is None else getattr(setter[0], name)

    def field_origin(self, name: str) -> Origin | None:
        setter = self._setter(name)
        if setter is None:
            return None
        backend, doc = setter
        return Origin(doc.source.mark((name,)), f"backend '{backend.backend_name}'", name)

    def _setter(self, name: str) -> tuple[Backend, Document] | None:
        found = None
        for backend, doc in self.layers:
            if name in backend.model_fields_set and getattr(backend, name) is not None:
                found = (backend, doc)
        return found


def resolve_fleet(repo: Repo, prior: dict[tuple[str, int], Prior] | None = None) -> Fleet:
    """Resolve the whole repository; every independent error is reported at once."""
    errors: list[FleetformError] = []
    settings = repo.settings
    hosts = _resolve_hosts(repo, errors)
    backends = _resolve_backends(repo, errors)
    deployments = {d.name: (d, doc) for d, doc in repo.deployments}
    _check_unique([(d.name, doc) for d, doc in repo.deployments], "deployment", "name", errors)
    if errors:
        raise ErrorList(errors)

    parents = {name: list(d.extends or []) for name, (d, _) in deployments.items()}
    docs = {name: doc for name, (_, doc) in deployments.items()}
    concrete = sorted(name for name, (d, _) in deployments.items() if not d.abstract)
    chains = inheritance.chains(concrete, parents, docs, "deployment", errors)
    own_layers = _LazyLayers(deployments)
    drafts: list[_Draft] = []
    for name, chain in chains.items():
        try:
            drafts.append(_draft(name, chain, deployments, backends, own_layers))
        except FleetformError as error:
            errors.append(error)
    if errors:
        raise ErrorList(errors)

    _check_workload_count(drafts)
    slots = [
        HostSlots(
            host.name,
            host.labels,
            dict(host.gpus),
            _port_range(host.port_range),
            repo_host_mark,
        )
        for host, repo_host_mark in ((hosts[name][0], hosts[name][1]) for name in sorted(hosts))
    ]
    placed = place(slots, [draft.request for draft in drafts], prior or {})
    by_deployment: dict[str, list[Placed]] = {}
    for item in placed:
        by_deployment.setdefault(item.deployment, []).append(item)

    workloads: list[Workload] = []
    for draft in drafts:
        try:
            for item in by_deployment.get(draft.name, []):
                workloads.append(draft.workload(item, hosts[item.host][0], settings))
        except FleetformError as error:
            errors.append(error)
    if errors:
        raise ErrorList(errors)
    workloads.sort(key=lambda w: (w.host, w.deployment, w.replica))
    return Fleet(
        settings=settings,
        hosts={name: value[0] for name, value in sorted(hosts.items())},
        workloads=tuple(workloads),
        explanations=_Explanations({d.name: d for d in drafts}, by_deployment, hosts),
    )


def _check_workload_count(drafts: list[_Draft]) -> None:
    total = 0
    for draft in drafts:
        total += draft.request.replicas
        if total > MAX_WORKLOADS:
            raise ResolveError(
                f"the fleet has more than {MAX_WORKLOADS} replicas in all",
                draft.request.locate("replicas"),
                "replicas",
            )


class _Explanations(Mapping[str, Explanation]):
    """Each deployment's explanation, built only when ``explain`` asks for it."""

    def __init__(
        self,
        drafts: dict[str, _Draft],
        placed: dict[str, list[Placed]],
        hosts: dict[str, tuple[ResolvedHost, Mark]],
    ) -> None:
        self._drafts = drafts
        self._placed = placed
        self._hosts = hosts

    def __getitem__(self, name: str) -> Explanation:
        return self._drafts[name].explanation(self._placed.get(name, []), self._hosts)

    def __iter__(self) -> Iterator[str]:
        return iter(self._drafts)

    def __len__(self) -> int:
        return len(self._drafts)


def _check_unique(
    items: list[tuple[str, Document]], what: str, key: str, errors: list[FleetformError]
) -> None:
    """Each name once; ``key`` is the field that holds it in each document."""
    first: dict[str, Document] = {}
    for name, doc in items:
        if name in first:
            where = first[name].source.mark((key,))
            errors.append(
                ResolveError(
                    f"duplicate {what} '{name}' (first defined at {where})",
                    doc.source.mark((key,)),
                    key,
                )
            )
        else:
            first[name] = doc


def _port_range(text: str) -> tuple[int, int]:
    low, high = text.split("-")
    return int(low), int(high)


def _resolve_hosts(
    repo: Repo, errors: list[FleetformError]
) -> dict[str, tuple[ResolvedHost, Mark]]:
    defaults = repo.settings.defaults
    _check_unique([(h.name, doc) for h, doc in repo.hosts], "host", "name", errors)
    hosts: dict[str, tuple[ResolvedHost, Mark]] = {}
    fleet_gpus = 0
    for host, doc in repo.hosts:
        gpus = host.gpu_list()
        fleet_gpus += len(gpus)
        if fleet_gpus > MAX_FLEET_GPUS:
            errors.append(
                ResolveError(
                    f"the fleet has more than {MAX_FLEET_GPUS} GPUs in all",
                    doc.source.mark(("gpus",)),
                    "gpus",
                )
            )
            break
        seen: set[int] = set()
        for position, gpu in enumerate(gpus):
            if gpu.index in seen:
                # Only a list of {index, …} can repeat an index (a count continues
                # after the highest), so the position is that list's item.
                errors.append(
                    ResolveError(
                        f"GPU index {gpu.index} is listed twice",
                        doc.source.mark(("gpus", position, "index")),
                        f"gpus[{position}].index",
                    )
                )
            seen.add(gpu.index)
        if host.ssh is not None and not re.match(r"^[^@\s]+@[^@\s:]+(:\d+)?$", host.ssh):
            errors.append(
                ResolveError(
                    f"'{host.ssh}' is not user@host[:port]", doc.source.mark(("ssh",)), "ssh"
                )
            )
        hosts.setdefault(
            host.name,
            (
                ResolvedHost(
                    name=host.name,
                    address=host.address,
                    target=host.target or defaults.target,
                    docker_host=host.docker_host,
                    ssh=host.ssh,
                    model_dir=host.model_dir or defaults.model_dir,
                    port_range=host.port_range or defaults.port_range,
                    unit_dir=host.unit_dir or defaults.unit_dir,
                    gpus=tuple(sorted((g.index, g.framework) for g in gpus)),
                    labels=dict(host.labels or {}),
                ),
                doc.mark,
            ),
        )
    return hosts


def _resolve_backends(repo: Repo, errors: list[FleetformError]) -> dict[str, _Backend]:
    _check_unique(
        [(b.backend_name, doc) for b, doc in repo.backends], "backend", "backend_name", errors
    )
    by_name = {b.backend_name: (b, doc) for b, doc in repo.backends}
    parents = {name: [b.extends] if b.extends else [] for name, (b, _) in by_name.items()}
    docs = {name: doc for name, (_, doc) in by_name.items()}
    resolved: dict[str, _Backend] = {}
    chains = inheritance.chains(sorted(by_name), parents, docs, "backend", errors)
    for name, chain in chains.items():
        backend = _Backend(name, [by_name[link] for link in chain])
        versions = backend.versions
        default = backend.field("default_version")
        if default and default not in versions:
            origin = backend.field_origin("default_version")
            assert origin is not None
            errors.append(
                ResolveError(
                    f"default_version '{default}' is not in version_configs"
                    f" (versions: {', '.join(versions) or 'none'})",
                    origin.mark,
                    "default_version",
                )
            )
        resolved[name] = backend
    return resolved


@dataclass
class _Draft:
    """A deployment after inheritance and version choice, before placement."""

    name: str
    doc: Document
    chain: list[str]
    values: dict[str, Any]
    origins: Origins
    backend: _Backend
    version: str
    version_reason: str
    request: Request
    has_explicit_gpus: bool
    fallbacks: dict[str, list[Origin]] = field(default_factory=dict)
    # What the deployment's own layers write (not the backend's), known without building
    # the origins table (which only explain needs): a health path, env names.
    own_health_path: bool = False
    own_env: frozenset[str] = frozenset()

    def origin(self, key: str) -> Origin:
        return self.origins.get(key) or Origin(self.doc.mark, f"deployment '{self.name}'", key)

    def origin_below(self, key: str, *path: str | int) -> Origin:
        if key in self.origins:
            return self.origins.below(key, *path)
        return self.origin(key)

    def fail(self, key: str, message: str) -> ResolveError:
        """An error about the merged value ``key``, reported where it was written."""
        origin = self.origin(key)
        return ResolveError(message, origin.mark, origin.key or key)

    def workload(self, placed: Placed, host: ResolvedHost, settings: Settings) -> Workload:
        values = self.values
        defaults = settings.defaults
        framework = values["framework"]
        # As GPUStack (`sorted(gpu_indexes)`): the written order of gpu_ids never reorders
        # which GPU a replica numbers first.
        gpus = tuple(sorted(placed.gpus))
        model_path = _model_path(values, host)
        builtins = {
            "model_name": values.get("served_name") or self.name,
            "port": str(placed.port),
            "worker_ip": host.address,
            "gpu_count": str(len(gpus)),
            "gpu_ids": ",".join(str(i) for i in gpus),
        }
        if model_path is not None:
            builtins["model_path"] = model_path

        def failure(key: str, error: template.TemplateError) -> ResolveError:
            if (
                model_path is None
                and isinstance(error, template.UndefinedPlaceholder)
                and "model_path" in error.names
            ):
                return ResolveError(
                    "no model: set local_path, huggingface_repo_id or model_scope_model_id"
                    f" ({{{{model_path}}}} is used at {self.origin(key).mark})",
                    self.doc.mark,
                    "local_path",
                )
            origin = self.origin(key)
            if isinstance(error, (template.UndefinedPlaceholder, template.SecretPlaceholder)):
                origin = self._placeholder_origin(key, error.names) or origin
            same_as = ""
            if isinstance(error, template.UndefinedPlaceholder):
                # Met through every deployment of a backend, with other defined names.
                same_as = f"{origin.mark}|{origin.key}|undefined {error.names}"
            return ResolveError(str(error), origin.mark, origin.key or key, same_as=same_as)

        # A secret's value is given at apply time: it reaches the container as an
        # environment variable and can be the value of no placeholder.
        plain: dict[str, str] = {}
        secrets: dict[str, str] = {}
        for name, value in (values.get("env") or {}).items():
            if isinstance(value, SecretRef):
                secrets[name] = value.secret
            else:
                plain[name] = value
        secrets = dict(sorted(secrets.items()))
        env, env_errors = template.render_env(plain, builtins, secrets)
        for key, error in sorted(env_errors.items()):
            raise failure(f"env.{key}", error)
        defined = sorted(builtins) + sorted(k for k in env if k not in builtins)

        def lookup(name: str) -> str | None:
            return builtins.get(name, env.get(name))

        def render(words: Iterable[str], key: str) -> tuple[str, ...]:
            try:
                return template.substitute_words(words, lookup, defined, secrets)
            except template.TemplateError as error:
                raise failure(key, error) from None

        def words_of(key: str) -> list[str]:
            text = values.get(key)
            if text is None:
                return []
            try:
                return template.split(text)
            except template.TemplateError as error:
                raise failure(key, error) from None

        # Each part of the argv by the key that wrote it, for the size check.
        argv_parts: list[tuple[str, Iterable[str]]] = []
        entry_words = words_of("entrypoint")
        entrypoint = render(entry_words, "entrypoint") if values.get("entrypoint") else None
        argv_parts.append(("entrypoint", entrypoint or ()))
        command = list(render(words_of("run_command"), "run_command"))
        argv_parts.append(("run_command", tuple(command)))
        # The backend's default parameters, then the deployment's: flattened each, then
        # normalised to parameter_format as one list (as GPUStack's form holds them: a
        # flag ending one list takes its value from the start of the next).
        words: list[str] = []
        for key in ("default_backend_param", "backend_parameters"):
            try:
                words.extend(template.flat_parameters(tuple(values.get(key) or ())))
            except template.TemplateError as error:
                raise failure(key, error) from None
        params = template.normalised_parameters(tuple(words), values.get("parameter_format"))
        rendered = render(params, "backend_parameters")
        argv_parts.append(("backend_parameters", rendered))
        command.extend(rendered)

        image = values.get("image_name")
        if not image:
            raise ResolveError(
                f"no image: backend '{self.backend.name}' version '{self.version}' has no"
                " image_name and the deployment sets none",
                self.doc.mark,
                "image_name",
            )

        # The replica's GPUs: the vendor's variables win over every env layer (a
        # deployment's own env may not set them: checked in _draft), its ordering
        # defaults do not.
        seen = gpu_visibility(
            framework, gpus, tuple(index for index, kind in host.gpus if kind == framework)
        )
        if gpus:
            for name in sorted(seen.picks & (set(env) | set(secrets))):
                if name in self.own_env:
                    origin = self.origin(f"env.{name}")
                    raise ResolveError(
                        f"{name} picks the GPUs a replica sees; fleetform sets it from"
                        " gpu_selector (remove it here)",
                        origin.mark,
                        origin.key or f"env.{name}",
                    )
                env.pop(name, None)
        env_final = {**seen.defaults, **env, **seen.env}
        runtime = self._runtime_settings(env, plain, secrets)
        labels = values.get("labels") or {}
        self._check_sizes(
            [
                *argv_parts,
                *((f"env.{k}", (f"{k}={v}",)) for k, v in env.items()),
                *((f"labels.{k}", (f"{k}={v}",)) for k, v in labels.items()),
            ]
        )
        devices = [*seen.devices, *(values.get("devices") or [])]
        model_mount = _model_mount(values, model_path, host) if model_path else None
        volumes = list(dict.fromkeys(values.get("volumes") or []))
        targets = {model_mount: "the model's folder"} if model_mount else {}
        for volume in volumes:
            target = volume.split(":")[1]
            if target in targets:
                # docker refuses a container with two mounts on one path ("Duplicate
                # mount point"), and compose would let the later one hide the model.
                index = values["volumes"].index(volume)
                origin = self.origin_below("volumes", index)
                raise ResolveError(
                    f"volume '{volume}' mounts onto {targets[target]} ({target})",
                    origin.mark,
                    f"volumes[{index}]",
                )
            targets[target] = f"volume '{volume}'"

        return Workload(
            deployment=self.name,
            replica=placed.replica,
            host=host.name,
            target=host.target,
            image=image,
            entrypoint=entrypoint,
            command=tuple(command),
            env=dict(sorted(env_final.items())),
            framework=framework,
            gpus=gpus,
            port=placed.port,
            network_mode=values.get("network_mode") or defaults.network_mode,
            # The deployment's shm_size, else GPUStack's variable, else the default.
            shm_size=values.get("shm_size") or runtime.shm_size or defaults.shm_size,
            user=runtime.user,
            ipc=runtime.ipc,
            restart=values.get("restart") or defaults.restart,
            model_mount=model_mount,
            volumes=tuple(volumes),
            devices=tuple(dict.fromkeys(devices)),
            ports=tuple(values.get("ports") or ()),
            labels=dict(sorted(labels.items())),
            health_check_path=self._health_check_path(runtime),
            health_timeout=values.get("health_timeout") or 600,
            stop_timeout=values.get("stop_timeout"),
            secrets=secrets,
        )

    def _runtime_settings(
        self, env: dict[str, str], written: dict[str, str], secrets: dict[str, str]
    ) -> runtime_env.RuntimeSettings:
        """What GPUStack's own variables in the env ask of the container."""
        for name in sorted(runtime_env.VARIABLES & set(secrets)):
            raise self.fail(
                f"env.{name}",
                f"{name} is read when compiling (GPUStack acts on it): it cannot be a secret",
            )
        try:
            return runtime_env.runtime_settings(env, written)
        except runtime_env.RuntimeEnvError as error:
            raise self.fail(f"env.{error.variable}", str(error)) from None

    def _health_check_path(self, runtime: runtime_env.RuntimeSettings) -> str | None:
        """The deployment's own path, else GPUStack's variable, else the backend's."""
        # "" is no path (GPUStack then counts the server ready as soon as it runs).
        path = self.values.get("health_check_path")
        if path is not None and self.own_health_path:
            return str(path) or None
        if runtime.health_check_path is not None:
            return runtime.health_check_path or None
        return path or None

    def _check_sizes(self, parts: list[tuple[str, Iterable[str]]]) -> None:
        """Refuse a container that no kernel or systemd would start: an argument (an
        env or label entry is one) over Linux's MAX_ARG_STRLEN, or all of them together
        over what fits a unit's ExecStart line with room for quoting."""
        total = 0
        for key, words in parts:
            for word in words:
                size = len(word) if word.isascii() else len(word.encode())
                total += size
                if size > MAX_ARGUMENT_BYTES:
                    raise self.fail(
                        key,
                        f"an argument of {size} bytes; the limit is {MAX_ARGUMENT_BYTES}"
                        " (Linux's MAX_ARG_STRLEN)",
                    )
        if total > MAX_CONTAINER_BYTES:
            raise ResolveError(
                f"the container's arguments, environment and labels add up to {total} bytes;"
                f" the limit is {MAX_CONTAINER_BYTES}",
                self.doc.source.mark(("name",)),
                "name",
            )

    def _placeholder_origin(self, key: str, names: list[str]) -> Origin | None:
        """For a parameter list, the entry that writes one of ``names``."""
        if key not in ("default_backend_param", "backend_parameters"):
            return None
        for written in ("default_backend_param", "backend_parameters"):
            for index, entry in enumerate(self.values.get(written) or []):
                if any(name in names for name in template.names_in(entry)):
                    return self.origin_below(written, index)
        return None

    def explanation(
        self, placed: list[Placed], hosts: dict[str, tuple[ResolvedHost, Mark]]
    ) -> Explanation:
        origins = dict(self.origins)
        for item in placed:
            host, host_mark = hosts[item.host]
            how = (
                "explicit gpu_ids"
                if self.has_explicit_gpus
                else (
                    "kept from the previous compile" if item.gpus_kept else "placed automatically"
                )
            )
            origins[f"replica {item.replica}.host"] = Origin(
                host_mark, f"{how}: host '{item.host}'"
            )
            port_how = (
                "explicit port"
                if self.request.port is not None
                else (
                    "kept from the previous compile"
                    if item.port_kept
                    else f"allocated from {host.port_range}"
                )
            )
            origins[f"replica {item.replica}.port"] = Origin(
                self.request.port_mark if self.request.port is not None else host_mark, port_how
            )
        return Explanation(
            deployment=self.name,
            backend=self.backend.name,
            version=self.version,
            version_reason=self.version_reason,
            chain=self.chain,
            origins=origins,
            fallbacks=self.fallbacks,
        )


def _model_path(values: dict[str, Any], host: ResolvedHost) -> str | None:
    source = values.get("source")
    if source == "local_path" or (source is None and values.get("local_path")):
        return values.get("local_path")
    # A hub model is its repository's folder under model_dir, or the one file of it
    # that huggingface_filename / model_scope_file_path names (a GGUF for llama.cpp).
    if source == "huggingface" or (source is None and values.get("huggingface_repo_id")):
        repo_id = values.get("huggingface_repo_id")
        file = values.get("huggingface_filename") or ""
        return posixpath.join(host.model_dir, repo_id, file).rstrip("/") if repo_id else None
    if source == "model_scope" or (source is None and values.get("model_scope_model_id")):
        model_id = values.get("model_scope_model_id")
        file = values.get("model_scope_file_path") or ""
        return posixpath.join(host.model_dir, model_id, file).rstrip("/") if model_id else None
    return None


def _model_mount(values: dict[str, Any], model_path: str, host: ResolvedHost) -> str:
    """The folder mounted read-only for the model: as GPUStack, a local path's parent
    (so sibling shards and projector files come along), never ``/`` itself."""
    if values.get("local_path") and values.get("source") in (None, "local_path"):
        path = model_path.rstrip("/") or "/"
        parent = posixpath.dirname(path)
        return path if parent == "/" else parent
    return host.model_dir


class _LazyLayers(dict[str, _Layer]):
    """Each deployment's own fields as a layer, made once however many inherit them."""

    def __init__(self, deployments: dict[str, tuple[Deployment, Document]]) -> None:
        super().__init__()
        self._deployments = deployments

    def __missing__(self, name: str) -> _Layer:
        deployment, doc = self._deployments[name]
        values, empty = _falling_back(_set_fields(deployment))
        if deployment.env:
            # Secret references stay whole: merged as one value, replaced as one value.
            values["env"] = dict(deployment.env)
        layer = _Layer(values, doc, (), f"deployment '{name}'", empty=empty)
        self[name] = layer
        return layer


def _draft(
    name: str,
    chain: list[str],
    deployments: dict[str, tuple[Deployment, Document]],
    backends: dict[str, _Backend],
    own_layers: Mapping[str, _Layer],
) -> _Draft:
    deployment_layers = [own_layers[link] for link in chain]
    # backend and backend_version are scalars: the last link that sets one wins.
    chosen: dict[str, _Layer] = {
        key: layer
        for layer in deployment_layers
        for key in ("backend", "backend_version")
        if key in layer.values
    }
    merged = {key: layer.values[key] for key, layer in chosen.items()}

    def written_at(key: str) -> Mark:
        return chosen[key].origin((key,)).mark

    doc = deployments[name][1]
    backend_name = merged.get("backend")
    if not backend_name:
        raise ResolveError(
            "required key is missing (not set here nor in extends)", doc.mark, "backend"
        )
    backend = backends.get(backend_name)
    if backend is None:
        raise ResolveError(
            f"unknown backend '{backend_name}' (known: {', '.join(sorted(backends)) or 'none'})",
            written_at("backend"),
            "backend",
        )
    versions = backend.versions
    if not versions:
        raise ResolveError(
            f"backend '{backend.name}' has no version_configs",
            written_at("backend"),
            "backend",
        )
    requested = merged.get("backend_version") or None  # "" is not set, as in GPUStack
    default = backend.field("default_version") or None
    if requested is not None:
        if requested not in versions:
            raise ResolveError(
                f"backend '{backend.name}' has no version '{requested}'"
                f" (versions: {', '.join(versions)})",
                written_at("backend_version"),
                "backend_version",
            )
        version, reason = requested, "named by the deployment's backend_version"
    elif default is not None:
        version, reason = default, "the backend's default_version"
    elif len(versions) == 1:
        version, reason = next(iter(versions)), "the backend's only version"
    else:
        version = gpustack_latest(versions)
        reason = (
            "no backend_version or default_version: GPUStack's latest by compare_versions"
            f" of {template.some(list(versions))}"
        )

    values = _merge(deployment_layers, backend.base(version))
    layers = [*backend.base_layers(version), *deployment_layers]
    origins = Origins(layers)
    fallbacks: dict[str, list[Origin]] = {}
    for layer in layers:
        for key in layer.empty:
            fallbacks.setdefault(key, []).append(layer.origin((key,)))
    origins.fallback("framework", Origin(doc.mark, "default (no custom_framework)"))

    def locate(key: str) -> Mark:
        origin = origins.get(key)
        return doc.mark if origin is None else origin.mark

    framework = values.get("framework") or "cuda"
    values["framework"] = framework
    replicas = values.get("replicas")
    replicas = 1 if replicas is None else replicas
    selector = values.get("gpu_selector") or {}
    raw_ids = selector.get("gpu_ids")
    gpu_ids = None
    if raw_ids is not None:
        ids_mark = locate("gpu_selector.gpu_ids")
        gpu_ids = tuple(_parse_gpu_id(text, ids_mark) for text in raw_ids)
    per = selector.get("gpus_per_replica")
    if per is None:
        if gpu_ids is not None:
            per = len(gpu_ids) // replicas if replicas else 0
        else:
            per = 0 if framework == "cpu" else 1
    if framework == "cpu" and per and gpu_ids is None:
        raise ResolveError(
            "a cpu backend version takes no GPUs",
            locate("gpu_selector.gpus_per_replica"),
            "gpu_selector.gpus_per_replica",
        )
    request = Request(
        deployment=name,
        replicas=replicas,
        framework=framework,
        gpus_per_replica=per,
        gpu_ids=gpu_ids,
        worker_selector=dict(values.get("worker_selector") or {}),
        port=values.get("port"),
        mark=doc.mark,
        per_explicit=selector.get("gpus_per_replica") is not None,
        locate=locate,
    )
    return _Draft(
        name=name,
        doc=doc,
        chain=chain,
        values=values,
        origins=origins,
        backend=backend,
        version=version,
        version_reason=reason,
        request=request,
        has_explicit_gpus=gpu_ids is not None,
        fallbacks=fallbacks,
        own_health_path=any("health_check_path" in layer.values for layer in deployment_layers),
        own_env=frozenset(
            name for layer in deployment_layers for name in layer.values.get("env") or ()
        ),
    )


_BACKEND_DEFAULTS = (
    ("env", "default_env"),
    ("entrypoint", "default_entrypoint"),
    ("run_command", "default_run_command"),
    ("parameter_format", "parameter_format"),
    ("health_check_path", "health_check_path"),
    ("default_backend_param", "default_backend_param"),
)


def _parse_gpu_id(text: str, mark: Mark) -> tuple[str, str, int]:
    parts = text.split(":")
    if len(parts) != 3 or not re.fullmatch(r"[0-9]{1,5}", parts[2], re.ASCII):
        raise ResolveError(
            f"'{text}' is not a GPU id of the form <host>:<framework>:<index>",
            mark,
            "gpu_selector.gpu_ids",
        )
    return parts[0], parts[1], int(parts[2])
