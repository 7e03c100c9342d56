"""The library the entry points and tools use, in rooms by job: ``data`` (reading data; one module per benchmark),
``engine`` (training and evaluation), ``runs`` (checkpoints, run folders, weights), ``reports`` (tables and figures),
``common`` (shared helpers); ``dataset.py`` holds the datasets the engine iterates."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The repository's root folder (configs, embeddings, published lists)."""
