"""What the CPU can do fast. bf16 is only a win where the CPU has bf16 instructions (AVX512-BF16 or
AMX); on an AVX2-only CPU it is emulated and measured 30x slower than fp32 for a matmul here, which
makes bf16 training or serving crawl. Callers ask this module instead of assuming."""

from __future__ import annotations

from functools import cache
from pathlib import Path

BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@cache
def cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    return bool(BF16_FLAGS & cpu_flags())


def default_cpu_dtype() -> str:
    """The vLLM/torch dtype to run a model in on this CPU: bfloat16 where it is native, else float32."""
    return "bfloat16" if cpu_has_fast_bf16() else "float32"
