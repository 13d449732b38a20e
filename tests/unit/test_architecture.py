"""The architecture as a contract (.importlinter, checked by import-linter): the service never imports
training, its layers import only downward, and its modules import each other without a circle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(LINT, cwd=root, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(root), "PATH": ""})


def copy_of_the_code(tmp_path: Path) -> None:
    """service/, training/ and the contracts, copied to break one of them without touching the tree."""
    for name in ("service", "training", ".importlinter"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {}))


def test_the_import_contracts_hold_on_this_tree():
    run = lint(REPO)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_a_gateway_module_importing_training_breaks_the_contract(tmp_path: Path):
    copy_of_the_code(tmp_path)
    reranker = tmp_path / "service" / "gateway" / "reranker.py"
    reranker.write_text(reranker.read_text() + "\nfrom training.paths import Paths  # noqa\n")
    scorers = tmp_path / "service" / "ranking" / "fusion.py"
    scorers.write_text(scorers.read_text() + "\nfrom service.gateway import settings  # noqa\n")
    run = lint(tmp_path)
    assert run.returncode != 0
    assert "service.gateway.reranker -> training.paths" in run.stdout
    assert "service.ranking.fusion -> service.gateway.settings" in run.stdout


@pytest.mark.parametrize(("module", "added_import", "reported"), [
    # engine_runs sits below evaluate (which reads its records): importing upward closes a circle.
    ("training/evaluation/engine_runs.py", "from training.evaluation.evaluate import markdown",
     "No import circle between the training package's modules at any depth BROKEN"),
    # the tuning stage reading the evaluation stage (as the tuning pipeline once did for its validation)
    ("training/tuning/pipeline.py", "from training.evaluation.engine_runs import EvalRequest", "training.tuning.pipeline -> training.evaluation.engine_runs"),
], ids=["import circle", "stage importing a later stage"])
def test_training_imports_against_the_contract_break_it(tmp_path: Path, module: str, added_import: str, reported: str):
    copy_of_the_code(tmp_path)
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{added_import}  # noqa\n")
    run = lint(tmp_path)
    assert run.returncode != 0
    assert reported in " ".join(run.stdout.split())
