"""Stopping child processes started in their own session (vLLM, the bench's stack, test servers)."""

from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 20) -> None:
    """Send `sig` to the process's whole group, wait `grace_s`, then SIGKILL what is left."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass
