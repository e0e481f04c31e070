"""scripts/setup on a PEP 668 system: a fresh copy of the repo installs into its own .venv and runs.

The install test copies the tracked files to a temp folder and runs
``PYTHON=<externally managed python3> ./scripts/setup`` there: one real install
from the package registry (a minute or two). It is skipped, with the reason,
when no externally managed python3 is present, when this is not a git checkout,
when the registry cannot be reached, or when EAGER_MLX_SKIP_SETUP_TEST=1 (for
quick local runs; CI runs it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = ("/usr/bin/python3", "/opt/homebrew/bin/python3", "/usr/local/bin/python3")
MARKER = "import os, sysconfig; print(os.path.isfile(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment minus anything that points at the test run's own virtual environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return {**env, **extra}


def _externally_managed_python() -> str | None:
    for python in CANDIDATES:
        if not os.access(python, os.X_OK):
            continue
        out = subprocess.run([python, "-I", "-c", MARKER], capture_output=True, text=True)
        if out.stdout.strip() == "True":
            return python
    return None


def _registry_unreachable(tmp: Path) -> str | None:
    """Why pip (with this machine's configuration) cannot fetch a small package, or None."""
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                           "-q", "click", "-d", str(tmp / "probe")], capture_output=True, text=True, timeout=300)
    if proc.returncode == 0:
        return None
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")]
    return lines[-1] if lines else f"pip download exited with {proc.returncode}"


def _copy_tracked_files(dest: Path) -> None:
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"{REPO} is not a git checkout (git ls-files failed)")
    for rel in filter(None, proc.stdout.decode().split("\0")):
        src = REPO / rel
        if src.is_file():  # a tracked file deleted in the work tree is not copied
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _shim_path(python: str, folder: Path) -> str:
    """PATH with `python3`, `python`, `pip` and `pip3` all meaning `python`, as on a PEP 668 system.

    So a setup that installed into "the" python3 instead of .venv fails here (PEP 668
    refuses it) instead of installing into whatever python3 this machine has first.
    """
    folder.mkdir()
    for name in ("python3", "python"):
        (folder / name).symlink_to(python)
    for name in ("pip", "pip3"):
        (folder / name).write_text(f'#!/bin/sh\nexec "{python}" -m pip "$@"\n')
        (folder / name).chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_setup_into_venv_on_externally_managed_python(tmp_path):
    if os.environ.get("EAGER_MLX_SKIP_SETUP_TEST") == "1":
        pytest.skip("EAGER_MLX_SKIP_SETUP_TEST=1")
    python = _externally_managed_python()
    if python is None:
        pytest.skip(f"no externally managed (PEP 668) python3 at {', '.join(CANDIDATES)}")
    reason = _registry_unreachable(tmp_path)
    if reason:
        pytest.skip(f"the package registry is unreachable: {reason}")
    repo = tmp_path / "repo"
    _copy_tracked_files(repo)
    env = _clean_env(PYTHON=python, EAGER_MLX_CACHE=str(tmp_path / "cache"),
                     PATH=_shim_path(python, tmp_path / "bin"))
    refused = _run(["python3", "-m", "pip", "install", "--dry-run", "--no-deps", "click"], tmp_path, env)
    if "No module named pip" not in refused.stderr:  # a python without pip cannot install anything either
        assert "externally-managed-environment" in refused.stderr, "PEP 668 is not in force here"
    setup = _run(["./scripts/setup"], repo, env, timeout=1800)
    assert setup.returncode == 0, setup.stderr[-3000:]
    assert f"installed in {repo}/.venv" in setup.stderr
    venv_python = repo / ".venv" / "bin" / "python"
    where = _run([str(venv_python), "-c", "import sys, eager_mlx; print(sys.prefix); print(eager_mlx.__file__)"],
                 tmp_path, env)
    assert where.stdout.split() == [str(repo / ".venv"), str(repo / "eager_mlx" / "__init__.py")]
    help_ = _run([str(repo / ".venv/bin/eager-mlx"), "--help"], tmp_path, env)
    assert help_.returncode == 0 and "solve" in help_.stdout and "models" in help_.stdout, help_.stderr
    models = _run([str(repo / ".venv/bin/eager-mlx"), "models"], tmp_path, env)
    assert models.returncode == 0, models.stderr
    assert "smollm2-135m" in models.stdout and "(default)" in models.stdout
    system = _run([python, "-I", "-c", "import eager_mlx"], tmp_path, env)
    assert system.returncode != 0  # nothing went into the system interpreter


@pytest.mark.parametrize("args, extra_env, code, message", [
    (["--bogus"], {}, 2, "setup: unknown option '--bogus' (usage: scripts/setup [--test] [--cpu | --cuda])"),
    (["--test", "--gpu"], {}, 2, "setup: unknown option '--gpu' (usage: scripts/setup [--test] [--cpu | --cuda])"),
    ([], {"PYTHON": "/nonexistent/python3"}, 1,
     "setup: /nonexistent/python3 not found: install Python 3.10 or newer"),
])
def test_setup_bad_input_is_one_line(args, extra_env, code, message, tmp_path):
    proc = _run([str(REPO / "scripts" / "setup"), *args], tmp_path, _clean_env(**extra_env), timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (code, "", message + "\n")


FAKE_PYTHON = """#!/bin/bash
# A .venv python whose pip records what it is asked and keeps which MLX backend is "installed" in $STATE.
echo "$*" >> "$STATE/log"
case "$*" in
  "-m pip show -q "*) [ -e "$STATE/${*: -1}" ] ;;
  "-m pip uninstall"*) rm -f "$STATE/mlx-cpu" "$STATE/mlx-cuda-12" ;;
  "-m pip install"*"[cuda"*) touch "$STATE/mlx-cuda-12" ;;
  "-m pip install"*"[cpu"*) touch "$STATE/mlx-cpu" ;;
esac
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the MLX backend packages are Linux's")
@pytest.mark.parametrize("installed, args, want, uninstalls", [
    ((), [], ".[cpu]", False),  # a fresh .venv: the CPU backend
    ((), ["--test"], ".[cpu,test]", False),
    (("mlx-cpu",), ["--cuda"], ".[cuda]", True),  # switching: the CPU package goes first
    (("mlx-cuda-12",), [], ".[cuda]", False),  # a plain rerun keeps the CUDA backend (it used to add mlx-cpu)
    (("mlx-cuda-12",), ["--test"], ".[cuda,test]", False),
    (("mlx-cuda-12",), ["--cpu"], ".[cpu]", True),
    (("mlx-cpu", "mlx-cuda-12"), [], ".[cuda]", True),  # both (the clobbered state): one is put back afresh
])
def test_setup_installs_exactly_one_mlx_backend(tmp_path, installed, args, want, uninstalls):
    repo, state, fake_bin = tmp_path / "repo", tmp_path / "state", tmp_path / "bin"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "setup", repo / "scripts" / "setup")
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").write_text(FAKE_PYTHON)
    (repo / ".venv" / "bin" / "python").chmod(0o755)
    state.mkdir()
    for name in installed:
        (state / name).touch()
    fake_bin.mkdir()  # the tools the script needs, and no apt-get (nothing is installed system-wide here)
    for tool in ("dirname", "uname", "id", "rm", "bash", "touch"):
        (fake_bin / tool).symlink_to(shutil.which(tool))
    env = {"PATH": str(fake_bin), "STATE": str(state), "PYTHON": sys.executable, "HOME": str(tmp_path)}
    proc = _run(["bash", str(repo / "scripts" / "setup"), *args], repo, env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    log = (state / "log").read_text().splitlines()
    assert log[-1].endswith(f"install -q --disable-pip-version-check -e {want}"), log
    assert any(line.startswith("-m pip uninstall") for line in log) == uninstalls, log
    assert [p.name for p in state.iterdir() if p.name != "log"] == [want.strip(".[]").split(",")[0].replace(
        "cuda", "mlx-cuda-12").replace("cpu", "mlx-cpu")]
