"""Test-only entry point: `eager-mlx eval ARGS` with a fake model (no download), for mlx.launch and kill -9 tests.

EAGER_TEST_MODEL: "tiny" (default: a tiny random llama) or "markov" (fakes.MarkovModel.random(0)).
EAGER_TEST_KILL_AT_STEP=n: the process SIGKILLs itself when its engine is about to run its n-th step.
EAGER_TEST_STEP_DELAY=s: each engine step first sleeps s seconds (a run that lasts a while).
"""
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import eager_mlx  # noqa: E402
from fakes import ByteTokenizer, MarkovModel, tiny_model  # noqa: E402

from eager_mlx.cli.main import cli  # noqa: E402
from eager_mlx.models import LoadedModel  # noqa: E402


@dataclass
class CountingLoaded(LoadedModel):
    """Its engines count their steps in `steps`; with `kill_at` the process SIGKILLs itself at that step."""

    kill_at: int = 0
    steps: int = 0
    delay: float = 0.0

    def engine(self, config=None, *, token_events: bool = True, preempt: bool = False):
        engine = super().engine(config, token_events=token_events, preempt=preempt)
        step = engine.step

        def counting_step():
            self.steps += 1
            if self.steps == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(self.delay)
            return step()

        engine.step = counting_step
        return engine


def loaded_model(kind: str = "tiny", kill_at: int = 0) -> CountingLoaded:
    net = MarkovModel.random(0) if kind == "markov" else tiny_model()
    return CountingLoaded(net, ByteTokenizer(), None, Path(__file__), "tiny", kill_at=kill_at)


if __name__ == "__main__":
    kind, kill_at = os.environ.get("EAGER_TEST_MODEL", "tiny"), int(os.environ.get("EAGER_TEST_KILL_AT_STEP", "0"))
    loaded = loaded_model(kind, kill_at)
    loaded.delay = float(os.environ.get("EAGER_TEST_STEP_DELAY", "0"))
    eager_mlx.load = lambda ref=None, progress=None: loaded
    cli(["eval", *sys.argv[1:]])
