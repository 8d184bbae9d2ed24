"""The GPUStack server harness (testing/gpustack_server.py): a real GPUStack 2.3.0 and its
PostgreSQL on loopback only, answering only to the API key the harness made (the shared
fixture in conftest.py checks that close() leaves no process and no folder).

Skipped only when PostgreSQL 15 or the GPUStack venv is missing and FLEETFORM_REQUIRE_TOOLS
is not "1" (CI sets it: there a missing tool fails).
"""

from __future__ import annotations

from testing.gpustack_server import (
    GPUStackServer,
    listening_sockets,
)


def test_server_listens_on_loopback_only_and_checks_keys(gpustack: GPUStackServer) -> None:
    server_pid, postgres_pid = gpustack.pid, gpustack.postgres_pid
    port = int(gpustack.url.rsplit(":", 1)[1])
    for pid in (server_pid, postgres_pid):
        listening = listening_sockets(pid)
        assert listening
        assert {address for address, _ in listening} == {"127.0.0.1"}, (pid, listening)
    assert ("127.0.0.1", port) in listening_sockets(server_pid)

    assert gpustack.request("GET", "/v2/clusters", key="gpustack_0000_wrong")[0] == 401
    status, backends = gpustack.request("GET", "/v2/inference-backends")
    assert status == 200
    assert "vLLM" in {backend["backend_name"] for backend in backends["items"]}
    status, clusters = gpustack.request("GET", "/v2/clusters")
    assert status == 200
    # The harness's own cluster (the session's other tests may have added theirs).
    assert (gpustack.cluster_id, gpustack.cluster_name) in [
        (c["id"], c["name"]) for c in clusters["items"]
    ]
