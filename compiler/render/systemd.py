"""A systemd host's workloads → one ``<unit>.service`` per replica.

The unit runs the same container as compose would: ``docker run`` in the foreground
with ``--rm``, a stale container removed first, stopped cleanly, restarted on failure.
Every argument is quoted by systemd's rules so that it reaches docker intact.
"""

from __future__ import annotations

import re

from compiler.model import Settings
from compiler.render import HEADER, container_name, ownership_labels
from compiler.resolve import Workload

DOCKER = "/usr/bin/docker"
# `docker stop --time` of a unit whose deployment sets no stop_timeout.
UNIT_STOP_TIMEOUT = 30
SECRETS_DIR = "/etc/fleetform"

_RESTART = {"no": "no", "on-failure": "on-failure", "always": "always", "unless-stopped": "always"}


def unit_name(workload: Workload, settings: Settings) -> str:
    return f"{container_name(workload, settings)}.service"


def secrets_env_file(workload: Workload, settings: Settings) -> str:
    """Where apply writes a unit's secret variables (``VAR=value`` lines), e.g.
    ``/etc/fleetform/fleet/fleet-chat-0.env``.

    The unit reads it with ``EnvironmentFile=`` and its ``docker run`` passes each
    secret variable by name (``--env VAR``), so no value is ever in the unit itself.
    """
    return f"{SECRETS_DIR}/{settings.project}/{container_name(workload, settings)}.env"


def docker_run_argv(workload: Workload, settings: Settings) -> list[str]:
    """The exact argv of the ``docker run`` the unit starts."""
    name = container_name(workload, settings)
    argv = [DOCKER, "run", "--rm", "--name", name, "--pull", "missing"]
    argv += ["--network", workload.network_mode, "--shm-size", workload.shm_size]
    if workload.stop_timeout is not None:
        argv += ["--stop-timeout", str(workload.stop_timeout)]
    if workload.ipc is not None:
        # docker keeps --shm-size beside it, unused: the host's /dev/shm is shared.
        argv += ["--ipc", workload.ipc]
    if workload.user is not None:
        argv += ["--user", workload.user]
    for key, value in ownership_labels(workload, settings).items():
        argv += ["--label", f"{key}={value}"]
    variables = [f"{key}={value}" for key, value in workload.env.items()]
    if workload.secrets:
        # A secret is passed by name, without a value: docker takes it from its own
        # environment, which the unit's EnvironmentFile= fills.
        variables = [
            key if key in workload.secrets else f"{key}={workload.env[key]}"
            for key in sorted([*workload.env, *workload.secrets])
        ]
    for variable in variables:
        argv += ["--env", variable]
    if workload.model_mount is not None:
        path = workload.model_mount
        fields = ["type=bind", _csv_field(f"source={path}"), _csv_field(f"target={path}")]
        argv += ["--mount", ",".join([*fields, "readonly"])]
    for volume in workload.volumes:
        argv += ["--volume", volume]
    for device in workload.devices:
        argv += ["--device", device]
    for port in workload.ports:
        argv += ["--publish", port]
    if workload.framework == "cuda" and workload.gpus:
        # docker reads --gpus as CSV: the quotes keep "device=0,1" one field.
        argv += ["--gpus", '"device=' + ",".join(str(i) for i in workload.gpus) + '"']
    tail = list(workload.command)
    if workload.entrypoint is not None:
        argv += ["--entrypoint", workload.entrypoint[0] if workload.entrypoint else ""]
        tail = list(workload.entrypoint[1:]) + tail
    argv.append(workload.image)
    return argv + tail


def render_unit(workload: Workload, settings: Settings) -> str:
    name = container_name(workload, settings)
    argv = docker_run_argv(workload, settings)
    stop = UNIT_STOP_TIMEOUT if workload.stop_timeout is None else workload.stop_timeout
    description = f"fleetform {settings.project}: {workload.deployment} replica {workload.replica}"
    lines = [
        f"# {HEADER}",
        "[Unit]",
        f"Description={_specifiers(description)}",
        "Requires=docker.service",
        "After=docker.service network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        f"X-Fleetform-Project={settings.project}",
        f"X-Fleetform-Deployment={workload.deployment}",
        f"X-Fleetform-Replica={workload.replica}",
        f"X-Fleetform-Spec-Hash={workload.spec_hash()}",
        "Type=simple",
        *_environment_file(workload, settings),
        f"ExecStartPre=-{DOCKER} rm --force {name}",
        "ExecStart=" + _exec_line(argv),
        f"ExecStop={DOCKER} stop --time {stop} {name}",
        f"Restart={_RESTART[workload.restart]}",
        "RestartSec=5",
        "TimeoutStartSec=1800",
        # systemd's own limit covers docker's grace time and the kill after it.
        f"TimeoutStopSec={stop + 30}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)


def _environment_file(workload: Workload, settings: Settings) -> list[str]:
    # No "-" prefix: without the file the unit fails to start, rather than start the
    # container without its secrets.
    if not workload.secrets:
        return []
    return [f"EnvironmentFile={_specifiers(secrets_env_file(workload, settings))}"]


def _exec_line(argv: list[str]) -> str:
    """argv quoted for ExecStart=: one option with its value per continued line."""
    image_at = _image_position(argv)
    groups: list[list[str]] = [argv[:2]]
    i = 2
    while i < image_at:
        width = 1 if argv[i] == "--rm" else 2
        groups.append(argv[i : i + width])
        i += width
    groups.extend([word] for word in argv[image_at:])
    return " \\\n    ".join(" ".join(quote(word) for word in group) for group in groups)


def _image_position(argv: list[str]) -> int:
    """Index of the image: the first word after the options (all but --rm take a value)."""
    i = 2
    while i < len(argv) and argv[i].startswith("--"):
        i += 1 if argv[i] == "--rm" else 2
    return i


def _csv_field(field: str) -> str:
    """docker reads --mount as CSV: quote a field holding a comma or a quote."""
    if any(char in field for char in ',"\n\r'):
        return '"' + field.replace('"', '""') + '"'
    return field


# Printable ASCII but for the characters quote() escapes or doubles.
_VERBATIM = re.compile(r"[\x20\x21\x23\x26-\x5b\x5d-\x7e]*")


def _is_unsafe(char: str) -> bool:
    """Characters systemd rejects raw ("not UTF-8 clean") or that are invisible controls."""
    code = ord(char)
    return (
        code < 0x20 or 0x7F <= code <= 0x9F or 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE
    )


def quote(word: str) -> str:
    """One ExecStart word, double-quoted with C escapes; ``$`` and ``%`` doubled."""
    if _VERBATIM.fullmatch(word):
        return f'"{word}"'
    out = ['"']
    for char in word:
        if char == "\\":
            out.append("\\\\")
        elif char == '"':
            out.append('\\"')
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif _is_unsafe(char):
            out.append("".join(f"\\x{byte:02x}" for byte in char.encode()))
        elif char == "$":
            out.append("$$")
        elif char == "%":
            out.append("%%")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def _specifiers(text: str) -> str:
    return text.replace("%", "%%")
