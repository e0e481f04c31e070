"""The settings schema: one declaration gives validation, CLI options, request parsing and the docs table."""
import math
from pathlib import Path

import pytest

from eager_mlx import config_for
from eager_mlx.adaptive.options import AdaptiveOptions
from eager_mlx.cli.main import cli
from eager_mlx.config import EagerConfig, EngineConfig, SamplingConfig
from eager_mlx.settings import SettingError, check, settings_of
from eager_mlx.settings_doc import SETTINGS_DOC, settings_markdown

SHARED = [s for cls in (EagerConfig, SamplingConfig) for s in settings_of(cls) if s.key != "parallel"]


@pytest.mark.parametrize("command", ["solve", "eval", "serve"])
def test_commands_share_names_and_defaults(command):
    params = {p.name: p for p in cli.commands[command].params}
    for s in SHARED:
        assert s.key in params, f"{command} has no option for {s.key}"
        p = params[s.key]
        assert p.opts == list(s.flags), (command, p.opts)
        expected = None if (s.preset or s.optional) else (() if s.type is tuple else s.default)
        assert p.default == expected, (command, s.key, p.default)


def test_defaults_are_declared_once():
    assert EagerConfig().max_sequences == 8 and EagerConfig().max_tokens == 1024
    assert EngineConfig().seed == 55 and EngineConfig().max_rows == 16
    cfg = config_for(None)
    assert cfg == EagerConfig()


@pytest.mark.parametrize("key,value,message", [
    ("max_sequences", 0, "max_sequences must be >= 1, <= 1024, got 0"),
    ("max_sequences", 2.5, "max_sequences must be an integer, got 2.5"),
    ("max_sequences", True, "max_sequences must be an integer, got True"),
    ("temperature", math.nan, "temperature must be a finite number, got nan"),
    ("temperature", math.inf, "temperature must be a finite number, got inf"),
    ("threshold", -1, "threshold must be >= 0, got -1"),
    ("top_p", 0, "top_p must be > 0, <= 1, got 0"),
    ("min_p", 1.0, "min_p must be >= 0, < 1, got 1.0"),
    ("stop", [""], "stop must be a string or a list of non-empty strings, got ['']"),
    ("full_entropy", "yes", "full_entropy must be true or false, got 'yes'"),
])
def test_bad_values_name_the_setting(key, value, message):
    with pytest.raises(SettingError) as e:
        config_for(None, **{key: value})
    assert str(e.value) == message


def test_every_integer_setting_is_bounded():
    """No integer setting can overflow the graph's int32 arrays or grow without end (top_k = 2**40 once failed
    every request in the server's shared batch); the bounds read as integers in the docs."""
    from eager_mlx.settings_doc import GROUPS

    for cls in GROUPS.values():
        for s in settings_of(cls):
            if s.type is int:
                assert s.lo is not None and s.hi is not None and s.hi <= 2**63 - 1, s.key
                assert "e+" not in s.describe_range(), s.describe_range()
                with pytest.raises(SettingError, match=f"{s.key} must be"):
                    check(s, int(s.hi) + 1)


def test_unknown_setting_and_good_values():
    with pytest.raises(SettingError, match="unknown setting 'temp'"):
        config_for(None, temp=0.5)
    cfg = config_for(None, temperature=0, top_p=1, stop="END", max_sequences=4)
    assert cfg.sampling.temperature == 0.0 and cfg.stop == ("END",) and cfg.max_sequences == 4
    s = next(s for s in settings_of(EagerConfig) if s.key == "threshold")
    assert check(s, 3) == 3.0 and isinstance(check(s, 3), float)


def test_adaptive_options_from_settings():
    opts = AdaptiveOptions.from_settings({"consensus": "window", "consensus_window": 3, "prune_confidence": 20.0})
    assert opts.consensus.rule == "window" and opts.consensus.window == 3 and opts.online
    assert AdaptiveOptions.from_settings({}) == AdaptiveOptions()
    with pytest.raises(SettingError, match="consensus_abort needs a consensus rule"):
        AdaptiveOptions.from_settings({"consensus_abort": True})
    with pytest.raises(SettingError, match="consensus_window must be >= 2, <= 1024, got 1"):
        AdaptiveOptions.from_settings({"consensus": "window", "consensus_window": 1})


def test_settings_doc_is_generated_from_the_schema():
    path = Path(__file__).resolve().parents[1] / SETTINGS_DOC
    assert path.read_text() == settings_markdown(), f"regenerate: python -m eager_mlx.settings_doc > {SETTINGS_DOC}"
