"""Layers of values and their origins: inheritance merges a deployment's documents over
its backend's version over the backend's defaults, each value remembering the file, line
and key it came from."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from compiler.load import Document, KeyPath, dotted
from compiler.model import Deployment
from compiler.resolve.workload import Origin

# --- layers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Layer:
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

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self._sources: dict[str, tuple[Layer, KeyPath]] | None = None
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

    def _table(self) -> dict[str, tuple[Layer, KeyPath]]:
        if self._sources is None:
            sources: dict[str, tuple[Layer, KeyPath]] = {}
            merge(self.layers, sources=sources)
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


def merge(
    layers: list[Layer],
    base: dict[str, Any] | None = None,
    sources: dict[str, tuple[Layer, KeyPath]] | None = None,
) -> dict[str, Any]:
    """Merge layers, lowest precedence first: maps key by key, lists/scalars replaced.

    ``base`` is an earlier merge to start from (it is not changed). ``sources``, when
    given, is filled with where each merged key (dotted) was written: layer and path.
    """
    merged = {} if base is None else copy_maps(base)
    for layer in layers:
        merge_layer(merged, layer.values, layer, (), sources)
    return merged


def merge_layer(
    target: dict[str, Any],
    values: dict[str, Any],
    layer: Layer,
    path: KeyPath,
    sources: dict[str, tuple[Layer, KeyPath]] | None,
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
            merge_layer(existing, value, layer, here, sources)
        else:
            target[key] = value
            if sources is not None:
                sources[dotted(here)] = (layer, here)


def copy_maps(value: dict[str, Any]) -> dict[str, Any]:
    return {k: copy_maps(v) if type(v) is dict else v for k, v in value.items()}


# GPUStack treats a null or empty command, entrypoint or image as not set: a version's
# falls back to the backend's default (``version_config.run_command or
# default_run_command``), a model's to the version's. Its API and UI exports write such
# nulls, so a pasted backend must not lose its default to them.
FALLS_BACK_WHEN_EMPTY = ("run_command", "entrypoint", "image_name")


def falling_back(values: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """``values`` without the keys that fall back when null or empty, and those keys."""
    empty = tuple(k for k in FALLS_BACK_WHEN_EMPTY if k in values and values[k] in (None, ""))
    if not empty:
        return values, ()
    return {k: v for k, v in values.items() if k not in empty}, empty


def set_fields(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(exclude_unset=True, exclude_none=False, exclude={"extends", "abstract"})


class LazyLayers(dict[str, Layer]):
    """Each deployment's own fields as a layer, made once however many inherit them."""

    def __init__(self, deployments: dict[str, tuple[Deployment, Document]]) -> None:
        super().__init__()
        self._deployments = deployments

    def __missing__(self, name: str) -> Layer:
        deployment, doc = self._deployments[name]
        values, empty = falling_back(set_fields(deployment))
        if deployment.env:
            # Secret references stay whole: merged as one value, replaced as one value.
            values["env"] = dict(deployment.env)
        layer = Layer(values, doc, (), f"deployment '{name}'", empty=empty)
        self[name] = layer
        return layer
