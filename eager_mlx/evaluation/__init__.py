"""Evaluating on a dataset: data, the budget scheduler, the evaluation loop, grading,
metrics, comparing runs (report) and sharding over several processes."""
__all__: list[str] = []
