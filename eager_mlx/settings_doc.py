"""docs/settings.md, generated from the settings schema: `python -m eager_mlx.settings_doc > docs/settings.md`."""
from __future__ import annotations

from eager_mlx.adaptive.confidence import ConfidenceConfig
from eager_mlx.adaptive.consensus import ConsensusConfig
from eager_mlx.adaptive.options import AdaptiveOptions
from eager_mlx.config import EagerConfig, EngineConfig, SamplingConfig
from eager_mlx.settings import markdown_table

__all__ = ["SETTINGS_DOC", "GROUPS", "settings_markdown"]

SETTINGS_DOC = "docs/settings.md"

_INTRO = """# Settings

Generated from the settings schema (`eager_mlx/settings.py`, the fields of the config
dataclasses) by `python -m eager_mlx.settings_doc > docs/settings.md`; a test keeps it equal.
One name everywhere: the CLI flag (`--max-sequences`), the server's request key and the
keyword of `eager_mlx.config_for` (`max_sequences`). `solve`, `eval` and `serve` take the
generation and engine settings with the same defaults (`solve` sizes its engine to M rows;
`serve`'s values are the defaults of requests that give none). "the preset's": the model
preset's recommended value (models/presets/*.toml).

"""


GROUPS = {"generation": EagerConfig, "sampling": SamplingConfig, "engine": EngineConfig,
          "consensus": ConsensusConfig, "adaptive": AdaptiveOptions, "confidence": ConfidenceConfig}


def settings_markdown() -> str:
    """The whole docs/settings.md text."""
    return _INTRO + markdown_table(GROUPS)


if __name__ == "__main__":
    print(settings_markdown(), end="")
