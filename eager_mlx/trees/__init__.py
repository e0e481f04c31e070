"""The branch tree of a run: recording it and rendering it as HTML pages."""
__all__: list[str] = []
