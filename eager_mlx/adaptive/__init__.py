"""Beyond the paper: theta calibration, consensus stop rules, sequence confidence and
the online monitor that acts on them during a run (docs/beyond.md)."""
__all__: list[str] = []
