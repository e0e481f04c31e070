"""eager_mlx.packages: fetch, unpack, cache, atomicity."""
import zipfile
from pathlib import Path

import pytest

from eager_mlx import packages
from eager_mlx.packages import PackageError, fetch_package, package_dir


def _fake_download(calls):
    def download(name, version, dest):
        calls.append((name, version))
        dest.mkdir(parents=True)
        wheel = dest / f"{name}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"{name}/data/x.txt", "hello")
        return wheel
    return download


def test_fetch_unpacks_and_caches(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(packages, "_download_wheel", _fake_download(calls))
    folder = fetch_package("demo", "1.0", cache_dir=tmp_path)
    assert folder == tmp_path / "demo-1.0"
    assert (folder / "demo/data/x.txt").read_text() == "hello"
    assert fetch_package("demo", "1.0", cache_dir=tmp_path) == folder
    assert calls == [("demo", "1.0")]
    assert [p.name for p in tmp_path.iterdir()] == ["demo-1.0"]  # no temp leftovers


def test_env_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path))
    assert package_dir("a", "2") == tmp_path / "packages" / "a-2"


def test_failed_fetch_leaves_no_entry(tmp_path, monkeypatch):
    def broken(name, version, dest):
        dest.mkdir(parents=True)
        bad = dest / "bad.whl"
        bad.write_bytes(b"not a zip")
        return bad
    monkeypatch.setattr(packages, "_download_wheel", broken)
    with pytest.raises(PackageError, match="bad.whl"):
        fetch_package("demo", "1.0", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_package_is_one_line_error(tmp_path):
    with pytest.raises(PackageError) as err:
        fetch_package("eager-mlx-no-such-package-xyz", "0.0.1", cache_dir=tmp_path)
    assert "eager-mlx-no-such-package-xyz==0.0.1" in str(err.value)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []
