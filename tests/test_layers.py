"""The architecture, checked: layers never import upward (import-linter's contracts in
pyproject.toml) and no module takes part in an import cycle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_layers_contract_is_kept():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    if not lint_imports.is_file():
        pytest.fail(f"{lint_imports} is missing: install the dev extras (pip install -e '.[dev]')")
    done = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_module_is_in_an_import_cycle():
    graph = grimp.build_graph("lightning_modules", "train", cache_dir=None)
    cycles = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            # A package's __init__ importing its own submodules is how packages expose names, not a cycle.
            if imported.startswith(importer + "."):
                continue
            if graph.chain_exists(importer=imported, imported=importer):
                chain = graph.find_shortest_chain(importer=imported, imported=importer)
                cycles.append(f"{importer} -> {' -> '.join(chain)}")
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_cycle_check_can_fail():
    """The check above would see a cycle: grimp reports one in a graph made to hold it."""
    graph = grimp.ImportGraph()
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.a")
    assert graph.chain_exists(importer="pkg.b", imported="pkg.a")
