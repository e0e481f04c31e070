"""Test-only entry point: `eager-mlx eval ARGS` with a fake model (no download), for mlx.launch and kill -9 tests.

EAGER_TEST_MODEL: "tiny" (default: a tiny random llama) or "markov" (fakes.MarkovModel.random(0)).
EAGER_TEST_KILL_AT_STEP=n: the process SIGKILLs itself when the engine is about to run its n-th step.
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fakes import ByteTokenizer, MarkovModel, tiny_model  # noqa: E402

from eager_mlx.cli import eval as cli_eval  # noqa: E402
from eager_mlx.cli.main import cli  # noqa: E402
from eager_mlx.engine.engine import Engine  # noqa: E402


def build(model, max_rows, seed, chat=True, **kwargs):
    tok = ByteTokenizer()
    net = MarkovModel.random(0) if os.environ.get("EAGER_TEST_MODEL") == "markov" else tiny_model()
    engine = Engine(net, tok, max_rows=max_rows, seed=seed, token_events=kwargs.get("token_events", False))
    kill_at = int(os.environ.get("EAGER_TEST_KILL_AT_STEP", "0"))
    if kill_at:
        step, count = engine.step, [0]

        def killing_step():
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return step()

        engine.step = killing_step
    return engine, tok.encode, None, "tiny"


if __name__ == "__main__":
    cli_eval.build_runner = build
    cli(["eval", *sys.argv[1:]])
