"""What each prepared mask was made from, so that preparing a dataset again redoes exactly what is not current.

``<mask folder>.manifest.json`` beside a mask folder holds, per mask file, the digest of what it was made from
(``source``: e.g. an image's annotations, or a VOC/SBD label file) and the ``size`` and ``sha256`` of the PNG that
was written, plus the ``producer`` (the script and its rendering rule's version) and ``inputs`` (e.g. the annotation
file's hash). A mask is current when the producer is the same, its source digest is unchanged and the file on disk
has the recorded size and hash; anything else (a changed annotation, a truncated or edited PNG, a mask written
before manifests existed) is made again. Masks are written atomically; the manifest is saved every
``SAVE_EVERY_S`` seconds and when the run ends or is interrupted, so an interrupted run keeps what it finished.
"""
from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from tqdm import tqdm

from util.common.atomic import write_bytes_atomic
from util.common.errors import UserError

MANIFEST_FORMAT = 1
SAVE_EVERY_S = 60.0
_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """The sha256 of a JSON value in canonical form (sorted keys, no spaces)."""
    return sha256_bytes(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


def manifest_path(mask_dir: Path) -> Path:
    return mask_dir.parent / f"{mask_dir.name}.manifest.json"


class MaskManifest:
    """The manifest of ``mask_dir`` for ``producer``; entries of another producer or format are not trusted."""

    def __init__(self, mask_dir: Path, producer: str, inputs: Mapping[str, Any]):
        self.mask_dir, self.path = mask_dir, manifest_path(mask_dir)
        self.producer, self.inputs = producer, dict(inputs)
        self.masks: dict[str, dict[str, Any]] = {}
        self.changed = True
        if self.path.is_file():
            try:
                recorded = json.loads(self.path.read_text())
            except (ValueError, UnicodeDecodeError):  # unreadable: nothing in it can be trusted, it is rewritten
                recorded = {}
            if (isinstance(recorded, dict) and recorded.get("format") == MANIFEST_FORMAT
                    and recorded.get("producer") == producer and isinstance(recorded.get("masks"), dict)):
                self.masks = recorded["masks"]
                self.changed = recorded.get("inputs") != self.inputs

    def is_current(self, name: str, source: str) -> bool:
        """True if mask ``name`` was made from ``source`` and the file holds exactly the bytes that were written."""
        entry = self.masks.get(name)
        path = self.mask_dir / name
        if not entry or entry.get("source") != source or not path.is_file():
            return False
        return path.stat().st_size == entry.get("size") and sha256_file(path) == entry.get("sha256")

    def record(self, name: str, source: str, data: bytes) -> None:
        self.masks[name] = {"source": source, "size": len(data), "sha256": sha256_bytes(data)}
        self.changed = True

    def save(self) -> None:
        """Write the manifest (atomically) if anything in it changed since it was read."""
        if not self.changed:
            return
        text = json.dumps({"format": MANIFEST_FORMAT, "producer": self.producer, "inputs": self.inputs,
                           "masks": dict(sorted(self.masks.items()))}, indent=0)
        write_bytes_atomic(self.path, text.encode())
        self.changed = False


def make_masks(manifest: MaskManifest, wanted: Iterable[tuple[str, str, Any]], render: Callable[[Any], bytes],
               workers: int, desc: str) -> tuple[int, int]:
    """Write every mask of ``wanted`` (``(name, source digest, job)``) that is not current: ``render(job)`` returns
    the PNG bytes (run in ``workers`` processes), which are written atomically and recorded. Returns the number
    of masks written and of masks already current."""
    wanted = list(wanted)
    todo = [(name, source, job) for name, source, job in tqdm(wanted, desc=f"checking {desc}", leave=False)
            if not manifest.is_current(name, source)]
    manifest.mask_dir.mkdir(parents=True, exist_ok=True)
    if not todo:  # nothing to write: no empty progress bar
        manifest.save()
        return 0, len(wanted)
    saved_at = time.monotonic()
    try:
        with ProcessPoolExecutor(workers) as pool:
            rendered = pool.map(render, [job for _, _, job in todo], chunksize=16)
            for (name, source, _), data in tqdm(zip(todo, rendered), total=len(todo), desc=desc):
                try:
                    write_bytes_atomic(manifest.mask_dir / name, data, durable=False)
                except OSError as err:
                    raise UserError(f"cannot write {manifest.mask_dir / name} ({err.strerror}); "
                                    "free disk space or check the folder's permissions") from None
                manifest.record(name, source, data)
                if time.monotonic() - saved_at > SAVE_EVERY_S:
                    manifest.save()
                    saved_at = time.monotonic()
    finally:
        manifest.save()
    return len(todo), len(wanted) - len(todo)
