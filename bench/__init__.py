"""Benchmark scripts (``python -m bench.<name>``); they print figures, nothing here is asserted."""
