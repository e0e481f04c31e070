"""The branch tree of a run as data, and rendering it as HTML (no evaluation imports: evaluation uses it)."""
__all__: list[str] = []
