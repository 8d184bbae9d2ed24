"""The library's entry points: one call per command, no click, no printing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compiler.errors import FleetformError, Mark, OutputError
from compiler.load import SETTINGS_FILE, load_repo
from compiler.model import Repo, validate_repo
from compiler.output import Changes, diff_output, read_prior, write_output
from compiler.render.fleet import render_fleet
from compiler.resolve import Fleet, resolve_fleet


@dataclass(frozen=True)
class Compiled:
    repo: Repo
    fleet: Fleet
    files: dict[str, bytes]
    output_dir: Path


def load(root: Path) -> Repo:
    return validate_repo(load_repo(root))


def output_dir(root: Path, repo: Repo) -> Path:
    """The output folder, refused unless it really is inside the repository.

    Settings validation already rejects absolute paths and '..'; this also catches a
    symlink that leads out of the repository.
    """
    out = root / repo.settings.output_dir
    real_root = root.resolve()
    real_out = out.resolve()
    if real_out == real_root or real_root not in real_out.parents:
        raise OutputError(
            f"output_dir '{repo.settings.output_dir}' leads to {real_out}, outside the"
            " repository; refusing to write there",
            Mark(SETTINGS_FILE, 1, 1),
            "output_dir",
        )
    return out


def build(root: Path) -> Compiled:
    """Load, validate, resolve and render, entirely in memory."""
    repo = load(root)
    out = output_dir(root, repo)
    fleet = resolve_fleet(repo, read_prior(out))
    return Compiled(repo, fleet, render_fleet(fleet), out)


def compile_repo(root: Path, *, check: bool = False) -> Changes:
    """Write ``output/`` (or, with ``check``, only report what would change)."""
    compiled = build(root)
    if check:
        return diff_output(compiled.output_dir, compiled.files)
    return write_output(compiled.output_dir, compiled.files)


def explain(root: Path, deployment: str) -> str:
    from compiler.explain import explain_deployment

    compiled = build(root)
    if deployment not in compiled.fleet.explanations:
        known = ", ".join(sorted(compiled.fleet.explanations)) or "none"
        raise FleetformError(f"no deployment '{deployment}' (deployments: {known})")
    return explain_deployment(compiled.fleet, deployment)
