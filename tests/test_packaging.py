"""pyproject.toml installs every package of the source tree, cli/ and models/ inside the eager_mlx namespace."""
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_installed_under_eager_mlx():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(tool["packages"])
    dirs = tool["package-dir"]
    found = set()
    for name, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *rel)))
    assert found == declared, f"missing from pyproject: {sorted(found - declared)}; stale: {sorted(declared - found)}"
    assert all(p == "eager_mlx" or p.startswith("eager_mlx.") for p in declared)  # no top-level cli or models


def test_no_cli_command_imports_another():
    import ast

    commands = {"solve", "eval", "serve", "calibrate", "models", "chat", "lm_eval", "main"}
    for path in (ROOT / "cli").glob("*.py"):
        if path.stem not in commands or path.stem == "main":
            continue
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module} if node.module else {a.name for a in node.names}
        assert not imported & commands, f"cli/{path.name} imports {sorted(imported & commands)}"


def test_no_function_longer_than_60_lines():
    import ast

    long = []
    for folder in ("eager_mlx", "cli", "models"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not long, long
