from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engines import EngineFactory, cleanup_root, make_root, require_engine_tools


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-goldens",
        action="store_true",
        default=False,
        help="Rewrite tests/golden/*/output from the current compiler instead of comparing.",
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
