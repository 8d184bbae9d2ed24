"""Property tests: any value reaches the container as exactly one intact argument.

Values with spaces, quotes, ``$``, ``%``, ``;``, backslashes, control and non-ASCII
characters go into a deployment's ``local_path`` (``{{model_path}}``), its env, its
``backend_parameters`` and, through env, into ``{{VAR}}`` placeholders of the
backend's command and entrypoint. The intended argv and env are computed here from
the (fixed) templates, independently of the compiler, and compared with what the
real tools read back from the rendered artifacts: ``docker-compose config`` for
``compose.yaml`` and ``systemd --test`` for the unit's ``ExecStart=``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    compose_config,
    compose_value,
    exec_time_word,
    option_values,
    parse_command_line,
    require_compose,
    require_tool,
    split_docker_run,
    systemd_exec_start,
    tool_env,
    write_yaml,
)
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from compiler import api

IMAGE = "registry.example/quoting:1"
DEPLOYMENT = "q"
SERVICE = f"{DEPLOYMENT}-0"
UNIT = f"fleetform-{DEPLOYMENT}-0.service"
MODEL_DIR = "/srv/models/"

BACKEND: dict[str, Any] = {
    "backend_name": "quoting",
    "parameter_format": "equal",
    "version_configs": {
        "plain": {
            "image_name": IMAGE,
            "custom_framework": "cuda",
            "run_command": "serve {{model_path}} --x {{MYVAR}} --name={{MYVAR}}",
        },
        "entry": {
            "image_name": IMAGE,
            "custom_framework": "cuda",
            "entrypoint": "launch --mode {{ENTRY_VAR}}",
            "run_command": "serve {{model_path}} --x {{MYVAR}} --name={{MYVAR}}",
        },
    },
}

# Pieces that break naive quoting, mixed with arbitrary text to find the rest.
NASTY = [
    " ", "  ", "'", '"', "$", "$$", "${X}", "$X", "$HOME", "%", "%h", "%%", "%n", ";", " ; ",
    "\\", "\\n", "\\\\", "\n", "\t", "\r", "é", "中", "🙂", "-", "--", "-x", "=", ":", ",",
    "`", "#", "&&", "|", "*", "?", "~", "{", "}", "(", ")", "<", ">", "!",
    "\u2028", "\u2029", "\ufeff", "\xa0", "\ufdd0", "\ufffe", "\uffff", "\U0001fffe",
]  # fmt: skip

# Control characters but tab and line breaks are refused where values enter (NUL,
# escapes, DEL, C1: tests/test_load.py); every other character must round-trip.
_ANY_CHAR = st.characters(exclude_categories=["Cs", "Cc"], include_characters="\t\n\r")
TEXT = (
    st.lists(st.one_of(st.sampled_from(NASTY), st.text(_ANY_CHAR, max_size=8)), max_size=6)
    .map("".join)
    .filter(lambda s: "{{" not in s and "}}" not in s)
)
# {{model_path}} is "/srv/models/<name>": the name is free text, except '/', which
# would move the read-only model mount that fleetform derives from the parent folder,
# and what a path may not hold (invisible characters, '.' and '..' as a name).
MODEL_NAME = TEXT.filter(lambda s: s.isprintable() and "/" not in s and s not in ("", ".", ".."))
# A backend_parameters entry that is a plain value: GPUStack trims an entry, and
# one that then starts with '-' is an option to be split, not a value.
PLAIN_PARAM = TEXT.filter(lambda s: s.strip() != "" and not s.strip().startswith("-"))


# Each example runs a real tool (~0.1 s), so a failure's shrink is what takes time;
# the "explain" phase would rerun it many more times for little.
PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)


@dataclass(frozen=True)
class Case:
    version: str  # "plain" (image's entrypoint) or "entry" (backend entrypoint)
    model_name: str
    myvar: str
    entry_var: str
    other: str
    param0: str
    param1: str

    @property
    def local_path(self) -> str:
        return MODEL_DIR + self.model_name

    def deployment(self) -> dict[str, Any]:
        return {
            "name": DEPLOYMENT,
            "backend": "quoting",
            "backend_version": self.version,
            "local_path": self.local_path,
            "backend_parameters": [self.param0, "--opt", self.param1],
            "env": {
                "MYVAR": self.myvar,
                "ENTRY_VAR": self.entry_var,
                "OTHER": self.other,
                "REF": "{{MYVAR}}@{{model_path}}",
            },
        }

    # The intended result, from the templates above and nothing of the compiler's.

    def intended_entrypoint(self) -> list[str] | None:
        return ["launch", "--mode", self.entry_var] if self.version == "entry" else None

    def intended_command(self) -> list[str]:
        return [
            "serve",
            self.local_path,
            "--x",
            self.myvar,
            "--name=" + self.myvar,
            self.param0.strip(),
            "--opt=" + self.param1.strip(),  # parameter_format: equal
        ]

    def intended_env(self) -> dict[str, str]:
        return {
            "MYVAR": self.myvar,
            "ENTRY_VAR": self.entry_var,
            "OTHER": self.other,
            "REF": f"{self.myvar}@{self.local_path}",
        }


CASES = st.builds(
    Case,
    version=st.sampled_from(["plain", "entry"]),
    model_name=MODEL_NAME,
    myvar=TEXT,
    entry_var=TEXT,
    other=TEXT,
    param0=PLAIN_PARAM,
    param1=PLAIN_PARAM,
)

# Always tried first: one value of each kind that has broken renderers before.
NASTY_CASE = Case(
    version="entry",
    model_name="my model $HOME %h ; 'q' \"dq\" \\ é中🙂",
    myvar="${X} $$ $X %% %n `id`\n\ttab",
    entry_var="-rf --x='y' \"$(z)\"",
    other="",
    param0="a b; c=$d %e",
    param1='{"json": [1, "two"]}',
)


# Found by this test; kept as explicit examples so that they always run.
# YAML folds Unicode's line and paragraph separators (NEL, a C1 control, is refused).
LINE_SEPARATOR_CASE = Case("plain", "a b", "x\u2028y", "", "\u2029", "p", "q")
NONCHARACTER_CASE = Case("entry", "a\u00e9b", "\ufdd0", "\U0001fffe", "\ufffe", "p", "q")


@contextmanager
def compiled(case: Case, target: str) -> Iterator[dict[str, bytes]]:
    """The artifacts of a one-host repository holding ``case``'s deployment."""
    root = Path(tempfile.mkdtemp(prefix="fleetform-quoting-"))
    try:
        host = {
            "name": "h",
            "address": "192.0.2.1",
            "target": target,
            "gpus": {"framework": "cuda", "count": 1},
        }
        write_yaml(root / "hosts.d" / "hosts.yaml", [host])
        write_yaml(root / "backends.d" / "quoting.yaml", [BACKEND])
        write_yaml(root / "deployments.d" / "q.yaml", [case.deployment()])
        yield api.build(root).files
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- compose ------------------------------------------------------------------------


def check_compose(case: Case) -> None:
    with compiled(case, "compose") as files:
        folder = Path(tempfile.mkdtemp(prefix="fleetform-compose-"))
        try:
            compose_file = folder / "compose.yaml"
            compose_file.write_bytes(files["h/compose.yaml"])
            service = compose_config(compose_file)["services"][SERVICE]
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    assert service["image"] == IMAGE
    command = [compose_value(word) for word in service["command"]]
    assert command == case.intended_command()
    entrypoint = service.get("entrypoint")
    if entrypoint is not None:
        entrypoint = [compose_value(word) for word in entrypoint]
    assert entrypoint == case.intended_entrypoint()
    environment = {key: compose_value(value) for key, value in service["environment"].items()}
    assert environment == case.intended_env()


@settings(
    max_examples=60,
    deadline=None,
    report_multiple_bugs=False,
    phases=PHASES,
    suppress_health_check=[HealthCheck.too_slow],
)
@example(NASTY_CASE)
@example(LINE_SEPARATOR_CASE)
@example(NONCHARACTER_CASE)
@given(CASES)
def test_compose_keeps_every_value_intact(case: Case) -> None:
    check_compose(case)


# --- systemd ------------------------------------------------------------------------


def check_systemd(case: Case) -> None:
    with compiled(case, "systemd") as files:
        unit_text = files[f"h/systemd/{UNIT}"].decode("utf-8")
    parsed = systemd_exec_start(UNIT, unit_text)
    argv = [exec_time_word(word) for word in parsed]
    assert argv[0] == "/usr/bin/docker"

    options, image, arguments = split_docker_run(argv)
    assert image == IMAGE
    entrypoint = case.intended_entrypoint()
    if entrypoint is None:
        assert option_values(options, "--entrypoint") == []
        assert arguments == case.intended_command()
    else:
        # docker run --entrypoint E IMAGE ARGS... runs E ARGS...
        assert option_values(options, "--entrypoint") == entrypoint[:1]
        assert arguments == entrypoint[1:] + case.intended_command()
    env_words = option_values(options, "--env")
    env = dict(word.split("=", 1) for word in env_words)
    assert len(env) == len(env_words)
    assert env == case.intended_env()


@settings(
    max_examples=60,
    deadline=None,
    report_multiple_bugs=False,
    phases=PHASES,
    suppress_health_check=[HealthCheck.too_slow],
)
@example(NASTY_CASE)
@example(LINE_SEPARATOR_CASE)
@example(NONCHARACTER_CASE)
@given(CASES)
def test_systemd_keeps_every_value_intact(case: Case) -> None:
    check_systemd(case)


# --- the instruments themselves -------------------------------------------------------


def test_compose_output_escapes_dollar(tmp_path: Path) -> None:
    """compose prints a value holding ``$`` with ``$$``, so its output needs undoing.

    ``${X}`` with X='p$q' in the environment interpolates to the value ``p$q`` (an
    interpolated value is not interpolated again), and ``a$$b`` is the value ``a$b``;
    both print with the ``$`` doubled.
    """
    binary = require_compose()
    compose_file = tmp_path / "compose.yaml"
    compose_file.write_text(
        'name: t\nservices:\n  s:\n    image: busybox\n    command: ["${X}", "a$$b", "%h;"]\n'
    )
    result = subprocess.run(
        [binary, "-f", str(compose_file), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env={**tool_env(), "X": "p$q"},
        cwd=tmp_path,
        check=True,
    )
    printed = json.loads(result.stdout)["services"]["s"]["command"]
    assert printed == ["p$$q", "a$$b", "%h;"]
    assert [compose_value(word) for word in printed] == ["p$q", "a$b", "%h;"]


KNOWN_UNIT = r"""[Service]
ExecStart=/bin/echo plain "a b" "q\"x" 'sq"x' "tab\there" "nl\nx" "d$$x" "bs\\x" "é中🙂" "" \
    "\x01" "\x7f" "semi;colon" "%%h" "back`tick" "o\101" caf\xc3\xa9 -lead "a'b"
"""
KNOWN_ARGV = [
    "/bin/echo", "plain", "a b", 'q"x', 'sq"x', "tab\there", "nl\nx", "d$$x", "bs\\x",
    "é中🙂", "", "\x01", "\x7f", "semi;colon", "%h", "back`tick", "oA", "café", "-lead",
    "a'b",
]  # fmt: skip


def test_systemd_dump_decoder_on_a_hand_written_unit() -> None:
    """The decoder reads back what systemd parsed from quoting written by hand."""
    assert systemd_exec_start("known-quoting.service", KNOWN_UNIT) == KNOWN_ARGV


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("/bin/x a b", ["/bin/x", "a", "b"]),
        ('/bin/x "a b" ""', ["/bin/x", "a b", ""]),
        (r'/bin/x "q\"x" "\\" "\$\$" "\`"', ["/bin/x", 'q"x', "\\", "$$", "`"]),
        (r'/bin/x "\n\t\r" "\001\177" "\x1b"', ["/bin/x", "\n\t\r", "\x01\x7f", "\x1b"]),
        ('/bin/x é中🙂 "a\'b"', ["/bin/x", "é中🙂", "a'b"]),
    ],
)
def test_parse_command_line(line: str, words: list[str]) -> None:
    assert parse_command_line(line) == words


def test_exec_time_word() -> None:
    assert exec_time_word("a$$b") == "a$b"
    assert exec_time_word("$$$$") == "$$"
    assert exec_time_word("$${X}") == "${X}"
    assert exec_time_word("%h;") == "%h;"
    with pytest.raises(AssertionError):
        exec_time_word("${X}")
    with pytest.raises(AssertionError):
        exec_time_word("$HOME")


def test_tools_are_real() -> None:
    """The property tests above need these; CI installs them, so absence is a failure."""
    require_compose()
    require_tool("systemd-analyze", "/usr/bin/systemd-analyze")
    if os.geteuid() == 0:
        require_tool("setpriv", "/usr/bin/setpriv")
