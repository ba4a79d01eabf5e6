"""The shape of the package: no import circle between modules or subpackages, even through
type-checking imports, and the folder layout docs/architecture.md describes."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "s3spool"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _edges() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, anywhere in its body."""
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module(p) for p in paths}
    edges: dict[str, set[str]] = {}
    for path in paths:
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                deps.update(
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                )
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        me = _module(path)
        edges[me] = {d for d in deps if d in modules and d != me and d != "s3spool"}
    return edges


def _subpackage_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    def stage(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 2 else module

    out: dict[str, set[str]] = {}
    for src, deps in edges.items():
        out.setdefault(stage(src), set()).update(stage(d) for d in deps if stage(d) != stage(src))
    return out


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    for start in sorted(edges):
        visit(start, [start])
    return found


def test_no_import_circles_between_modules() -> None:
    edges = _edges()
    assert "s3spool.store.base" in edges["s3spool.run.service"]  # the walk sees imports
    assert _circles(edges) == []


def test_no_import_circles_between_subpackages() -> None:
    stages = _subpackage_edges(_edges())
    assert "store" in stages["run"]
    assert _circles(stages) == []


def test_the_circle_finder_finds_circles() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_the_layout() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 10, top
    subpackages = [p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    assert len(subpackages) >= 5
    for init in PACKAGE.rglob("__init__.py"):
        assert len(init.read_text(encoding="utf-8").splitlines()) <= 40, init


def _trees() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def test_cohesion_not_size() -> None:
    """Long where one job is long (about 1,000 lines at most), and a Protocol only where two
    classes implement it: at most 4 of them."""
    protocols = []
    for path, tree in _trees().items():
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 1000, path
        protocols += [
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)
            and any(getattr(b, "id", None) == "Protocol" for b in node.bases)
        ]
    assert len(protocols) <= 4, protocols


def test_module_docstrings_are_short() -> None:
    """What a module is for, in a few lines; a long one must state an invariant."""
    lines = {}
    for path, tree in _trees().items():
        first = tree.body[0] if tree.body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            assert first.end_lineno is not None
            lines[path.name] = first.end_lineno - first.lineno + 1
    assert sum(lines.values()) <= 200, sorted(lines.items(), key=lambda kv: -kv[1])[:5]
