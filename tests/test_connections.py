"""plan's early connections (compiler/remote/connections.py) open only what the schema
would accept: no text of a pull request's reaches ssh before it is validated."""

from __future__ import annotations

from pathlib import Path

from compiler.remote.connections import Connections


def test_an_address_validation_refuses_is_never_opened(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hosts = tmp_path / "hosts.d"
    hosts.mkdir()
    (hosts / "h.yaml").write_text(
        "- {name: a, address: 192.0.2.1,"
        f" docker_host: 'ssh://-oProxyCommand=touch {marker} x'}}\n"
        "- {name: b, address: 192.0.2.2, docker_host: 'ssh://u@-oProxyCommand=x'}\n"
        "- {name: c, address: 192.0.2.3, docker_host: 'tcp://gpu-c'}\n"
    )
    connections = Connections(tmp_path, ())
    try:
        assert connections._opened == {}
    finally:
        connections.close()
    assert not marker.exists()
