"""The benchmarks, one module each (``base.py``: what a benchmark is); :mod:`util.data.registry` holds them by name."""
