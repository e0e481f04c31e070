import sys
from pathlib import Path

# Test helpers (fakes.py) are imported as a plain module.
sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _run_store_in_tmp(tmp_path, monkeypatch):
    """`eval`'s default run store is under the user's cache: tests keep theirs in their own folder."""
    import eager_mlx.evaluation.store as store

    monkeypatch.setattr(store, "default_store_dir", lambda: tmp_path / "run-store")
