"""The branch-tree page: content, `solve --html`, `eval --save-trace` + `report --html`, and headless Chromium."""
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import eager_mlx
from eager_mlx import EagerConfig
from eager_mlx.models import LoadedModel
from eager_mlx.cli.main import cli
from eager_mlx.engine.engine import Engine
from eager_mlx.trees.html import render_tree_html
from eager_mlx.trees.tree import tree_from_dict, tree_from_result

from fakes import ByteTokenizer, ScriptedModel, patch_load, tiny_model

PROMPT = list(b"Q: 2+2?")


@pytest.fixture(scope="module")
def scripted():
    """Branches at steps 2 and 5 ('a' kept, 'b' taken), then EOS at step 8: 3 sequences."""
    model = ScriptedModel(len(PROMPT), {2: "high", 5: "high", 8: "eos"})
    config = EagerConfig(threshold=2.0, max_sequences=3, max_tokens=20, think_end=None)
    return eager_mlx.solve(model, PROMPT, config, tokenizer=ByteTokenizer())


def test_tree_records_forks_tokens_and_entropies(scripted):
    tree = tree_from_result(scripted, ByteTokenizer())
    assert tree.threshold == 2.0 and len(tree.sequences) == 3
    kids = [s for s in tree.sequences if s.parent is not None]
    assert sorted(s.branch_step for s in kids) == [2, 5]
    for s in kids:
        assert (s.fork_token, s.parent_token) == ("b", "a")
        assert s.fork_entropy == pytest.approx(2.996, abs=0.01)  # ~ln 20
        assert len(s.entropies) == 9 - s.branch_step  # own positions, EOS included
    assert tree_from_dict(json.loads(json.dumps(tree.to_dict()))) == tree


def test_page_is_self_contained(scripted):
    page = render_tree_html(scripted, ByteTokenizer(), title="t <x>", question="2+2?")
    assert page.count('<g class="seq"') == 3 and page.count('class="theta"') == 3
    assert page.count('<circle class="fork"') == 2 and "t &lt;x&gt;" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # no network
    assert "<script src" not in page and "<link" not in page


def _png_stats(data: bytes) -> tuple[int, int]:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("L")
    hist = img.histogram()
    return img.size[0] * img.size[1], sum(hist[:200])  # pixels, pixels clearly darker than the background


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="headless Chromium is not installed (Debian: apt-get install chromium)")
def test_page_renders_in_headless_chromium(tmp_path):
    result = eager_mlx.solve(tiny_model(), "hello", EagerConfig(threshold=2.5, max_sequences=5, max_tokens=40,
                                                                 think_end=None),
                             tokenizer=ByteTokenizer(), chat=False)
    assert result.num_sequences == 5
    page = tmp_path / "tree.html"
    page.write_text(render_tree_html(result, ByteTokenizer(), question="hello"))
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1100,1300", page.as_uri()],
                   capture_output=True, timeout=90, check=True)
    pixels, dark = _png_stats(shot.read_bytes())
    assert pixels == 1100 * 1300 and dark > 0.01 * pixels  # lines, traces and text were drawn
    dom = subprocess.run(base + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=90,
                         check=True).stdout
    assert len(re.findall(r'<g class="seq"', dom)) == 5
    assert len(re.findall(r'<svg class="entropy"', dom)) == 5
    assert len(re.findall(r'<line class="theta"', dom)) == 5
    assert len(re.findall(r'<circle class="fork"', dom)) == 4


@pytest.fixture
def fake_load(monkeypatch):
    loaded = LoadedModel(tiny_model(), ByteTokenizer(), None, Path("."), "tiny")
    patch_load(monkeypatch, loaded)
    return loaded


def test_cli_solve_html(tmp_path, fake_load):
    out = tmp_path / "tree.html"
    res = CliRunner().invoke(cli, ["solve", "hi", "--max-tokens", "12", "--temperature", "1", "--threshold", "2.5",
                                   "-M", "4", "--json", "--html", str(out)])
    assert res.exit_code == 0, res.output
    n = len(json.loads(res.output)["sequences"])
    assert out.read_text().count('<g class="seq"') == n > 1


def test_eval_save_trace_then_report_html(tmp_path, monkeypatch):
    patch_load(monkeypatch, LoadedModel(tiny_model(), ByteTokenizer(), None, Path("."), "tiny"))
    data = tmp_path / "toy.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    out, bare = tmp_path / "run", tmp_path / "bare"
    args = ["eval", "--data", str(data), "--method", "eager-init", "-M", "4", "-t", "2.5", "--max-tokens", "16"]
    assert CliRunner().invoke(cli, args + ["--out", str(out), "--save-trace"]).exit_code == 0
    assert CliRunner().invoke(cli, args + ["--out", str(bare)]).exit_code == 0
    res = CliRunner().invoke(cli, ["report", str(out), str(bare), "--no-plot", "--html"])
    assert res.exit_code == 0, res.output
    assert f"trees: {out / 'trees' / 'index.html'}" in res.output
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    for rec in records:
        page = (out / "trees" / f"p{rec['index']}.html").read_text()
        assert page.count('<g class="seq"') == len(rec["sequences"])
        assert page.count('<line class="theta"') == len(rec["sequences"])  # traces were saved
        assert 'href="index.html"' in page
    bare_page = (bare / "trees" / "p0.html").read_text()
    assert '<g class="seq"' in bare_page and "No entropy trace was saved" in bare_page
