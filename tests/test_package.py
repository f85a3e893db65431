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


MAX_FUNCTION_LINES = 60
# Declarative tables, allowed to be longer: one add_argument line per flag reads better than split helpers.
LONG_FUNCTIONS_ALLOWED = {
    "cli/train_args.py:build_parser",
}


def _function_lengths(tree: ast.AST, prefix: str = "") -> dict[str, int]:
    """Lines of every function and method (qualified by class and enclosing function), decorators excluded."""
    lengths = {}
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                lengths[name] = node.end_lineno - node.lineno + 1
            lengths.update(_function_lengths(node, f"{name}."))
        else:
            lengths.update(_function_lengths(node, prefix))
    return lengths


def _long_functions(source: str, where: str) -> list[str]:
    return [f"{where}:{name} ({n} lines)" for name, n in _function_lengths(ast.parse(source)).items()
            if n > MAX_FUNCTION_LINES and f"{where}:{name}" not in LONG_FUNCTIONS_ALLOWED]


def test_no_function_is_longer_than_60_lines_except_declarative_tables():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        long += _long_functions(path.read_text(), path.relative_to(PACKAGE).as_posix())
    assert long == [], f"split these into steps of at most {MAX_FUNCTION_LINES} lines: {long}"
    lengths = _function_lengths(ast.parse((PACKAGE / "cli" / "train_args.py").read_text()))
    assert lengths["build_parser"] > MAX_FUNCTION_LINES  # the allow-list names something real


def test_the_function_length_check_sees_long_functions_and_methods():
    def function(name: str, lines: int, indent: str = "") -> str:
        return f"{indent}def {name}():\n" + "".join(f"{indent}    x{i} = {i}\n" for i in range(lines - 1))

    source = (function("short", 2) + function("at_limit", MAX_FUNCTION_LINES) + function("too_long", 61)
              + "class A:\n" + function("method", 61, "    "))
    assert _long_functions(source, "m.py") == ["m.py:too_long (61 lines)", "m.py:A.method (61 lines)"]
    assert _long_functions(source, "cli/train_args.py") == ["cli/train_args.py:too_long (61 lines)",
                                                            "cli/train_args.py:A.method (61 lines)"]
