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
