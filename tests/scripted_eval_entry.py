"""Test-only entry point: `eager-mlx eval ARGS` on a scripted model (tests/fakes.py), no download.

The model's next token depends only on its absolute position (`SCHEDULE`), so a
prompt's branching is set by its length, and with `--top-p 0.01` every token is
the most probable one (forks take the top two): a prompt's result is the same
in every session, which lets a test compare a killed-and-resumed run with an
uninterrupted one record for record.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import eager_mlx  # noqa: E402
from fakes import ByteTokenizer, ScriptedModel  # noqa: E402

from eager_mlx.cli.main import cli  # noqa: E402
from eager_mlx.models import LoadedModel  # noqa: E402

SCHEDULE = {30: "high", 45: "high", 55: "eos"}


def scripted_model() -> LoadedModel:
    return LoadedModel(ScriptedModel(0, SCHEDULE), ByteTokenizer(), None, Path("."), "scripted")


if __name__ == "__main__":
    loaded = scripted_model()
    eager_mlx.load = lambda ref=None, progress=None: loaded
    cli(["eval", *sys.argv[1:]])
