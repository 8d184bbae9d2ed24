from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engines import (
    Engine,
    EngineFactory,
    cleanup_root,
    make_root,
    require_engine_tools,
    start_engine,
)
from tests.systemd_hosts import (
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


# --- real Docker engines (tests/engines.py) ---------------------------------------------


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


# --- real systemd hosts (tests/systemd_hosts.py) ----------------------------------------


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
def systemd_image(systemd_engine: Engine) -> str:
    """The host image (Debian bookworm, systemd, sshd, docker.io) in the outer engine.

    Built with debootstrap once and cached (``/var/cache/fleetform-test`` or
    ``$FLEETFORM_TEST_CACHE``); imported once per session.
    """
    return build_host_image(systemd_engine)


@pytest.fixture
def systemd_hosts(
    systemd_engine: Engine, systemd_image: str, engine_root: Path
) -> Iterator[SystemdHostFactory]:
    """A factory of real systemd hosts (``systemd_hosts("h1")``, ``systemd_hosts.many(...)``)
    reached over ssh on loopback; all are removed when the test ends."""
    factory = SystemdHostFactory(systemd_engine, engine_root)
    try:
        yield factory
    finally:
        factory.close()
