"""Package hygiene: no module of timm_lap reaches into another module's private names."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "timm_lap"


def test_no_module_imports_another_modules_underscore_name():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and (node.level or node.module.startswith("timm_lap")):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private:
                    offenders.append(f"{path.name}: from {'.' * node.level}{node.module} import {', '.join(private)}")
    assert offenders == []


def _module_names() -> dict[str, Path]:
    """Dotted name of every module of the package (a package's ``__init__`` under the package's name)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imported_modules(name: str, path: Path, modules: set[str]) -> set[str]:
    """The package modules ``name`` imports, at module level or inside functions (relative or absolute)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            candidates = [f"{target}.{a.name}" for a in node.names] + [target]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
                break
    return found


def test_no_import_cycle_among_modules_even_through_imports_inside_functions():
    names = _module_names()
    graph = {name: _imported_modules(name, path, set(names)) for name, path in names.items()}
    assert graph["timm_lap.tracker"] >= {"timm_lap.ops.energy", "timm_lap.ops.grouped_energy"}  # the walk sees imports

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(t == goal or (t not in seen and reaches(t, goal, seen | {t})) for t in graph[start])

    assert [m for m in sorted(graph) if reaches(m, m, {m})] == []
