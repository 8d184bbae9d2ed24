"""``fleetform explain``: a resolved deployment and where each value came from.

Values come from the repository and are shown one per line, so each is written so
that it cannot break its line or drive the terminal: a value holding a line break,
an escape or any other character a terminal would not print as itself is written in
bash's ``$'…'`` quoting (which is also how to type it again), and every other line
is escaped (:func:`compiler.errors.printable`). A value can never forge a line.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from compiler import runtime_env
from compiler.errors import escape, printable
from compiler.resolve import Fleet, Origin


def explain_deployment(fleet: Fleet, name: str) -> str:
    info = fleet.explanations[name]
    replicas = [w for w in fleet.workloads if w.deployment == name]
    lines = [
        f"deployment {name}",
        f"  extends chain: {' -> '.join(info.chain)}",
        f"  backend: {info.backend}",
        f"  version: {info.version} ({info.version_reason})",
    ]
    cluster = next((c for c, s in fleet.clusters.items() if name in s.models), None)
    if cluster is not None:
        model = fleet.clusters[cluster].models[name]
        lines.append(
            f"  on GPUStack cluster {cluster}, as its model '{model['name']}'"
            f" ({model['replicas']} replica(s), scheduled by GPUStack; sent as"
            f" output/{cluster}/gpustack/models/{name}.yaml)"
        )
        return "\n".join(lines) + "\n"
    lines.append(f"  replicas: {len(replicas)}")

    def row(label: str, value: str, key: str) -> None:
        origin: Origin | None = info.origins.get(key)
        where = f"  <- {origin}" if origin else ""
        lines.append(printable(f"    {label}: {value}{where}"))
        for empty in info.fallbacks.get(key, ()):
            lines.append(
                printable(
                    f"      (null or empty at {empty.mark} ({empty.via}, {empty.key}):"
                    " falls back, as in GPUStack)"
                )
            )

    for workload in replicas:
        lines.append("")
        host = fleet.hosts[workload.host]
        lines.append(
            f"  replica {workload.replica} on host {host.name} ({host.target}, {host.address})"
        )
        row("host", host.name, f"replica {workload.replica}.host")
        row("port", str(workload.port), f"replica {workload.replica}.port")
        gpus = ",".join(str(i) for i in workload.gpus) or "none"
        row("gpus", f"{workload.framework} {gpus}", "framework")
        row("image", workload.image, "image_name")
        if workload.entrypoint is not None:
            row("entrypoint", shell_words(workload.entrypoint), "entrypoint")
        else:
            lines.append("    entrypoint: (the image's own)")
        row("command", shell_words(workload.command), "run_command")
        for key in ("default_backend_param", "backend_parameters"):
            if key in info.origins:
                row(f"  + {key}", "(appended)", key)
        # What GPUStack's own variables set (compiler/runtime_env.py), where one did.
        for label, value, variable in (
            ("shm_size", workload.shm_size, runtime_env.SHM_SIZE_GIB),
            ("user", workload.user, runtime_env.UID),
            ("ipc", workload.ipc, runtime_env.HOST_IPC),
            ("health check path", workload.health_check_path, runtime_env.HEALTH_CHECK_PATH),
        ):
            if value is not None and variable in workload.env:
                row(label, f"{value} (from {variable})", f"env.{variable}")
        shown = {**workload.env, **{k: f"(secret {v})" for k, v in workload.secrets.items()}}
        for key, value in sorted(shown.items()):
            row(f"env {key}", value if value.isprintable() else shell_word(value), f"env.{key}")
        for volume in workload.volumes:
            lines.append(printable(f"    volume: {volume}"))
        for device in workload.devices:
            lines.append(printable(f"    device: {device}"))
        lines.append(f"    spec hash: {workload.spec_hash()}")
    return "\n".join(lines) + "\n"


def shell_words(words: Iterable[str]) -> str:
    """``words`` as one line a POSIX shell (bash, for ``$'…'``) reads back as them."""
    return " ".join(shell_word(word) for word in words)


_ANSI_C = {"\\": "\\\\", "'": "\\'"}


def shell_word(word: str) -> str:
    if word.isprintable():
        return shlex.quote(word)
    body = "".join(
        _ANSI_C.get(char) or (char if char.isprintable() else escape(char)) for char in word
    )
    return f"$'{body}'"
