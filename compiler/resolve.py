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
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from compiler import template
from compiler.errors import ErrorList, FleetformError, Mark, ResolveError
from compiler.load import Document, KeyPath, dotted
from compiler.model import Backend, Deployment, Repo, Settings
from compiler.placement import HostSlots, Placed, Prior, Request, place

BUILTINS = ("model_path", "port", "model_name", "worker_ip", "gpu_count", "gpu_ids")


class ResolvedHost(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    address: str
    target: Literal["compose", "systemd"]
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
    target: Literal["compose", "systemd"]
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

    @property
    def name(self) -> str:
        return f"{self.deployment}-{self.replica}"

    def spec(self) -> dict[str, Any]:
        """The canonical desired spec: what the content hash covers."""
        return self.model_dump(mode="json")

    def spec_hash(self) -> str:
        return self._spec_hash

    @cached_property
    def _spec_hash(self) -> str:
        canonical = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Fleet:
    settings: Settings
    hosts: dict[str, ResolvedHost]
    workloads: tuple[Workload, ...]
    explanations: dict[str, Explanation]

    def on_host(self, host: str) -> list[Workload]:
        return [w for w in self.workloads if w.host == host]


# --- layers -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layer:
    """One source of values: a (sub)document, its position prefix, and a label."""

    values: dict[str, Any]
    doc: Document
    prefix: KeyPath
    via: str
    renamed: tuple[tuple[str, str], ...] = ()  # (merged key, key as written)

    def origin(self, path: KeyPath) -> Origin:
        written = dict(self.renamed).get(str(path[0]), path[0]) if path else None
        source = path if written is None else (written,) + path[1:]
        return Origin(
            self.doc.source.mark(self.prefix + source), self.via, dotted(self.prefix + source)
        )


def _merge(layers: list[_Layer]) -> tuple[dict[str, Any], dict[str, Origin]]:
    """Merge layers, lowest precedence first: maps key by key, lists/scalars replaced."""
    merged: dict[str, Any] = {}
    origins: dict[str, Origin] = {}

    def into(target: dict[str, Any], values: dict[str, Any], layer: _Layer, path: KeyPath) -> None:
        for key, value in values.items():
            here = path + (key,)
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                into(target[key], value, layer, here)
            else:
                target[key] = _copy(value)
                origins[dotted(here)] = layer.origin(here)
                if isinstance(value, dict):
                    for sub in _leaf_paths(value, here):
                        origins[dotted(sub)] = layer.origin(sub)

    for layer in layers:
        into(merged, layer.values, layer, ())
    return merged, origins


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return list(value)
    return value


def _leaf_paths(value: dict[str, Any], path: KeyPath) -> list[KeyPath]:
    out: list[KeyPath] = []
    for key, item in value.items():
        out.append(path + (key,))
        if isinstance(item, dict):
            out.extend(_leaf_paths(item, path + (key,)))
    return out


def _set_fields(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_unset=True, exclude_none=False, exclude={"extends", "abstract"})


# --- inheritance chains -------------------------------------------------------------


def _chain(
    name: str,
    parents_of: dict[str, list[str]],
    marks: dict[str, Mark],
    what: str,
    stack: tuple[str, ...] = (),
) -> list[str]:
    """``name``'s ancestors, root first, each once (first occurrence kept), then ``name``.

    ``marks`` holds, per name, where its ``extends`` is written.
    """
    if name in stack:
        cycle = stack[stack.index(name) :] + (name,)
        raise _CycleError(f"cycle {' -> '.join(cycle)}", marks[cycle[0]], "extends", cycle)
    order: list[str] = []
    for parent in parents_of.get(name, []):
        if parent not in parents_of:
            known = ", ".join(sorted(parents_of)) or "none"
            raise ResolveError(
                f"unknown {what} '{parent}' (known: {known})", marks[name], "extends"
            )
        for ancestor in _chain(parent, parents_of, marks, what, stack + (name,)):
            if ancestor not in order:
                order.append(ancestor)
    order.append(name)
    return order


class _CycleError(ResolveError):
    def __init__(self, message: str, mark: Mark, key: str, cycle: tuple[str, ...]) -> None:
        super().__init__(message, mark, key)
        self.members = frozenset(cycle)


def _chains(
    names: list[str],
    parents_of: dict[str, list[str]],
    marks: dict[str, Mark],
    what: str,
    errors: list[FleetformError],
) -> dict[str, list[str]]:
    """The chain of every name; each broken chain reported once (a cycle, once in all)."""
    chains: dict[str, list[str]] = {}
    cycles: set[frozenset[str]] = set()
    for name in names:
        try:
            chains[name] = _chain(name, parents_of, marks, what)
        except _CycleError as error:
            if error.members not in cycles:
                cycles.add(error.members)
                errors.append(error)
        except ResolveError as error:
            if not any(str(error) == str(seen) for seen in errors):
                errors.append(error)
    return chains


# --- version choice -----------------------------------------------------------------


_PRE_RELEASE = {"dev": -4, "a": -3, "alpha": -3, "b": -2, "beta": -2, "rc": -1, "pre": -1}


def version_key(version: str) -> list[tuple[int, int, str]]:
    """Natural version order: ``v`` stripped; numbers compare as numbers; ``dev``,
    ``alpha``, ``beta`` and ``rc`` sort before the release they precede; any other word
    compares as text. ``1.10`` > ``1.9`` > ``1.9rc1`` > ``1.9beta`` > ``1.9.dev0``.
    """
    text = version[1:] if version[:1] in ("v", "V") else version
    key: list[tuple[int, int, str]] = []
    for run in re.findall(r"\d+|[A-Za-z]+", text):
        if run.isdigit():
            key.append((2, int(run), ""))
        elif run.lower() in _PRE_RELEASE:
            key.append((0, _PRE_RELEASE[run.lower()], ""))
        else:
            key.append((1, 0, run.lower()))
    return key


def highest_version(versions: list[str]) -> str:
    """The highest of ``versions`` (a missing part counts as 0; ties: the later-sorted text)."""

    def padded(version: str, length: int) -> tuple[list[tuple[int, int, str]], str]:
        key = version_key(version)
        return key + [(2, 0, "")] * (length - len(key)), version

    length = max(len(version_key(v)) for v in versions)
    return max(versions, key=lambda v: padded(v, length))


# --- the resolver -------------------------------------------------------------------


@dataclass
class _Backend:
    name: str
    layers: list[tuple[Backend, Document]]

    def merged_versions(self) -> dict[str, list[_Layer]]:
        versions: dict[str, list[_Layer]] = {}
        for backend, doc in self.layers:
            for version, config in (backend.version_configs or {}).items():
                versions.setdefault(version, []).append(
                    _Layer(
                        _set_fields(config),
                        doc,
                        ("version_configs", version),
                        f"backend '{backend.backend_name}' version '{version}'",
                    )
                )
        return versions

    def field(self, name: str) -> tuple[Any, Origin | None]:
        value, origin = None, None
        for backend, doc in self.layers:
            if name in backend.model_fields_set and getattr(backend, name) is not None:
                value = getattr(backend, name)
                origin = Origin(doc.source.mark((name,)), f"backend '{backend.backend_name}'", name)
        return value, origin


def resolve_fleet(repo: Repo, prior: dict[tuple[str, int], Prior] | None = None) -> Fleet:
    """Resolve the whole repository; every independent error is reported at once."""
    errors: list[FleetformError] = []
    settings = repo.settings
    hosts = _resolve_hosts(repo, errors)
    backends = _resolve_backends(repo, errors)
    deployments = {d.name: (d, doc) for d, doc in repo.deployments}
    _check_unique(
        [(d.name, doc.source.mark(("name",))) for d, doc in repo.deployments],
        "deployment",
        "name",
        errors,
    )
    if errors:
        raise ErrorList(errors)

    parents = {name: list(d.extends or []) for name, (d, _) in deployments.items()}
    marks = {name: doc.source.mark(("extends",)) for name, (_, doc) in deployments.items()}
    concrete = sorted(name for name, (d, _) in deployments.items() if not d.abstract)
    chains = _chains(concrete, parents, marks, "deployment", errors)
    drafts: list[_Draft] = []
    for name, chain in chains.items():
        try:
            drafts.append(_draft(name, chain, deployments, backends, hosts, settings))
        except FleetformError as error:
            errors.append(error)
    if errors:
        raise ErrorList(errors)

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
    explanations: dict[str, Explanation] = {}
    for draft in drafts:
        try:
            for item in by_deployment.get(draft.name, []):
                workloads.append(draft.workload(item, hosts[item.host][0], settings))
        except FleetformError as error:
            errors.append(error)
        explanations[draft.name] = draft.explanation(by_deployment.get(draft.name, []), hosts)
    if errors:
        raise ErrorList(errors)
    workloads.sort(key=lambda w: (w.host, w.deployment, w.replica))
    return Fleet(
        settings=settings,
        hosts={name: value[0] for name, value in sorted(hosts.items())},
        workloads=tuple(workloads),
        explanations=explanations,
    )


def _check_unique(
    items: list[tuple[str, Mark]], what: str, key: str, errors: list[FleetformError]
) -> None:
    first: dict[str, Mark] = {}
    for name, mark in items:
        if name in first:
            errors.append(
                ResolveError(
                    f"duplicate {what} '{name}' (first defined at {first[name]})", mark, key
                )
            )
        else:
            first[name] = mark


def _port_range(text: str) -> tuple[int, int]:
    low, high = text.split("-")
    return int(low), int(high)


def _resolve_hosts(
    repo: Repo, errors: list[FleetformError]
) -> dict[str, tuple[ResolvedHost, Mark]]:
    defaults = repo.settings.defaults
    _check_unique(
        [(h.name, doc.source.mark(("name",))) for h, doc in repo.hosts], "host", "name", errors
    )
    hosts: dict[str, tuple[ResolvedHost, Mark]] = {}
    for host, doc in repo.hosts:
        gpus = host.gpu_list()
        seen: set[int] = set()
        for gpu in gpus:
            if gpu.index in seen:
                errors.append(
                    ResolveError(
                        f"GPU index {gpu.index} is listed twice", doc.source.mark(("gpus",)), "gpus"
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
        [(b.backend_name, doc.source.mark(("backend_name",))) for b, doc in repo.backends],
        "backend",
        "backend_name",
        errors,
    )
    by_name = {b.backend_name: (b, doc) for b, doc in repo.backends}
    parents = {name: [b.extends] if b.extends else [] for name, (b, _) in by_name.items()}
    marks = {name: doc.source.mark(("extends",)) for name, (_, doc) in by_name.items()}
    resolved: dict[str, _Backend] = {}
    chains = _chains(sorted(by_name), parents, marks, "backend", errors)
    for name, chain in chains.items():
        backend = _Backend(name, [by_name[link] for link in chain])
        versions = backend.merged_versions()
        default, origin = backend.field("default_version")
        if default is not None and default not in versions:
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
    origins: dict[str, Origin]
    backend: _Backend
    version: str
    version_reason: str
    request: Request
    has_explicit_gpus: bool

    def origin(self, key: str) -> Origin:
        return self.origins.get(key) or Origin(self.doc.mark, f"deployment '{self.name}'", key)

    def fail(self, key: str, message: str) -> ResolveError:
        """An error about the merged value ``key``, reported where it was written."""
        origin = self.origin(key)
        return ResolveError(message, origin.mark, origin.key or key)

    def workload(self, placed: Placed, host: ResolvedHost, settings: Settings) -> Workload:
        values = self.values
        defaults = settings.defaults
        framework = values["framework"]
        gpus = placed.gpus
        model_path = _model_path(values, host)
        builtins = {
            "model_name": self.name,
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
            same_as = ""
            if isinstance(error, template.UndefinedPlaceholder):
                # Met through every deployment of a backend, with other defined names.
                same_as = f"{origin.mark}|{origin.key}|undefined {error.names}"
            return ResolveError(str(error), origin.mark, origin.key or key, same_as=same_as)

        env, env_errors = template.render_env(values.get("env") or {}, builtins)
        for key, error in sorted(env_errors.items()):
            raise failure(f"env.{key}", error)
        defined = sorted(builtins) + sorted(k for k in env if k not in builtins)

        def lookup(name: str) -> str | None:
            return builtins.get(name, env.get(name))

        def render(words: list[str], key: str) -> tuple[str, ...]:
            try:
                return tuple(template.substitute(word, lookup, defined) for word in words)
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

        entry_words = words_of("entrypoint")
        entrypoint = render(entry_words, "entrypoint") if values.get("entrypoint") else None
        command = list(render(words_of("run_command"), "run_command"))
        style = values.get("parameter_format")
        for key in ("default_backend_param", "backend_parameters"):
            try:
                params = template.flatten_parameters(values.get(key) or [])
            except template.TemplateError as error:
                raise failure(key, error) from None
            command.extend(render(template.normalise_parameters(params, style), key))

        image = values.get("image_name")
        if not image:
            raise ResolveError(
                f"no image: backend '{self.backend.name}' version '{self.version}' has no"
                " image_name and the deployment sets none",
                self.doc.mark,
                "image_name",
            )

        env_final = dict(_vendor_env(framework, gpus))
        env_final.update(env)
        devices = list(_vendor_devices(framework, gpus)) + list(values.get("devices") or [])
        model_mount = _model_mount(values, model_path, host) if model_path else None
        volumes = list(dict.fromkeys(values.get("volumes") or []))

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
            shm_size=values.get("shm_size") or defaults.shm_size,
            restart=values.get("restart") or defaults.restart,
            model_mount=model_mount,
            volumes=tuple(volumes),
            devices=tuple(dict.fromkeys(devices)),
            ports=tuple(values.get("ports") or ()),
            labels=dict(sorted((values.get("labels") or {}).items())),
            health_check_path=values.get("health_check_path"),
        )

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
        )


_VENDOR_ENV: dict[str, tuple[str, ...]] = {
    "rocm": ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"),
    "cann": ("ASCEND_VISIBLE_DEVICES",),
    "musa": ("MTHREADS_VISIBLE_DEVICES", "MUSA_VISIBLE_DEVICES"),
    "corex": ("IX_VISIBLE_DEVICES",),
    "maca": ("CUDA_VISIBLE_DEVICES",),
    "dtk": ("HIP_VISIBLE_DEVICES",),
    "neuware": ("CAMBRICON_VISIBLE_DEVICES", "MLU_VISIBLE_DEVICES"),
    "hggc": ("NVIDIA_VISIBLE_DEVICES",),
}


def _vendor_env(framework: str, gpus: tuple[int, ...]) -> list[tuple[str, str]]:
    """Visible-devices variables for non-NVIDIA frameworks (cuda uses reservations)."""
    if not gpus:
        return []
    ids = ",".join(str(i) for i in gpus)
    return [(name, ids) for name in _VENDOR_ENV.get(framework, ())]


def _vendor_devices(framework: str, gpus: tuple[int, ...]) -> list[str]:
    if not gpus:
        return []
    if framework == "rocm":
        return ["/dev/kfd", "/dev/dri"]
    if framework == "cann":
        own = [f"/dev/davinci{i}" for i in gpus]
        return own + ["/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]
    if framework == "dtk":
        return ["/dev/kfd", "/dev/mkfd", "/dev/dri"]
    if framework == "maca":
        return ["/dev/mxcd", "/dev/dri"]
    if framework == "corex":
        return ["/dev/itrctl"] + [f"/dev/iluvatar{i}" for i in gpus]
    return []


def _model_path(values: dict[str, Any], host: ResolvedHost) -> str | None:
    source = values.get("source")
    if source == "local_path" or (source is None and values.get("local_path")):
        return values.get("local_path")
    if source == "huggingface" or (source is None and values.get("huggingface_repo_id")):
        repo_id = values.get("huggingface_repo_id")
        return posixpath.join(host.model_dir, repo_id) if repo_id else None
    if source == "model_scope" or (source is None and values.get("model_scope_model_id")):
        model_id = values.get("model_scope_model_id")
        return posixpath.join(host.model_dir, model_id) if model_id else None
    return None


def _model_mount(values: dict[str, Any], model_path: str, host: ResolvedHost) -> str:
    """The folder mounted read-only for the model: as GPUStack, a local path's parent
    (so sibling shards and projector files come along), never ``/`` itself."""
    if values.get("local_path") and values.get("source") in (None, "local_path"):
        path = model_path.rstrip("/") or "/"
        parent = posixpath.dirname(path)
        return path if parent == "/" else parent
    return host.model_dir


def _draft(
    name: str,
    chain: list[str],
    deployments: dict[str, tuple[Deployment, Document]],
    backends: dict[str, _Backend],
    hosts: dict[str, tuple[ResolvedHost, Mark]],
    settings: Settings,
) -> _Draft:
    deployment_layers = [
        _Layer(_set_fields(deployments[link][0]), deployments[link][1], (), f"deployment '{link}'")
        for link in chain
    ]
    merged, merged_origins = _merge(deployment_layers)
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
            merged_origins["backend"].mark,
            "backend",
        )
    versions = backend.merged_versions()
    if not versions:
        raise ResolveError(
            f"backend '{backend.name}' has no version_configs",
            merged_origins["backend"].mark,
            "backend",
        )
    requested = merged.get("backend_version")
    default, _ = backend.field("default_version")
    if requested is not None:
        if requested not in versions:
            raise ResolveError(
                f"backend '{backend.name}' has no version '{requested}'"
                f" (versions: {', '.join(versions)})",
                merged_origins["backend_version"].mark,
                "backend_version",
            )
        version, reason = requested, "named by the deployment's backend_version"
    elif default is not None:
        version, reason = default, "the backend's default_version"
    else:
        version = highest_version(list(versions))
        reason = "the highest version key (no backend_version or default_version)"

    layers: list[_Layer] = []
    # Backend defaults (root of the backend's extends chain first), renamed to the
    # deployment's field names so that one merge orders every source.
    for backend_model, backend_doc in backend.layers:
        written = _set_fields(backend_model)
        renames = tuple(
            (target, source) for target, source in _BACKEND_DEFAULTS if source in written
        )
        layers.append(
            _Layer(
                {target: written[source] for target, source in renames},
                backend_doc,
                (),
                f"backend '{backend_model.backend_name}'",
                renames,
            )
        )
    for version_layer in versions[version]:
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
            )
        )
    layers.extend(deployment_layers)
    values, origins = _merge(layers)

    framework = values.get("framework") or "cuda"
    values["framework"] = framework
    replicas = values.get("replicas")
    replicas = 1 if replicas is None else replicas
    selector = values.get("gpu_selector") or {}
    raw_ids = selector.get("gpu_ids")
    gpu_ids = None
    ids_mark = origins.get("gpu_selector.gpu_ids", Origin(doc.mark, "")).mark
    if raw_ids is not None:
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
            origins.get("gpu_selector.gpus_per_replica", Origin(doc.mark, "")).mark,
            "gpu_selector.gpus_per_replica",
        )
    port_origin = origins.get("port", Origin(doc.mark, ""))
    request = Request(
        deployment=name,
        replicas=replicas,
        framework=framework,
        gpus_per_replica=per,
        gpu_ids=gpu_ids,
        worker_selector=dict(values.get("worker_selector") or {}),
        port=values.get("port"),
        mark=doc.mark,
        gpu_ids_mark=ids_mark,
        port_mark=port_origin.mark,
        selector_mark=origins.get("worker_selector", Origin(doc.mark, "")).mark,
        per_mark=origins.get("gpu_selector.gpus_per_replica", Origin(doc.mark, "")).mark,
        per_explicit=selector.get("gpus_per_replica") is not None,
    )
    origins.setdefault("framework", Origin(doc.mark, "default (no custom_framework)"))
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
    if len(parts) != 3 or not parts[2].isdigit():
        raise ResolveError(
            f"'{text}' is not a GPU id of the form <host>:<framework>:<index>",
            mark,
            "gpu_selector.gpu_ids",
        )
    return parts[0], parts[1], int(parts[2])
