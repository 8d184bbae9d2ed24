"""A catalogue of bad repositories, each with the exact error line it must produce.

Every scenario starts from a small valid repository (one backend, one host, one
deployment) that is compiled first, so that ``output/`` exists. The scenario then
breaks the repository and compiles again. The compile must fail with exit code 1,
print exactly the pinned line(s) on stderr (``file:line:col: key.path: message``),
nothing on stdout, no traceback, and leave ``output/`` byte for byte as it was.

Each message is pinned as it *should* read. A scenario whose message the compiler
gets wrong (a misleading text, the wrong line, a crash) is pinned to the right text
and fails until the compiler is fixed.

Most scenarios run the click command in-process (fast); the ones in ``SUBPROCESS``
run ``python -m compiler.cli`` as a real child process, as CI and users do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from compiler.cli import cli

# --- the valid base repository -------------------------------------------------------

BACKEND = """\
backend_name: vllm
default_version: v1
default_run_command: vllm serve {{model_path}} --port {{port}}
version_configs:
  v1:
    image_name: vllm/vllm-openai:v1
    custom_framework: cuda
"""

HOST = """\
name: gpu-a
address: 192.0.2.11
docker_host: ssh://deploy@192.0.2.11
labels: {gpu: h100}
gpus: {framework: cuda, count: 4}
port_range: 40000-40009
"""

DEPLOYMENT = """\
name: chat
backend: vllm
local_path: /models/qwen
port: 8000
"""

BASE: dict[str, str] = {
    "backends.d/vllm.yaml": BACKEND,
    "hosts.d/gpu-a.yaml": HOST,
    "deployments.d/chat.yaml": DEPLOYMENT,
}

BUILTINS_DEFINED = "gpu_count, gpu_ids, model_name, model_path, port, worker_ip"
FRAMEWORKS = "'cuda', 'rocm', 'cann', 'musa', 'corex', 'maca', 'dtk', 'neuware', 'hggc' or 'cpu'"
DNS_LABEL_RULE = (
    "is not a DNS label (lowercase letters, digits and '-',"
    " starting and ending with a letter or digit, at most 63)"
)

# 9 levels of 9 aliases: 9**9 (387 million) strings once expanded.
_LAUGHS = ["labels:", '  l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
for _level in range(1, 9):
    _refs = ", ".join([f"*l{_level - 1}"] * 9)
    _LAUGHS.append(f"  l{_level}: &l{_level} [{_refs}]")
BILLION_LAUGHS = DEPLOYMENT + "\n".join(_LAUGHS) + "\n"


@dataclass(frozen=True)
class Scenario:
    """A breaking change to the base repository and the stderr it must produce.

    ``files`` maps a path relative to the repository to its new content (text or raw
    bytes), or to ``None`` to delete the file. ``stderr`` holds one line per error.
    """

    id: str
    files: dict[str, str | bytes | None]
    stderr: tuple[str, ...]
    notes: str = field(default="", compare=False)


def scenario(id: str, files: dict[str, str | bytes | None], *stderr: str) -> Scenario:
    return Scenario(id, files, stderr)


D = "deployments.d/chat.yaml"
B = "backends.d/vllm.yaml"
H = "hosts.d/gpu-a.yaml"

SCENARIOS: list[Scenario] = [
    # --- YAML that cannot be read ------------------------------------------------------
    scenario(
        "yaml-syntax-error",
        {D: "name: chat\nbackend: vllm\n  local_path: /models/qwen\n"},
        f"{D}:3:13: YAML syntax error: mapping values are not allowed in this context",
    ),
    scenario(
        "yaml-unclosed-flow-sequence",
        {D: "name: chat\nbackend: vllm\nvolumes: [/a:/a\nport: 8000\n"},
        # Line 4 is where the parser noticed; the context says where the list began.
        f"{D}:4:5: YAML syntax error: did not find expected ',' or ']'"
        " (while parsing a flow sequence at line 3, column 10)",
    ),
    scenario(
        "yaml-unclosed-quote",
        {D: "name: chat\nbackend: vllm\nrun_command: 'vllm serve\nport: 8000\n"},
        f"{D}:5:1: YAML syntax error: found unexpected end of stream"
        " (while scanning a quoted scalar at line 3, column 14)",
    ),
    scenario(
        "shm-size-docker-cannot-read",
        {D: DEPLOYMENT + "shm_size: 1.5.3g\n"},
        f"{D}:5:11: shm_size: '1.5.3g' is not a size like 10g, 512m or 1073741824 (bytes)",
    ),
    scenario(
        "shm-size-beyond-int64",
        {D: DEPLOYMENT + "shm_size: 999999999999999p\n"},
        f"{D}:5:11: shm_size: '999999999999999p' is more bytes than docker can hold (2^63 - 1)",
    ),
    scenario(
        "duplicate-key",
        {D: DEPLOYMENT + "backend: sglang\n"},
        f"{D}:5:1: backend: duplicate key 'backend' (first defined at line 2)",
    ),
    scenario(
        "duplicate-nested-key",
        {D: DEPLOYMENT + "env:\n  A: '1'\n  A: '2'\n"},
        f"{D}:7:3: env.A: duplicate key 'A' (first defined at line 6)",
    ),
    scenario(
        "python-tag-os-system",
        {D: 'name: chat\nbackend: !!python/object/apply:os.system ["touch /tmp/pwned"]\n'},
        f"{D}:2:10: backend: unsupported YAML tag '!!python/object/apply:os.system':"
        " fleetform reads plain YAML only",
    ),
    scenario(
        "python-tag-on-mapping",
        {D: "!!python/object:os.environ\nname: chat\n"},
        f"{D}:1:1: unsupported YAML tag '!!python/object:os.environ':"
        " fleetform reads plain YAML only",
    ),
    scenario(
        "alias-bomb-billion-laughs",
        {D: BILLION_LAUGHS},
        f"{D}:6:61: labels: aliases expand to more than 100000 nodes (a 'billion laughs' file?)",
    ),
    scenario(
        "recursive-alias",
        {D: DEPLOYMENT + "labels: &loop {self: *loop}\n"},
        f"{D}:5:9: labels.self: recursive alias",
    ),
    scenario(
        # Exits 3 today (RecursionError in the loader); deep nesting is a load error.
        "deeply-nested-flow-sequences",
        {D: DEPLOYMENT + "labels: " + "[" * 5000 + "]" * 5000 + "\n"},
        f"{D}:5:9: labels: YAML nesting is deeper than 100 levels",
    ),
    scenario(
        "file-is-a-scalar",
        {D: "just a string\n"},
        f"{D}:1:1: expected a mapping, got str 'just a string'",
    ),
    scenario(
        "list-item-is-a-scalar",
        {D: "- name: chat\n  backend: vllm\n  port: 8000\n- 42\n"},
        f"{D}:4:3: expected a mapping, got int 42",
    ),
    scenario(
        "not-utf8",
        {D: b"name: chat\nbackend: vllm\n# caf\xe9\nport: 8000\n"},
        f"{D}:3:6: not UTF-8 text (invalid continuation byte)",
    ),
    # --- wrong types -------------------------------------------------------------------
    scenario(
        "replicas-string",
        {D: DEPLOYMENT + "replicas: two\n"},
        f"{D}:5:11: replicas: expected an integer, got 'two'",
    ),
    scenario(
        "replicas-float",
        {D: DEPLOYMENT + "replicas: 1.5\n"},
        f"{D}:5:11: replicas: expected an integer, got 1.5",
    ),
    scenario(
        "port-quoted-string",
        {D: 'name: chat\nbackend: vllm\nlocal_path: /models/qwen\nport: "8000"\n'},
        f"{D}:4:7: port: expected an integer, got '8000'",
    ),
    scenario(
        "env-is-a-list",
        {D: DEPLOYMENT + "env: [HF_HUB_OFFLINE=1]\n"},
        f"{D}:5:6: env: expected a mapping, got a list",
    ),
    scenario(
        # A deployment's env value may be a mapping: {secret: NAME}, and nothing else.
        "env-value-is-a-mapping",
        {D: DEPLOYMENT + "env:\n  HF_HOME: {path: /models}\n"},
        f"{D}:6:13: env.HF_HOME.path: unknown key 'path'"
        " (an env value is a string, or {secret: NAME} for a secret)",
    ),
    scenario(
        "env-value-is-a-list",
        {D: DEPLOYMENT + "env:\n  HF_HOME: [/models, /cache]\n"},
        f"{D}:6:12: env.HF_HOME: expected a string or {{secret: NAME}}, got a list",
    ),
    scenario(
        # Backends keep GPUStack's format: plain values only.
        "backend-env-value-is-a-secret",
        {B: BACKEND + "default_env:\n  HF_TOKEN: {secret: HF_TOKEN}\n"},
        f"{B}:9:13: default_env.HF_TOKEN: expected a string, got a mapping",
    ),
    scenario(
        "image-name-is-a-number",
        {B: BACKEND.replace("image_name: vllm/vllm-openai:v1", "image_name: 42")},
        f"{B}:6:17: version_configs.v1.image_name: expected a string, got 42",
    ),
    scenario(
        "backend-parameters-is-a-string",
        {D: DEPLOYMENT + "backend_parameters: --max-model-len 4096\n"},
        f"{D}:5:21: backend_parameters: expected a list, got '--max-model-len 4096'",
    ),
    scenario(
        "host-gpus-is-a-number",
        {H: HOST.replace("gpus: {framework: cuda, count: 4}", "gpus: 4")},
        f"{H}:5:7: gpus: expected a list of GPUs or a {{framework, count}} mapping, got 4",
    ),
    scenario(
        # A mapping is allowed here (the shorthand); the typo is the error.
        "host-gpus-shorthand-unknown-key",
        {H: HOST.replace("count: 4", "cout: 4")},
        f"{H}:5:25: gpus.cout: unknown key 'cout' (did you mean 'count'?)",
    ),
    # --- unknown keys ------------------------------------------------------------------
    scenario(
        "backend-unknown-key-with-hint",
        {B: BACKEND + "health_chek_path: /health\n"},
        f"{B}:8:1: health_chek_path: unknown key 'health_chek_path'"
        " (did you mean 'health_check_path'?)",
    ),
    scenario(
        # A document's positions are looked up again only for an error: the third object.
        "unknown-key-in-third-object-of-a-list",
        {
            "deployments.d/more.yaml": (
                "- name: one\n  backend: vllm\n  local_path: /models/one\n"
                "- name: two\n  backend: vllm\n  local_path: /models/two\n"
                "- name: three\n  backend: vllm\n  local_path: /models/three\n  replicsa: 2\n"
            )
        },
        "deployments.d/more.yaml:10:3: replicsa: unknown key 'replicsa' (did you mean 'replicas'?)",
    ),
    scenario(
        "backend-unknown-key-without-hint",
        {B: BACKEND + "gpu_vendor: nvidia\n"},
        f"{B}:8:1: gpu_vendor: unknown key 'gpu_vendor'",
    ),
    scenario(
        "version-config-unknown-key-with-hint",
        {B: BACKEND + "    imagename: vllm/vllm-openai:v2\n"},
        f"{B}:8:5: version_configs.v1.imagename: unknown key 'imagename'"
        " (did you mean 'image_name'?)",
    ),
    scenario(
        "version-config-unknown-key-without-hint",
        {B: BACKEND + "    gpus: 2\n"},
        f"{B}:8:5: version_configs.v1.gpus: unknown key 'gpus'",
    ),
    scenario(
        "deployment-unknown-key-with-hint",
        {D: DEPLOYMENT + "replica: 2\n"},
        f"{D}:5:1: replica: unknown key 'replica' (did you mean 'replicas'?)",
    ),
    scenario(
        "deployment-unknown-key-without-hint",
        {D: DEPLOYMENT + "owner: alice\n"},
        f"{D}:5:1: owner: unknown key 'owner'",
    ),
    scenario(
        # The typo also leaves 'address' unset; the typo is the actionable error.
        "host-unknown-key-with-hint",
        {H: HOST.replace("address:", "adress:")},
        f"{H}:2:1: adress: unknown key 'adress' (did you mean 'address'?)",
    ),
    scenario(
        "backend-name-typo",
        {B: BACKEND.replace("backend_name:", "backend_nme:")},
        f"{B}:1:1: backend_nme: unknown key 'backend_nme' (did you mean 'backend_name'?)",
    ),
    scenario(
        "host-unknown-key-without-hint",
        {H: HOST + "rack: r12\n"},
        f"{H}:7:1: rack: unknown key 'rack'",
    ),
    scenario(
        "gpu-selector-unknown-key-with-hint",
        {D: DEPLOYMENT + "gpu_selector:\n  gpus_per_replca: 1\n"},
        f"{D}:6:3: gpu_selector.gpus_per_replca: unknown key 'gpus_per_replca'"
        " (did you mean 'gpus_per_replica'?)",
    ),
    scenario(
        "gpu-selector-unknown-key-without-hint",
        {D: DEPLOYMENT + "gpu_selector:\n  vendor: nvidia\n"},
        f"{D}:6:3: gpu_selector.vendor: unknown key 'vendor'",
    ),
    # --- bad values --------------------------------------------------------------------
    scenario(
        "custom-framework-invalid",
        {B: BACKEND.replace("custom_framework: cuda", "custom_framework: cuda12")},
        f"{B}:7:23: version_configs.v1.custom_framework: 'cuda12' is not one of {FRAMEWORKS}",
    ),
    scenario(
        "parameter-format-invalid",
        {B: BACKEND + "parameter_format: equals\n"},
        f"{B}:8:19: parameter_format: 'equals' is not one of 'space' or 'equal'",
    ),
    scenario(
        "deployment-name-uppercase",
        {D: DEPLOYMENT.replace("name: chat", "name: Chat")},
        f"{D}:1:7: name: 'Chat' {DNS_LABEL_RULE}",
    ),
    scenario(
        "deployment-name-64-chars",
        {D: DEPLOYMENT.replace("name: chat", "name: " + "c" * 64)},
        f"{D}:1:7: name: '{'c' * 64}' {DNS_LABEL_RULE}",
    ),
    scenario(
        "deployment-name-underscore",
        {D: DEPLOYMENT.replace("name: chat", "name: my_chat")},
        f"{D}:1:7: name: 'my_chat' {DNS_LABEL_RULE}",
    ),
    scenario(
        "replicas-negative",
        {D: DEPLOYMENT + "replicas: -1\n"},
        f"{D}:5:11: replicas: -1 is out of range (input should be greater than or equal to 0)",
    ),
    scenario(
        "replicas-too-many",
        {D: DEPLOYMENT + "replicas: 1001\n"},
        f"{D}:5:11: replicas: 1001 is out of range (input should be less than or equal to 1000)",
    ),
    scenario(
        "port-zero",
        {D: DEPLOYMENT.replace("port: 8000", "port: 0")},
        f"{D}:4:7: port: 0 is out of range (input should be greater than or equal to 1)",
    ),
    scenario(
        "port-70000",
        {D: DEPLOYMENT.replace("port: 8000", "port: 70000")},
        f"{D}:4:7: port: 70000 is out of range (input should be less than or equal to 65535)",
    ),
    scenario(
        "port-range-single-number",
        {H: HOST.replace("port_range: 40000-40009", 'port_range: "40000"')},
        f"{H}:6:13: port_range: '40000' is not a port range like 40000-40063",
    ),
    scenario(
        "port-range-reversed",
        {H: HOST.replace("port_range: 40000-40009", "port_range: 50000-40000")},
        f"{H}:6:13: port_range: '50000-40000' is not a port range within 1-65535, low to high",
    ),
    scenario(
        "docker-host-bad-scheme",
        {H: HOST.replace("ssh://deploy@192.0.2.11", "http://192.0.2.11:2375")},
        f"{H}:3:14: docker_host: 'http://192.0.2.11:2375' must start with unix://, ssh://"
        " or tcp://",
    ),
    scenario(
        "secret-name-invalid",
        {D: DEPLOYMENT + "env:\n  HF_TOKEN: {secret: hf-token}\n"},
        f"{D}:6:22: env.HF_TOKEN.secret: invalid secret name 'hf-token'"
        " (letters, digits and '_', not starting with a digit)",
    ),
    scenario(
        "secret-name-is-a-number",
        {D: DEPLOYMENT + "env:\n  HF_TOKEN: {secret: 42}\n"},
        f"{D}:6:22: env.HF_TOKEN.secret: expected a string, got 42",
    ),
    scenario(
        "secret-with-another-key",
        {D: DEPLOYMENT + "env:\n  HF_TOKEN: {secret: HF_TOKEN, default: none}\n"},
        f"{D}:6:32: env.HF_TOKEN.default: unknown key 'default'"
        " (an env value is a string, or {secret: NAME} for a secret)",
    ),
    scenario(
        "secret-key-typo",
        {D: DEPLOYMENT + "env:\n  HF_TOKEN: {secrets: HF_TOKEN}\n"},
        f"{D}:6:14: env.HF_TOKEN.secrets: unknown key 'secrets' (did you mean 'secret'?)",
    ),
    scenario(
        "env-name-invalid",
        {D: DEPLOYMENT + "env:\n  GOOD: x\n  1BAD: y\n"},
        f"{D}:7:3: env.1BAD: invalid environment variable name '1BAD'",
    ),
    # --- missing keys ------------------------------------------------------------------
    scenario(
        "backend-name-missing",
        {B: BACKEND.replace("backend_name: vllm\n", "")},
        f"{B}:1:1: backend_name: required key is missing",
    ),
    scenario(
        "host-address-missing",
        {H: HOST.replace("address: 192.0.2.11\n", "")},
        f"{H}:1:1: address: required key is missing",
    ),
    scenario(
        "deployment-backend-missing",
        {D: DEPLOYMENT.replace("backend: vllm\n", "")},
        f"{D}:1:1: backend: required key is missing (not set here nor in extends)",
    ),
    # --- inheritance -------------------------------------------------------------------
    scenario(
        "deployment-extends-cycle",
        {
            "deployments.d/a.yaml": "name: a\nbackend: vllm\nextends: b\n",
            "deployments.d/b.yaml": "name: b\nbackend: vllm\nextends: a\n",
        },
        "deployments.d/a.yaml:3:10: extends: cycle a -> b -> a",
    ),
    scenario(
        "backend-extends-cycle",
        {
            "backends.d/x.yaml": "backend_name: x\nextends: y\n",
            "backends.d/y.yaml": "backend_name: y\nextends: x\n",
        },
        "backends.d/x.yaml:2:10: extends: cycle x -> y -> x",
    ),
    scenario(
        "deployment-extends-unknown",
        {
            "deployments.d/base.yaml": "name: llm-base\nabstract: true\nport: 8000\n",
            D: "name: chat\nbackend: vllm\nlocal_path: /models/qwen\nextends: llm-bse\n",
        },
        f"{D}:4:10: extends: unknown deployment 'llm-bse' (known: chat, llm-base)",
    ),
    scenario(
        "backend-extends-unknown",
        {B: BACKEND + "extends: vllm-bse\n"},
        f"{B}:8:10: extends: unknown backend 'vllm-bse' (known: vllm)",
    ),
    scenario(
        "unknown-backend",
        {D: DEPLOYMENT.replace("backend: vllm", "backend: vlm")},
        f"{D}:2:10: backend: unknown backend 'vlm' (known: vllm)",
    ),
    scenario(
        "unknown-backend-version",
        {D: DEPLOYMENT + "backend_version: v2\n"},
        f"{D}:5:18: backend_version: backend 'vllm' has no version 'v2' (versions: v1)",
    ),
    scenario(
        "default-version-not-in-version-configs",
        {B: BACKEND.replace("default_version: v1", "default_version: v9")},
        f"{B}:2:18: default_version: default_version 'v9' is not in version_configs (versions: v1)",
    ),
    # --- placeholders and templates ------------------------------------------------------
    scenario(
        "undefined-placeholder-in-run-command",
        {D: DEPLOYMENT + "run_command: vllm serve {{model_path}} --port {{prot}}\n"},
        f"{D}:5:14: run_command: undefined placeholder {{{{prot}}}} (defined: {BUILTINS_DEFINED})",
    ),
    scenario(
        # In the second object of a file with anchors, its env merged from the first's.
        "undefined-placeholder-in-env-merged-from-an-alias",
        {
            "deployments.d/more.yaml": (
                "- name: one\n  backend: vllm\n  local_path: /models/one\n"
                "  env: &env\n    A: '1'\n"
                "- name: two\n  backend: vllm\n  local_path: /models/two\n"
                "  env:\n    <<: *env\n    B: '{{nope}}'\n"
            )
        },
        "deployments.d/more.yaml:11:8: env.B: undefined placeholder {{nope}}"
        f" (defined: {BUILTINS_DEFINED}, A, B)",
    ),
    scenario(
        "undefined-placeholder-in-backend-default-run-command",
        {B: BACKEND.replace("--port {{port}}", "--port {{port}} --tp {{tp_size}}")},
        f"{B}:3:22: default_run_command: undefined placeholder {{{{tp_size}}}}"
        f" (defined: {BUILTINS_DEFINED})",
    ),
    scenario(
        # One mistake in the backend, two deployments using it: one line, not two equal ones.
        "undefined-placeholder-in-backend-used-twice",
        {
            B: BACKEND.replace("--port {{port}}", "--port {{port}} --tp {{tp_size}}"),
            "deployments.d/embed.yaml": "name: embed\nbackend: vllm\nlocal_path: /models/bge\n",
        },
        f"{B}:3:22: default_run_command: undefined placeholder {{{{tp_size}}}}"
        f" (defined: {BUILTINS_DEFINED})",
    ),
    scenario(
        # {{model_path}} is undefined because the deployment names no model: say so there.
        "deployment-without-model",
        {D: "name: chat\nbackend: vllm\nport: 8000\n"},
        f"{D}:1:1: local_path: no model: set local_path, huggingface_repo_id or"
        f" model_scope_model_id ({{{{model_path}}}} is used at {B}:3:22)",
    ),
    scenario(
        "undefined-placeholder-in-env",
        {D: DEPLOYMENT + "env:\n  OPENAI_BASE: http://{{host}}:{{port}}/v1\n"},
        f"{D}:6:16: env.OPENAI_BASE: undefined placeholder {{{{host}}}}"
        f" (defined: {BUILTINS_DEFINED}, OPENAI_BASE)",
    ),
    scenario(
        "env-placeholder-cycle",
        {D: DEPLOYMENT + "env:\n  A: '{{B}}'\n  B: '{{A}}'\n"},
        f"{D}:6:6: env.A: placeholder cycle in env: A -> B -> A",
    ),
    scenario(
        # GPUStack's disaggregated-serving names (ports.kv_port, roles.*) have no value here.
        "template-dotted-name",
        {D: DEPLOYMENT + "run_command: vllm serve --kv {{ports.kv_port}}\n"},
        f"{D}:5:14: run_command: undefined placeholder {{{{ports.kv_port}}}}"
        f" (defined: {BUILTINS_DEFINED})",
    ),
    scenario(
        "unbalanced-quote-in-run-command",
        {D: DEPLOYMENT + 'run_command: vllm serve "{{model_path}} --port {{port}}\n'},
        f"{D}:5:14: run_command: cannot split command: the \" at character 12 is never closed",
    ),
    # --- secrets: never in argv nor in a plain value -------------------------------------
    scenario(
        "secret-in-run-command",
        {
            D: DEPLOYMENT
            + "env:\n  HF_TOKEN: {secret: HF_TOKEN}\n"
            + "run_command: vllm serve {{model_path}} --hf-token {{HF_TOKEN}}\n"
        },
        f"{D}:7:14: run_command: {{{{HF_TOKEN}}}} names a secret; secrets reach the container"
        " only as environment variables",
    ),
    scenario(
        # Pinned at the entry that writes it.
        "secret-in-backend-parameters",
        {
            D: DEPLOYMENT
            + "env:\n  API_KEY: {secret: openai_key}\n"
            + "backend_parameters:\n  - --max-model-len 4096\n  - --api-key {{API_KEY}}\n"
        },
        f"{D}:9:5: backend_parameters[1]: {{{{API_KEY}}}} names a secret; secrets reach the"
        " container only as environment variables",
    ),
    scenario(
        "secret-in-env-value",
        {D: DEPLOYMENT + "env:\n  HF_TOKEN: {secret: HF_TOKEN}\n  AUTH: 'Bearer {{HF_TOKEN}}'\n"},
        f"{D}:7:9: env.AUTH: {{{{HF_TOKEN}}}} names a secret; secrets reach the container"
        " only as environment variables",
    ),
    scenario(
        # A_HEADER reaches the secret only through AUTH: the error is where it is written.
        "secret-in-env-value-through-another",
        {
            D: DEPLOYMENT + "env:\n  HF_TOKEN: {secret: HF_TOKEN}\n"
            "  A_HEADER: 'Authorization: {{AUTH}}'\n  AUTH: 'Bearer {{HF_TOKEN}}'\n"
        },
        f"{D}:8:9: env.AUTH: {{{{HF_TOKEN}}}} names a secret; secrets reach the container"
        " only as environment variables",
    ),
    scenario(
        # The secret comes from a template; the placeholder is in the backend's command.
        "secret-from-template-in-backend-run-command",
        {
            B: BACKEND.replace("--port {{port}}", "--port {{port}} --token {{HF_TOKEN}}"),
            "deployments.d/base.yaml": "name: hub\nabstract: true\n"
            "env: {HF_TOKEN: {secret: HF_TOKEN}}\n",
            D: DEPLOYMENT + "extends: hub\n",
        },
        f"{B}:3:22: default_run_command: {{{{HF_TOKEN}}}} names a secret; secrets reach the"
        " container only as environment variables",
    ),
    # --- GPUs ----------------------------------------------------------------------------
    scenario(
        "gpu-given-twice",
        {
            D: DEPLOYMENT + "gpu_selector:\n  gpu_ids: [gpu-a:cuda:0]\n",
            "deployments.d/embed.yaml": (
                "name: embed\nbackend: vllm\nlocal_path: /models/bge\n"
                "gpu_selector:\n  gpu_ids: [gpu-a:cuda:0]\n"
            ),
        },
        "deployments.d/embed.yaml:5:12: gpu_selector.gpu_ids: GPU 0 of host 'gpu-a' is given"
        " to both 'chat' (replica 0) and 'embed' (replica 0)",
    ),
    scenario(
        "gpu-host-lacks",
        {D: DEPLOYMENT + "gpu_selector:\n  gpu_ids: [gpu-a:cuda:7]\n"},
        f"{D}:6:12: gpu_selector.gpu_ids: GPU 'gpu-a:cuda:7': host 'gpu-a' ({H}:1:1) has no GPU 7",
    ),
    scenario(
        "gpu-framework-mismatch",
        {D: DEPLOYMENT + "gpu_selector:\n  gpu_ids: [gpu-a:rocm:0]\n"},
        f"{D}:6:12: gpu_selector.gpu_ids: GPU 'gpu-a:rocm:0': GPU 0 of host 'gpu-a'"
        f" ({H}:1:1) is cuda, not rocm",
    ),
    scenario(
        "gpu-on-unknown-host",
        {D: DEPLOYMENT + "gpu_selector:\n  gpu_ids: [gpu-z:cuda:0]\n"},
        f"{D}:6:12: gpu_selector.gpu_ids: GPU 'gpu-z:cuda:0' names host 'gpu-z',"
        " which is not in hosts.d (hosts: gpu-a)",
    ),
    scenario(
        "gpu-id-malformed",
        {D: DEPLOYMENT + "gpu_selector:\n  gpu_ids: [gpu-a:0]\n"},
        f"{D}:6:12: gpu_selector.gpu_ids: 'gpu-a:0' is not a GPU id of the form"
        " <host>:<framework>:<index>",
    ),
    scenario(
        # Accepted today: the replica gets device_ids [0, 0] and gpu_count 2.
        "gpu-id-listed-twice",
        {D: DEPLOYMENT + "gpu_selector:\n  gpu_ids: [gpu-a:cuda:0, gpu-a:cuda:0]\n"},
        f"{D}:6:12: gpu_selector.gpu_ids: GPU 'gpu-a:cuda:0' is listed twice",
    ),
    scenario(
        # gpus_per_replica is not written, so do not claim a derived "of 1 GPUs".
        "gpu-ids-do-not-split-into-replicas",
        {
            D: DEPLOYMENT
            + "replicas: 2\ngpu_selector:\n  gpu_ids: [gpu-a:cuda:0, gpu-a:cuda:1, gpu-a:cuda:2]\n"
        },
        f"{D}:7:12: gpu_selector.gpu_ids: 3 GPU ids do not split evenly into 2 replicas",
    ),
    scenario(
        "not-enough-free-gpus",
        {D: DEPLOYMENT + "gpu_selector:\n  gpus_per_replica: 8\n"},
        f"{D}:6:21: gpu_selector.gpus_per_replica: replica 0 needs 8 free cuda GPU(s) on a"
        " host matching {} (any host); free: gpu-a: 4",
    ),
    scenario(
        "no-host-matches-worker-selector",
        {D: DEPLOYMENT + "worker_selector: {gpu: a100}\n"},
        f"{D}:5:18: worker_selector: no host matches worker_selector {{gpu: a100}}",
    ),
    # --- ports ---------------------------------------------------------------------------
    scenario(
        "port-used-twice",
        {
            "deployments.d/embed.yaml": (
                "name: embed\nbackend: vllm\nlocal_path: /models/bge\nport: 8000\n"
            ),
        },
        "deployments.d/embed.yaml:4:7: port: port 8000 on host 'gpu-a' is used by both"
        " 'chat' (replica 0) and 'embed' (replica 0)",
    ),
    scenario(
        "port-range-exhausted",
        {
            H: HOST.replace("port_range: 40000-40009", "port_range: 40000-40000"),
            "deployments.d/auto.yaml": (
                "name: auto-a\nbackend: vllm\nlocal_path: /models/a\n---\n"
                "name: auto-b\nbackend: vllm\nlocal_path: /models/b\n"
            ),
        },
        "deployments.d/auto.yaml:5:1: port: port range 40000-40000 of host 'gpu-a'"
        f" ({H}:1:1) is exhausted; no port left for 'auto-b' (replica 0)",
    ),
    # --- duplicates ----------------------------------------------------------------------
    scenario(
        "duplicate-deployment-across-files",
        {"deployments.d/zz-copy.yaml": "backend: vllm\nname: chat\nlocal_path: /models/x\n"},
        "deployments.d/zz-copy.yaml:2:7: name: duplicate deployment 'chat'"
        f" (first defined at {D}:1:7)",
    ),
    scenario(
        "duplicate-backend-name",
        {"backends.d/vllm2.yaml": BACKEND},
        f"backends.d/vllm2.yaml:1:15: backend_name: duplicate backend 'vllm'"
        f" (first defined at {B}:1:15)",
    ),
    scenario(
        "duplicate-host",
        {"hosts.d/gpu-a2.yaml": "address: 192.0.2.12\nname: gpu-a\n"},
        f"hosts.d/gpu-a2.yaml:2:7: name: duplicate host 'gpu-a' (first defined at {H}:1:7)",
    ),
    # --- settings ------------------------------------------------------------------------
    scenario(
        "settings-port-range-reversed",
        {"fleetform.yaml": "project: fleet\ndefaults:\n  port_range: 5-1\n"},
        "fleetform.yaml:3:15: defaults.port_range: '5-1' is not a port range within 1-65535,"
        " low to high",
    ),
    scenario(
        "settings-unknown-key",
        {"fleetform.yaml": "project: fleet\ndefaults:\n  port_rnage: 40000-40063\n"},
        "fleetform.yaml:3:3: defaults.port_rnage: unknown key 'port_rnage'"
        " (did you mean 'port_range'?)",
    ),
    # --- several errors at once ----------------------------------------------------------
    scenario(
        "two-errors-in-two-files",
        {
            H: HOST.replace("port_range: 40000-40009", "port_range: 40009-40000"),
            B: BACKEND + "gpu_vendor: nvidia\n",
        },
        f"{B}:8:1: gpu_vendor: unknown key 'gpu_vendor'",
        f"{H}:6:13: port_range: '40009-40000' is not a port range within 1-65535, low to high",
    ),
]

# Run as a real child process (python -m compiler.cli), as CI and users do.
SUBPROCESS = {
    "yaml-syntax-error",
    "python-tag-os-system",
    "alias-bomb-billion-laughs",
    "not-utf8",
    "undefined-placeholder-in-run-command",
    "secret-in-run-command",
    "gpu-given-twice",
    "two-errors-in-two-files",
}

# --- machinery -----------------------------------------------------------------------


def write_files(root: Path, files: dict[str, str | bytes | None]) -> None:
    for relative, content in files.items():
        path = root / relative
        if content is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@dataclass(frozen=True)
class Run:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float


def run_in_process(args: list[str]) -> Run:
    started = time.monotonic()
    result = CliRunner().invoke(cli, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr, time.monotonic() - started)


def run_subprocess(args: list[str]) -> Run:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "compiler.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


@pytest.fixture(scope="module")
def compiled_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base repository after one successful ``fleetform compile``."""
    root = tmp_path_factory.mktemp("base")
    write_files(root, dict(BASE))
    run = run_in_process(["compile", "--repo", str(root)])
    assert (run.exit_code, run.stderr) == (0, ""), run
    assert snapshot(root / "output"), "the base compile wrote no output/"
    return root


def test_base_repository_is_valid_and_compiled(compiled_base: Path) -> None:
    run = run_subprocess(["compile", "--check", "--repo", str(compiled_base)])
    assert (run.exit_code, run.stdout, run.stderr) == (0, "output/ is up to date\n", "")
    assert sorted(snapshot(compiled_base / "output")) == ["gpu-a/compose.yaml", "gpu-a/index.json"]


def test_scenario_ids_are_unique_and_enough() -> None:
    ids = [s.id for s in SCENARIOS]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 35
    assert set(ids) >= SUBPROCESS


@pytest.mark.parametrize("case", [pytest.param(s, id=s.id) for s in SCENARIOS])
def test_bad_repository(case: Scenario, compiled_base: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(compiled_base, repo)
    before = snapshot(repo / "output")
    write_files(repo, case.files)

    runner = run_subprocess if case.id in SUBPROCESS else run_in_process
    run = runner(["compile", "--repo", str(repo)])

    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines() == list(case.stderr)
    assert run.stdout == ""
    assert run.exit_code == 1
    assert snapshot(repo / "output") == before


def test_output_dir_outside_the_repository_is_refused(tmp_path: Path) -> None:
    """``output_dir`` is a folder that compile prunes: it must stay inside the repository.

    Today ``output_dir: /etc`` deletes every file under /etc that compile does not
    produce. This test only ever points it at a folder of its own, beside the repo.
    """
    repo = tmp_path / "repo"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not fleetform's\n")
    write_files(repo, {**BASE, "fleetform.yaml": "output_dir: ../outside\n"})
    run = run_in_process(["compile", "--repo", str(repo)])
    assert (outside / "keep.txt").exists()
    assert run.stderr.splitlines() == [
        "fleetform.yaml:1:13: output_dir: '../outside' must be a folder inside the repository,"
        " like 'output' (not absolute, no '..', not the repository itself or a source folder)"
    ]
    assert (run.exit_code, run.stdout) == (1, "")


def test_missing_repository_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-repo"
    run = run_in_process(["compile", "--repo", str(missing)])
    assert run.exit_code != 0
    assert run.stdout == ""
    assert str(missing) in run.stderr and "does not exist" in run.stderr
    assert not missing.exists()


def test_alias_bomb_fails_fast(compiled_base: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(compiled_base, repo)
    write_files(repo, {D: BILLION_LAUGHS})
    run = run_in_process(["validate", "--repo", str(repo)])
    assert run.exit_code == 1
    assert "billion laughs" in run.stderr
    assert run.seconds < 2.0
