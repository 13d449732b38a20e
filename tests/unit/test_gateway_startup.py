"""Start-up failures are one line naming what is missing and exit code 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_missing_backbone_stops_the_gateway_with_one_line_and_exit_code_2(tmp_path):
    env = {**os.environ, "RECRANKER_ARTIFACTS_DIR": str(tmp_path), "RECRANKER_BACKBONE": "lightgcn"}
    run = subprocess.run([sys.executable, "-m", "service.gateway"], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "no exported backbone" in lines[0] and str(tmp_path) in lines[0]
    assert "Traceback" not in run.stderr + run.stdout
