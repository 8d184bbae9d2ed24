"""fleetform against GPUStack 2.3.0's own code: the container each backend runs.

The oracle (tests/gpustack_oracle.py) runs GPUStack's import of the backend, its worker's
start of the model instance and its Docker deployer with a recording client, and says
which container GPUStack creates. Every backend of GPUStack 2.3.0's own marketplace
catalogue (read from the installed wheel), every backend of ``../shared/corpus/``, and a
table of tricky cases are compiled by fleetform for a compose host and a systemd host
and compared field by field: image, entrypoint and argv (what the container execs), env,
/dev/shm, user, IPC namespace, health path, and the GPUs.

A deployment here is what GPUStack's UI makes of the same choice: the model form is
pre-filled with the backend's ``default_backend_param`` and the version's env over
``default_env`` (GPUStack's worker applies only the model's); fleetform applies them
when it compiles. Everything else that differs is in :data:`DIFFERENCES`, each listed in
the README's "How fleetform differs from GPUStack" and each shown here to occur: a
difference that stops occurring fails :func:`test_every_documented_difference_occurs`,
and one that is not documented fails the comparison.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from compiler import api
from compiler.errors import FleetformError
from compiler.render.systemd import unit_name
from compiler.versions import compare_versions, gpustack_latest
from tests import gpustack_oracle as oracle
from tests.helpers import (
    corpus_dir,
    exec_time_word,
    option_values,
    split_docker_run,
    systemd_exec_start,
)

ADDRESS = "10.1.2.3"
PORT = 40000
HOST_GPUS = 4
MODEL_PATH = "/models/m/weights"
DEFAULT_MODEL_DIR = "/var/lib/fleetform/models"

# The differences left on purpose: name -> what it is (the README says the same).
DIFFERENCES: dict[str, str] = {
    "nvidia-reservation": (
        "cuda: the replica's GPUs are a device reservation (device_ids), its GPUs are the"
        " container's 0..n-1; GPUStack runs privileged with NVIDIA_VISIBLE_DEVICES=<every"
        " GPU's UUID> and CUDA_VISIBLE_DEVICES=<host index>"
    ),
    "cuda-order-one-gpu": (
        "CUDA_DEVICE_ORDER=PCI_BUS_ID only when a cuda replica has several GPUs (GPUStack:"
        " always, as its privileged container sees every GPU)"
    ),
    "musa-runtime-variable": (
        "musa: MTHREADS_VISIBLE_DEVICES, Moore Threads' variable (GPUStack's map spells it"
        " METHERDS_VISIBLE_DEVICES)"
    ),
    "runtime-variable-by-index": (
        "hggc: NVIDIA_VISIBLE_DEVICES lists indices (GPUStack: the GPUs' UUIDs)"
    ),
    "shm-beside-host-ipc": (
        "GPUSTACK_HOST_IPC: shm_size is kept beside ipc: host (docker ignores it);"
        " GPUStack drops it"
    ),
    "gid-no-group-add": (
        "GPUSTACK_MODEL_RUNTIME_GID: the user is uid:gid; GPUStack also adds the gid as a"
        " supplementary group"
    ),
    "split-first": (
        "placeholders are substituted inside each word after splitting: a value with"
        " spaces, or an empty one, stays one argument (GPUStack substitutes, then splits)"
    ),
    "not-privileged": (
        "containers are not privileged: they get the vendor's device files (GPUStack runs"
        " every custom backend privileged)"
    ),
    "restart-policy": (
        "the container restarts by itself (restart: unless-stopped, or the unit's"
        " Restart=); GPUStack's worker restarts it"
    ),
    "model-mount": (
        "the model's folder is mounted read-only at its path (GPUStack's containerised"
        " worker copies its own mounts onto the container)"
    ),
    "backend-defaults-at-compile": (
        "default_backend_param, default_env and a version's env apply to every deployment"
        " when compiling (GPUStack's UI copies them into the model form when it is created;"
        " its worker applies only the model's)"
    ),
    "hub-file-pattern": (
        "huggingface_filename / model_scope_file_path is an exact file name (GPUStack"
        " matches a pattern against the hub's files when downloading)"
    ),
    "placeholders-everywhere": (
        "built-ins and env variables are substituted in the run command, the entrypoint,"
        " the parameters and env values alike (GPUStack: env variables in the run command"
        " only, nothing in an entrypoint)"
    ),
    "empty-parameter": (
        "a parameter whose placeholder renders empty is empty ({{gpu_ids}} of a CPU"
        " replica; GPUStack puts the placeholder's text back)"
    ),
    "cuda-minor-compat": (
        "GPUSTACK_ENABLE_CUDA_MINOR_VERSION_COMPATIBILITY is not acted on: it needs the"
        " host driver's CUDA version, which the repository does not hold (set"
        " NVIDIA_DISABLE_REQUIRE=1 yourself)"
    ),
    "visibility-in-deployment-env": (
        "a deployment's env may not set a variable that picks its vendor's GPUs (GPUStack"
        " overrides its own map's variables silently)"
    ),
    "visibility-extras": (
        "a backend's ROCR_VISIBLE_DEVICES, GPU_DEVICE_ORDINAL or CUDA_VISIBLE_DEVICES is"
        " dropped for a ROCm or DTK replica (GPUStack keeps them, and they can hide its GPU)"
    ),
    "runtime-env-strict": (
        "a GPUSTACK_* value GPUStack ignores or half-applies is an error: a shm size of 0"
        " or less, a bad gid beside a good uid, a gid alone, a health path that is no HTTP"
        " path"
    ),
    "stricter-names": (
        "env names are shell names and version keys are not empty (GPUStack accepts a.b and '')"
    ),
    "control-characters": (
        "control characters (C0 but tab and line breaks, DEL, C1) are refused anywhere"
        " (GPUStack passes them to the container)"
    ),
    "strict-placeholders": (
        "an undefined placeholder is an error (GPUStack leaves it in the command)"
    ),
    "env-references": (
        "an env value may use other env variables, and a placeholder in a command gets the"
        " variable's rendered value (GPUStack renders env values with the built-ins only,"
        " and puts a variable's text as written into the command)"
    ),
    "unknown-version": (
        "a backend_version or default_version that names no version is an error (GPUStack"
        " runs the latest)"
    ),
    "yaml-import-names": (
        "a backend name need not end in -custom (GPUStack's YAML import requires it of"
        " user backends; its marketplace cards do not)"
    ),
    "run-command-continuation": (
        "a backslash-newline in a run command is a line continuation (GPUStack's shlex"
        " makes it an argument starting with a newline)"
    ),
    "served-name-with-spaces": (
        "served_name may hold spaces (GPUStack accepts such a model name, then fails to"
        " create its container: the name is a label value)"
    ),
}


@dataclass
class Case:
    """One deployment of one backend, compiled by fleetform and started by GPUStack."""

    id: str
    backend: dict[str, Any]
    deployment: dict[str, Any] = field(default_factory=dict)
    framework: str = "cuda"  # the host's GPUs
    gpus: list[int] = field(default_factory=lambda: [2])
    community: bool = False  # a marketplace card: GPUStack's community import path
    # What fleetform must say instead of compiling (a documented difference).
    fleetform_error: str | None = None
    # Checks of GPUStack's answer, for the cases where the two differ on purpose.
    gpustack: Callable[[dict[str, Any]], None] | None = None
    fleetform_args: list[str] | None = None  # fleetform's argv, where they differ
    fleetform_check: Callable[[dict[str, Any]], None] | None = None  # where they differ
    oracle: dict[str, Any] = field(default_factory=dict)  # more of the worker's state
    differences: tuple[str, ...] = ()  # documented differences this case shows
    prefill: bool = True  # GPUStack's UI copies the backend's defaults into the model
    may_refuse: bool = False  # generated: both refusing (a quote never closed) agrees

    @property
    def name(self) -> str:
        return "m"


def _backend(name: str, **fields: Any) -> dict[str, Any]:
    backend: dict[str, Any] = {
        "backend_name": name,
        "health_check_path": "/health",
        "default_run_command": (
            "serve {{model_path}} --host {{worker_ip}} --port {{port}} --name {{model_name}}"
        ),
        "version_configs": {"v1": {"image_name": "example/t:1", "custom_framework": "cuda"}},
    }
    backend.update(fields)
    return backend


T = "t-custom"
SPECULATIVE = '--speculative-config={"method": "ngram", "num_speculative_tokens": 5}'
KV = '--kv-transfer-config={"kv_connector":"X","kv_role":"kv_both"}'


def _expect_args(*args: str) -> Callable[[dict[str, Any]], None]:
    def check(result: dict[str, Any]) -> None:
        assert result["args"] == list(args), result["args"]

    return check


def _served(name: str) -> list[str]:
    """The argv of _backend's default run command, for model ``name``."""
    return ["serve", MODEL_PATH, "--host", ADDRESS, "--port", str(PORT), "--name", name]


def _equal(value: Any, expected: Any) -> None:
    assert value == expected, value


def _expect_error(part: str) -> Callable[[dict[str, Any]], None]:
    def check(result: dict[str, Any]) -> None:
        assert part in result.get("error", ""), result

    return check


TRICKY: list[Case] = [
    # --- parameters GPUStack keeps whole -----------------------------------------------
    Case("json-parameter", _backend(T), {"backend_parameters": [SPECULATIVE]}),
    Case("json-parameter-kv", _backend(T), {"backend_parameters": [KV, "--max-model-len 4096"]}),
    Case(
        "json-parameter-equal",
        _backend(T, parameter_format="equal"),
        {"backend_parameters": [SPECULATIVE, "--a 1", "--flag"]},
    ),
    Case(
        "json-parameter-space",
        _backend(T, parameter_format="space"),
        {"backend_parameters": [SPECULATIVE, "--a=1"]},
    ),
    Case("json-list", _backend(T), {"backend_parameters": ['--x=[1, {"a": "b ]"}] --y 3']}),
    Case("json-unclosed", _backend(T), {"backend_parameters": ['--x={"a": "unclosed --y 2']}),
    Case(
        "parameter-continuation",
        _backend(T),
        {"backend_parameters": ["--a 1 \\\n  --b=2 \\\n  --c 3 \\"]},
    ),
    Case("parameter-positional", _backend(T), {"backend_parameters": ["/path with space", "-0.5"]}),
    Case(
        "parameter-placeholder",
        _backend(T),
        {"backend_parameters": ["--tp {{gpu_count}}", "--ids={{gpu_ids}}", "--w {{worker_ip}}"]},
    ),
    Case(
        "default-backend-param",
        _backend(T, default_backend_param=["--max-model-len 8192"], parameter_format="equal"),
        {"backend_parameters": ["--dtype half"]},
    ),
    Case(
        "backend-defaults",
        _backend(T, default_backend_param=["--max-model-len 8192"], default_env={"V": "1"}),
        prefill=False,
        gpustack=lambda result: _equal((result["args"][-1], "V" in result["env"]), ("m", False)),
        fleetform_args=[*_served("m"), "--max-model-len", "8192"],
        differences=("backend-defaults-at-compile",),
    ),
    # --- nulls fall back ------------------------------------------------------------------
    Case(
        "version-null-run-command",
        _backend(
            T,
            version_configs={
                "v1": {"image_name": "example/t:1", "run_command": None, "entrypoint": None}
            },
        ),
    ),
    Case(
        "version-empty-run-command",
        _backend(
            T,
            default_entrypoint="/bin/launch --mode x",
            version_configs={
                "v1": {"image_name": "example/t:1", "run_command": "", "entrypoint": ""}
            },
        ),
    ),
    Case("deployment-empty-run-command", _backend(T), {"run_command": ""}),
    Case(
        "version-entrypoint",
        _backend(
            T,
            version_configs={
                "v1": {
                    "image_name": "example/t:1",
                    "entrypoint": "/bin/sh -c 'exec \"$@\"' --",
                    "run_command": "serve --port {{port}}",
                }
            },
        ),
    ),
    # --- version choice -----------------------------------------------------------------
    *(
        Case(
            f"latest-of-{'-'.join(versions)}",
            _backend(
                T,
                version_configs={v: {"image_name": f"example/t:{v}"} for v in versions},
            ),
        )
        for versions in (
            ("1.10", "1.9rc1"),
            ("2.0.0", "2.0.0rc1"),
            ("x", "x-sm120"),
            ("1.9", "1.9.post1"),
            ("1.9rc1", "1.9"),
            ("v2", "v10"),
            ("0.1.3-sm90", "0.1.3-sm100"),
        )
    ),
    Case(
        "named-version",
        _backend(T, version_configs={v: {"image_name": f"example/t:{v}"} for v in ("a", "b")}),
        {"backend_version": "a"},
    ),
    Case(
        "default-version",
        _backend(
            T,
            default_version="a",
            version_configs={v: {"image_name": f"example/t:{v}"} for v in ("a", "b")},
        ),
    ),
    Case(
        "unknown-version",
        _backend(T, version_configs={v: {"image_name": f"example/t:{v}"} for v in ("a", "b")}),
        {"backend_version": "c"},
        fleetform_error="backend 't-custom' has no version 'c' (versions: a, b)",
        gpustack=lambda result: _equal(result["image"], "example/t:b"),
        differences=("unknown-version",),
    ),
    # --- braces ---------------------------------------------------------------------------
    Case(
        "spaced-braces-in-command",
        _backend(T, default_run_command="serve --port {{port}} --n {{ name }}"),
    ),
    Case(
        "chat-template-parameter",
        _backend(T),
        {"backend_parameters": ["--chat-template '{{ bos_token }}{% for m in messages %}'"]},
    ),
    Case("env-builtins", _backend(T, default_env={"A": "{{port}}-{{model_name}}"})),
    Case(
        "env-references",
        _backend(T, default_env={"A": "{{port}}-{{model_name}}"}, default_run_command="s {{A}}"),
        {"env": {"B": "x {{A}}"}},
        gpustack=lambda result: _equal(
            (result["args"], result["env"]["B"]), (["s", "{{port}}-{{model_name}}"], "x {{A}}")
        ),
        fleetform_args=["s", f"{PORT}-m"],
        differences=("env-references",),
    ),
    Case(
        "undefined-placeholder",
        _backend(T, default_run_command="serve {{NOPE}}"),
        fleetform_error="undefined placeholder {{NOPE}}",
        gpustack=_expect_args("serve", "{{NOPE}}"),
        differences=("strict-placeholders",),
    ),
    Case(
        "value-with-spaces",
        _backend(T, default_run_command="serve {{MODEL_DIR}} --port {{port}}"),
        {"env": {"MODEL_DIR": "/models/my model"}},
        gpustack=_expect_args("serve", "/models/my", "model", "--port", str(PORT)),
        fleetform_args=["serve", "/models/my model", "--port", str(PORT)],
        differences=("split-first",),
    ),
    Case(
        "run-command-continuation",
        _backend(T, default_run_command="serve \\\n  --port {{port}}"),
        gpustack=_expect_args("serve", "\n", "--port", str(PORT)),
        fleetform_args=["serve", "--port", str(PORT)],
        differences=("run-command-continuation",),
    ),
    # --- names, hub files, GPUStack's own variables -----------------------------------------
    Case("served-name", _backend(T), {"served_name": "qwen2.5-7b"}),
    Case(
        "served-name-with-spaces",
        _backend(T),
        {"served_name": "Qwen 2.5 7B"},
        gpustack=_expect_error("label"),
        fleetform_args=_served("Qwen 2.5 7B"),
        differences=("served-name-with-spaces",),
    ),
    Case(
        "hub-file",
        _backend(T, default_run_command="llama-server -m {{model_path}} --port {{port}}"),
        {
            "huggingface_repo_id": "Qwen/Qwen2.5-7B-Instruct-GGUF",
            "huggingface_filename": "qwen2.5-7b-instruct-q4_k_m.gguf",
        },
    ),
    Case(
        "hub-file-pattern",
        _backend(T, default_run_command="llama-server -m {{model_path}} --port {{port}}"),
        {
            "huggingface_repo_id": "Qwen/Qwen2.5-7B-Instruct-GGUF",
            "huggingface_filename": "*q4_k_m.gguf",
        },
        fleetform_error="is a pattern; fleetform needs the exact file name",
        gpustack=lambda result: _equal("error" in result, False),
        differences=("hub-file-pattern",),
    ),
    Case(
        "container-settings",
        _backend(T),
        {
            "env": {
                "GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB": "2",
                "GPUSTACK_MODEL_RUNTIME_UID": "1000",
                "GPUSTACK_MODEL_RUNTIME_GID": "1001",
                "GPUSTACK_MODEL_HEALTH_CHECK_PATH": "/v1/models",
            }
        },
        differences=("gid-no-group-add",),
    ),
    Case(
        "host-ipc-from-backend",
        _backend(T, default_env={"GPUSTACK_HOST_IPC": "true"}),
        differences=("shm-beside-host-ipc",),
    ),
    Case(
        "plain-name",
        _backend("plain-name"),
        gpustack=_expect_error("-custom"),
        differences=("yaml-import-names",),
    ),
    # --- found by attacking the change: now the same ----------------------------------------
    Case("env-named-like-a-builtin", _backend(T), {"env": {"port": "1", "model_name": "x"}}),
    Case(
        "parameters-across-lists",
        _backend(T, parameter_format="equal", default_backend_param=["--flag"]),
        {"backend_parameters": ["value", "--lora-modules a", "b"]},
    ),
    Case(
        "host-ipc-as-written",
        _backend(T),
        {"env": {"GPUSTACK_HOST_IPC": "{{gpu_count}}", "GPUSTACK_MODEL_RUNTIME_UID": "+5"}},
    ),
    Case("other-vendors-variable", _backend(T, default_env={"HIP_VISIBLE_DEVICES": "0"})),
    Case(
        "empty-strings-are-unset",
        _backend(
            T,
            health_check_path="",
            default_version="",
            version_configs={"v1": {"image_name": ""}, "v0": {"image_name": "x/t:0"}},
        ),
        {"image_name": "x/t:own", "backend_version": ""},
    ),
    Case(
        "empty-health-path-variable",
        _backend(T),
        {"env": {"GPUSTACK_MODEL_HEALTH_CHECK_PATH": ""}},
    ),
    # --- found by attacking the change: different on purpose -------------------------------
    Case(
        "env-in-parameter",
        _backend(T),
        {"env": {"MYV": "abc"}, "backend_parameters": ["--x {{MYV}}"]},
        gpustack=lambda result: _equal(result["args"][-2:], ["--x", "{{MYV}}"]),
        fleetform_args=[*_served("m"), "--x", "abc"],
        differences=("placeholders-everywhere",),
    ),
    Case(
        "placeholder-in-entrypoint",
        _backend(T, default_entrypoint="/bin/run --port {{port}}"),
        gpustack=lambda result: _equal(result["entrypoint"], ["/bin/run", "--port", "{{port}}"]),
        fleetform_check=lambda ours: _equal(ours["entrypoint"], ["/bin/run", "--port", str(PORT)]),
        differences=("placeholders-everywhere",),
    ),
    Case(
        "empty-parameter",
        _backend(T, version_configs={"v1": {"image_name": "x/t:1", "custom_framework": "cpu"}}),
        {"backend_parameters": ["--ids", "{{gpu_ids}}"]},
        framework="cpu",
        gpus=[],
        gpustack=lambda result: _equal(result["args"][-2:], ["--ids", "{{gpu_ids}}"]),
        fleetform_args=[*_served("m"), "--ids", ""],
        differences=("empty-parameter",),
    ),
    Case(
        "quotes-inside-braces",
        _backend(T, default_run_command='serve {{po"r"t}}'),
        gpustack=_expect_args("serve", "{{port}}"),
        fleetform_args=["serve", str(PORT)],
        differences=("split-first",),
    ),
    Case(
        "cuda-minor-compat",
        _backend(
            T, version_configs={"v1": {"image_name": "e/x:cuda12.8-v1", "custom_framework": "cuda"}}
        ),
        {"env": {"GPUSTACK_ENABLE_CUDA_MINOR_VERSION_COMPATIBILITY": "true"}},
        oracle={"runtime_version": "12.4"},
        gpustack=lambda result: _equal(result["env"].get("NVIDIA_DISABLE_REQUIRE"), "1"),
        fleetform_check=lambda ours: _equal("NVIDIA_DISABLE_REQUIRE" in ours["env"], False),
        differences=("cuda-minor-compat",),
    ),
    Case(
        "visibility-in-deployment-env",
        _backend(T, version_configs={"v1": {"image_name": "x/t:1", "custom_framework": "rocm"}}),
        {"env": {"HIP_VISIBLE_DEVICES": "0"}},
        framework="rocm",
        fleetform_error="HIP_VISIBLE_DEVICES picks the GPUs a replica sees",
        gpustack=lambda result: _equal(result["env"]["HIP_VISIBLE_DEVICES"], "2"),
        differences=("visibility-in-deployment-env",),
    ),
    Case(
        "visibility-extras",
        _backend(
            T,
            default_env={"ROCR_VISIBLE_DEVICES": "0"},
            version_configs={"v1": {"image_name": "x/t:1", "custom_framework": "rocm"}},
        ),
        framework="rocm",
        gpustack=lambda result: _equal(result["env"]["ROCR_VISIBLE_DEVICES"], "0"),
        fleetform_check=lambda ours: _equal("ROCR_VISIBLE_DEVICES" in ours["env"], False),
        differences=("visibility-extras",),
    ),
    Case(
        "missing-default-version",
        _backend(
            T,
            default_version="zzz",
            version_configs={v: {"image_name": f"example/t:{v}"} for v in ("a", "b")},
        ),
        fleetform_error="default_version 'zzz' is not in version_configs (versions: a, b)",
        gpustack=lambda result: _equal(result["image"], "example/t:b"),
        differences=("unknown-version",),
    ),
    *(
        Case(
            f"runtime-env-strict-{number}",
            _backend(T),
            {"env": env},
            fleetform_error=message,
            gpustack=lambda result: _equal("error" in result, False),
            differences=("runtime-env-strict",),
        )
        for number, (env, message) in enumerate(
            [
                ({"GPUSTACK_MODEL_RUNTIME_SHM_SIZE_GIB": "0"}, "is not a size in GiB"),
                (
                    {"GPUSTACK_MODEL_RUNTIME_UID": "5", "GPUSTACK_MODEL_RUNTIME_GID": "x"},
                    "'x' is not a numeric user or group id",
                ),
                ({"GPUSTACK_MODEL_RUNTIME_GID": "5"}, "needs GPUSTACK_MODEL_RUNTIME_UID"),
                (
                    {"GPUSTACK_MODEL_HEALTH_CHECK_PATH": "/{{model_name}}/h"},
                    "is not an HTTP path",
                ),
            ]
        )
    ),
    Case(
        "dotted-env-name",
        _backend(T),
        {"env": {"a.b": "1"}},
        fleetform_error="invalid environment variable name 'a.b'",
        gpustack=lambda result: _equal(result["env"]["a.b"], "1"),
        differences=("stricter-names",),
    ),
    # GPUStack takes the backend, then fails to start it: both refuse.
    Case(
        "empty-version-key",
        _backend(T, version_configs={"": {"image_name": "x/t:1"}}),
        may_refuse=True,
    ),
    Case(
        "control-character",
        _backend(T, default_run_command="serve\x0b--port {{port}}"),
        fleetform_error="control character",
        gpustack=lambda result: _equal("error" in result, False),
        differences=("control-characters",),
    ),
    # --- GPUs -------------------------------------------------------------------------------
    Case("cuda-two-gpus", _backend(T), gpus=[1, 3]),
    Case(
        "gpu-ids-out-of-order",
        _backend(
            T,
            default_run_command="serve --ids {{gpu_ids}}",
            default_env={"IDS": "{{gpu_ids}}"},
            version_configs={"v1": {"image_name": "x/t:1", "custom_framework": "rocm"}},
        ),
        framework="rocm",
        gpus=[3, 1],
    ),
    Case(
        "cpu",
        _backend(T, version_configs={"v1": {"image_name": "x/t:1", "custom_framework": "cpu"}}),
        framework="cpu",
        gpus=[],
    ),
    *(
        Case(
            f"gpu-2-of-4-{framework}",
            _backend(
                T,
                default_run_command="serve --port {{port}} --ids {{gpu_ids}} --n {{gpu_count}}",
                version_configs={
                    "v1": {"image_name": "example/t:1", "custom_framework": framework}
                },
            ),
            framework=framework,
        )
        for framework in ("cuda", "rocm", "cann", "musa", "corex", "maca", "dtk", "neuware", "hggc")
    ),
]


# --- generated cases: parameters and version orders --------------------------------------

_PIECES = ["--a", "--b=1", "-c", " ", "  ", "\t", "\\\n", "\\", "'", '"', "={",
           '{"k": "v w"}', "[1, 2]", "}", "]", "x", "-0.5", "{{port}}", "{{ name }}", "=",
           '\\"', "=[", "é"]  # fmt: skip


def _generated_parameter_cases(count: int = 150, seed: int = 2300) -> list[Case]:
    """Parameter entries made of the pieces that split differently: quotes, escapes,
    continuations, JSON after '=', braces; both must split them alike or both refuse."""
    rng = random.Random(seed)
    cases = []
    for number in range(count):
        entries = [
            "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 9)))
            for _ in range(rng.randint(1, 3))
        ]
        style = rng.choice([None, "space", "equal"])
        fields = {"parameter_format": style} if style else {}
        cases.append(
            Case(
                f"generated-parameters-{number}",
                _backend(T, **fields),
                {"backend_parameters": entries},
                may_refuse=True,
            )
        )
    return cases


_VERSION_PIECES = ["1", "2", "10", "9", "0", ".", ".", "-", "_", "+", "rc1", "rc", "alpha",
                   "beta2", "post1", "sm120", "x", "v", "dev0", "a"]  # fmt: skip


def _generated_version_lists(count: int = 300, seed: int = 2303) -> list[list[str]]:
    rng = random.Random(seed)
    lists = []
    for _ in range(count):
        versions = {
            "".join(rng.choice(_VERSION_PIECES) for _ in range(rng.randint(1, 6)))
            for _ in range(rng.randint(2, 5))
        }
        lists.append(sorted(versions, key=lambda _: rng.random()))
    return lists


# --- the backends no one here wrote -------------------------------------------------------


def _cases_of(cards: list[dict[str, Any]], source: str) -> list[Case]:
    """Each card, with each of its versions named, and with none named."""
    cases = []
    for card in cards:
        versions = card.get("version_configs") or {}
        for version in [None, *versions]:
            config = versions.get(version) or {}
            framework = config.get("custom_framework") or "cuda"
            if version is None:
                chosen = card.get("default_version")
                framework = (versions.get(chosen) or {}).get("custom_framework") or "cuda"
            cases.append(
                Case(
                    f"{source}:{card['backend_name']}:{version or '(none named)'}",
                    card,
                    {"backend_version": version} if version is not None else {},
                    framework=framework,
                    gpus=[] if framework == "cpu" else [2],
                    community=True,
                )
            )
    return cases


def _corpus_cards() -> list[dict[str, Any]]:
    cards = []
    for path in sorted(corpus_dir().rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            cards.extend(document if isinstance(document, list) else [document] if document else [])
    return cards


# --- fleetform's side: the artifacts, read back -------------------------------------------


def _write_repo(root: Path, case: Case, target: str) -> None:
    deployment: dict[str, Any] = {"name": case.name, "backend": case.backend["backend_name"]}
    if not any(key.startswith(("huggingface", "model_scope")) for key in case.deployment):
        deployment["local_path"] = MODEL_PATH
    if case.gpus:
        deployment["gpu_selector"] = {
            "gpu_ids": [f"h1:{case.framework}:{index}" for index in case.gpus]
        }
    deployment.update(case.deployment)
    host: dict[str, Any] = {"name": "h1", "address": ADDRESS, "target": target}
    if case.framework != "cpu":
        host["gpus"] = {"framework": case.framework, "count": HOST_GPUS}
    for relative, document in (
        ("backends.d/b.yaml", case.backend),
        ("hosts.d/h.yaml", host),
        ("deployments.d/d.yaml", deployment),
    ):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


def _from_compose(compiled: api.Compiled) -> dict[str, Any]:
    (workload,) = compiled.fleet.workloads
    service = yaml.safe_load(compiled.files["h1/compose.yaml"])["services"][workload.name]

    def value(text: Any) -> str:
        return str(text).replace("$$", "$")

    entrypoint = service.get("entrypoint")
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    (nvidia,) = reservations.get("devices") or [{"device_ids": []}]
    return {
        "image": service["image"],
        "entrypoint": None if entrypoint is None else [value(w) for w in entrypoint],
        "args": [value(w) for w in service.get("command", [])],
        "env": {k: value(v) for k, v in (service.get("environment") or {}).items()},
        "shm_size": _bytes(service.get("shm_size")),
        "user": service.get("user"),
        "ipc": service.get("ipc"),
        "cuda_gpus": [int(i) for i in nvidia["device_ids"]],
        "health_check_path": workload.health_check_path,
        "network_mode": service["network_mode"],
        "privileged": service.get("privileged", False),
        "restart": service["restart"],
        "model_mounted": any(v["target"] == workload.model_mount for v in service["volumes"]),
    }


def _from_unit(compiled: api.Compiled) -> dict[str, Any]:
    (workload,) = compiled.fleet.workloads
    name = unit_name(workload, compiled.fleet.settings)
    text = compiled.files[f"h1/systemd/{name}"].decode()
    argv = [exec_time_word(word) for word in systemd_exec_start(name, text)]
    options, image, arguments = split_docker_run(argv)
    (entry,) = option_values(options, "--entrypoint") or [None]
    entrypoint = None
    if entry is not None:
        # docker run takes one entrypoint word; the unit puts the rest before the command.
        count = len(workload.entrypoint or ())
        entrypoint, arguments = [entry, *arguments[: count - 1]], arguments[count - 1 :]
    (gpus,) = option_values(options, "--gpus") or ['"device="']
    (shm,) = option_values(options, "--shm-size")
    users = option_values(options, "--user")
    ipcs = option_values(options, "--ipc")
    return {
        "image": image,
        "entrypoint": entrypoint,
        "args": arguments,
        "env": dict(item.split("=", 1) for item in option_values(options, "--env")),
        "shm_size": _bytes(shm),
        "user": users[0] if users else None,
        "ipc": ipcs[0] if ipcs else None,
        "cuda_gpus": [int(i) for i in gpus.strip('"').removeprefix("device=").split(",") if i],
        "health_check_path": workload.health_check_path,
        "network_mode": option_values(options, "--network")[0],
        "privileged": False,  # split_docker_run knows no --privileged: it would fail
        "restart": workload.restart,  # systemd's Restart= restarts the unit
        "model_mounted": bool(option_values(options, "--mount")),
    }


def _bytes(size: str | None) -> int | None:
    from compiler.fields import size_in_bytes

    return None if size is None else size_in_bytes(str(size))


def _fleetform(root: Path, case: Case, target: str) -> tuple[dict[str, Any], api.Compiled]:
    _write_repo(root, case, target)
    compiled = api.build(root)
    read = _from_compose if target == "compose" else _from_unit
    return read(compiled), compiled


# --- GPUStack's side ------------------------------------------------------------------------


def _oracle_case(case: Case, compiled: api.Compiled | None) -> dict[str, Any]:
    """What GPUStack's UI makes of the deployment: its model form pre-filled from the
    backend (default_backend_param; default_env under the version's env)."""
    backend = case.backend
    d = case.deployment
    version = d.get("backend_version")
    if compiled is not None:
        version = compiled.fleet.explanations[case.name].version
    versions = backend.get("version_configs") or {}
    defaults = case.prefill
    env = {
        **((backend.get("default_env") or {}) if defaults else {}),
        **(((versions.get(version) or {}).get("env") or {}) if defaults else {}),
        **(d.get("env") or {}),
    }
    model: dict[str, Any] = {
        "name": d.get("served_name") or case.name,
        "env": env,
        "backend_parameters": [
            *((backend.get("default_backend_param") or []) if defaults else []),
            *(d.get("backend_parameters") or []),
        ],
    }
    for key in ("backend_version", "run_command", "image_name"):
        if key in d:
            model[key] = d[key]
    if "huggingface_repo_id" in d:
        model.update(
            source="huggingface",
            huggingface_repo_id=d["huggingface_repo_id"],
            huggingface_filename=d.get("huggingface_filename"),
        )
    else:
        model.update(source="local_path", local_path=MODEL_PATH)
    model_path = MODEL_PATH
    if "huggingface_repo_id" in d:
        # Where fleetform puts a hub model (GPUStack's download cache is elsewhere): the
        # comparison is of the command around it.
        parts = [DEFAULT_MODEL_DIR, d["huggingface_repo_id"], d.get("huggingface_filename")]
        model_path = "/".join(part for part in parts if part)
    return {
        "id": case.id,
        "import": "community" if case.community else "yaml",
        "backend": backend,
        "model": model,
        "model_path": model_path,
        "port": PORT,
        "worker_ip": ADDRESS,
        "framework": case.framework,
        "host_gpus": HOST_GPUS if case.gpus else 0,
        "gpu_indexes": case.gpus,
        **case.oracle,
    }


def _as_fleetform_runs_it(result: dict[str, Any], case: Case, seen: set[str]) -> dict[str, Any]:
    """GPUStack's container with the documented differences applied (each one applied
    is added to ``seen``), in the shape :func:`_from_compose` reads."""
    env = dict(result["env"])
    cuda_gpus: list[int] = []
    if case.framework == "cuda" and case.gpus:
        assert env.pop("CUDA_VISIBLE_DEVICES") == ",".join(map(str, case.gpus))
        assert len(env.pop("NVIDIA_VISIBLE_DEVICES").split(",")) == HOST_GPUS
        cuda_gpus = list(case.gpus)
        seen.add("nvidia-reservation")
        if len(case.gpus) == 1 and env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID":
            del env["CUDA_DEVICE_ORDER"]
            seen.add("cuda-order-one-gpu")
    if "METHERDS_VISIBLE_DEVICES" in env:
        env["MTHREADS_VISIBLE_DEVICES"] = env.pop("METHERDS_VISIBLE_DEVICES")
        seen.add("musa-runtime-variable")
    if case.framework == "hggc" and case.gpus:
        uuids = env["NVIDIA_VISIBLE_DEVICES"].split(",")
        assert len(uuids) == HOST_GPUS and not any(u.isdigit() for u in uuids)
        env["NVIDIA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(HOST_GPUS))
        seen.add("runtime-variable-by-index")
    shm = result["shm_size"]
    if result["host_ipc"] and shm is None:
        shm = "kept beside ipc: host"
        seen.add("shm-beside-host-ipc")
    if result.get("group_add"):
        seen.add("gid-no-group-add")
    assert result["privileged"] is True
    seen.add("not-privileged")
    assert result["restart_policy"] is None and result["mounts"] is None
    seen.update(("restart-policy", "model-mount"))
    return {
        "image": result["image"],
        "entrypoint": result["entrypoint"],
        "args": result["args"],
        "env": env,
        "shm_size": shm,
        # GPUStack passes a uid alone as an int; docker reads "5" and 5 alike.
        "user": None if result["user"] is None else str(result["user"]),
        "ipc": "host" if result["host_ipc"] else None,
        "cuda_gpus": cuda_gpus,
        "health_check_path": result["health_check_path"] or None,  # "": no probe, both
        "network_mode": result["network_mode"],
        "privileged": False,
        "restart": "unless-stopped",
        "model_mounted": True,
    }


# --- the comparison ---------------------------------------------------------------------------

COMPARED = ("version", "image", "entrypoint", "args", "env", "shm_size", "user", "ipc",
            "cuda_gpus", "health_check_path", "network_mode", "privileged", "restart",
            "model_mounted")  # fmt: skip


@dataclass
class Compared:
    case: Case
    fleetform: dict[str, Any] | None  # None: fleetform refused
    error: str | None
    compiled: api.Compiled | None
    gpustack: dict[str, Any]


def _compare(item: Compared, seen: set[str], target: str = "compose") -> list[str]:
    """What differs without being documented, as lines for the failure message."""
    case, ours, theirs = item.case, item.fleetform, item.gpustack
    problems = []
    if case.may_refuse and item.error is not None:
        # fleetform refuses what GPUStack could not start either.
        if "error" in theirs:
            return []
        return [f"{case.id} [{target}]: fleetform refused what GPUStack runs: {item.error}"]
    if case.fleetform_error is not None:
        if item.error is None or case.fleetform_error not in item.error:
            problems.append(f"fleetform should refuse with {case.fleetform_error!r}: {item.error}")
    elif item.error is not None:
        problems.append(f"fleetform refused: {item.error}")
    if case.gpustack is not None:
        # A difference on purpose: GPUStack's side is pinned, and fleetform's where given.
        try:
            case.gpustack(theirs)
        except (AssertionError, KeyError) as error:
            problems.append(f"GPUStack no longer does what the difference says: {error}")
        if ours is not None and case.fleetform_args not in (None, ours["args"]):
            problems.append(f"fleetform args {ours['args']} != {case.fleetform_args}")
        if ours is not None and case.fleetform_check is not None:
            try:
                case.fleetform_check(ours)
            except (AssertionError, KeyError) as error:
                problems.append(f"fleetform does not do what the difference says: {error}")
        if not problems:
            seen.update(case.differences)
        return [f"{case.id} [{target}]: {p}" for p in problems]
    if "error" in theirs:
        problems.append(f"GPUStack refused: {theirs['error']}")
    if problems or ours is None:
        return [f"{case.id} [{target}]: {p}" for p in problems]
    expected = _as_fleetform_runs_it(theirs, case, seen)
    expected["version"] = theirs["version"]
    for key in COMPARED:
        if key == "shm_size" and expected[key] == "kept beside ipc: host":
            continue
        if ours[key] != expected[key]:
            problems.append(f"{key}: fleetform {ours[key]!r}, GPUStack {expected[key]!r}")
    return [f"{case.id} [{target}]: {p}" for p in problems]


@pytest.fixture(scope="module")
def venv() -> Path:
    return oracle.require_oracle()


@pytest.fixture(scope="module")
def cards(venv: Path) -> list[dict[str, Any]]:
    return oracle.catalogue(venv)


@pytest.fixture(scope="module")
def comparison(
    venv: Path, cards: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Compared]:
    """Every case compiled for a compose host, and started by GPUStack (one oracle run)."""
    cases = [
        *TRICKY,
        *_cases_of(cards, "catalogue"),
        *_cases_of(_corpus_cards(), "corpus"),
        *_generated_parameter_cases(),
    ]
    assert len({case.id for case in cases}) == len(cases)
    compiled: dict[str, tuple[dict[str, Any] | None, str | None, api.Compiled | None]] = {}
    for number, case in enumerate(cases):
        root = tmp_path_factory.mktemp(f"case{number}")
        try:
            ours, build = _fleetform(root, case, "compose")
            compiled[case.id] = (ours, None, build)
            ours["version"] = build.fleet.explanations[case.name].version
        except FleetformError as error:
            compiled[case.id] = (None, str(error), None)
    answers = oracle.run([_oracle_case(case, compiled[case.id][2]) for case in cases], venv)
    return {
        case.id: Compared(case, *compiled[case.id], answer)
        for case, answer in zip(cases, answers, strict=True)
    }


def test_the_catalogue_is_gpustack_2_3_0s_own(cards: list[dict[str, Any]]) -> None:
    names = {card["backend_name"] for card in cards}
    assert len(cards) == 10
    assert {"DeepInfer", "Modular MAX"} <= {n for n in names if n in ("DeepInfer", "Modular MAX")}


def test_there_are_enough_tricky_cases() -> None:
    assert len(TRICKY) >= 25


def test_every_backend_runs_the_container_gpustack_runs(comparison: dict[str, Compared]) -> None:
    problems = [line for item in comparison.values() for line in _compare(item, set())]
    assert not problems, "\n".join(problems)


def test_systemd_units_run_the_same_containers(
    comparison: dict[str, Compared], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The systemd artifact, read back through systemd's own parser, for the tricky cases
    (compose and systemd share one resolved workload; this proves the unit keeps it)."""
    problems = []
    for number, case in enumerate(TRICKY):
        item = comparison[case.id]
        if item.fleetform is None:
            continue
        root = tmp_path_factory.mktemp(f"unit{number}")
        ours, build = _fleetform(root, case, "systemd")
        ours["version"] = build.fleet.explanations[case.name].version
        unit = Compared(case, ours, None, build, item.gpustack)
        problems.extend(_compare(unit, set(), "systemd"))
    assert not problems, "\n".join(problems)


def test_every_documented_difference_occurs(comparison: dict[str, Compared]) -> None:
    seen: set[str] = set()
    for item in comparison.values():
        _compare(item, seen)
    assert seen == set(DIFFERENCES), f"never seen: {set(DIFFERENCES) - seen}"


def test_the_readme_lists_every_difference() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### How fleetform differs from GPUStack", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"\(`([a-z0-9-]+)`\)", section))
    assert named == set(DIFFERENCES), (named - set(DIFFERENCES), set(DIFFERENCES) - named)


def test_version_order_is_gpustacks(venv: Path) -> None:
    """compiler/versions.py against gpustack_runtime's compare_versions and GPUStack's
    scan, over generated version names (and the issue's examples)."""
    lists = [
        ["1.10", "1.9rc1"], ["2.0.0", "2.0.0rc1"], ["x", "x-sm120"], ["1.9", "1.9.post1"],
        *_generated_version_lists(),
    ]  # fmt: skip
    pairs = [(a, b) for versions in lists for a, b in itertools.pairwise(versions)]
    answers = oracle.run(
        [oracle.latest_version_case(v) for v in lists]
        + [oracle.compare_versions_case(a, b) for a, b in pairs],
        venv,
    )
    ours = [gpustack_latest(v) for v in lists] + [compare_versions(a, b) for a, b in pairs]
    theirs = [answer["result"] for answer in answers]
    wrong = [
        (question, mine, gpustack)
        for question, mine, gpustack in zip([*lists, *pairs], ours, theirs, strict=True)
        if mine != gpustack
    ]
    assert not wrong, wrong[:20]
