"""`python -m service.gateway`: serve the gateway with uvicorn on the configured host and port."""

from __future__ import annotations

import sys

import uvicorn

from service.gateway.app import StartupError, create_app
from service.gateway.settings import GatewaySettings


def main() -> int:
    settings = GatewaySettings()
    try:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_config=None, access_log=False)
    except StartupError as exc:
        print(f"recranker gateway: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
