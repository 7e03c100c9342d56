"""Where a run's files live: the run folders of stage 1 and stage 2, the checkpoint each stage starts or resumes from,
the checkpoint test.py and predict.py use, and where test.py writes its results.

    initmodel/<dataset>[/<coco_split_style>]/split<k>/<backbone>/     stage 1 (base_exp_dir)
    exp/<dataset>[/<coco_split_style>]/split<k>/<backbone>/<K>shot/   stage 2 (exp_dir); test.py writes its test/
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from util.common.errors import UserError
from util.data.lists import dataset_list_dir
from util.runs.checkpoint import BEST, LAST, is_finished, run_record

RESULTS_FILE = "results.json"


def base_run_dir(cfg: Mapping[str, Any]) -> Path:
    """Stage-1 run directory: ``cfg.base_exp_dir`` or ``initmodel/<dataset>/split<k>/<backbone>``
    (``initmodel/coco/<coco_split_style>/split<k>/<backbone>`` for COCO, as for the lists)."""
    if cfg["base_exp_dir"]:
        return Path(cfg["base_exp_dir"])
    return dataset_list_dir("initmodel", cfg["dataset"], cfg["coco_split_style"]) / f"split{cfg['split']}" / cfg["backbone"]


def base_weight_path(cfg: Mapping[str, Any]) -> Path:
    """The stage-1 checkpoint stage 2 starts from: ``cfg.base_weight`` or ``<base run dir>/best.pth``."""
    return Path(cfg["base_weight"]) if cfg["base_weight"] else base_run_dir(cfg) / BEST


def meta_run_dir(cfg: Mapping[str, Any]) -> Path:
    """Stage-2 run directory: ``cfg.exp_dir`` or ``exp/<dataset>/split<k>/<backbone>/<shot>shot``
    (``exp/coco/<coco_split_style>/split<k>/...`` for COCO)."""
    if cfg["exp_dir"]:
        return Path(cfg["exp_dir"])
    return (dataset_list_dir("exp", cfg["dataset"], cfg["coco_split_style"]) / f"split{cfg['split']}" / cfg["backbone"]
            / f"{cfg['shot']}shot")


def stage2_weight(cfg: Mapping[str, Any]) -> Path:
    """The stage-2 checkpoint test.py and predict.py use: ``cfg.weight``, else ``<stage-2 run dir>/best.pth``; when
    that run was never trained (or has not validated yet) a :class:`UserError` gives the train.sh command."""
    if cfg["weight"]:
        return Path(cfg["weight"])
    run_dir = meta_run_dir(cfg)
    path = run_dir / BEST
    if path.is_file():
        return path
    train = f"bash train.sh {cfg['dataset']} {cfg['split']} {cfg['backbone']} {cfg['shot']}"
    if cfg["exp_dir"]:
        train += f" exp_dir {cfg['exp_dir']}"
    state = (f"the run in {run_dir} has not validated yet (it has {LAST}, no {BEST}); let it finish: {train} resumes it"
             if (run_dir / LAST).is_file() else
             f"{cfg['dataset']} fold {cfg['split']} {cfg['backbone']} {cfg['shot']}-shot was never trained there; "
             f"run train.sh first: {train}")
    raise UserError(f"no stage-2 checkpoint {path}: {state} (with the key value overrides you train with), "
                    "or give weight PATH")


def resume_path(resume: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``None`` (fresh run), ``auto`` (``<run_dir>/last.pth`` if present) or a path."""
    if resume is None:
        return None
    if resume == "auto":
        latest = run_dir / LAST
        return latest if latest.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise UserError(f"config key 'resume': checkpoint {path} not found; use 'auto', null or an existing file")
    return path


def finished_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint that shows the run in ``run_dir`` finished (``best.pth`` if present), else None.

    ``last.pth`` decides when it exists (an unfinished one is continued by ``resume auto``); without it, a
    finished or imported ``best.pth`` counts.
    """
    last, best = run_dir / LAST, run_dir / BEST
    if last.is_file():
        return (best if best.is_file() else last) if is_finished(run_record(last)) else None
    if best.is_file() and is_finished(run_record(best)):
        return best
    return None


def results_path(cfg: Mapping[str, Any]) -> Path:
    """Where test.py writes the results of ``cfg``: ``<stage-2 run dir>/test/results.json``."""
    return meta_run_dir(cfg) / "test" / RESULTS_FILE
