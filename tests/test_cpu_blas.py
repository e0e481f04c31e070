"""eager_mlx.cpu_blas: OpenBLAS preloading on the Linux CPU build (run in subprocesses)."""
import json
import os
import subprocess
import sys

import pytest

from eager_mlx.cpu_blas import find_openblas

_SCRIPT = r"""
import json, sys, time
import importlib.util
spec = importlib.util.spec_from_file_location("cpu_blas", sys.argv[1])
cpu_blas = importlib.util.module_from_spec(spec); spec.loader.exec_module(cpu_blas)
if sys.argv[2] == "mlx-first":
    import mlx.core
path = cpu_blas.preload_openblas()
import mlx.core as mx
a = mx.random.normal((512, 512)); mx.eval(a); mx.eval(a @ a)
t = time.perf_counter()
for _ in range(5): mx.eval(a @ a)
print(json.dumps({"path": path, "seconds": (time.perf_counter() - t) / 5}))
"""


def _run(mode: str, **env) -> dict:
    import eager_mlx.cpu_blas as mod
    out = subprocess.run([sys.executable, "-c", _SCRIPT, mod.__file__, mode], check=True,
                         capture_output=True, text=True, env={**os.environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


needs_openblas = pytest.mark.skipif(
    not sys.platform.startswith("linux") or find_openblas() is None,
    reason="Debian's libopenblas0-pthread is not installed")


def test_disabled_by_env():
    assert _run("plain", EAGER_MLX_NO_OPENBLAS="1")["path"] is None


def test_too_late_after_mlx_import():
    assert _run("mlx-first", EAGER_MLX_NO_OPENBLAS="0")["path"] is None


@needs_openblas
def test_preload_makes_matmul_faster():
    fast = _run("plain", EAGER_MLX_NO_OPENBLAS="0")
    slow = _run("plain", EAGER_MLX_NO_OPENBLAS="1")
    assert fast["path"] and "openblas" in fast["path"]
    assert fast["seconds"] * 3 < slow["seconds"], (fast, slow)
