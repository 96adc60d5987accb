"""Imports point downward only (docs/internals.md): a module imports tuneforge packages of a lower layer
(or its own package), never one beside or above it -- function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "tuneforge"
# package -> layer; a package may import its own modules and those of strictly lower layers
LAYERS = {
    "errors": 0, "utils": 0,
    "config": 1,
    "data": 2, "model": 2,
    "estimate": 3, "infer": 3, "export_gguf": 3, "export_gptq": 3,
    "train": 4, "evaluate": 4, "export": 4,
    "bench": 5, "webui": 5, "api": 5, "dry_run": 5,
    "cli": 6,
    "__init__": 7, "__main__": 7,
}


def _imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "tuneforge" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_package_has_a_layer():
    packages = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert packages - set(LAYERS) == set()


def test_imports_point_downward_only():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        package = path.relative_to(SRC).parts[0].removesuffix(".py")
        for target in _imported_packages(path):
            same_level_base = LAYERS[package] == LAYERS[target] == 0
            if target != package and LAYERS[target] >= LAYERS[package] and not same_level_base:
                wrong.append(f"{path.relative_to(SRC)} ({package}, layer {LAYERS[package]}) imports "
                             f"tuneforge.{target} (layer {LAYERS[target]})")
    assert wrong == []
