"""What a benchmark ran on: machine, OS, versions, MLX device, BLAS, load and free memory."""
from __future__ import annotations

import datetime
import functools
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import mlx.core as mx

__all__ = ["header_lines", "available_memory", "load_average", "on_gpu", "versions"]

_REPO = Path(__file__).resolve().parent.parent


def on_gpu() -> bool:
    return mx.default_device().type == mx.DeviceType.gpu


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:
        return "unknown"


def _meminfo(field: str) -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


def _total_ram() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory() -> int | None:
    """Bytes a measurement may still allocate on the MLX device (None: unknown)."""
    info = mx.device_info()
    used = mx.get_active_memory()
    if on_gpu():  # Metal: the recommended working set; CUDA: the device's memory
        total = info.get("max_recommended_working_set_size") or info.get("memory_size")
        return None if total is None else max(0, int(total) - used)
    free = _meminfo("MemAvailable")
    if free is not None:
        return free
    total = _total_ram()
    return None if total is None else max(0, total - used)


def _cpu_name() -> str:
    if sys.platform == "darwin":
        out = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
        if out:
            return out
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=_REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _gpu() -> str:
    if not on_gpu():
        return "none used"
    info = mx.device_info()
    name = info.get("device_name") or info.get("architecture") or "GPU"
    mem = info.get("memory_size")
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    extra = f"; nvidia-smi: {smi.splitlines()[0]}" if smi else ""
    return f"{name}" + (f", {mem / 2**30:.0f} GiB" if mem else "") + extra


@functools.lru_cache(maxsize=None)  # read once, at the start: the code measured is the code then
def _versions() -> str:
    import mlx_lm

    try:
        from importlib.metadata import version

        ours = version("eager-mlx")
    except Exception:  # run from a source tree that is not installed (the device machine)
        m = re.search(r'^version = "([^"]+)"', (_REPO / "pyproject.toml").read_text(), re.M)
        ours = (m.group(1) if m else "?") + " (source tree)"
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = " +local changes" if commit and _run(["git", "status", "--porcelain", "--untracked-files=no"]) else ""
    at = f", commit {commit}{dirty}" if commit else ""
    return f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}, eager-mlx {ours}{at}"


def versions() -> str:
    """mlx, mlx-lm and eager-mlx versions and the git commit (with '+local changes' when the tree differs)."""
    return _versions()


def _blas() -> str:
    if on_gpu():
        return "n/a (GPU)"
    if sys.platform == "darwin":
        return "Accelerate (MLX's macOS build)"
    from eager_mlx.cpu_blas import preload_openblas

    path = preload_openblas()  # already done by `import eager_mlx`: returns what was loaded
    return f"OpenBLAS preloaded ({path})" if path else "MLX's bundled reference BLAS (OpenBLAS not preloaded)"


def header_lines(command: str, load_at_start: str) -> list[str]:
    """Markdown lines saying when, where and with what the table was measured (load at the end is read now)."""
    ram = _total_ram()
    return [
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}  ",
        f"Machine: {_cpu_name()}, {os.cpu_count()} cores, "
        + (f"{ram / 2**30:.0f} GiB RAM" if ram else "RAM unknown") + f"; GPU: {_gpu()}  ",
        f"OS: {platform.platform()}; Python {platform.python_version()}  ",
        f"Versions: {_versions()}  ",
        f"MLX device: {mx.default_device()}; BLAS: {_blas()}  ",
        f"Load average: at start {load_at_start}; at end {load_average()}",
    ]
