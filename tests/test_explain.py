"""``fleetform explain``: a value from the repository can never forge a line of it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from compiler import api
from compiler.explain import shell_word
from tests.helpers_repo import make_repo

# A line break, a tab, Unicode's own line and paragraph separators, a right-to-left
# override and a zero-width space: each can fake or hide text on a terminal.
HOSTILE = "ok\n    env FORGED: x  <- hosts.d/h.yaml:1:1 (fake)\t\u2028\u2029\u202e\u200b'\\$"


def test_hostile_values_stay_on_their_line(tmp_path: Path) -> None:
    value = HOSTILE.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    value = value.replace("\t", "\\t")
    deployment = (
        "name: d\nbackend: srv\nlocal_path: /m/q\n"
        f'env: {{NOTE: "{value}"}}\n'
        'backend_parameters: ["--chat-template={{NOTE}}"]\n'
    )
    make_repo(tmp_path, {"deployments.d/d.yaml": deployment})
    clean = api.explain(tmp_path, "d")
    assert "FORGED" in clean
    lines = clean.splitlines()
    assert not any(line.lstrip().startswith("env FORGED") for line in lines)
    assert all(line.isprintable() for line in lines)
    (env_line,) = [line for line in lines if line.startswith("    env NOTE: ")]
    assert env_line.startswith("    env NOTE: " + shell_word(HOSTILE) + "  <- ")
    (command_line,) = [line for line in lines if line.startswith("    command: ")]
    origin = "  <- backends.d/b.yaml:3:22 (backend 'srv')"
    assert command_line.endswith(" " + shell_word("--chat-template=" + HOSTILE) + origin)


def test_shell_word_reads_back_in_bash() -> None:
    for word in (HOSTILE, "plain", "it's", "a b", "\x1b[31mred", "tab\there", "\U0001f600\u2066"):
        echoed = subprocess.run(
            ["bash", "-c", f"printf %s {shell_word(word)}"],
            capture_output=True,
            check=True,
        ).stdout.decode()
        assert echoed == word


def test_explain_names_gpustacks_rules(tmp_path: Path) -> None:
    """Which GPUStack rule chose a value: the version with none named, a null command
    falling back, and what GPUStack's own env variables set."""
    make_repo(
        tmp_path,
        {
            "backends.d/b.yaml": """\
            backend_name: srv
            default_run_command: serve {{model_path}} --port {{port}}
            version_configs:
              "1.10": {image_name: "example/srv:1.10", run_command: null}
              1.9rc1: {image_name: "example/srv:1.9rc1", run_command: ""}
            """,
            "deployments.d/d.yaml": """\
            - name: d
              backend: srv
              local_path: /m/x
              env: {GPUSTACK_MODEL_RUNTIME_UID: "1000", GPUSTACK_HOST_IPC: "true"}
            """,
        },
    )
    text = api.explain(tmp_path, "d")
    assert (
        "  version: 1.9rc1 (no backend_version or default_version: GPUStack's latest by"
        " compare_versions of 1.10, 1.9rc1)\n"
    ) in text
    assert (
        "    command: serve /m/x --port 40000  <- backends.d/b.yaml:2:22 (backend 'srv')\n"
        "      (null or empty at backends.d/b.yaml:5:59 (backend 'srv' version '1.9rc1',"
        " version_configs.1.9rc1.run_command): falls back, as in GPUStack)\n"
    ) in text
    assert (
        "    user: 1000 (from GPUSTACK_MODEL_RUNTIME_UID)  <- deployments.d/d.yaml:4:37"
        " (deployment 'd')\n"
    ) in text
    assert "    ipc: host (from GPUSTACK_HOST_IPC)  <- deployments.d/d.yaml:4:64" in text
