"""Bridges to other tools (each module imports its tool; install the matching extra)."""
