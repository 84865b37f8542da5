"""The package graph runs one way (README, Layout): a production module imports only packages below it.

Every import statement of every production module is parsed (module level and inside functions),
so a lazy import that runs the wrong way fails here too, naming the module, the line and the edge.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Each package and the project packages it may import. Bottom first: the configuration and the shard
# format (with the pose conventions and statistics), then the networks, then scores and verdicts on
# arrays, then the readers of the data (audit and trainer), then the job.
ALLOWED: dict[str, set[str]] = {
    "configs": set(),
    "shards": {"configs"},
    "models": {"configs", "shards"},
    "filters": {"configs", "shards", "models"},
    "manifests": {"configs", "shards", "models", "filters"},
    "training": {"configs", "shards", "models", "filters"},
    "pipeline": {"configs", "shards", "models", "filters", "manifests"},
}
PROJECT = set(ALLOWED) | {"tests", "bench"}


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level project package) for every absolute import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in PROJECT]
    return found


def wrong_edges() -> list[str]:
    bad = []
    for package, allowed in ALLOWED.items():
        for path in sorted((REPO / package).rglob("*.py")):
            for line, target in imported_packages(path):
                if target != package and target not in allowed:
                    bad.append(f"{path.relative_to(REPO)}:{line} imports {target} ({package} -> {target} "
                               f"runs the wrong way; {package} may import {sorted(allowed) or 'nothing'})")
    return bad


def test_every_production_import_runs_down_the_graph():
    assert wrong_edges() == []


def test_the_check_sees_a_wrong_edge(tmp_path, monkeypatch):
    """A planted upward import is reported with its file, line and edge."""
    fake = tmp_path / "shards"
    fake.mkdir()
    (fake / "bad.py").write_text("import numpy\n\ndef f():\n    from pipeline.outdir import OutputDir\n")
    for package in ALLOWED:
        if package != "shards":
            (tmp_path / package).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert wrong_edges() == ["shards/bad.py:4 imports pipeline (shards -> pipeline runs the wrong way; "
                             "shards may import ['configs'])"]


def test_every_package_is_in_the_graph():
    """A new top-level package must take its place in ``ALLOWED`` (and in the README's Layout)."""
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"}
    assert packages == set(ALLOWED)
