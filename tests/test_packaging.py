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
