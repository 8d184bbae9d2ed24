"""Synthetic, realistic fleetform repositories for the benchmark.

Deterministic for a given (deployments, hosts, seed): the same input always yields the
same repository, so timings from different runs compare the same work.

Shape of a generated fleet:

- 4 backends in GPUStack's custom-backend format (vLLM-, SGLang-, TGI- and llama.cpp-like),
  each with ``default_env``/``default_run_command`` using the built-in placeholders and
  2-4 versions (CUDA, some ROCm, one CPU).
- Hosts with 8 GPUs each, grouped into pools of 10 (``labels.pool``); about 1 pool in 7
  is ROCm, the rest CUDA; 1 host in 10 is a systemd host. Half the pools use the
  ``{framework, count}`` shorthand, the others an explicit GPU list with uuid/memory.
- Deployments select their pool with ``worker_selector`` (sometimes plus ``gpu``/``zone``
  labels). GPU deployments ask for 1-2 GPUs per replica while the pool keeps >= 15% GPUs
  free; the rest (and about a third overall, since 10 deployments share 8 GPUs per host)
  are CPU llama.cpp deployments with ``gpus_per_replica: 0``.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

POOL_SIZE = 10
GPUS_PER_HOST = 8
GPU_BUDGET = 0.85  # at most this share of a pool's GPUs is asked for

SETTINGS: dict[str, Any] = {
    "project": "bench",
    "output_dir": "output",
    "label_prefix": "io.fleetform",
    "defaults": {"model_dir": "/srv/models", "port_range": "40000-40063", "shm_size": "16g"},
}

BACKENDS: list[dict[str, Any]] = [
    {
        "backend_name": "vllm-bench",
        "description": "vLLM OpenAI-compatible server",
        "health_check_path": "/health",
        "default_version": "v0.11.0",
        "default_env": {
            "VLLM_LOGGING_LEVEL": "INFO",
            "HF_HUB_OFFLINE": "1",
            "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
        },
        "default_run_command": (
            "vllm serve {{model_path}} --host {{worker_ip}} --port {{port}}"
            " --served-model-name {{model_name}} --tensor-parallel-size {{gpu_count}}"
        ),
        "parameter_format": "equal",
        "default_backend_param": ["--gpu-memory-utilization=0.90"],
        "version_configs": {
            "v0.9.2": {"image_name": "vllm/vllm-openai:v0.9.2", "custom_framework": "cuda"},
            "v0.10.2": {"image_name": "vllm/vllm-openai:v0.10.2", "custom_framework": "cuda"},
            "v0.11.0": {
                "image_name": "vllm/vllm-openai:v0.11.0",
                "custom_framework": "cuda",
                "env": {"VLLM_USE_V1": "1"},
            },
            "rocm-0.10.1": {
                "image_name": "rocm/vllm:rocm6.4.1_vllm_0.10.1_20250909",
                "custom_framework": "rocm",
                "env": {"VLLM_USE_TRITON_FLASH_ATTN": "0"},
            },
        },
    },
    {
        "backend_name": "sglang-bench",
        "description": "SGLang serving runtime",
        "health_check_path": "/health",
        "default_version": "v0.5.4",
        "default_env": {"SGLANG_LOG_LEVEL": "info", "HF_HUB_OFFLINE": "1"},
        "default_run_command": (
            "python3 -m sglang.launch_server --model-path {{model_path}} --host {{worker_ip}}"
            " --port {{port}} --served-model-name {{model_name}} --tp-size {{gpu_count}}"
        ),
        "parameter_format": "space",
        "version_configs": {
            "v0.4.10": {"image_name": "lmsysorg/sglang:v0.4.10", "custom_framework": "cuda"},
            "v0.5.4": {
                "image_name": "lmsysorg/sglang:v0.5.4",
                "custom_framework": "cuda",
                "env": {"SGLANG_ENABLE_TORCH_COMPILE": "0"},
            },
        },
    },
    {
        "backend_name": "tgi-bench",
        "description": "Hugging Face text-generation-inference",
        "health_check_path": "/health",
        "default_version": "3.3.4",
        "default_env": {"HF_HUB_OFFLINE": "1", "PREFIX_CACHING": "1"},
        "default_entrypoint": "text-generation-launcher",
        "default_run_command": (
            "--model-id {{model_path}} --hostname {{worker_ip}} --port {{port}}"
            " --num-shard {{gpu_count}}"
        ),
        "parameter_format": "space",
        "version_configs": {
            "3.2.3": {
                "image_name": "ghcr.io/huggingface/text-generation-inference:3.2.3",
                "custom_framework": "cuda",
            },
            "3.3.4": {
                "image_name": "ghcr.io/huggingface/text-generation-inference:3.3.4",
                "custom_framework": "cuda",
            },
            "3.3.4-rocm": {
                "image_name": "ghcr.io/huggingface/text-generation-inference:3.3.4-rocm",
                "custom_framework": "rocm",
                "env": {"ROCM_USE_FLASH_ATTN_V2_TRITON": "0"},
            },
        },
    },
    {
        "backend_name": "llama-cpp-bench",
        "description": "llama.cpp server",
        "health_check_path": "/v1/models",
        "default_version": "server",
        "default_env": {"LLAMA_ARG_N_PARALLEL": "4"},
        "default_run_command": (
            "-m {{model_path}} --host {{worker_ip}} --port {{port}} --alias {{model_name}}"
        ),
        "parameter_format": "space",
        "version_configs": {
            "server-cuda": {
                "image_name": "ghcr.io/ggml-org/llama.cpp:server-cuda",
                "custom_framework": "cuda",
                "run_command": (
                    "-m {{model_path}} --host {{worker_ip}} --port {{port}}"
                    " --alias {{model_name}} --n-gpu-layers 999"
                ),
            },
            "server-rocm": {
                "image_name": "ghcr.io/ggml-org/llama.cpp:server-rocm",
                "custom_framework": "rocm",
                "run_command": (
                    "-m {{model_path}} --host {{worker_ip}} --port {{port}}"
                    " --alias {{model_name}} --n-gpu-layers 999"
                ),
            },
            "server": {
                "image_name": "ghcr.io/ggml-org/llama.cpp:server",
                "custom_framework": "cpu",
            },
        },
    },
]

TEMPLATES: list[dict[str, Any]] = [
    {
        "name": "llm-base",
        "abstract": True,
        "source": "huggingface",
        "env": {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "8"},
        "labels": {"team": "inference", "tier": "prod"},
    }
]

MODELS: list[tuple[str, str]] = [
    ("qwen25-7b", "Qwen/Qwen2.5-7B-Instruct"),
    ("qwen25-14b", "Qwen/Qwen2.5-14B-Instruct"),
    ("qwen25-coder-7b", "Qwen/Qwen2.5-Coder-7B-Instruct"),
    ("qwen3-8b", "Qwen/Qwen3-8B"),
    ("qwen3-14b", "Qwen/Qwen3-14B"),
    ("llama31-8b", "meta-llama/Llama-3.1-8B-Instruct"),
    ("llama32-3b", "meta-llama/Llama-3.2-3B-Instruct"),
    ("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.3"),
    ("mistral-nemo", "mistralai/Mistral-Nemo-Instruct-2407"),
    ("gemma2-9b", "google/gemma-2-9b-it"),
    ("phi35-mini", "microsoft/Phi-3.5-mini-instruct"),
    ("r1-qwen-7b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
    ("r1-llama-8b", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"),
    ("glm4-9b", "THUDM/glm-4-9b-chat"),
    ("granite31-8b", "ibm-granite/granite-3.1-8b-instruct"),
    ("gpt-oss-20b", "openai/gpt-oss-20b"),
]

GGUF: list[tuple[str, str]] = [
    ("phi3-mini-q4", "/srv/models/gguf/Phi-3-mini-4k-instruct-q4.gguf"),
    ("llama32-3b-q4", "/srv/models/gguf/Llama-3.2-3B-Instruct-Q4_K_M.gguf"),
    ("qwen25-1b5-q8", "/srv/models/gguf/qwen2.5-1.5b-instruct-q8_0.gguf"),
    ("gemma2-2b-q4", "/srv/models/gguf/gemma-2-2b-it-Q4_K_M.gguf"),
    ("smollm2-q8", "/srv/models/gguf/SmolLM2-1.7B-Instruct-Q8_0.gguf"),
]

PARAMS: dict[str, list[str]] = {
    "vllm-bench": [
        "--max-model-len=32768",
        "--max-model-len 16384",
        "--enable-prefix-caching",
        "--max-num-seqs=256",
        "--kv-cache-dtype=fp8",
        "--swap-space 8",
    ],
    "sglang-bench": [
        "--mem-fraction-static 0.85",
        "--context-length 32768",
        "--chunked-prefill-size=8192",
        "--enable-metrics",
    ],
    "tgi-bench": [
        "--max-input-tokens 8192",
        "--max-total-tokens 16384",
        "--max-batch-prefill-tokens=16384",
    ],
    "llama-cpp-bench": ["--ctx-size 4096", "--threads 16", "--batch-size=512", "--cont-batching"],
}

ENV_CHOICES: list[tuple[str, str]] = [
    ("VLLM_LOGGING_LEVEL", "DEBUG"),
    ("NCCL_DEBUG", "WARN"),
    ("CUDA_DEVICE_MAX_CONNECTIONS", "1"),
    ("OMP_NUM_THREADS", "16"),
    ("LOG_DIR", "/var/log/models/{{model_name}}"),
    ("SERVED_AT", "{{worker_ip}}:{{port}}"),
    ("TRANSFORMERS_CACHE", "/srv/cache/hf"),
]

TEAMS = ["search", "chat", "agents", "ml-platform", "research"]
CUDA_GPU_TYPES = ["h100", "a100", "l40s"]


@dataclass
class Fleet:
    """The generated objects (also used to build the equivalent kapitan inventory)."""

    settings: dict[str, Any]
    backends: list[dict[str, Any]]
    templates: list[dict[str, Any]]
    hosts: list[dict[str, Any]]
    deployments: list[dict[str, Any]]
    host_files: list[list[dict[str, Any]]] = field(default_factory=list)
    deployment_files: list[list[dict[str, Any]]] = field(default_factory=list)

    def backend(self, name: str) -> dict[str, Any]:
        return next(b for b in self.backends if b["backend_name"] == name)


def _pool_framework(pool: int) -> str:
    return "rocm" if pool % 7 == 3 else "cuda"


def _pool_gpu(pool: int) -> str:
    return "mi300x" if _pool_framework(pool) == "rocm" else CUDA_GPU_TYPES[pool % 3]


def _hosts(count: int, rng: random.Random) -> list[dict[str, Any]]:
    hosts = []
    for i in range(count):
        pool = i // POOL_SIZE
        framework = _pool_framework(pool)
        name = f"gpu-{i:04d}"
        address = f"10.{20 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"
        host: dict[str, Any] = {"name": name, "address": address}
        if i % 10 == 9:
            host["target"] = "systemd"
            host["ssh"] = f"root@{address}"
        else:
            host["target"] = "compose"
            host["docker_host"] = f"ssh://deploy@{address}"
        host["labels"] = {
            "pool": f"p{pool:03d}",
            "gpu": _pool_gpu(pool),
            "zone": f"zone-{pool % 5}",
            "rack": f"r{i // 40:03d}",
        }
        if pool % 2 == 0:
            host["gpus"] = {"framework": framework, "count": GPUS_PER_HOST}
        else:
            memory = 196608 if framework == "rocm" else 81559
            host["gpus"] = [
                {
                    "index": g,
                    "framework": framework,
                    "uuid": f"GPU-{rng.getrandbits(128):032x}",
                    "memory_mib": memory,
                }
                for g in range(GPUS_PER_HOST)
            ]
        if i % 13 == 0:
            host["port_range"] = "41000-41063"
        if i % 17 == 0:
            host["model_dir"] = "/data/models"
        hosts.append(host)
    return hosts


def _gpu_deployment(
    rng: random.Random, pool: int, name_index: int, budget: int
) -> tuple[dict[str, Any], int] | None:
    framework = _pool_framework(pool)
    per = 2 if rng.random() < 0.15 else 1
    replicas = 2 if rng.random() < 0.10 else 1
    if per * replicas > budget:
        return None
    roll = rng.random()
    if framework == "cuda":
        if roll < 0.5:
            backend, versions = "vllm-bench", ["v0.9.2", "v0.10.2", "v0.11.0", None]
        elif roll < 0.75:
            backend, versions = "sglang-bench", ["v0.4.10", "v0.5.4", None]
        elif roll < 0.9:
            backend, versions = "tgi-bench", ["3.2.3", "3.3.4", None]
        else:
            backend, versions = "llama-cpp-bench", ["server-cuda"]
    else:
        if roll < 0.6:
            backend, versions = "vllm-bench", ["rocm-0.10.1"]
        elif roll < 0.8:
            backend, versions = "tgi-bench", ["3.3.4-rocm"]
        else:
            backend, versions = "llama-cpp-bench", ["server-rocm"]
    if backend == "llama-cpp-bench":
        slug, path = rng.choice(GGUF)
        dep: dict[str, Any] = {
            "name": f"{slug}-p{pool:03d}-{name_index:02d}",
            "source": "local_path",
            "local_path": path,
        }
    else:
        slug, repo_id = rng.choice(MODELS)
        dep = {"name": f"{slug}-p{pool:03d}-{name_index:02d}"}
        if rng.random() < 0.5:
            dep["extends"] = "llm-base"
        else:
            dep["source"] = "huggingface"
        dep["huggingface_repo_id"] = repo_id
    dep["backend"] = backend
    version = rng.choice(versions)
    if version is not None:
        dep["backend_version"] = version
    if replicas == 0 or rng.random() < 0.01:
        replicas = 0
    if replicas != 1:
        dep["replicas"] = replicas
    dep["worker_selector"] = _selector(rng, pool)
    dep["gpu_selector"] = {"gpus_per_replica": per}
    _extras(rng, dep, backend)
    return dep, per * replicas


def _cpu_deployment(rng: random.Random, pool: int, name_index: int) -> dict[str, Any]:
    slug, path = rng.choice(GGUF)
    dep: dict[str, Any] = {
        "name": f"{slug}-cpu-p{pool:03d}-{name_index:02d}",
        "source": "local_path",
        "local_path": path,
        "backend": "llama-cpp-bench",
        "worker_selector": _selector(rng, pool),
        "gpu_selector": {"gpus_per_replica": 0},
    }
    _extras(rng, dep, "llama-cpp-bench")
    return dep


def _selector(rng: random.Random, pool: int) -> dict[str, str]:
    selector = {"pool": f"p{pool:03d}"}
    if rng.random() < 0.4:
        selector["gpu"] = _pool_gpu(pool)
    if rng.random() < 0.2:
        selector["zone"] = f"zone-{pool % 5}"
    return selector


def _extras(rng: random.Random, dep: dict[str, Any], backend: str) -> None:
    params = rng.sample(PARAMS[backend], k=rng.randint(0, 3))
    # one option per key: drop a second --max-model-len form
    seen: set[str] = set()
    unique = []
    for item in params:
        key = item.split("=")[0].split(" ")[0]
        if key not in seen:
            seen.add(key)
            unique.append(item)
    if unique:
        dep["backend_parameters"] = unique
    env = dict(rng.sample(ENV_CHOICES, k=rng.randint(0, 3)))
    if env:
        dep["env"] = env
    if rng.random() < 0.6:
        dep["labels"] = {"team": rng.choice(TEAMS), "cost-center": f"cc-{rng.randint(100, 999)}"}
    if rng.random() < 0.1:
        dep["shm_size"] = "32g"


def generate_fleet(deployments: int, hosts: int, files: int, seed: int = 1) -> Fleet:
    rng = random.Random(seed)
    if hosts % POOL_SIZE:
        raise ValueError(f"hosts must be a multiple of {POOL_SIZE}")
    host_objs = _hosts(hosts, rng)
    pools = hosts // POOL_SIZE
    per_pool, extra = divmod(deployments, pools)
    deps: list[dict[str, Any]] = []
    for pool in range(pools):
        budget = int(POOL_SIZE * GPUS_PER_HOST * GPU_BUDGET)
        count = per_pool + (1 if pool < extra else 0)
        for k in range(count):
            made = _gpu_deployment(rng, pool, k, budget) if rng.random() < 0.7 else None
            if made is not None:
                dep, used = made
                budget -= used
            else:
                dep = _cpu_deployment(rng, pool, k)
            deps.append(dep)
    fleet = Fleet(SETTINGS, BACKENDS, TEMPLATES, host_objs, deps)
    host_file_count = max(1, hosts // 40)  # one file per rack of 40 hosts
    fleet.host_files = _chunks(host_objs, host_file_count)
    fleet.deployment_files = _chunks(deps, files)
    return fleet


def _chunks(items: list[dict[str, Any]], count: int) -> list[list[dict[str, Any]]]:
    size, extra = divmod(len(items), count)
    out, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, width=100)


def write_repo(fleet: Fleet, root: Path) -> None:
    """Write ``fleet`` as a fleetform repository at ``root`` (replacing it)."""
    if root.exists():
        shutil.rmtree(root)
    for folder in ("backends.d", "deployments.d", "hosts.d"):
        (root / folder).mkdir(parents=True)
    (root / "fleetform.yaml").write_text(
        "# Synthetic benchmark fleet (bench/fleets/synthetic.py)\n" + _dump(fleet.settings)
    )
    for backend in fleet.backends:
        (root / "backends.d" / f"{backend['backend_name']}.yaml").write_text(_dump(backend))
    (root / "deployments.d" / "templates.yaml").write_text(_dump(fleet.templates[0]))
    for i, chunk in enumerate(fleet.host_files):
        (root / "hosts.d" / f"rack-{i:03d}.yaml").write_text(_dump(chunk))
    for i, chunk in enumerate(fleet.deployment_files):
        path = root / "deployments.d" / f"models-{i:03d}.yaml"
        if i % 2:  # half the files are multi-document, half a YAML list
            path.write_text("".join("---\n" + _dump(dep) for dep in chunk))
        else:
            path.write_text(_dump(chunk))
