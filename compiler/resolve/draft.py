"""A deployment after inheritance and version choice (a :class:`Draft`), then each of its
placed replicas made a :class:`~compiler.resolve.workload.Workload`: placeholders, env
precedence, model paths and mounts, sizes checked, and the explanation of every value."""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from compiler import runtime_env, template
from compiler.errors import Mark, ResolveError
from compiler.gpus import Visibility
from compiler.gpus import visibility as gpu_visibility
from compiler.hub import HubModel, hub_model_of
from compiler.load import Document
from compiler.model import Deployment, SecretRef, Settings
from compiler.placement import Placed, Request
from compiler.resolve.backends import BackendLayers
from compiler.resolve.hosts import parse_gpu_id
from compiler.resolve.layers import Layer, Origins, merge
from compiler.resolve.workload import (
    MAX_ARGUMENT_BYTES,
    MAX_CONTAINER_BYTES,
    Explanation,
    Origin,
    ResolvedHost,
    Workload,
)
from compiler.versions import gpustack_latest

# A part of a container's argv, env or labels, by the key that wrote it (for the size check).
Part = tuple[str, Iterable[str]]


@dataclass
class Draft:
    """A deployment after inheritance and version choice, before placement."""

    name: str
    doc: Document
    chain: list[str]
    values: dict[str, Any]
    origins: Origins
    backend: BackendLayers
    version: str
    version_reason: str
    request: Request
    has_explicit_gpus: bool
    fallbacks: dict[str, list[Origin]] = field(default_factory=dict)
    # What the deployment's own layers write (not the backend's), known without building
    # the origins table (which only explain needs): a health path, env names.
    own_health_path: bool = False
    own_env: frozenset[str] = frozenset()
    # The hub model its replicas need, per model_dir (one for every replica on a host).
    hub_models: dict[str, HubModel | None] = field(default_factory=dict)

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
        """One placed replica: its placeholders filled, its env, argv, GPUs and mounts."""
        values = self.values
        defaults = settings.defaults
        # As GPUStack (`sorted(gpu_indexes)`): the written order of gpu_ids never reorders
        # which GPU a replica numbers first.
        gpus = tuple(sorted(placed.gpus))
        model_path = model_path_on(values, host)
        words = _Placeholders.of(self, placed, host, gpus, model_path)
        entrypoint, command, argv_parts = words.argv()
        image = values.get("image_name")
        if not image:
            raise ResolveError(
                f"no image: backend '{self.backend.name}' version '{self.version}' has no"
                " image_name and the deployment sets none",
                self.doc.mark,
                "image_name",
            )
        env, seen = self._gpu_env(words.env, words.secrets, gpus, host)
        runtime = self._runtime_settings(words.env, words.plain, words.secrets)
        labels = values.get("labels") or {}
        self._check_sizes(
            [
                *argv_parts,
                *((f"env.{k}", (f"{k}={v}",)) for k, v in words.env.items()),
                *((f"labels.{k}", (f"{k}={v}",)) for k, v in labels.items()),
            ]
        )
        model_mount = model_folder_mount(values, model_path, host) if model_path else None
        return Workload(
            deployment=self.name,
            replica=placed.replica,
            host=host.name,
            target=host.target,
            image=image,
            entrypoint=entrypoint,
            command=command,
            env=dict(sorted(env.items())),
            framework=values["framework"],
            gpus=gpus,
            port=placed.port,
            network_mode=values.get("network_mode") or defaults.network_mode,
            # The deployment's shm_size, else GPUStack's variable, else the default.
            shm_size=values.get("shm_size") or runtime.shm_size or defaults.shm_size,
            user=runtime.user,
            ipc=runtime.ipc,
            restart=values.get("restart") or defaults.restart,
            model_mount=model_mount,
            volumes=self._volumes(model_mount),
            devices=tuple(dict.fromkeys([*seen.devices, *(values.get("devices") or [])])),
            ports=tuple(values.get("ports") or ()),
            labels=dict(sorted(labels.items())),
            health_check_path=self._health_check_path(runtime),
            health_timeout=values.get("health_timeout") or 600,
            stop_timeout=values.get("stop_timeout"),
            secrets=words.secrets,
            hub_model=self._hub_model(host.model_dir),
            model_revision=values.get("revision") if model_path else None,
        )

    def _hub_model(self, model_dir: str) -> HubModel | None:
        if model_dir not in self.hub_models:
            self.hub_models[model_dir] = hub_model_of(self.values, model_dir)
        return self.hub_models[model_dir]

    def _gpu_env(
        self,
        env: dict[str, str],
        secrets: dict[str, str],
        gpus: tuple[int, ...],
        host: ResolvedHost,
    ) -> tuple[dict[str, str], Visibility]:
        """The container's env with the replica's GPUs: the vendor's variables win over
        every env layer (a deployment's own env may not set them: checked in
        draft_deployment), its ordering defaults do not."""
        framework = self.values["framework"]
        seen = gpu_visibility(
            framework, gpus, tuple(index for index, kind in host.gpus if kind == framework)
        )
        if gpus:  # the variables that pick GPUs leave ``env`` (for the size check too)
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
        return {**seen.defaults, **env, **seen.env}, seen

    def _volumes(self, model_mount: str | None) -> tuple[str, ...]:
        """The deployment's volumes, none mounted onto the model's folder or another's."""
        volumes = list(dict.fromkeys(self.values.get("volumes") or []))
        targets = {model_mount: "the model's folder"} if model_mount else {}
        for volume in volumes:
            target = volume.split(":")[1]
            if target in targets:
                # docker refuses a container with two mounts on one path ("Duplicate
                # mount point"), and compose would let the later one hide the model.
                index = self.values["volumes"].index(volume)
                origin = self.origin_below("volumes", index)
                raise ResolveError(
                    f"volume '{volume}' mounts onto {targets[target]} ({target})",
                    origin.mark,
                    f"volumes[{index}]",
                )
            targets[target] = f"volume '{volume}'"
        return tuple(volumes)

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

    def _check_sizes(self, parts: list[Part]) -> None:
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


def model_path_on(values: dict[str, Any], host: ResolvedHost) -> str | None:
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


def model_folder_mount(values: dict[str, Any], model_path: str, host: ResolvedHost) -> str:
    """The folder mounted read-only for the model: as GPUStack, a local path's parent
    (so sibling shards and projector files come along), never ``/`` itself."""
    if values.get("local_path") and values.get("source") in (None, "local_path"):
        path = model_path.rstrip("/") or "/"
        parent = posixpath.dirname(path)
        return path if parent == "/" else parent
    return host.model_dir


def draft_deployment(
    name: str,
    chain: list[str],
    deployments: dict[str, tuple[Deployment, Document]],
    backends: dict[str, BackendLayers],
    own_layers: Mapping[str, Layer],
) -> Draft:
    deployment_layers = [own_layers[link] for link in chain]
    # backend and backend_version are scalars: the last link that sets one wins.
    chosen: dict[str, Layer] = {
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

    values = merge(deployment_layers, backend.base(version))
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
        gpu_ids = tuple(parse_gpu_id(text, ids_mark) for text in raw_ids)
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
    return Draft(
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


@dataclass
class _Placeholders:
    """One replica's placeholder values (``{{port}}``, ``{{model_path}}``, its env, ...)
    and the words they fill in; a failure is reported where the word was written."""

    draft: Draft
    builtins: dict[str, str]
    model_path: str | None
    plain: dict[str, str]  # the env without secrets, as written
    secrets: dict[str, str]  # variable → secret name
    env: dict[str, str] = field(default_factory=dict)  # plain, placeholders filled
    defined: list[str] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        draft: Draft,
        placed: Placed,
        host: ResolvedHost,
        gpus: tuple[int, ...],
        model_path: str | None,
    ) -> _Placeholders:
        values = draft.values
        builtins = {
            "model_name": values.get("served_name") or draft.name,
            "port": str(placed.port),
            "worker_ip": host.address,
            "gpu_count": str(len(gpus)),
            "gpu_ids": ",".join(str(i) for i in gpus),
        }
        if model_path is not None:
            builtins["model_path"] = model_path
        # A secret's value is given at apply time: it reaches the container as an
        # environment variable and can be the value of no placeholder.
        plain: dict[str, str] = {}
        secrets: dict[str, str] = {}
        for name, value in (values.get("env") or {}).items():
            if isinstance(value, SecretRef):
                secrets[name] = value.secret
            else:
                plain[name] = value
        made = cls(draft, builtins, model_path, plain, dict(sorted(secrets.items())))
        env, env_errors = template.render_env(plain, builtins, made.secrets)
        for key, error in sorted(env_errors.items()):
            raise made.failure(f"env.{key}", error)
        made.env = env
        made.defined = sorted(builtins) + sorted(k for k in env if k not in builtins)
        return made

    def argv(self) -> tuple[tuple[str, ...] | None, tuple[str, ...], list[Part]]:
        """The entrypoint, the command (run_command, then the backend's and the
        deployment's parameters) and each part of them by the key that wrote it."""
        values = self.draft.values
        parts: list[Part] = []
        entry_words = self.words_of("entrypoint")
        entrypoint = self.render(entry_words, "entrypoint") if values.get("entrypoint") else None
        parts.append(("entrypoint", entrypoint or ()))
        command = list(self.render(self.words_of("run_command"), "run_command"))
        parts.append(("run_command", tuple(command)))
        # The backend's default parameters, then the deployment's: flattened each, then
        # normalised to parameter_format as one list (as GPUStack's form holds them: a
        # flag ending one list takes its value from the start of the next).
        words: list[str] = []
        for key in ("default_backend_param", "backend_parameters"):
            try:
                words.extend(template.flat_parameters(tuple(values.get(key) or ())))
            except template.TemplateError as error:
                raise self.failure(key, error) from None
        params = template.normalised_parameters(tuple(words), values.get("parameter_format"))
        rendered = self.render(params, "backend_parameters")
        parts.append(("backend_parameters", rendered))
        return entrypoint, (*command, *rendered), parts

    def lookup(self, name: str) -> str | None:
        return self.builtins.get(name, self.env.get(name))

    def render(self, words: Iterable[str], key: str) -> tuple[str, ...]:
        try:
            return template.substitute_words(words, self.lookup, self.defined, self.secrets)
        except template.TemplateError as error:
            raise self.failure(key, error) from None

    def words_of(self, key: str) -> list[str]:
        text = self.draft.values.get(key)
        if text is None:
            return []
        try:
            return template.split(text)
        except template.TemplateError as error:
            raise self.failure(key, error) from None

    def failure(self, key: str, error: template.TemplateError) -> ResolveError:
        draft = self.draft
        if (
            self.model_path is None
            and isinstance(error, template.UndefinedPlaceholder)
            and "model_path" in error.names
        ):
            return ResolveError(
                "no model: set local_path, huggingface_repo_id or model_scope_model_id"
                f" ({{{{model_path}}}} is used at {draft.origin(key).mark})",
                draft.doc.mark,
                "local_path",
            )
        origin = draft.origin(key)
        if isinstance(error, (template.UndefinedPlaceholder, template.SecretPlaceholder)):
            origin = draft._placeholder_origin(key, error.names) or origin
        same_as = ""
        if isinstance(error, template.UndefinedPlaceholder):
            # Met through every deployment of a backend, with other defined names.
            same_as = f"{origin.mark}|{origin.key}|undefined {error.names}"
        return ResolveError(str(error), origin.mark, origin.key or key, same_as=same_as)
