"""The full test protocol (``run_protocol``) per episode (``feature_reuse: false``) and with feature reuse, same run.

For each setting, each mode runs in its own child process (so each peak RSS is that mode's own): wall time of
``run_protocol`` (loading, model, scoring), backbone passes (images through the backbone, by a forward hook),
peak RSS of the child (``ru_maxrss``) and its growth over the RSS after the model was built, and the mIoU, which
must be the same in both modes. Model weights are random (speed does not depend on them).

Settings: synth fold 0 (Lite0, 161 px, the synth config's 600 val images): 300 episodes, and 5 seeds x 1000
episodes; a PASCAL-sized simulation (ResNet-50, 473 px): a synth pool of 947 val images whose fold-0 val list holds
364 images, as PASCAL's fold-0 val list does (364 / 445 / 592 / 336 for folds 0-3, the public lists; there is
no PASCAL data here to count from), 1000 episodes 1-shot and 5-shot. ``--quick``: synth 300 episodes and 5 x 200
episodes 1-shot only. ``--only NAME`` runs the named settings.
Targets (5 x 1000 1-shot): >= 5x fewer backbone passes, <= 0.3x the wall time, peak RSS at most 2 GB more.

    python -m bench.reuse [--quick] [--only NAME ...] [--threads 1] [--workers 0]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYNTH_CONFIG = "config/synth/efficientnet_lite0/split0.yaml"
SYNTH_VAL = 600            # the synth config's val pool (python -m tools.make_synth default)
PASCAL_POOL = 947          # synth val images whose fold-0 val list holds PASCAL fold 0's 364
PASCAL_FOLD0_VAL = 364
TRAIN_IMAGES = 20          # make_lists needs a train pool; the test protocol never reads it
SETTINGS = {
    "synth-300": {"pool": "synth", "shot": 1, "seeds": [321], "episodes": 300},
    "synth-5x1000": {"pool": "synth", "shot": 1, "seeds": [321, 322, 323, 324, 325], "episodes": 1000},
    "synth-5x200": {"pool": "synth", "shot": 1, "seeds": [321, 322, 323, 324, 325], "episodes": 200},
    "pascal-sim-1shot": {"pool": "pascal", "shot": 1, "seeds": [321], "episodes": 1000},
    "pascal-sim-5shot": {"pool": "pascal", "shot": 5, "seeds": [321], "episodes": 1000},
}
FULL = ("synth-300", "synth-5x1000", "pascal-sim-1shot", "pascal-sim-5shot")
QUICK = ("synth-300", "synth-5x200")
TARGETS = {"passes": 5.0, "wall": 0.3, "rss_mb": 2048.0}


def _pool(root: Path, name: str) -> tuple[Path, Path]:
    """(data_root, list_root) of the synth pool ``name`` under ``root``, made once."""
    from tools.make_lists import make_lists
    from tools.make_synth import make_synth

    data_root, list_root = root / name, root / f"{name}-lists"
    if not list_root.is_dir():
        make_synth(data_root, TRAIN_IMAGES, SYNTH_VAL if name == "synth" else PASCAL_POOL, seed=0, workers=2)
        make_lists("synth", data_root, list_root, workers=2)
    return data_root, list_root


def _config(setting: dict, data_root: Path, list_root: Path, reuse: bool, workers: int):
    from util.common.config import load_config

    overrides = {"data_root": str(data_root), "list_root": str(list_root), "shot": setting["shot"],
                 "test_seeds": setting["seeds"], "test_episodes": setting["episodes"], "feature_reuse": reuse,
                 "workers": workers, "device": "cpu"}
    if setting["pool"] == "pascal":
        overrides |= {"backbone": "resnet50", "val_size": 473, "episode_class": "any_size", "prior_scale": 1.0}
    return load_config(SYNTH_CONFIG, overrides)


def child(arguments: dict) -> dict:
    """One mode of one setting, in this process: the figures as a dict."""
    import torch

    from util.dataset import load_fold_list
    from util.common.distributed import DistContext
    from util.engine.evaluator import run_protocol
    from util.runs.weights import build_mianet

    cfg = _config(SETTINGS[arguments["setting"]], Path(arguments["data_root"]), Path(arguments["list_root"]),
                  arguments["reuse"], arguments["workers"])
    torch.manual_seed(0)
    model = build_mianet(cfg).eval()
    passes = [0]
    model.backbone.register_forward_hook(lambda module, args, out: passes.__setitem__(0, passes[0] + args[0].shape[0]))
    rss_start = _rss_now_mb()
    start = time.perf_counter()
    results = run_protocol(model, cfg, DistContext(0, 1, torch.device("cpu")), report=lambda line: None)
    wall = time.perf_counter() - start
    return {"wall": wall, "passes": passes[0], "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "start_mb": rss_start, "miou": results["miou"]["mean"], "episodes": results["prediction_check"]["episodes"],
            "list_images": len(load_fold_list(cfg, "val").items)}


def _rss_now_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _run_child(setting: str, data_root: Path, list_root: Path, reuse: bool, threads: int, workers: int) -> dict:
    arguments = {"setting": setting, "data_root": str(data_root), "list_root": str(list_root), "reuse": reuse,
                 "workers": workers}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "bench.reuse", "--child", json.dumps(arguments)], env=env,
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--only", nargs="+", choices=sorted(SETTINGS), help="run these settings")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per child (OMP_NUM_THREADS)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (the synth config's 0)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    from util.common.runtime import (
        cpu_model,  # imports torch: the children measure, the parent stays light
    )

    names = args.only or (QUICK if args.quick else FULL)
    load = os.getloadavg()[0]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {args.threads} torch thread(s) per mode, "
          f"{args.workers} loader workers; 1-min load average at start {load:.1f}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            setting = SETTINGS[name]
            data_root, list_root = _pool(Path(folder), setting["pool"])
            per_episode = _run_child(name, data_root, list_root, False, args.threads, args.workers)
            reused = _run_child(name, data_root, list_root, True, args.threads, args.workers)
            rows.append((name, setting, per_episode, reused))
            print(f"{name}: per-episode {per_episode['wall']:.1f} s {per_episode['passes']} passes "
                  f"{per_episode['peak_mb']:.0f} MB peak; reuse {reused['wall']:.1f} s {reused['passes']} passes "
                  f"{reused['peak_mb']:.0f} MB peak; mIoU {per_episode['miou']!r} vs {reused['miou']!r}", flush=True)
    print(f"\n1-min load average at the end {os.getloadavg()[0]:.1f} (2 cores shared: figures measured under load)")
    print("| setting | val list images | shot | seeds x episodes | per-episode: wall s / passes / peak RSS MB "
          "| reuse: wall s / passes / peak RSS MB | passes ratio | wall ratio | RSS difference MB | same mIoU |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    failed = False
    for name, setting, plain, reused in rows:
        passes_ratio = plain["passes"] / max(reused["passes"], 1)
        wall_ratio = reused["wall"] / plain["wall"]
        rss = reused["peak_mb"] - plain["peak_mb"]
        same = plain["miou"] == reused["miou"] and plain["episodes"] == reused["episodes"]
        failed |= not same
        print(f"| {name} | {plain['list_images']} | {setting['shot']} | {len(setting['seeds'])} x {setting['episodes']} "
              f"| {plain['wall']:.1f} / {plain['passes']} / {plain['peak_mb']:.0f} "
              f"| {reused['wall']:.1f} / {reused['passes']} / {reused['peak_mb']:.0f} "
              f"| {passes_ratio:.1f}x fewer | {wall_ratio:.3f}x | {rss:+.0f} | {'yes' if same else 'NO'} |")
    if any(name.startswith("pascal") for name in names):
        print(f"PASCAL-sized pool: synth val images whose fold-0 val list holds {PASCAL_FOLD0_VAL} images, as "
              "PASCAL fold 0's public val list (the count is taken from the published lists, not from data here)")
    print(f"targets for 5 x 1000 1-shot: >= {TARGETS['passes']:.0f}x fewer passes, <= {TARGETS['wall']}x wall time, "
          f"<= +{TARGETS['rss_mb']:.0f} MB peak RSS")
    if failed:
        sys.exit("the two modes gave different mIoU")


if __name__ == "__main__":
    main()
