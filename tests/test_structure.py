"""The package's structure, read from the source (no imports): no import cycles, the testing package
stays out of the library, the CLI lists every command, the stand-ins' tokenizer files ship with it."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "lgm_core"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set:
    """lgm_core modules imported by ``path`` (at import time only, or anywhere in the file)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("lgm_core")}


def _graph(top_level_only: bool) -> dict:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for m in _imports(path, top_level_only):
            while m not in files and "." in m:
                m = m.rsplit(".", 1)[0]
            if m in files and m != name and not name.startswith(m + "."):  # a package's own __init__ is no cycle
                targets.add(m)
        graph[name] = targets
    return graph


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


KNOWN_CYCLES = [["lgm_core.models.lgm", "lgm_core.weights"]]
"""Cycles through imports inside functions, allowed on purpose; nothing may be added. ``LGM.from_pretrained``
/ ``save_pretrained`` (the diffusers idiom) delegate to the weights module, which builds the model."""


def test_no_import_cycles():
    assert _cycles(_graph(top_level_only=True)) == []
    assert [c for c in _cycles(_graph(top_level_only=False)) if c not in KNOWN_CYCLES] == []


def test_data_types_do_not_import_file_formats():
    graph = _graph(top_level_only=False)
    for data_type in ("lgm_core.gaussians", "lgm_core.cameras", "lgm_core.geometry"):
        assert not graph[data_type] & {"lgm_core.ply", "lgm_core.splat_formats", "lgm_core.fileio",
                                       "lgm_core.image_io", "lgm_core.video"}, data_type


def test_library_never_imports_the_testing_package():
    graph = _graph(top_level_only=False)
    users = [m for m, targets in graph.items() if not m.startswith("lgm_core.testing")
             and any(t.startswith("lgm_core.testing") for t in targets)]
    assert users == []


def test_cli_lists_every_command_module():
    source = (PKG / "cli" / "__init__.py").read_text(encoding="utf-8")
    commands = {p.stem for p in (PKG / "cli").glob("*.py")} - {"__init__", "common"}
    tree = ast.parse(source)
    (fn,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "command_modules"]
    imported = {a.name for n in ast.walk(fn) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert imported == commands


def test_docstrings_cite_the_repository_docs_not_an_outside_spec():
    """Facts of the original LGM that docstrings rely on live in docs/conventions.md, and every
    section a docstring links to exists there."""
    import re

    text = {p: p.read_text(encoding="utf-8") for p in PKG.rglob("*.py")}
    assert [p.name for p, t in text.items() if re.search(r"lgm_spec|spec §", t)] == []
    headings = (REPO / "docs" / "conventions.md").read_text(encoding="utf-8")
    anchors = {h.strip().lower().replace(" ", "-") for h in re.findall(r"^## (.+)$", headings, re.M)}
    cited = {a for t in text.values() for a in re.findall(r"conventions\.md#([a-z-]+)", t)}
    assert cited and cited <= anchors, sorted(cited - anchors)


def test_vendored_tokenizer_ships_with_its_licence():
    from lgm_core.testing import TOKENIZER_DIR

    names = {p.name for p in TOKENIZER_DIR.iterdir()}
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "LICENSE"} <= names
    assert "MIT License" in (TOKENIZER_DIR / "LICENSE").read_text(encoding="utf-8")
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "testing/clip_tokenizer/*" in data["tool"]["setuptools"]["package-data"]["lgm_core"]
