"""The wheel: `pip wheel .` gives a package that installs into a new virtual environment and runs there.

Offline: the wheel is built with this environment's setuptools (`--no-build-isolation`, the [test] extra has
setuptools and wheel), and installed with `--no-deps --no-index` into a new venv that sees this environment's
packages through a .pth line, so no registry is asked. The dependencies the wheel declares are checked to be
pyproject's; that they install from the registry is what tests/test_setup.py checks.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def _copy_source(dest: Path) -> None:
    """The files git tracks or would track (not the ignored .venv, build/, ...), as they are now."""
    proc = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout (git ls-files failed)")
    for rel in filter(None, proc.stdout.decode().split("\0")):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)


def _run(args: list, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{args}: {proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    _copy_source(tmp / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", tmp / "dist", tmp / "src"], tmp)
    (found,) = (tmp / "dist").glob("eager_mlx-*.whl")
    return found


def test_wheel_holds_every_package_file_under_eager_mlx(wheel):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    names = set(zipfile.ZipFile(wheel).namelist())
    for package, folder in project["tool"]["setuptools"]["package-dir"].items():
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".toml"):
                inside = "/".join([*package.split("."), *path.relative_to(REPO / folder).parts])
                assert inside in names, f"{path.relative_to(REPO)} is not in the wheel as {inside}"
    assert not {n.split("/")[0] for n in names} - {"eager_mlx", wheel.name.split("-")[0] + "-"
                                                   + project["project"]["version"] + ".dist-info"}
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(f"eager_mlx-{project['project']['version']}.dist-info/"
                                                         "METADATA").decode())
    assert meta["Version"] == project["project"]["version"]
    declared = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert [r.replace(" ", "").split(";")[0] for r in declared] == \
        [r.replace(" ", "").split(";")[0] for r in project["project"]["dependencies"]]


def test_wheel_installs_into_a_new_venv_and_runs(wheel, tmp_path):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path)
    python = venv / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip()
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(site) / "_test_dependencies.pth").write_text("".join(p + "\n" for p in sorted(here)))
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", "-q", wheel],
         tmp_path)
    exe, cache = venv / "bin" / "eager-mlx", str(tmp_path / "cache")
    assert _run([exe, "--version"], tmp_path).stdout == f"eager-mlx, version {version}\n"
    helped = _run([exe, "--help"], tmp_path).stdout
    assert all(f"  {c} " in helped for c in ("solve", "eval", "serve", "models", "chat", "lm-eval"))
    listed = _run([exe, "models"], tmp_path, EAGER_MLX_CACHE=cache).stdout
    assert "smollm2-135m" in listed and "(default)" in listed and "qwen2.5-coder-0.5b" in listed
    where = _run([python, "-c", "import eager_mlx, eager_mlx.cli.main, eager_mlx.models.presets as p; "
                                "print(eager_mlx.__file__, p.__file__, eager_mlx.__version__)"], tmp_path).stdout
    assert where.split() == [f"{site}/eager_mlx/__init__.py", f"{site}/eager_mlx/models/presets/__init__.py",
                             version]
