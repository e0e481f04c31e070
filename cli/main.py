"""The `eager-mlx` click group; each command lives in its own module."""
import click

__all__ = ["cli"]


@click.group()
@click.version_option(package_name="eager-mlx")
def cli() -> None:
    """Entropy-aware adaptive generation (EAGer) on MLX."""

from . import models as _models; cli.add_command(_models.models)  # noqa: E402,E702
from . import solve as _solve; cli.add_command(_solve.solve)  # noqa: E402,E702
from . import eval as _eval; cli.add_command(_eval.eval_cmd); cli.add_command(_eval.report)  # noqa: E402,E702
from . import serve as _serve; cli.add_command(_serve.serve)  # noqa: E402,E702
from . import calibrate as _calibrate; cli.add_command(_calibrate.calibrate)  # noqa: E402,E702
from . import chat as _chat; cli.add_command(_chat.chat)  # noqa: E402,E702
from . import lm_eval as _lm_eval; cli.add_command(_lm_eval.lm_eval_cmd)  # noqa: E402,E702
