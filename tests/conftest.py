from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testing.engines import (
    Engine,
    EngineFactory,
    cleanup_root,
    make_root,
    require_engine_tools,
    start_engine,
)
from testing.gpustack_server import (
    GPUStackServer,
    gpustack_server,
    is_running,
    require_gpustack_server,
)
from testing.systemd_hosts import (
    HOST_IMAGE,
    SystemdHostFactory,
    build_host_image,
    require_systemd_host_tools,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="Rewrite tests/golden/*/output from the current compiler instead of comparing.",
    )
    parser.addoption(
        "--update-hostile",
        action="store_true",
        default=False,
        help="Rewrite tests/hostile/expected.json (the pinned error lines of test_hostile.py)"
        " from the current compiler's output.",
    )


@pytest.fixture
def update_goldens(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-goldens"))


# --- real Docker engines (testing/engines.py) ---------------------------------------------


@pytest.fixture(scope="session")
def engine_root() -> Iterator[Path]:
    """A short root folder (``/tmp/ffe-XXXXXXXX``) for this session's engines and sshds.

    Fails under ``FLEETFORM_REQUIRE_TOOLS=1`` (CI) and skips elsewhere when dockerd,
    sshd, busybox-static or the SDK are missing. At the end every process naming it is
    killed, its mounts unmounted and it is removed.
    """
    require_engine_tools()
    root = make_root()
    try:
        yield root
    finally:
        cleanup_root(root)


@pytest.fixture
def engines(engine_root: Path) -> Iterator[EngineFactory]:
    """A factory of real engines (``engines("a")``) and ssh hosts (``engines.ssh(engine)``)
    for one test; all are stopped when the test ends."""
    factory = EngineFactory(engine_root)
    try:
        yield factory
    finally:
        factory.close()


# --- real systemd hosts (testing/systemd_hosts.py) ----------------------------------------


@pytest.fixture(scope="session")
def systemd_engine(engine_root: Path) -> Iterator[Engine]:
    """The outer dockerd whose containers are this session's systemd hosts.

    Fails under ``FLEETFORM_REQUIRE_TOOLS=1`` (CI) and skips elsewhere when the engine
    tools are missing, or debootstrap while the host image is not cached yet.
    """
    require_systemd_host_tools()
    engine = start_engine(engine_root, "sdhosts")
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def host_images(systemd_engine: Engine) -> Callable[[str], str]:
    """The host image of a Debian release (``host_images("trixie")``) in the outer engine,
    as ``fleetform-test/host:<release>``.

    Each is built with debootstrap once and cached (``/var/cache/fleetform-test`` or
    ``$FLEETFORM_TEST_CACHE``), and imported once per session.
    """
    imported: dict[str, str] = {}

    def image(release: str) -> str:
        if release not in imported:
            tag = f"{HOST_IMAGE}:{release}"
            build_host_image(systemd_engine, tag=tag, suite=release)
            imported[release] = tag
        return imported[release]

    return image


# The engine matrix of the systemd suite: every test that starts systemd hosts runs on
# Debian 12 (systemd 252, docker.io 20.10) and on Debian 13 (systemd 257, docker.io 26.1).
DEBIAN = {"debian12": "bookworm", "debian13": "trixie"}


@pytest.fixture(scope="session", params=sorted(DEBIAN))
def systemd_image(request: pytest.FixtureRequest, host_images: Callable[[str], str]) -> str:
    """The host image the ``systemd_hosts`` of a test boot: one run per Debian release."""
    return host_images(DEBIAN[request.param])


@pytest.fixture
def systemd_hosts(
    systemd_engine: Engine, systemd_image: str, engine_root: Path
) -> Iterator[SystemdHostFactory]:
    """A factory of real systemd hosts (``systemd_hosts("h1")``, ``systemd_hosts.many(...)``)
    reached over ssh on loopback; all are removed when the test ends."""
    factory = SystemdHostFactory(systemd_engine, engine_root, image=systemd_image)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def systemd_hosts_of(
    systemd_engine: Engine, engine_root: Path
) -> Iterator[Callable[[str], SystemdHostFactory]]:
    """Factories of systemd hosts of a given image (``systemd_hosts_of(image)``), for a
    test that picks its Debian release itself; all hosts are removed when the test ends."""
    factories: list[SystemdHostFactory] = []

    def factory(image: str) -> SystemdHostFactory:
        factories.append(SystemdHostFactory(systemd_engine, engine_root, image=image))
        return factories[-1]

    try:
        yield factory
    finally:
        for made in factories:
            made.close()


@pytest.fixture(scope="session")
def gpustack() -> Iterator[GPUStackServer]:
    """A real GPUStack 2.3.0 server (and its PostgreSQL) on loopback, started on first use
    and shared by the session's tests (each works in a cluster of its own). Its teardown
    is checked: neither process left, nor its folder. A root under /tmp, not tmp_path:
    PostgreSQL runs as its own user, which pytest's private tmp_path keeps out."""
    require_gpustack_server()
    root = make_root()
    try:
        with gpustack_server(root) as server:
            pids = (server.pid, server.postgres_pid)
            yield server
        assert not any(is_running(pid) for pid in pids)
        assert not server.run_dir.exists()
    finally:
        cleanup_root(root)
