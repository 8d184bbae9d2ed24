"""compiler/gpus.py: what a replica on GPU 2 of a host's 4 sees, per framework, read
back from the artifacts through the real tools (docker-compose config, systemd's own
parser of ExecStart=).

The values are GPUStack 2.3.0's (gpustack-runtime 0.2.6's maps, for a container that
sees every GPU of the host); tests/test_gpustack_parity.py checks them against its code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler import api
from compiler.errors import FleetformError
from compiler.render.systemd import unit_name
from tests.helpers import (
    compose_config,
    exec_time_word,
    option_values,
    split_docker_run,
    systemd_exec_start,
)
from tests.helpers_repo import make_repo

# framework -> (the variables a replica on host GPU 2 of 0-3 gets, its device files)
EXPECTED: dict[str, tuple[dict[str, str], list[str]]] = {
    "cuda": ({}, []),
    "rocm": (
        {"AMD_VISIBLE_DEVICES": "0,1,2,3", "HIP_VISIBLE_DEVICES": "2"},
        ["/dev/kfd", "/dev/dri"],
    ),
    "cann": (
        {
            "ASCEND_VISIBLE_DEVICES": "0,1,2,3",
            "ASCEND_RT_VISIBLE_DEVICES": "2",
            "NPU_VISIBLE_DEVICES": "2",
        },
        ["/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]
        + [f"/dev/davinci{i}" for i in range(4)],
    ),
    "musa": (
        {
            "MTHREADS_VISIBLE_DEVICES": "0,1,2,3",
            "CUDA_VISIBLE_DEVICES": "2",
            "MUSA_VISIBLE_DEVICES": "2",
        },
        [],
    ),
    "corex": (
        {"IX_VISIBLE_DEVICES": "0,1,2,3", "CUDA_VISIBLE_DEVICES": "2"},
        ["/dev/itrctl"] + [f"/dev/iluvatar{i}" for i in range(4)],
    ),
    "maca": ({"CUDA_VISIBLE_DEVICES": "2"}, ["/dev/mxcd", "/dev/dri"]),
    "dtk": (
        {"HYGON_VISIBLE_DEVICES": "0,1,2,3", "HIP_VISIBLE_DEVICES": "2"},
        ["/dev/kfd", "/dev/mkfd", "/dev/dri"],
    ),
    "neuware": ({"CAMBRICON_VISIBLE_DEVICES": "0,1,2,3", "MLU_VISIBLE_DEVICES": "2"}, []),
    "hggc": ({"NVIDIA_VISIBLE_DEVICES": "0,1,2,3", "CUDA_VISIBLE_DEVICES": "2"}, []),
}


# What the backend's env sets and does not pick this vendor's GPUs, kept.
HIP, CUDA = {"HIP_VISIBLE_DEVICES": "0"}, {"CUDA_VISIBLE_DEVICES": "0"}
KEPT: dict[str, dict[str, str]] = {
    "cuda": HIP,
    "rocm": {},  # HIP also reads CUDA_VISIBLE_DEVICES
    "cann": {**HIP, **CUDA},
    "musa": HIP,
    "corex": HIP,
    "maca": HIP,
    "dtk": {},
    "neuware": {**HIP, **CUDA},
    "hggc": HIP,
}


def _repo(root: Path, framework: str, target: str, gpu_ids: str = "[h1:{fw}:2]") -> Path:
    backend = (
        "backend_name: srv\n"
        "default_env: {LEVEL: info, HIP_VISIBLE_DEVICES: '0', CUDA_VISIBLE_DEVICES: '0'}\n"
        "default_run_command: serve {{model_path}} --port {{port}}\n"
        f"version_configs:\n  v1: {{image_name: 'example/srv:1', custom_framework: {framework}}}\n"
    )
    return make_repo(
        root,
        {
            "backends.d/b.yaml": backend,
            "hosts.d/h.yaml": (
                f"name: h1\naddress: 10.9.0.1\ntarget: {target}\n"
                f"gpus: {{framework: {framework}, count: 4}}\n"
            ),
            "deployments.d/d.yaml": (
                "- name: d\n  backend: srv\n  local_path: /m/x\n"
                f"  gpu_selector: {{gpu_ids: {gpu_ids.format(fw=framework)}}}\n"
            ),
        },
    )


@pytest.mark.parametrize("framework", sorted(EXPECTED))
def test_a_replica_on_gpu_2_of_4_sees_gpu_2_in_compose(tmp_path: Path, framework: str) -> None:
    _repo(tmp_path, framework, "compose")
    api.compile_repo(tmp_path)
    service = compose_config(tmp_path / "output" / "h1" / "compose.yaml")["services"]["d-0"]
    variables, devices = EXPECTED[framework]
    # The backend's CUDA_/HIP_VISIBLE_DEVICES: '0' survive only where they pick no GPU of
    # this vendor (as in GPUStack, which overrides only its vendor's variables).
    assert service["environment"] == {"LEVEL": "info", **KEPT[framework], **variables}
    assert [d["source"] for d in service.get("devices", [])] == devices
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    if framework == "cuda":
        assert reservations["devices"] == [
            {"driver": "nvidia", "device_ids": ["2"], "capabilities": ["gpu"]}
        ]
    else:
        assert "devices" not in reservations


@pytest.mark.parametrize("framework", sorted(EXPECTED))
def test_a_replica_on_gpu_2_of_4_sees_gpu_2_in_systemd(tmp_path: Path, framework: str) -> None:
    _repo(tmp_path, framework, "systemd")
    compiled = api.build(tmp_path)
    (workload,) = compiled.fleet.workloads
    name = unit_name(workload, compiled.fleet.settings)
    text = compiled.files[f"h1/systemd/{name}"].decode()
    argv = [exec_time_word(word) for word in systemd_exec_start(name, text)]
    options, _, _ = split_docker_run(argv)
    variables, devices = EXPECTED[framework]
    env = dict(item.split("=", 1) for item in option_values(options, "--env"))
    assert env == {"LEVEL": "info", **KEPT[framework], **variables}
    assert option_values(options, "--device") == devices
    assert option_values(options, "--gpus") == (['"device=2"'] if framework == "cuda" else [])


def test_cuda_with_several_gpus_numbers_them_by_pci_bus(tmp_path: Path) -> None:
    """As GPUStack's deployer, for a container that sees more than one GPU: CUDA's
    default order would renumber a mixed set. The container's own env may set it."""
    _repo(tmp_path, "cuda", "compose", gpu_ids="[h1:cuda:1, h1:cuda:3]")
    api.compile_repo(tmp_path)
    service = compose_config(tmp_path / "output" / "h1" / "compose.yaml")["services"]["d-0"]
    assert service["environment"] == {
        "LEVEL": "info",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "HIP_VISIBLE_DEVICES": "0",  # another vendor's: passed on, as in GPUStack
    }
    assert service["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == [
        "1",
        "3",
    ]


def test_ascend_counts_from_zero_over_the_hosts_npus(tmp_path: Path) -> None:
    """ASCEND_RT_VISIBLE_DEVICES is a position among the host's NPUs, not an index."""
    make_repo(
        tmp_path,
        {
            "backends.d/b.yaml": (
                "backend_name: srv\ndefault_run_command: serve\nversion_configs:\n"
                "  v1: {image_name: 'example/srv:1', custom_framework: cann}\n"
            ),
            "hosts.d/h.yaml": (
                "name: h1\naddress: 10.9.0.1\ngpus:\n"
                + "".join(f"- {{index: {i}, framework: cann}}\n" for i in (4, 5, 6, 7))
            ),
            "deployments.d/d.yaml": (
                "- {name: d, backend: srv, gpu_selector: {gpu_ids: [h1:cann:6]}}\n"
            ),
        },
    )
    (workload,) = api.build(tmp_path).fleet.workloads
    assert workload.env["ASCEND_VISIBLE_DEVICES"] == "4,5,6,7"
    assert workload.env["ASCEND_RT_VISIBLE_DEVICES"] == "2"
    assert workload.env["NPU_VISIBLE_DEVICES"] == "2"


@pytest.mark.parametrize(
    "variable", ["HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"]
)
def test_a_deployment_may_not_point_a_replica_at_other_gpus(tmp_path: Path, variable: str) -> None:
    _repo(tmp_path, "rocm", "compose")
    path = tmp_path / "deployments.d" / "d.yaml"
    path.write_text(path.read_text() + f"  env: {{{variable}: '0'}}\n")
    with pytest.raises(FleetformError) as caught:
        api.build(tmp_path)
    assert str(caught.value) == (
        f"deployments.d/d.yaml:5:{11 + len(variable)}: env.{variable}: {variable} picks the"
        " GPUs a replica sees;"
        " fleetform sets it from gpu_selector (remove it here)"
    )


def test_without_gpus_the_variables_are_the_users(tmp_path: Path) -> None:
    _repo(tmp_path, "rocm", "compose")
    path = tmp_path / "deployments.d" / "d.yaml"
    text = path.read_text().replace("{gpu_ids: [h1:rocm:2]}", "{gpus_per_replica: 0}")
    path.write_text(text + "  env: {HIP_VISIBLE_DEVICES: '1'}\n")
    (workload,) = api.build(tmp_path).fleet.workloads
    assert workload.env == {
        "LEVEL": "info",
        "HIP_VISIBLE_DEVICES": "1",
        "CUDA_VISIBLE_DEVICES": "0",
    }
    assert workload.devices == ()
