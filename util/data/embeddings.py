"""Class-name embedding files for GIM: one row per class id (row 0 = background), as ``.npy`` or the reference ``.pkl``.

Files are written by ``python -m tools.embed_classes`` (docs/data.md, "Class-name embeddings").
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from util import REPO
from util.common.cli import tool_command
from util.common.errors import UserError
from util.data.registry import benchmark, num_classes

REPO_ROOT = REPO
EMBEDDINGS_DIR = REPO_ROOT / "embeddings"
DEFAULT_SOURCE_NAME = "glove50"
SUPPORTED_SUFFIXES = (".npy", ".pkl")
NUMBER_KINDS = "biufc"  # numpy dtype kinds of numbers; a pickled table holding anything else is refused


def embedding_file(dataset: str, name: str) -> Path:
    """Absolute path of ``embeddings/<dataset>_<name>.npy`` in the repository."""
    return EMBEDDINGS_DIR / f"{dataset}_{name}.npy"


def default_embedding_file(dataset: str) -> Path:
    """The committed GloVe-50d embeddings of ``dataset`` (``embeddings/<dataset>_glove50.npy``, absolute)."""
    num_classes(dataset)  # validates the dataset name
    return embedding_file(dataset, DEFAULT_SOURCE_NAME)


class _Refused(Exception):
    """Something a pickled class-vector table never holds; the message says what it was."""


def _number_dtype(spec, align=False, copy=False) -> np.dtype:
    """``numpy.dtype`` as a pickle calls it (also given a dtype), for dtypes of numbers only."""
    dtype = np.dtype(spec, align=bool(align), copy=bool(copy))
    if dtype.kind not in NUMBER_KINDS:
        raise _Refused(f"an array of dtype {dtype}")
    return dtype


def _empty_array(subtype, shape, typecode) -> np.ndarray:
    """numpy's ``_reconstruct``: the empty array that the pickle's state then fills."""
    if subtype is not np.ndarray:
        raise _Refused(f"an array of type {subtype!r}")
    return np.ndarray(shape, dtype=_number_dtype(typecode))


def _scalar(dtype, data) -> np.generic:
    """numpy's ``scalar``: one number from its raw bytes (a str in Python 2 pickles)."""
    raw = data.encode("latin1") if isinstance(data, str) else data
    return np.frombuffer(raw, dtype=_number_dtype(dtype), count=1)[0]


def _array_from_buffer(buffer, dtype, shape, order) -> np.ndarray:
    """numpy's ``_frombuffer`` (pickle protocol 5): an array over the pickled bytes."""
    return np.frombuffer(buffer, dtype=_number_dtype(dtype)).reshape(shape, order=order)


def _latin1_bytes(text, encoding) -> bytes:
    """``_codecs.encode`` as Python 3 uses it to pickle bytes in protocols 0-2."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused(f"'_codecs.encode' of a {type(text).__name__} to {encoding!r}")
    return text.encode("latin1")


# Everything numpy 1.x (numpy.core), numpy 2.x (numpy._core) and Python 3 protocols 0-2 name in the pickle of an
# array of numbers; numpy's own functions are not called, each name maps to the checked stand-in above.
_TABLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _number_dtype,
    ("_codecs", "encode"): _latin1_bytes,
    **{(f"{core}.multiarray", "_reconstruct"): _empty_array for core in ("numpy.core", "numpy._core")},
    **{(f"{core}.multiarray", "scalar"): _scalar for core in ("numpy.core", "numpy._core")},
    **{(f"{core}.numeric", "_frombuffer"): _array_from_buffer for core in ("numpy.core", "numpy._core")},
}


class _TableUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and scalars of numbers and plain Python values; refuses every other global."""

    def find_class(self, module: str, name: str):
        try:
            return _TABLE_GLOBALS[module, name]
        except KeyError:
            raise _Refused(f"'{module}.{name}'") from None


def _read_pickled_table(path: Path) -> np.ndarray:
    """The array of numbers in a pickled class-vector table, rebuilt without running anything the file names.

    Python 2 pickles are read too (their byte strings decoded as latin1, as numpy expects).
    """
    try:
        with path.open("rb") as handle:
            table = _TableUnpickler(handle, encoding="latin1").load()
    except _Refused as refused:
        raise UserError(
            f"{path}: refuses to load {refused} from the pickle (class-vector tables hold only a numpy array of "
            f"numbers); use a .npy file or rebuild the table with {tool_command('embed_classes')}"
        ) from None
    except Exception as err:  # a damaged pickle fails in many ways
        raise UserError(f"{path}: cannot read class embeddings ({type(err).__name__}: {err}); "
                        f"rebuild it with {tool_command('embed_classes')}") from None
    try:
        array = np.asarray(table)
    except ValueError:  # rows of different lengths
        array = None
    if array is None or array.dtype.kind not in NUMBER_KINDS:
        held = f"an array of dtype {table.dtype}" if isinstance(table, np.ndarray) else f"a {type(table).__name__}"
        raise UserError(f"{path}: the pickle holds {held}, expected a [C+1, D] array of numbers")
    return array


def _read_array(path: Path) -> np.ndarray:
    """Read the raw array of a ``.npy`` file or of a pickled ``[C+1, D]`` array (the reference format)."""
    if path.suffix.lower() == ".pkl":
        return _read_pickled_table(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"{path}: cannot read class embeddings ({err}); rebuild it with {tool_command('embed_classes')}") from None
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise UserError(f"{path}: an .npz archive, not one .npy array; save the [C+1, D] table with numpy.save")
    return loaded


def check_row_names(file: Path, names: Sequence[str], dataset: str) -> None:
    """Refuse a class-vector file whose ``.json`` (written beside it by tools.embed_classes or tools.prepare_fss)
    lists other classes than ``names`` (class-id order) for its rows; a file without one is not checked."""
    try:
        recorded = [row["name"] for row in json.loads(file.with_suffix(".json").read_text(encoding="utf-8"))["rows"][1:]]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return
    if recorded == list(names):
        return
    differ = [i for i, (theirs, ours) in enumerate(zip(recorded, names)) if theirs != ours]
    first = differ[0] if differ else min(len(recorded), len(names))
    shown = (f"class {first + 1} is '{recorded[first]}' there, '{names[first]}' here; {len(differ)} of {len(names)} "
             "rows differ" if differ else f"{len(recorded)} rows named, {len(names)} classes")
    hint = benchmark(dataset).vectors_hint()
    raise UserError(f"{file}: its rows are for another class order ({shown}); point config key 'embedding_file' at the "
                    f"vectors of this dataset's classes ({hint})")


def load_class_embeddings(path: str | Path | None, dataset: str, names: Sequence[str] | None = None) -> torch.Tensor:
    """Load class-name vectors as float32 ``[num_classes(dataset) + 1, D]``; ``path=None`` -> the default file.

    Raises UserError (naming the file) if it is missing, unreadable, not 2-D, has the wrong number of
    rows or holds NaN/Inf, or (``names``: the classes in id order) if its ``.json`` names other classes.
    """
    expected_rows = num_classes(dataset) + 1
    file = default_embedding_file(dataset) if path is None else Path(path)
    hint = f"build it with: {tool_command('embed_classes', dataset=dataset)}"
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
    if names is not None:
        check_row_names(file, names, dataset)
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
