"""Runs the ``gpustack`` CLI with every listener on 127.0.0.1 (for :mod:`testing.gpustack_server`).

Run by GPUStack's venv python (``python -I gpustack_launch.py start ...``), never imported
by the tests. GPUStack 2.3.0 has no flag for its bind address and hard-codes 0.0.0.0 for
(a) the uvicorn API server when ``--gateway-mode disabled`` (``server/server.py``: 127.0.0.1
only with the embedded gateway) and (b) the worker-tunnel HTTP proxy on ``--proxy-port``
(``HTTPSProxyServer(host=cfg.get_proxy_listen_address())``). Both constructors are wrapped
here before the CLI starts.
"""

from __future__ import annotations

import sys
from typing import Any

LOOPBACK = "127.0.0.1"


def _keep_on_loopback() -> None:
    import uvicorn
    from gpustack.websocket_proxy import proxy_server

    config_init = uvicorn.Config.__init__
    proxy_init = proxy_server.HTTPSProxyServer.__init__

    def uvicorn_config(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("host") in (None, "", "0.0.0.0", "::"):
            kwargs["host"] = LOOPBACK
        config_init(self, *args, **kwargs)

    def https_proxy_server(self: Any, *args: Any, **kwargs: Any) -> None:
        proxy_init(self, *args, **kwargs)
        self.host = LOOPBACK

    uvicorn.Config.__init__ = uvicorn_config
    proxy_server.HTTPSProxyServer.__init__ = https_proxy_server


if __name__ == "__main__":
    _keep_on_loopback()
    from gpustack.main import main

    sys.argv[0] = "gpustack"
    sys.exit(main())
