"""The library's layers import downward only (docs/architecture.md): no import knots between packages."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Absolute names of the eager_mlx modules a file imports (anywhere in it, TYPE_CHECKING blocks too)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = module.split(".")[:-1]  # (an __init__ module names its own package)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            out |= {name} | {f"{name}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {n for n in out if n.startswith("eager_mlx")}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_cycle_between_packages():
    """eager_mlx.engine, .evaluation, .trees, .server, .adaptive and the top-level modules: a DAG."""
    edges = set()
    for path in (ROOT / "eager_mlx").rglob("*.py"):
        mine = _package(".".join(path.relative_to(ROOT).with_suffix("").parts))
        edges |= {(mine, _package(n)) for n in _imports(path) if _package(n) != mine and n.count(".") >= 1}
    known = {p for e in edges for p in e}
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "eager_mlx").glob("*.py")}
    edges = {(a, b) for a, b in edges if b in known or b in modules}
    assert not {(a, b) for a, b in edges if (b, a) in edges}, "two packages import each other"


FORBIDDEN = {  # files under the key may not import any of these (what sits above them)
    "eager_mlx/engine": ("eager_mlx.answers", "eager_mlx.evaluation", "eager_mlx.server", "eager_mlx.trees",
                         "eager_mlx.api", "eager_mlx.adaptive"),
    "eager_mlx/trees": ("eager_mlx.evaluation", "eager_mlx.server", "eager_mlx.api"),
    "eager_mlx/server/handler.py": ("eager_mlx.server.app",),
}


def test_layers_import_downward():
    """The engine knows nothing of answers, datasets or servers; trees nothing of evaluation; the HTTP
    handler nothing of the server object that owns it."""
    bad = []
    for where, above in FORBIDDEN.items():
        paths = [ROOT / where] if where.endswith(".py") else (ROOT / where).rglob("*.py")
        for path in paths:
            bad += [f"{path.relative_to(ROOT)} imports {n}" for n in _imports(path) if n.startswith(above)]
    assert not bad, bad
