"""Test-only entry point for `mlx.launch`: `eager-mlx eval ARGS` with a tiny random model (no download)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fakes import ByteTokenizer, tiny_model  # noqa: E402

from eager_mlx.cli import eval as cli_eval  # noqa: E402
from eager_mlx.cli.main import cli  # noqa: E402
from eager_mlx.engine.engine import Engine  # noqa: E402


def build(model, max_rows, seed, chat=True, **kwargs):
    tok = ByteTokenizer()
    engine = Engine(tiny_model(), tok, max_rows=max_rows, seed=seed, token_events=kwargs.get("token_events", False))
    return engine, tok.encode, None, "tiny"


if __name__ == "__main__":
    cli_eval.build_runner = build
    cli(["eval", *sys.argv[1:]])
