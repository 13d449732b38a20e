"""`python -m service.gateway`: serve the gateway with uvicorn on the configured host and port."""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from service.gateway.app import StartupError, build_components, create_app
from service.gateway.settings import GatewaySettings


def main() -> int:
    try:  # built before uvicorn starts, so a bad setting or a missing artefact is one line and exit 2, not a traceback
        settings = GatewaySettings()
        components = build_components(settings)
    except ValidationError as exc:
        problems = "; ".join(f"RECRANKER_{'_'.join(str(p) for p in e['loc'][:1]).upper()}: {e['msg']}" for e in exc.errors())
        print(f"recranker gateway: error: bad setting: {problems}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"recranker gateway: error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(settings, components), host=settings.host, port=settings.port, log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
