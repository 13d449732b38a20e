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


def machine_description() -> str:
    """What a timing or a tuning run was measured on, e.g. "2-core AMD EPYC, avx512_bf16"."""
    import os
    import platform

    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")), platform.processor() or "unknown CPU")
    fast = sorted(f for f in cpu_flags() if f in BF16_FLAGS or f.startswith("amx"))
    text = f"{os.cpu_count()}-core {model}, {', '.join(fast) or 'no bf16 instructions'}"
    try:
        import torch

        if torch.cuda.is_available():
            text += f"; GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return text


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
