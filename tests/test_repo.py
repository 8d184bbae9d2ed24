"""The project's own example fleet compiles, and its committed output/ is current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fleetform(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compiler.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_compile_check_passes_on_the_repo_itself() -> None:
    result = _fleetform("compile", "--check")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "output/ is up to date\n"


def test_validate_the_example_fleet() -> None:
    result = _fleetform("validate")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 3 hosts, 7 workloads\n"


def test_example_fleet_has_what_the_readme_promises() -> None:
    outputs = sorted(
        p.relative_to(ROOT / "output").as_posix()
        for p in (ROOT / "output").rglob("*")
        if p.is_file()
    )
    assert "gpu-a/compose.yaml" in outputs
    assert "gpu-b/compose.yaml" in outputs
    assert any(p.startswith("gpu-c/systemd/") and p.endswith(".service") for p in outputs)
    backends = " ".join(p.read_text() for p in (ROOT / "backends.d").glob("*.yaml"))
    for name in ("vllm-custom", "sglang-custom", "TensorRT-LLM-custom", "llama.cpp-custom"):
        assert f"backend_name: {name}" in backends
    assert "extends:" in backends
    assert "rocm" in (ROOT / "hosts.d" / "fleet.yaml").read_text()
