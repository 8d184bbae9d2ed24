"""compiler/schema.py: the committed schemas are current, and check-jsonschema (the
real tool) accepts every example, corpus and golden input file, and rejects bad ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compiler import schema
from tests.helpers import corpus_dir

ROOT = Path(__file__).parent.parent
SCHEMAS = ROOT / "schemas"
FOLDERS = {"backends.d": "backend", "deployments.d": "deployment", "hosts.d": "host"}


def _check_jsonschema() -> str:
    found = shutil.which("check-jsonschema") or str(
        Path(sys.executable).parent / "check-jsonschema"
    )
    if not Path(found).exists():
        pytest.fail("check-jsonschema is not installed (pip install '.[test]')")
    return found


def test_committed_schemas_are_current() -> None:
    for kind in schema.KINDS:
        committed = (SCHEMAS / f"{kind}.schema.json").read_text(encoding="utf-8")
        assert committed == schema.schema_text(kind), (
            f"schemas/{kind}.schema.json is stale: run `fleetform schema --out schemas`"
        )


def test_the_cli_prints_and_writes_the_same_schemas(tmp_path: Path) -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "compiler.cli", "schema"], capture_output=True, text=True, check=True
    )
    assert json.loads(printed.stdout) == schema.schemas()
    subprocess.run(
        [sys.executable, "-m", "compiler.cli", "schema", "--out", str(tmp_path)], check=True
    )
    for kind in schema.KINDS:
        assert (tmp_path / f"{kind}.schema.json").read_text() == schema.schema_text(kind)


def _inputs() -> dict[str, list[Path]]:
    """Every repository input file this project holds, by kind."""
    by_kind: dict[str, list[Path]] = {kind: [] for kind in schema.KINDS}
    repos = [ROOT, *sorted((ROOT / "tests" / "golden").glob("*/repo"))]
    for repo in repos:
        for folder, kind in FOLDERS.items():
            by_kind[kind] += sorted((repo / folder).rglob("*.y*ml"))
        if (repo / "fleetform.yaml").exists():
            by_kind["settings"].append(repo / "fleetform.yaml")
    by_kind["backend"] += sorted(corpus_dir().rglob("*.yaml"))
    return by_kind


def _documents(paths: list[Path], folder: Path) -> list[Path]:
    """check-jsonschema reads one YAML document a file: a file of several ``---``
    documents becomes one file each (written as loaded)."""
    out: list[Path] = []
    for number, path in enumerate(paths):
        documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
        if len(documents) == 1:
            out.append(path)
            continue
        for index, document in enumerate(documents):
            part = folder / f"{number}-{path.stem}-{index}.yaml"
            part.write_text(yaml.safe_dump(document), encoding="utf-8")
            out.append(part)
    return out


def _check(kind: str, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _check_jsonschema(),
            "--schemafile",
            str(SCHEMAS / f"{kind}.schema.json"),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("kind", list(schema.KINDS))
def test_every_input_file_of_the_project_is_valid(kind: str, tmp_path: Path) -> None:
    files = _documents(_inputs()[kind], tmp_path)
    assert files or kind == "settings"
    if not files:
        return
    result = _check(kind, files)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("kind", "text", "complaint"),
    [
        ("backend", "backend_name: x\nversion_config: {}\n", "Additional properties"),
        ("backend", "backend_name: x\nparameter_format: tabs\n", "is not one of"),
        ("deployment", "name: d\nreplicas: two\n", "is not of type"),
        ("deployment", "name: d\nenv: {A: {secret: 1}}\n", "is not valid"),
        ("host", "- name: h\n  address: 10.0.0.1\n  gpus: {framework: tpu, count: 1}\n", ""),
        ("settings", "project: p\ndefaults: {target: k8s}\n", ""),
    ],
)
def test_bad_files_are_rejected(kind: str, text: str, complaint: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text, encoding="utf-8")
    result = _check(kind, [bad])
    assert result.returncode == 1, result.stdout
    assert complaint in result.stdout + result.stderr
