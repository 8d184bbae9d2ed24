"""Build small repositories for tests from a dict of path → YAML text."""

from __future__ import annotations

import textwrap
from pathlib import Path

BACKEND = """\
backend_name: srv
default_env: {LEVEL: info}
default_run_command: serve {{model_path}} --port {{port}}
version_configs:
  v1: {image_name: "example/srv:1", custom_framework: cuda}
  v2: {image_name: "example/srv:2", custom_framework: cuda, env: {LEVEL: warn}}
"""
HOST = """\
name: h1
address: 10.9.0.1
gpus: {framework: cuda, count: 4}
"""


def make_repo(root: Path, files: dict[str, str]) -> Path:
    base = {"backends.d/b.yaml": BACKEND, "hosts.d/h.yaml": HOST}
    base.update(files)
    for relative, text in base.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root
