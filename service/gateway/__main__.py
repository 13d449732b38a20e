"""`python -m service.gateway`: serve the gateway with uvicorn on the configured host and port."""

from __future__ import annotations

import sys

import uvicorn

from service.gateway.app import StartupError, build_components, create_app
from service.gateway.settings import GatewaySettings


def main() -> int:
    settings = GatewaySettings()
    try:  # built before uvicorn starts, so a missing artefact is one line and exit 2, not a traceback
        components = build_components(settings)
    except StartupError as exc:
        print(f"recranker gateway: error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(settings, components), host=settings.host, port=settings.port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
