"""``fleetform diff --base REF`` over a scripted sequence of commits in a real Git repo:
each commit's diff against the one before, as golden markdown and JSON
(``tests/golden/diff/``; refresh with ``--update-goldens``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden" / "diff"

BACKEND = """\
backend_name: srv
default_env: {LEVEL: info}
default_run_command: serve {{model_path}} --port {{port}} --log {{LEVEL}}
version_configs:
  v1: {image_name: "example/srv:1", custom_framework: cuda}
"""
HOSTS = """\
- name: h1
  address: 10.9.0.1
  gpus: {framework: cuda, count: 4}
- name: h2
  address: 10.9.0.2
  target: systemd
  gpus: {framework: cuda, count: 2}
"""
DEPLOYMENTS = """\
- {name: a, backend: srv, local_path: /m/a, gpu_selector: {gpu_ids: ["h1:cuda:0"]}}
- {name: b, backend: srv, local_path: /m/b, gpu_selector: {gpu_ids: ["h1:cuda:1"]}}
- name: c
  backend: srv
  local_path: /m/c
  gpu_selector: {gpu_ids: ["h2:cuda:0"]}
  env: {HF_TOKEN: {secret: HF_TOKEN}}
"""

D = "- {name: d, backend: srv, local_path: /m/d, gpu_selector: {gpu_ids: ['h1:cuda:2']}"
D_WITH_ENV = D + ", env: {X: '2'}}\n"

# Each step: (name, edit of the tree). The diff of each commit against the one before.
STEPS: list[tuple[str, dict[str, str | None]]] = [
    (
        "add-a-deployment",
        {"deployments.d/d.yaml": D + "}\n"},
    ),
    (
        "change-an-env-value",
        {"deployments.d/d.yaml": D_WITH_ENV},
    ),
    (
        "change-a-backend-default",
        {"backends.d/srv.yaml": BACKEND.replace("LEVEL: info", "LEVEL: debug")},
    ),
    ("move-a-gpu", {"deployments.d/all.yaml": DEPLOYMENTS.replace("h1:cuda:1", "h1:cuda:3")}),
    (
        "rename-a-file",
        {
            "deployments.d/d.yaml": None,
            "deployments.d/renamed.yaml": D_WITH_ENV,
        },
    ),
    (
        "delete-a-host",
        {
            "hosts.d/fleet.yaml": HOSTS.split("- name: h2")[0],
            "deployments.d/all.yaml": DEPLOYMENTS.replace("h1:cuda:1", "h1:cuda:3").split(
                "- name: c"
            )[0],
        },
    ),
]


def _git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
        "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    }
    done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _write(repo: Path, files: dict[str, str | None]) -> None:
    for relative, text in files.items():
        path = repo / relative
        if text is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def _diff(repo: Path, base: str, output_format: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "compiler.cli", "diff", "--repo", str(repo), "--base", base,
         "--format", output_format],
        capture_output=True,
        text=True,
    )  # fmt: skip


def _golden(name: str, text: str, update: bool) -> None:
    path = GOLDEN / name
    if update:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.read_text() == text, f"{name} differs; refresh with --update-goldens"


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    # The fleet in a subfolder of the Git work tree, as a monorepo might keep it.
    repo = tmp_path / "git" / "fleet"
    repo.mkdir(parents=True)
    _git(repo.parent, "init", "-q", "-b", "main")
    _write(
        repo,
        {
            "backends.d/srv.yaml": BACKEND,
            "hosts.d/fleet.yaml": HOSTS,
            "deployments.d/all.yaml": DEPLOYMENTS,
        },
    )
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    return repo


def test_each_step_against_the_one_before(fleet: Path, update_goldens: bool) -> None:
    for name, files in STEPS:
        before = _git(fleet, "rev-parse", "HEAD")
        _write(fleet, files)
        _git(fleet, "add", "-A")
        _git(fleet, "commit", "-qm", name)
        markdown = _diff(fleet, before, "markdown")
        as_json = _diff(fleet, before, "json")
        expected = 0 if name == "rename-a-file" else 2
        assert markdown.returncode == expected, markdown.stdout + markdown.stderr
        assert as_json.returncode == expected
        document = json.loads(as_json.stdout)
        assert document["schema"] == "fleetform.diff/v1"
        # Golden files name the base by a stable word, not by its commit hash.
        _golden(f"{name}.md", markdown.stdout.replace(before, "BASE"), update_goldens)
        _golden(f"{name}.json", as_json.stdout.replace(before, "BASE"), update_goldens)


def test_the_working_tree_and_output_are_not_touched(fleet: Path) -> None:
    (fleet / "deployments.d" / "all.yaml").write_text(DEPLOYMENTS.replace("/m/a", "/m/z"))
    before = {p: p.read_bytes() for p in fleet.rglob("*") if p.is_file() and ".git" not in p.parts}
    result = _diff(fleet, "HEAD", "text")
    assert result.returncode == 2, result.stderr
    assert "  ~ update a-0" in result.stdout
    after = {p: p.read_bytes() for p in fleet.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert after == before
    assert not (fleet / "output").exists()


def test_a_base_that_does_not_compile_is_reported(fleet: Path, update_goldens: bool) -> None:
    (fleet / "deployments.d" / "all.yaml").write_text(DEPLOYMENTS + "- {name: e, backend: nope}\n")
    _git(fleet, "add", "-A")
    _git(fleet, "commit", "-qm", "broken")
    broken = _git(fleet, "rev-parse", "HEAD")
    (fleet / "deployments.d" / "all.yaml").write_text(DEPLOYMENTS)
    result = _diff(fleet, broken, "markdown")
    assert result.returncode == 2, result.stderr
    assert "does not compile" in result.stdout
    _golden("broken-base.md", result.stdout.replace(broken, "BASE"), update_goldens)


@pytest.mark.parametrize(
    ("base", "message"),
    [
        ("no-such-ref", "'no-such-ref' is not a commit of this repository"),
        ("--output=/tmp/x", "'--output=/tmp/x' is not a Git revision"),
    ],
)
def test_a_bad_base_is_one_line(fleet: Path, base: str, message: str) -> None:
    result = _diff(fleet, base, "text")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(message), result.stderr


def test_the_markdown_is_cut_before_a_comment_s_limit() -> None:
    """A change to many replicas: the summary table stays whole, the details stop
    before the limit and say where the rest is."""
    from compiler.diff import FleetDiff, HostDiff, ReplicaDiff
    from compiler.plan import Change
    from compiler.report import diff_markdown

    replicas = tuple(
        ReplicaDiff(f"r{i}-0", f"r{i}", "update", (Change("image", "a:1", "a:2"),))
        for i in range(500)
    )
    result = FleetDiff("main", None, (HostDiff("h1", "changed", "compose", replicas, 0),))
    text = diff_markdown(result, limit=4_000)
    assert len(text) <= 4_000 + 300
    assert "| `h1` (compose) | changed | 0 | 500 | 0 |" in text
    assert text.rstrip().endswith(
        "with `--format json` (a CI job can keep it as an artifact) for all."
    )
    assert "~ update r0-0" in text and "~ update r499-0" not in text
    assert len(diff_markdown(result)) > 20_000  # the default limit keeps all of this
