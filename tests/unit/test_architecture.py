"""Serving never imports training: the gateway image ships service/ alone."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"


def imported_modules(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            out += [(node.lineno, a.value) for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return out


def test_no_module_under_service_imports_the_training_package():
    files = sorted(SERVICE.rglob("*.py"))
    assert len(files) > 20
    offending = [f"{f.relative_to(SERVICE.parent)}:{line} imports {mod}" for f in files for line, mod in imported_modules(f)
                 if mod == "training" or mod.startswith("training.")]
    assert offending == []


def test_the_import_walk_sees_lazy_and_dynamic_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from training.data import load_dataset\n    import importlib\n    importlib.import_module('training.x')\n")
    assert [m for _, m in imported_modules(probe)] == ["training.data", "importlib", "training.x"]
