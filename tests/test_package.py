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
