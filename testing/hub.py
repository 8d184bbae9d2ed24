"""The model helper image for tests of model downloads: Debian's python3 with huggingface_hub
and modelscope-hub.

* :func:`helper_rootfs` builds the rootfs once: ``debootstrap --variant=minbase
  --include=python3,ca-certificates bookworm`` from the Debian archive this machine's apt
  uses (:func:`testing.systemd_hosts.debian_mirror`), then this machine's pip installs
  :data:`WHEELS` (``huggingface_hub``, ``modelscope-hub`` and every dependency, each
  pinned) as wheels for CPython 3.11 on manylinux2014 x86_64 into
  ``/usr/local/lib/python3.11/dist-packages``, which Debian's python3.11 searches. Their
  console scripts (``hf``, ``tqdm``, ...) go to ``/usr/local/bin`` with
  ``/usr/bin/python3`` as interpreter. Documentation, man pages, translations and apt's
  caches are pruned. The tarball is cached as ``<cache>/hub-helper-<key>.tar``
  (``/var/cache/fleetform-test`` unless ``$FLEETFORM_TEST_CACHE``), built under a file
  lock by :func:`testing.systemd_hosts.build_cached_rootfs`; ``key`` hashes the recipe
  (suite, packages, wheels, pip's target, pruned paths). Only the build uses the network:
  the Debian archive (debootstrap) and pip's index (PyPI).
* :func:`load_helper_image` imports it into a test engine as :data:`HELPER_IMAGE`
  (``CMD ["python3"]``, labelled with the key), unless the engine has that recipe already.
  Nothing in the image needs a network: run its containers with ``network_mode="none"``
  (or on loopback), never on a network of the machine.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

from testing.engines import (
    Engine,
    import_rootfs,
    missing_engine_tools,
    require_tools,
)
from testing.systemd_hosts import (
    _which_sbin,
    build_cached_rootfs,
    cache_dir_default,
    cached_rootfs_path,
    prune_rootfs,
)

HELPER_IMAGE = "fleetform-test/hub-helper:1"
SUITE = "bookworm"
PACKAGES = ("python3", "ca-certificates")
PYTHON_VERSION = "3.11"  # bookworm's python3
HUB_VERSION = "2.4.0"
MODELSCOPE_HUB_VERSION = "0.5.1"
# huggingface_hub and what it depends on, as pip resolved them for CPython 3.11 on x86_64
# Linux (`pip download huggingface_hub==2.4.0 --only-binary=:all: --platform
# manylinux2014_x86_64 ...`). Each is pinned, so the cache key names everything in the
# image; the build fails if pip installs anything else (a dependency missing here).
WHEELS = {
    "huggingface_hub": HUB_VERSION,
    "hf_xet": "1.8.0",  # the Xet storage client, a Rust extension (abi3)
    "httpx2": "2.16.2",
    "httpcore2": "2.16.2",
    "h11": "0.16.0",
    "anyio": "4.16.0",
    "idna": "3.20",
    "truststore": "0.10.5",  # httpx2 verifies TLS with the system's CAs: ca-certificates
    "click": "8.5.1",
    "filelock": "4.3.2",
    "fsspec": "2026.9.0",
    "packaging": "26.4",
    "pyyaml": "6.0.4",
    "tqdm": "4.70.1",
    "typing_extensions": "4.16.0",
    # ModelScope's client (`pip download modelscope-hub==0.5.1 ...` likewise); idna,
    # filelock and tqdm above serve both.
    "modelscope_hub": MODELSCOPE_HUB_VERSION,
    "requests": "2.34.2",
    "urllib3": "2.8.0",
    "charset_normalizer": "3.5.3",
    "certifi": "2026.10.19.post1",
    "cryptography": "50.0.2",
    "cffi": "2.1.1",
    "pycparser": "3.12",
}
_PLATFORM = "manylinux2014_x86_64"
_SITE = f"usr/local/lib/python{PYTHON_VERSION}/dist-packages"
_PRUNED = (
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*/LC_MESSAGES",
    "var/cache/apt/archives/*.deb",
    "var/lib/apt/lists/*_*",
)
_RECIPE_VERSION = "1"
_IMAGE_LABEL = "org.fleetform.test.hub-helper-recipe"
_NAME = "hub-helper"


def recipe_key() -> str:
    """A hash of everything that goes into the helper rootfs: its cache name and image label."""
    recipe = json.dumps(
        [_RECIPE_VERSION, SUITE, PACKAGES, PYTHON_VERSION, _PLATFORM, WHEELS, _SITE, _PRUNED],
        sort_keys=True,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:16]


def missing_hub_tools(cache_dir: Path | None = None) -> list[str]:
    """What this machine lacks to build and run the helper image, one readable line each."""
    missing = missing_engine_tools()
    cached = cached_rootfs_path(cache_dir or cache_dir_default(), _NAME, recipe_key()).exists()
    if not cached and not _which_sbin("debootstrap"):
        missing.append("debootstrap (apt: debootstrap), to build the hub helper image once")
    return missing


def require_hub_tools(cache_dir: Path | None = None) -> None:
    """Fail (under ``FLEETFORM_REQUIRE_TOOLS=1``, as in CI) or skip when tools are missing."""
    require_tools("the hub helper image", missing_hub_tools(cache_dir))


def helper_rootfs(
    cache_dir: Path | None = None, mirror: str | None = None, timeout: float = 1200
) -> Path:
    """The helper rootfs tarball, built unless the cache already has it."""
    return build_cached_rootfs(
        cache_dir or cache_dir_default(),
        _NAME,
        recipe_key(),
        suite=SUITE,
        packages=PACKAGES,
        configure=_install_wheels,
        mirror=mirror,
        timeout=timeout,
    )


def load_helper_image(
    engine: Engine, tag: str = HELPER_IMAGE, cache_dir: Path | None = None
) -> str:
    """Import the helper image into ``engine`` as ``tag`` (building the cached rootfs first
    if needed); returns the image id. An image of the same recipe already tagged so is kept."""
    import docker.errors

    key = recipe_key()
    client = engine.client()
    try:
        try:
            image = client.images.get(tag)
        except docker.errors.ImageNotFound:
            image = None
    finally:
        client.close()
    if image is not None and image.labels.get(_IMAGE_LABEL) == key:
        image_id: str = image.id
        return image_id
    return import_rootfs(
        engine,
        helper_rootfs(cache_dir),
        tag,
        changes=['CMD ["python3"]', f"LABEL {_IMAGE_LABEL}={key}"],
        timeout=300,
    )


def _install_wheels(rootfs: Path) -> None:
    """Install :data:`WHEELS` into the debootstrapped tree with this machine's pip, and prune."""
    site = rootfs / _SITE
    argv = [
        sys.executable, "-m", "pip", "install",
        "--quiet",
        "--disable-pip-version-check",
        "--root-user-action=ignore",
        "--target", str(site),
        "--python-version", PYTHON_VERSION,
        "--only-binary=:all:",
        "--platform", _PLATFORM,
        "--implementation", "cp",
        *(f"{name}=={version}" for name, version in sorted(WHEELS.items())),
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(
            f"pip could not install the hub helper's wheels (exit {result.returncode}):\n"
            f"{result.stderr[-4000:]}"
        )
    installed = dict(
        _name_and_version(folder.name.removesuffix(".dist-info"))
        for folder in site.glob("*.dist-info")
    )
    pinned = {_canonical(name): version for name, version in WHEELS.items()}
    if installed != pinned:
        raise RuntimeError(
            "pip installed other wheels than testing/hub.py pins: "
            f"unpinned {sorted(set(installed.items()) - set(pinned.items()))}, "
            f"missing {sorted(set(pinned.items()) - set(installed.items()))}"
        )
    _move_scripts(site / "bin", rootfs / "usr/local/bin")
    prune_rootfs(rootfs, _PRUNED)


def _move_scripts(source: Path, target: Path) -> None:
    """Move pip's console scripts into ``target``, run by the image's python3: pip wrote
    this machine's interpreter into their ``#!`` line."""
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for script in sorted(source.iterdir()):
        first, _, rest = script.read_bytes().partition(b"\n")
        if first.startswith(b"#!") and b"python" in first:
            first = b"#!/usr/bin/python3"
        (target / script.name).write_bytes(first + b"\n" + rest)
        (target / script.name).chmod(0o755)
        script.unlink()
    source.rmdir()


def _name_and_version(stem: str) -> tuple[str, str]:
    """``PyYAML-6.0.4`` → ``("pyyaml", "6.0.4")``: a name as PEP 503 compares them."""
    name, _, version = stem.rpartition("-")
    return _canonical(name), version


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
