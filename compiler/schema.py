"""``fleetform schema``: JSON Schemas of the repository's files, made from the models.

One schema per kind of file: a backend, deployment or host file holds one object or a
list of them (several ``---`` documents each hold one or a list); ``fleetform.yaml``
holds the settings. Editors read them through a first line such as
``# yaml-language-server: $schema=../schemas/deployment.schema.json``; CI can validate
with ``check-jsonschema`` (one document a file). The schemas say what the models say
about shapes and names; the rules of each field's text (an image reference, a size) and
the checks across files (a GPU given twice) are ``fleetform validate``'s.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from compiler.model import Backend, Deployment, Host, Settings

DRAFT = "https://json-schema.org/draft/2020-12/schema"
# kind -> (model, what a file of that kind holds, where the files are)
KINDS: dict[str, tuple[type[BaseModel], str]] = {
    "backend": (Backend, "backends.d/*.yaml"),
    "deployment": (Deployment, "deployments.d/*.yaml"),
    "host": (Host, "hosts.d/*.yaml"),
    "settings": (Settings, "fleetform.yaml"),
}


def schema_of(kind: str) -> dict[str, Any]:
    model, files = KINDS[kind]
    generated = model.model_json_schema(mode="validation")
    definitions = dict(generated.pop("$defs", {}))
    name = model.__name__
    definitions[name] = generated
    if model is Deployment:
        # extends takes one name or a list (a validator turns one into a list).
        extends = generated["properties"]["extends"]
        generated["properties"]["extends"] = {
            "anyOf": [{"type": "string"}, *extends["anyOf"]],
            "default": None,
            "title": extends.get("title", "Extends"),
        }
    for definition in definitions.values():
        for key in ("env", "default_env"):
            if key in definition.get("properties", {}):
                _env_values_as_written(definition["properties"][key])
    one: dict[str, Any] = {"$ref": f"#/$defs/{name}"}
    shape: dict[str, Any] = (
        one if kind == "settings" else {"anyOf": [one, {"type": "array", "items": one}]}
    )
    return {
        "$schema": DRAFT,
        "$id": f"{kind}.schema.json",
        "title": f"fleetform {kind} ({files})",
        **shape,
        "$defs": definitions,
    }


def _env_values_as_written(node: Any) -> None:
    """An env value may be written as a YAML number or boolean: its text is the value."""
    if isinstance(node, dict):
        if node.get("type") == "string" and set(node) <= {"type"}:
            node["type"] = ["string", "number", "boolean"]
            return
        for value in node.values():
            _env_values_as_written(value)
    elif isinstance(node, list):
        for value in node:
            _env_values_as_written(value)


def schemas() -> dict[str, dict[str, Any]]:
    return {kind: schema_of(kind) for kind in KINDS}


def schema_text(kind: str) -> str:
    """The schema as committed: stable key order, one trailing newline."""
    return json.dumps(schema_of(kind), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
