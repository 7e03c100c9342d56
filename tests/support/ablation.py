"""A stand-in for train_base.py, train.py and test.py in tests of util/runs/ablation.py: it resolves the config as the
entry points do and writes what the ablation runner reads (the run's ``config.yaml``, ``test/config.yaml`` and
``test/results.json`` shaped like util/evaluator.run_protocol's), with figures that are a known function of the
config (:func:`fake_miou`), so tests can compute the tables' figures independently.

    python -m tests.support.ablation {train_base,train,test} CALLS_FILE --config FILE [key value ...]

Every call appends ``{"entry": ..., "argv": [...]}`` to CALLS_FILE (one JSON a line). With ``FAKE_ENTRY_EXIT=
<entry>:<code>`` in the environment that entry exits with ``code`` (train.py after writing its config.yaml, as an
interrupted run does).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from util.data.registry import class_names, novel_classes
from util.common.config import load_config

EXIT_VARIABLE = "FAKE_ENTRY_EXIT"
PROTOCOL_KEYS = ("dataset", "backbone", "use_gim", "use_hpm", "prior_scale", "split", "shot", "test_seeds",
                 "test_episodes")
"""Part of util/evaluator.protocol_of's keys (importing it would import torch, seconds per call)."""
TRAINED = "trained"


def fake_miou(cfg: Mapping[str, Any]) -> float:
    """The mIoU (fraction) the fake test reports for ``cfg``."""
    return (0.30 + 0.10 * cfg["use_gim"] + 0.20 * cfg["use_hpm"] - 0.05 * (cfg["prior_scale"] == 1.0)
            + 0.01 * (cfg["seed"] % 7))


def fake_class_iou(cfg: Mapping[str, Any], index: int) -> float:
    """The IoU of the ``index``-th novel class (0-based)."""
    return fake_miou(cfg) + 0.01 * (index - 2)


BASELINE_MIOU, BASELINE_FBIOU = 0.25, 0.5


def fake_results(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A results.json for ``cfg``: one entry per test seed, the same figures in each."""
    names = [class_names(cfg["dataset"])[c - 1] for c in novel_classes(cfg["dataset"], cfg["split"],
                                                                          cfg["coco_split_style"])]
    miou = fake_miou(cfg)
    seeds = [{"seed": seed, "miou": miou, "fbiou": miou + 0.2,
              "class_iou": {name: fake_class_iou(cfg, i) for i, name in enumerate(names)},
              "classes_without_episodes": [], "episodes": cfg["test_episodes"],
              "baseline": {"miou": BASELINE_MIOU, "fbiou": BASELINE_FBIOU,
                           "class_iou": {name: 0.2 + 0.01 * i for i, name in enumerate(names)}}}
             for seed in cfg["test_seeds"]]
    return {"protocol": {**{key: cfg[key] for key in PROTOCOL_KEYS}, "novel_classes": names, "processes": 1,
                         "baseline": "every-object"},
            "miou": {"mean": miou, "std": 0.0}, "fbiou": {"mean": miou + 0.2, "std": 0.0},
            "baseline": {"miou": {"mean": BASELINE_MIOU, "std": 0.0}, "fbiou": {"mean": BASELINE_FBIOU, "std": 0.0}},
            "prediction_check": None, "seeds": seeds}


def main(argv: list[str]) -> int:
    entry, calls, rest = argv[0], Path(argv[1]), argv[2:]
    with open(calls, "a") as log:
        log.write(json.dumps({"entry": entry, "argv": rest}) + "\n")
    cfg = load_config(rest[1], rest[2:])
    exit_code = os.environ.get(EXIT_VARIABLE, "")
    fails = exit_code.startswith(f"{entry}:")
    if entry == "train":
        run_dir = Path(cfg.exp_dir)
        cfg.save(run_dir / "config.yaml")
        if fails:
            return int(exit_code.split(":")[1])
        (run_dir / TRAINED).write_text("")
    elif entry == "test":
        run_dir = Path(cfg.exp_dir)
        if fails:
            return int(exit_code.split(":")[1])
        if not (run_dir / TRAINED).is_file():
            print(f"error: {run_dir} was not trained", file=sys.stderr)
            return 2
        cfg.save(run_dir / "test" / "config.yaml")
        (run_dir / "test" / "results.json").write_text(json.dumps(fake_results(cfg), indent=2))
    elif fails:
        return int(exit_code.split(":")[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
