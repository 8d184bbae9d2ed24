"""Backends: each version's layers of values (its own over the backend's defaults), as
GPUStack reads a custom backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from compiler import inheritance
from compiler.errors import FleetformError, ResolveError
from compiler.load import Document
from compiler.model import Backend, Repo
from compiler.resolve.hosts import check_unique
from compiler.resolve.layers import Layer, falling_back, merge, set_fields
from compiler.resolve.workload import Origin

# --- the resolver -------------------------------------------------------------------


@dataclass
class BackendLayers:
    name: str
    layers: list[tuple[Backend, Document]]
    _version_layers: dict[str, list[Layer]] = field(default_factory=dict)
    _bases: dict[str, dict[str, Any]] = field(default_factory=dict)

    @cached_property
    def versions(self) -> dict[str, list[Layer]]:
        """Each version's layers (root of the extends chain first), as written."""
        versions: dict[str, list[Layer]] = {}
        for backend, doc in self.layers:
            for version, config in (backend.version_configs or {}).items():
                values, empty = falling_back(set_fields(config))
                versions.setdefault(version, []).append(
                    Layer(
                        values,
                        doc,
                        ("version_configs", version),
                        f"backend '{backend.backend_name}' version '{version}'",
                        empty=empty,
                    )
                )
        return versions

    @cached_property
    def default_layers(self) -> list[Layer]:
        """The backend defaults, renamed to the deployment's field names so that one
        merge orders every source."""
        layers = []
        for backend_model, backend_doc in self.layers:
            written = set_fields(backend_model)
            renames = tuple(
                (target, source) for target, source in BACKEND_DEFAULTS if source in written
            )
            values, empty = falling_back({target: written[source] for target, source in renames})
            layers.append(
                Layer(
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
            self._bases[version] = merge(self.base_layers(version))
        return self._bases[version]

    def base_layers(self, version: str) -> list[Layer]:
        return [*self.default_layers, *self.version_layers(version)]

    def version_layers(self, version: str) -> list[Layer]:
        """A version's layers with ``custom_framework`` renamed to ``framework``."""
        if version not in self._version_layers:
            layers = []
            for version_layer in self.versions[version]:
                renamed = dict(version_layer.values)
                if "custom_framework" in renamed:
                    renamed["framework"] = renamed.pop("custom_framework")
                layers.append(
                    Layer(
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


def resolve_backends(repo: Repo, errors: list[FleetformError]) -> dict[str, BackendLayers]:
    check_unique(
        [(b.backend_name, doc) for b, doc in repo.backends], "backend", "backend_name", errors
    )
    by_name = {b.backend_name: (b, doc) for b, doc in repo.backends}
    parents = {name: [b.extends] if b.extends else [] for name, (b, _) in by_name.items()}
    docs = {name: doc for name, (_, doc) in by_name.items()}
    resolved: dict[str, BackendLayers] = {}
    chains = inheritance.chains(sorted(by_name), parents, docs, "backend", errors)
    for name, chain in chains.items():
        backend = BackendLayers(name, [by_name[link] for link in chain])
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


BACKEND_DEFAULTS = (
    ("env", "default_env"),
    ("entrypoint", "default_entrypoint"),
    ("run_command", "default_run_command"),
    ("parameter_format", "parameter_format"),
    ("health_check_path", "health_check_path"),
    ("default_backend_param", "default_backend_param"),
)
