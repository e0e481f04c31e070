"""A converted model is checked before use: digests recorded at conversion, a changed block refused (or the
model converted again by `models pull`); what a conversion or a fetch killed with kill -9 left is removed."""
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from eager_mlx import packages
from eager_mlx.cli.main import cli
from eager_mlx.models import ModelError, load_model, model_folder_digest, prepare_model
from eager_mlx.models.digests import DIGESTS, file_digests, record_digests, verify_digests
from tiny_gguf import write_tiny_gguf


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny(tmp_path):
    return write_tiny_gguf(tmp_path / "tiny.gguf", "llama", "Q8_0", layers=1)


def _converted(gguf) -> Path:
    return Path(prepare_model(str(gguf.path))[0])


def _overwrite_block(path: Path, offset: int = 4096, size: int = 4096) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(size))


def test_conversion_records_every_file_in_sha256sum_format(tiny):
    out = _converted(tiny)
    lines = (out / DIGESTS).read_text().splitlines()
    names = sorted(line.split("  ", 1)[1] for line in lines)
    assert names == sorted(p.name for p in out.iterdir() if p.name != DIGESTS)
    assert "model.safetensors" in names and "config.json" in names
    for line in lines:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert verify_digests(out) == file_digests(out)


def test_a_changed_block_is_refused_before_use(tiny):
    out = _converted(tiny)
    _overwrite_block(out / "model.safetensors")
    with pytest.raises(ModelError) as e:
        load_model(str(tiny.path))
    message = str(e.value)
    assert message.startswith(f"{out / 'model.safetensors'}: sha256 is ")
    assert "expected" in message and f"`eager-mlx models pull {tiny.path}` converts it again" in message
    res = CliRunner().invoke(cli, ["solve", "hi", "--model", str(tiny.path), "--max-tokens", "2"])
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1].startswith(f"Error: {out / 'model.safetensors'}")
    assert CliRunner().invoke(cli, ["models", "pull", str(tiny.path)]).exit_code == 0  # converted again
    assert verify_digests(out) is not None and load_model(str(tiny.path)).model is not None


@pytest.mark.parametrize("spoil, words", [
    (lambda out: (out / "extra.safetensors").write_bytes(b"x"), "extra.safetensors: a file that was not there"),
    (lambda out: (out / "tokenizer_config.json").unlink(), "tokenizer_config.json: missing"),
    (lambda out: (out / "config.json").write_text((out / "config.json").read_text() + " "), "config.json: sha256 is"),
    (lambda out: (out / DIGESTS).write_text("garbage\n"), "not a '<sha256>  <file>' line"),
])
def test_other_changes_are_refused(tiny, spoil, words):
    out = _converted(tiny)
    spoil(out)
    with pytest.raises(ModelError, match=words):
        prepare_model(str(tiny.path))


def test_a_conversion_without_digests_is_used_with_a_warning_and_pull_converts_it_again(tiny, caplog):
    out = _converted(tiny)
    (out / DIGESTS).unlink()  # as converted by an eager-mlx before digests
    with caplog.at_level(logging.WARNING, logger="eager_mlx.models.loader"):
        assert prepare_model(str(tiny.path))[0] == str(out)
    assert "converted before eager-mlx recorded digests, so it is not checked" in caplog.text
    assert CliRunner().invoke(cli, ["models", "pull", str(tiny.path)]).exit_code == 0
    assert verify_digests(out) is not None


def test_model_folder_digest(tmp_path, tiny):
    out = _converted(tiny)
    digest = model_folder_digest(out)
    assert digest.startswith("sha256:") and len(digest) == 71
    assert model_folder_digest(out, verify_digests(out)) == digest  # from the checked digests: no second hashing
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in out.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    assert model_folder_digest(copy) == digest  # names and contents, not where the folder is
    _overwrite_block(copy / "model.safetensors", size=1)
    assert model_folder_digest(copy) != digest
    record_digests(copy)
    assert verify_digests(copy) is not None


KILLED_CONVERSION = """
import os, signal, sys
from eager_mlx.models import convert_gguf
def progress(stage, done, total):
    if done == 3:
        os.kill(os.getpid(), signal.SIGKILL)
convert_gguf(sys.argv[1], sys.argv[2], progress)
"""


def test_a_conversion_killed_midway_leaves_nothing_the_next_one_keeps(tmp_path, tiny):
    out = tmp_path / "cache" / "models" / f"gguf-{tiny.path.stem}"
    proc = subprocess.run([sys.executable, "-c", KILLED_CONVERSION, str(tiny.path), str(out)])
    assert proc.returncode == -9
    leftovers = list(out.parent.glob(f".{out.name}.tmp-*"))
    assert leftovers and not out.exists()
    from eager_mlx.models.loader import _convert_once
    from contextlib import nullcontext

    _convert_once(out, lambda: nullcontext(tiny.path), None, None, False, "")
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # the killed one's folder is gone
    assert verify_digests(out) is not None


def test_a_fetch_killed_midway_is_cleaned_up(tmp_path, monkeypatch):
    from test_packages import PINS, _fake_download

    cache = tmp_path / "pkgs"
    cache.mkdir()
    (cache / ".demo-1.0.tmp-abc123" / "download").mkdir(parents=True)  # as kill -9 mid-download leaves it
    (cache / ".demo-1.0.tmp-abc123" / "download" / "part.whl").write_bytes(b"x" * 1000)
    (cache / ".demo-10.0.tmp-xyz").mkdir()  # another package's: not touched
    calls = []
    monkeypatch.setattr(packages, "_download_wheel", _fake_download(calls))
    assert packages.fetch_package("demo", "1.0", cache_dir=cache, sha256=PINS) == cache / "demo-1.0"
    assert sorted(p.name for p in cache.iterdir()) == [".demo-10.0.tmp-xyz", "demo-1.0"]


# ---- what the machine can hold ------------------------------------------------------------------
def test_kv_fits_the_machine():
    from eager_mlx.models.memory import check_kv_fits, kv_bytes_per_token
    from eager_mlx.settings import SettingError
    from fakes import tiny_model

    model = tiny_model()  # 2 layers, 2 KV heads of 16: 2 * 2 * 2 * 16 * 4 bytes a token
    assert kv_bytes_per_token(model) == 512 and kv_bytes_per_token(model, on_cpu=False) == 256
    check_kv_fits(model, 8, 1024, memory=8 * 1024 * 512)
    with pytest.raises(SettingError, match=r"^1024 rows of up to 4096 tokens need up to 2\.0 GiB of KV cache for this "
                                           r"model, more than this machine's 1\.0 GiB of memory: lower"):
        check_kv_fits(model, 1024, 2**20, context_length=4096, memory=2**30)  # the context caps a row
    check_kv_fits(object(), 10**6, 10**9, memory=1)  # a shape it cannot read: no claim either way


def test_solve_and_the_server_refuse_what_the_machine_cannot_hold(monkeypatch):
    import json as _json
    import socket

    from eager_mlx.models import LoadedModel
    from eager_mlx.models import memory
    from fakes import ByteTokenizer, patch_load, tiny_model
    from test_server_hardening import CHAT, HI, read_response, req, start

    monkeypatch.setattr(memory, "machine_memory", lambda: 2**30)
    patch_load(monkeypatch, LoadedModel(tiny_model(), ByteTokenizer(), None, Path("."), "tiny"))
    res = CliRunner().invoke(cli, ["solve", "q", "-M", "1024", "--max-tokens", "4096"])
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith("Error: 1024 rows of up to 4096 tokens")
    assert CliRunner().invoke(cli, ["solve", "q", "-M", "2", "--max-tokens", "4"]).exit_code == 0
    monkeypatch.setattr(memory, "machine_memory", lambda: 2**26)  # 64 MiB: 64 rows of 4096 tokens need 128
    srv = start(max_rows=64)
    try:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(req("POST", CHAT, {"messages": HI, "n": 64, "max_tokens": 100_000}))
            status, _, body = read_response(s)
        assert status == 400 and "64 rows of up to 4096 tokens need up to" in _json.loads(body)["error"]["message"]
    finally:
        srv.shutdown()
