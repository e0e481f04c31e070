"""Test-only entry point for `mlx.launch`: `eager-mlx eval ARGS` with a tiny random model (no download)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import eager_mlx  # noqa: E402
from fakes import ByteTokenizer, tiny_model  # noqa: E402

from eager_mlx.cli.main import cli  # noqa: E402
from eager_mlx.models import LoadedModel  # noqa: E402

if __name__ == "__main__":
    loaded = LoadedModel(tiny_model(), ByteTokenizer(), None, Path("."), "tiny")
    eager_mlx.load = lambda ref=None, progress=None: loaded
    cli(["eval", *sys.argv[1:]])
