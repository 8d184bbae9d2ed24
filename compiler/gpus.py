"""Which GPUs a replica sees, per vendor: one table, read by the resolver.

GPUStack 2.3.0 runs a custom backend's container privileged, so it sees every device of
the host, and picks the replica's GPUs with the vendor's variables (gpustack-runtime
0.2.6, ``envs.py``: ``GPUSTACK_RUNTIME_DEPLOY_RESOURCE_KEY_MAP_RUNTIME_VISIBLE_DEVICES``
and ``…_BACKEND_VISIBLE_DEVICES``, applied by ``deployer/docker.py``):

* the **runtime** variable (read by the vendor's container runtime hook) lists every GPU
  of that vendor on the host;
* the **backend** variables (read by the vendor's software stack in the container) list
  the replica's GPUs by their host index, except Ascend's ``ASCEND_RT_VISIBLE_DEVICES``
  and ``NPU_VISIBLE_DEVICES``, which count the host's devices of that vendor from 0
  (``…_BACKEND_VISIBLE_DEVICES_VALUE_ALIGNMENT``);
* ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` for NVIDIA, unless the container's env sets it, when
  the container sees more than one GPU (``map_visible_devices_ordering``: CUDA's default
  order would renumber a heterogeneous set). A privileged container sees them all;
  fleetform's sees its own, so it gets the variable when it has more than one.

fleetform runs no container privileged. It mounts the vendor's device files for every
GPU of that vendor on the host, so the container numbers them as the host does and the
same variables, with the same values, pick the same GPUs. Setting only one of ROCm's
two variables matters: ROCR filters first and HIP then indexes what is left, so
``ROCR_VISIBLE_DEVICES=2`` with ``HIP_VISIBLE_DEVICES=2`` sees no GPU at all.

NVIDIA (``cuda``) is the exception: the compose reservation (and ``--gpus`` in a unit)
names the replica's GPUs by ``device_ids``, and NVIDIA's runtime makes them the
container's GPUs 0…n-1; no visible-devices variable is set (GPUStack sets
``CUDA_VISIBLE_DEVICES`` to the host index inside a container that sees them all).

The deployment's own env may not set a variable that picks the vendor's GPUs: it would
point the replica at another replica's GPUs. A backend's env may (GPUStack's catalogue
is pasted as it is), and is overridden, as GPUStack's deployer overrides it; fleetform
also drops the other variables that pick the same GPUs (``ROCR_VISIBLE_DEVICES`` and
``CUDA_VISIBLE_DEVICES`` beside ROCm's ``HIP_VISIBLE_DEVICES``), which GPUStack would
leave to hide the replica's GPU. Other vendors' variables pass through.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True)
class Vendor:
    framework: str
    runtime_env: str | None  # the container runtime's variable: every GPU of the host
    backend_env: tuple[str, ...]  # the vendor stack's variables: the replica's GPUs
    aligned: tuple[str, ...] = ()  # backend variables counted from 0 over the host's GPUs
    devices: tuple[str, ...] = ()  # device files every replica gets
    per_gpu_device: str | None = None  # a device file per GPU: "{index}" is its index
    ordering: tuple[tuple[str, str], ...] = ()  # defaults the container's env may set
    reserved_by_index: bool = False  # NVIDIA: a device reservation, no variables
    # Other variables the vendor's stack reads to pick GPUs: a deployment may not set
    # them, a backend's are dropped.
    also_picks: tuple[str, ...] = ()

    @property
    def picks(self) -> frozenset[str]:
        """Every variable that picks this vendor's GPUs."""
        own = (self.runtime_env,) if self.runtime_env else ()
        return frozenset((*own, *self.backend_env, *self.also_picks))


# ROCm's runtime filters by ROCR_VISIBLE_DEVICES (and GPU_DEVICE_ORDINAL) before HIP
# indexes what is left, and HIP reads CUDA_VISIBLE_DEVICES when HIP_VISIBLE_DEVICES is
# unset: any of them beside HIP_VISIBLE_DEVICES can hide the replica's GPU.
_HIP_ALSO_READS = ("ROCR_VISIBLE_DEVICES", "GPU_DEVICE_ORDINAL", "CUDA_VISIBLE_DEVICES")

VENDORS: dict[str, Vendor] = {
    vendor.framework: vendor
    for vendor in (
        Vendor(
            "cuda",
            None,
            (),
            ordering=(("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),),
            reserved_by_index=True,
            also_picks=("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"),
        ),
        Vendor(
            "rocm",
            "AMD_VISIBLE_DEVICES",
            ("HIP_VISIBLE_DEVICES",),
            devices=("/dev/kfd", "/dev/dri"),
            also_picks=_HIP_ALSO_READS,
        ),
        Vendor(
            "cann",
            "ASCEND_VISIBLE_DEVICES",
            ("ASCEND_RT_VISIBLE_DEVICES", "NPU_VISIBLE_DEVICES"),
            aligned=("ASCEND_RT_VISIBLE_DEVICES", "NPU_VISIBLE_DEVICES"),
            devices=("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"),
            per_gpu_device="/dev/davinci{index}",
        ),
        # GPUStack's map spells the runtime variable METHERDS_VISIBLE_DEVICES (a typo its
        # privileged containers never notice); Moore Threads' runtime reads this one.
        Vendor(
            "musa",
            "MTHREADS_VISIBLE_DEVICES",
            ("CUDA_VISIBLE_DEVICES", "MUSA_VISIBLE_DEVICES"),
        ),
        Vendor(
            "corex",
            "IX_VISIBLE_DEVICES",
            ("CUDA_VISIBLE_DEVICES",),
            devices=("/dev/itrctl",),
            per_gpu_device="/dev/iluvatar{index}",
        ),
        # MetaX's runtime and stack read the same variable: the replica's GPUs win, as
        # in GPUStack (the backend value is written over the runtime's).
        Vendor("maca", None, ("CUDA_VISIBLE_DEVICES",), devices=("/dev/mxcd", "/dev/dri")),
        Vendor(
            "dtk",
            "HYGON_VISIBLE_DEVICES",
            ("HIP_VISIBLE_DEVICES",),
            devices=("/dev/kfd", "/dev/mkfd", "/dev/dri"),
            also_picks=_HIP_ALSO_READS,
        ),
        Vendor("neuware", "CAMBRICON_VISIBLE_DEVICES", ("MLU_VISIBLE_DEVICES",)),
        Vendor("hggc", "NVIDIA_VISIBLE_DEVICES", ("CUDA_VISIBLE_DEVICES",)),
        Vendor("cpu", None, ()),
    )
}


@dataclass(frozen=True)
class Visibility:
    """What makes a replica see its GPUs: variables that win over every env layer,
    defaults the env may override, and device files."""

    env: dict[str, str]
    defaults: dict[str, str]
    devices: tuple[str, ...]
    picks: frozenset[str] = frozenset()  # what the env layers may not set


@lru_cache(maxsize=4096)
def visibility(framework: str, gpus: tuple[int, ...], host_gpus: tuple[int, ...]) -> Visibility:
    """For a replica of ``framework`` on ``gpus`` (host indices), on a host whose GPUs of
    that framework are ``host_gpus``."""
    vendor = VENDORS.get(framework)
    if vendor is None or not gpus:
        return Visibility({}, {}, ())
    every = sorted(set(host_gpus) | set(gpus))
    env: dict[str, str] = {}
    if vendor.runtime_env:
        env[vendor.runtime_env] = ",".join(str(i) for i in every)
    position = {index: str(n) for n, index in enumerate(every)}
    for name in vendor.backend_env:
        if name in vendor.aligned:
            env[name] = ",".join(position[i] for i in gpus)
        else:
            env[name] = ",".join(str(i) for i in gpus)
    devices = list(vendor.devices)
    if vendor.per_gpu_device:
        devices.extend(vendor.per_gpu_device.format(index=i) for i in every)
    ordering = dict(vendor.ordering) if len(gpus) > 1 else {}
    return Visibility(env, ordering, tuple(devices), vendor.picks)
