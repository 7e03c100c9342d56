"""Class-name embedding files for GIM: one row per class id (row 0 = background), as ``.npy`` or the reference ``.pkl``.

Files are written by ``python -m util.embed_classes`` (see README, "Class-name embeddings").
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from util.classes import num_classes
from util.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDINGS_DIR = REPO_ROOT / "embeddings"
DEFAULT_SOURCE_NAME = "glove50"
SUPPORTED_SUFFIXES = (".npy", ".pkl")


def embedding_file(dataset: str, name: str) -> Path:
    """Absolute path of ``embeddings/<dataset>_<name>.npy`` in the repository."""
    return EMBEDDINGS_DIR / f"{dataset}_{name}.npy"


def default_embedding_file(dataset: str) -> Path:
    """The committed GloVe-50d embeddings of ``dataset`` (``embeddings/<dataset>_glove50.npy``, absolute)."""
    num_classes(dataset)  # validates the dataset name
    return embedding_file(dataset, DEFAULT_SOURCE_NAME)


def _read_array(path: Path) -> np.ndarray:
    """Read the raw array of a ``.npy`` file or of a pickled ``[C+1, D]`` array (the reference format)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        with path.open("rb") as handle:
            obj = pickle.load(handle)
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as err:
        raise UserError(f"{path}: cannot read class embeddings ({err}); rebuild it with python -m util.embed_classes") from None
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().numpy()
    try:
        return np.asarray(obj, dtype=np.float32)
    except (TypeError, ValueError):
        raise UserError(
            f"{path}: the pickle holds a {type(obj).__name__}, expected a [C+1, D] array of numbers"
        ) from None


def load_class_embeddings(path: str | Path | None, dataset: str) -> torch.Tensor:
    """Load class-name vectors as float32 ``[num_classes(dataset) + 1, D]``; ``path=None`` -> the default file.

    Raises UserError (naming the file) if it is missing, unreadable, not 2-D, has the wrong number of
    rows or holds NaN/Inf.
    """
    expected_rows = num_classes(dataset) + 1
    file = default_embedding_file(dataset) if path is None else Path(path)
    hint = f"build it with: python -m util.embed_classes --dataset {dataset}"
    if not file.is_file():
        raise UserError(f"class embedding file {file} not found (config key 'embedding_file'); {hint}")
    if file.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise UserError(f"{file}: class embeddings must be a .npy or .pkl file (config key 'embedding_file')")
    array = _read_array(file)
    if array.ndim != 2:
        raise UserError(f"{file}: class embeddings must be 2-D [C+1, D], got shape {tuple(array.shape)}")
    if array.shape[0] != expected_rows:
        raise UserError(
            f"{file}: {array.shape[0]} rows, but dataset '{dataset}' needs {expected_rows} "
            f"(background + {expected_rows - 1} classes); point config key 'embedding_file' at this dataset's "
            f"table or {hint}"
        )
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise UserError(f"{file}: class embeddings must be real numbers, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        bad_rows = sorted({int(r) for r in np.nonzero(~np.isfinite(array))[0]})
        raise UserError(f"{file}: class embeddings hold NaN/Inf in rows {bad_rows}; {hint}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
