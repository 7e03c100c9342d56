"""Checkpoints: atomic writes, loading with actionable errors, RNG capture, run directories.

A training checkpoint (``last.pth``) is a dict ``{"model", "optimizer", "scheduler", "scaler", "epoch", "iteration",
"rng" (one entry per process), "data_order", "best", "config", "stage", "run_id", "finished", "validated" (false at an
epoch's end before its validation), "identity"}`` plus the stage's records (``pretrained_backbone_source``,
``class_vectors``). ``best.pth``
keeps only :data:`BEST_KEYS`, what inference and the run guard read (the weights, the config, the run record); the
training state (:data:`TRAINING_STATE_KEYS`) lives in ``last.pth`` alone. ``run_id`` names the run that wrote the
file (a resumed run keeps it), ``finished`` is true once the stage's schedule is complete. Imported checkpoints
(``python -m tools.checkpoint_import``) have stage ``imported``. Files are written to a temporary file in the same directory
(with the permissions the umask gives) and moved over the target with ``os.replace``, so a crash or a full disk
mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from util.common.atomic import AtomicFile
from util.common.errors import UserError, first_few
from util.data.benchmarks.base import Benchmark
from util.data.registry import base_classes, benchmark, class_names, novel_classes, split_source, val_classes
from util.data.registry import names as benchmark_names

LAST = "last.pth"
BEST = "best.pth"
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")  # how torch's weights-only unpickler names what it refused
IMPORTED = "imported"
STAGE_NAMES = {"base": "stage 1", "meta": "stage 2"}
RUN_DIR_KEYS = {"base": "base_exp_dir", "meta": "exp_dir"}
BACKBONE_SOURCE = "pretrained_backbone_source"  # where the backbone's weights came from before stage 1 (util/runs/weights.py)
BEST_KEYS = (
    "model", "config", "stage", "run_id", "finished", "iteration", "epoch", "best",  # test.py, predict.py, util/runs/guard.py
    BACKBONE_SOURCE,  # stage 2 and test.py report it
    "identity",  # test.py and predict.py check it, stage 2 checks its base learner's
    "class_vectors",  # test.py and predict.py check embedding_file holds them (util/model_io.CLASS_VECTORS)
)
"""What ``best.pth`` keeps of a training checkpoint; one entry per key, so a new record is one more line."""
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "scaler", "rng", "data_order")
"""What only ``last.pth`` holds: the state a run resumes from."""


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` through :class:`util.common.atomic.AtomicFile`; the old file survives any failure."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        target = AtomicFile(path)
    except OSError as err:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a directory" if blocker else err.strerror
        raise UserError(f"cannot write checkpoint {path} ({reason}); choose a writable exp_dir") from None
    try:
        with target as handle:
            torch.save(obj, handle)
    except BaseException as err:
        # torch's zip writer may report a failed write (disk full) as a RuntimeError raised while handling the OSError
        failure = err.__context__ if isinstance(err, RuntimeError) else err
        if not isinstance(failure, OSError):
            raise
        kept = " (the previous checkpoint is intact)" if path.exists() else ""
        raise UserError(
            f"cannot write checkpoint {path} ({failure.strerror or failure}){kept}; "
            "free disk space or choose another exp_dir"
        ) from None
    return path


def read_checkpoint_file(path: str | Path, missing_hint: str = "check the path", mmap: bool = False) -> Any:
    """``torch.load`` onto the CPU (tensors only); a missing or unreadable file is a :class:`UserError`.

    ``weights_only=True``: torch rebuilds only tensors and plain Python values, so a file that names any other
    function or class (a pickle that would run code) is refused, and the message names what it asked for.
    ``mmap``: map the tensors instead of reading them (for looking at a checkpoint's bookkeeping).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found; {missing_hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        refused = _REFUSED_GLOBAL.search(str(err))
        if refused is None:
            raise UserError(f"checkpoint {path} cannot be read (UnpicklingError); it is corrupt or not a torch checkpoint") from None
        raise UserError(
            f"checkpoint {path}: refuses to load '{refused.group(1)}' from it (checkpoints hold only tensors and plain "
            "values); it is not a weights file, do not open it with other tools unless you trust its source"
        ) from None
    except Exception as err:  # torch raises many types for a corrupt/foreign file
        raise UserError(f"checkpoint {path} cannot be read ({type(err).__name__}); it is corrupt or not a torch checkpoint") from None


def inference_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a training checkpoint that ``best.pth`` keeps (:data:`BEST_KEYS`)."""
    return {key: state[key] for key in BEST_KEYS if key in state}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load one of our checkpoints onto the CPU; a missing, unreadable or foreign file is a :class:`UserError`."""
    state = read_checkpoint_file(path, "check the path (config keys 'weight', 'resume', 'base_weight')")
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"checkpoint {path} has no 'model' entry; it was not written by this codebase's train scripts")
    return state


def run_record(path: str | Path) -> dict[str, Any]:
    """What a checkpoint says about the run that wrote it (stage, iteration, finished, run_id, best, source,
    identity), read without loading its tensors."""
    state = read_checkpoint_file(path, mmap=True)
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} is not a dict of a model and its run; it was not written by this codebase")
    return {key: state.get(key) for key in ("stage", "iteration", "finished", "run_id", "best", "source")} | {
        "identity": recorded_identity(state)}


def is_finished(record: Mapping[str, Any]) -> bool:
    """A checkpoint whose stage needs no more training: its schedule ended, or it was imported."""
    return bool(record.get("finished")) or record.get("stage") == IMPORTED


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` into ``model`` strictly; mismatches become one line naming the offending keys."""
    check_state_fits(model.state_dict(), state, source)
    model.load_state_dict(state)


def check_state_fits(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str | Path) -> None:
    """Raise a :class:`UserError` naming the missing, unexpected and wrongly shaped keys of ``state`` vs ``own``."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong_shape)):
        if keys:
            problems.append(f"{label} {len(keys)}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}")
    if problems:
        raise UserError(
            f"checkpoint {source} does not fit this model ({'; '.join(problems)}); "
            "was it trained with another backbone/dataset/config?"
        )


MODEL_CONFIG_KEYS = ("dataset", "backbone", "use_gim", "use_hpm", "prior_scale")
"""Config keys a stage-2 checkpoint must agree on with the config it is evaluated under."""


def check_checkpoint_config(state: Mapping[str, Any], cfg: Mapping[str, Any], source: str | Path, keys: tuple[str, ...]) -> None:
    """Refuse a checkpoint whose recorded config differs from ``cfg`` in any of ``keys``."""
    recorded = state.get("config") or {}
    differing = [f"{k}={recorded[k]!r} (now {cfg[k]!r})" for k in keys if k in recorded and recorded[k] != cfg[k]]
    if differing:
        raise UserError(f"checkpoint {source} was made with {', '.join(differing)}; use matching settings or another checkpoint")


# ---------------------------------------------------------------- identity: what a trained model is

MODEL_IDENTITY_KEYS = ("dataset", "split", "coco_split_style", "class_split", "train_classes", "novel_in_train",
                       "base_images", "backbone")
"""What defines a trained model besides its architecture: test.py, predict.py and stage 2 (for its base learner)
require the config to agree on these."""
RUN_IDENTITY_KEYS = MODEL_IDENTITY_KEYS + ("shot",)
"""What the checkpoints in a run directory must agree on with a run that would continue them or skip as finished."""
_WHERE_KEYS = ("dataset", "split", "coco_split_style", "class_split")  # what :func:`_where` shows
_EXPLAINED_BY = ("dataset", "split", "coco_split_style")  # a difference in these explains one in the classes
SHOWN_CLASSES = 3


def _class_record(cfg: Mapping[str, Any]) -> tuple[list[str] | None, str | None]:
    """``(train_classes, class_split)`` of ``cfg``: the names of its fold's base classes in id order and where its
    class split came from (FSS-1000: the split prepared under ``list_root``; None elsewhere); None where the config
    is silent."""
    dataset, split, style = cfg.get("dataset"), cfg.get("split"), cfg.get("coco_split_style")
    if _registered(dataset) is None or split is None or (_registered(dataset).split_styles and style is None):
        return None, None
    list_root = cfg.get("list_root") or "lists"
    names = class_names(dataset, list_root)
    return [names[c - 1] for c in base_classes(dataset, split, style)], split_source(dataset, list_root)


def _registered(dataset: Any) -> Benchmark | None:
    """The benchmark of a recorded dataset name, None if it is not one (unknown, or not recorded)."""
    return benchmark(dataset) if isinstance(dataset, str) and dataset in benchmark_names() else None


def _identity(cfg: Mapping[str, Any], stage: str, classes: tuple[list[str] | None, str | None]) -> dict[str, Any]:
    dataset = cfg.get("dataset")
    has_styles = _registered(dataset) is not None and bool(_registered(dataset).split_styles)
    identity = {
        "stage": stage,
        "dataset": dataset,
        "split": cfg.get("split"),
        "coco_split_style": cfg.get("coco_split_style") if has_styles else None,
        "class_split": classes[1],
        "train_classes": classes[0],
        "novel_in_train": cfg.get("novel_in_train"),
        "base_images": cfg.get("base_images"),
        "backbone": cfg.get("backbone"),
    }
    if stage == "meta":
        identity["shot"] = cfg.get("shot")
    return identity


def run_identity(cfg: Mapping[str, Any], stage: str) -> dict[str, Any]:
    """What defines the model that ``stage`` ('base': the PSPNet base learner, 'meta': MIANet) trains under ``cfg``.

    The dataset, fold (``split``), split style (COCO's ``coco_split_style``; None where a benchmark has one), where
    the class split came from (``class_split``: a prepared split's source, FSS-1000's ``published``/``seeded``/
    ``files``; None where the folds are fixed),
    the classes it trains on by name (``train_classes``: the fold's base classes in id order), the rule for training
    images holding novel classes (``novel_in_train``; a base learner uses it only with ``base_images fold_lists``),
    the base learner's images (``base_images``), the backbone and, for stage 2, the ``shot``. Every checkpoint stores
    this under ``identity``. A key missing from ``cfg`` (a config saved without it) gives None: unknown.
    """
    return _identity(cfg, stage, _class_record(cfg))


def _names_of_ids(dataset: Any, ids: list[int]) -> list[str] | None:
    """Class names of the ids a checkpoint recorded (identities that hold class ids), where the dataset's class list is fixed (None for a
    prepared split, FSS-1000's, whose ids depend on the split prepared at the time)."""
    known = _registered(dataset)
    if known is None or known.prepared_split:
        return None
    names = known.class_names()
    if not all(isinstance(c, int) and 1 <= c <= len(names) for c in ids):
        return None
    return [names[c - 1] for c in ids]


def recorded_identity(state: Mapping[str, Any]) -> dict[str, Any]:
    """The identity a checkpoint records, its classes by name. One that recorded class ids gets their names where the
    dataset's class list is fixed (unknown for FSS-1000); one written before checkpoints recorded an identity gets the
    one its saved config implies (None where that config is silent; FSS-1000's classes unknown); a file with neither
    (a reference checkpoint) is all None."""
    if isinstance(state.get("identity"), dict):
        identity = dict(state["identity"])
        classes = identity.get("train_classes")
        if classes and not all(isinstance(c, str) for c in classes):
            identity["train_classes"] = _names_of_ids(identity.get("dataset"), classes)
        return identity
    config = state.get("config") if isinstance(state.get("config"), dict) else {}
    stage = "meta" if state.get("stage") == "meta" else "base"
    prepared = _registered(config.get("dataset")) is not None and _registered(config.get("dataset")).prepared_split
    return _identity(config, stage, (None, None) if prepared else _class_record(config))


def _applies(key: str, wanted: Mapping[str, Any]) -> bool:
    known = _registered(wanted.get("dataset"))
    if key == "coco_split_style":
        return known is not None and bool(known.split_styles)
    if key == "class_split":
        return known is not None and known.prepared_split
    if key == "novel_in_train":
        return wanted.get("stage") == "meta" or wanted.get("base_images") == "fold_lists"
    return key in wanted


def _shown(key: str, value: Any) -> str:
    if key == "train_classes":
        return f"train_classes {len(value)} ({first_few(value, SHOWN_CLASSES)})"
    return f"{key} {value!r}" if isinstance(value, str) else f"{key} {value}"


def _class_difference(theirs: list[str], ours: list[str]) -> str:
    """How a checkpoint's training classes differ from a config's, naming a few of each side."""
    their_set, our_set = set(theirs), set(ours)
    only_theirs = [n for n in theirs if n not in our_set]
    only_ours = [n for n in ours if n not in their_set]
    if not only_theirs and not only_ours:
        return "train_classes in another class-id order"
    parts = ([f"{len(only_theirs)} not among this config's ({first_few(only_theirs, SHOWN_CLASSES)})"] if only_theirs
             else []) + ([f"{len(only_ours)} of this config's missing ({first_few(only_ours, SHOWN_CLASSES)})"]
                         if only_ours else [])
    return f"train_classes: {', '.join(parts)}"


def identity_conflict(recorded: Mapping[str, Any], wanted: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str | None, list[str]]:
    """Compare a checkpoint's identity with the one a config wants, on the ``keys`` that apply to it.

    Returns the difference as text (``split 0 (this config: split 1)``; differing classes named, a few of each side;
    None if they agree) and the keys the checkpoint does not record (unknown, not checked).
    """
    checked = [k for k in keys if _applies(k, wanted)]
    unknown = [k for k in checked if recorded.get(k) is None]
    differing = [k for k in checked if recorded.get(k) is not None and recorded[k] != wanted[k]]
    if any(k in differing for k in _EXPLAINED_BY):
        differing = [k for k in differing if k not in ("train_classes", "class_split")]
    if not differing:
        return None, unknown
    keyed = [k for k in differing if k != "train_classes"]
    parts = [f"{', '.join(_shown(k, recorded[k]) for k in keyed)} (this config: "
             f"{', '.join(_shown(k, wanted[k]) for k in keyed)})"] if keyed else []
    if "train_classes" in differing:
        parts.append(_class_difference(recorded["train_classes"], wanted["train_classes"]))
    return ", ".join(parts), unknown


def _where(identity: Mapping[str, Any]) -> str:
    """``coco fold 0 (fwb)`` / ``pascal fold 2`` / ``fss fold 0 (published split)``."""
    style = f" ({identity['coco_split_style']})" if identity.get("coco_split_style") else ""
    classes = f" ({identity['class_split']} split)" if identity.get("class_split") else ""
    return f"{identity.get('dataset')} fold {identity.get('split')}{style}{classes}"


def describe_identity(identity: Mapping[str, Any]) -> str:
    """One line for the log: ``synth fold 0, train_classes 15 (a, b, c and 12 more), ..., base_weight ...``."""
    shown = [_shown(k, identity[k]) for k in RUN_IDENTITY_KEYS
             if k not in _WHERE_KEYS and _applies(k, identity) and identity.get(k) is not None]
    base = [f"base_weight {identity['base_weight']}"] if identity.get("base_weight") else []
    return ", ".join([_where(identity)] + shown + base)


def warn_unchecked(source: str | Path, unknown: list[str]) -> None:
    """Warn that ``source`` does not record ``unknown`` (a checkpoint from before identities were recorded)."""
    if unknown:
        warnings.warn(f"checkpoint {source} does not record its {', '.join(unknown)} (written before checkpoints "
                      "recorded what defines them, or a reference file): not checked against this config", stacklevel=2)


def check_model_identity(state: Mapping[str, Any], cfg: Mapping[str, Any], source: str | Path) -> dict[str, Any]:
    """Refuse (one line naming both) a stage-2 checkpoint whose identity differs from ``cfg``'s; returns its identity.

    The shot is not compared: a model may be tested with another number of supports than it was trained with.
    """
    recorded = recorded_identity(state)
    conflict, unknown = identity_conflict(recorded, run_identity(cfg, "meta"), MODEL_IDENTITY_KEYS)
    if conflict:
        raise UserError(f"checkpoint {source} was trained with {conflict}; use the config it was trained with "
                        "(or those keys), or another checkpoint")
    warn_unchecked(source, unknown)
    return recorded


def check_base_learner(path: str | Path, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Refuse a stage-1 checkpoint that cannot start stage 2 under ``cfg``, in one line naming both; returns its
    identity.

    A base learner trained on any of ``cfg``'s novel or validation classes would leak them into the few-shot test or
    the model selection (a base learner of another fold, COCO split style or FSS-1000 class split always has); one of
    another dataset, backbone, ``base_images`` or (with ``base_images fold_lists``) ``novel_in_train`` is another
    model than the config describes.
    """
    state = read_checkpoint_file(path, "set base_weight or run stage 1 (train_base.py)", mmap=True)
    recorded = recorded_identity(state if isinstance(state, dict) else {})
    wanted = run_identity(cfg, "base")
    trained = recorded.get("train_classes")
    if recorded.get("dataset") == wanted["dataset"] and trained is not None:
        novel = novel_classes(cfg["dataset"], cfg["split"], cfg["coco_split_style"])
        validation = [c for c in val_classes(cfg["dataset"], cfg["split"], cfg["coco_split_style"]) if c not in novel]
        names = class_names(cfg["dataset"], cfg["list_root"])
        trained_set = set(trained)
        leaked = [names[c - 1] for c in novel + validation if names[c - 1] in trained_set]
        if leaked:
            held_out = "novel and validation classes" if validation else "novel classes"
            raise UserError(
                f"base learner {path} was trained on {len(leaked)} of this run's {held_out} ({', '.join(leaked[:6])}"
                f"{', ...' if len(leaked) > 6 else ''}): it is the base learner of {_where(recorded)}, this run is "
                f"{_where(wanted)}; set base_weight to that fold's base learner, or train it (train_base.py, same config)")
    conflict, unknown = identity_conflict(recorded, wanted, MODEL_IDENTITY_KEYS)
    if conflict:
        raise UserError(f"base learner {path} was trained with {conflict}; set base_weight to a base learner "
                        "trained with this config, or train one (train_base.py, same config)")
    warn_unchecked(path, unknown)
    return recorded


