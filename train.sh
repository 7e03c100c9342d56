#!/usr/bin/env bash
# Stage 1 (base learner) + stage 2 (MIANet) for one fold or all folds.
#   bash train.sh <dataset> <fold|all> <backbone> <shot> [key value ...]     (fold 0-3; fss: 0, FSS-1000's one split)
#   e.g. bash train.sh pascal all resnet50 1        NPROC=4 bash train.sh coco 0 resnet50 5
# Config: config/<dataset>/<backbone>/split<fold>.yaml, shot and extra `key value` pairs as overrides.
# Re-runnable: both stages run with `resume auto` (a finished stage is a no-op, a killed or interrupted one
# continues). Stage 1 is skipped when it is done: a finished or imported best.pth in its run directory, or
# an existing base_weight file (util/runs/guard.py decides).
# NPROC > 1 launches each stage with torchrun (DDP, one process per GPU; several nodes: TORCHRUN_ARGS; see
# util/launch.sh). Batch sizes are global, so NPROC changes no iteration, schedule or batch. A finished fold is
# skipped whatever NPROC is; continuing an unfinished one needs the NPROC it began with (each process's random state).
# SIGINT/SIGTERM/SIGHUP to this script reach the running stage, which saves last.pth and stops; rerun to continue.
# COCO runs go to initmodel/coco/<coco_split_style>/split<k>/... and exp/coco/<coco_split_style>/split<k>/...
set -euo pipefail
cd "$(dirname "$0")"
if [ $# -lt 4 ]; then
  echo "usage: bash train.sh <dataset> <fold|all> <backbone> <shot> [key value ...]  (fold: 0-3; fss: 0, its one split)" >&2
  exit 2
fi
dataset=$1 fold=$2 backbone=$3 shot=$4
shift 4
folds=$(python -m tools.runguard --folds "$dataset" "$fold")  # all: every fold of the benchmark (FSS-1000: 0)
source util/launch.sh
for k in $folds; do
  cfg=config/$dataset/$backbone/split$k.yaml
  if [ ! -f "$cfg" ]; then
    echo "error: $cfg not found; datasets/backbones with configs: $(cd config && ls -d */*/ | tr '\n' ' ')" >&2
    exit 2
  fi
  base_done=$(python -m tools.runguard --stage1-done --config "$cfg" resume auto "$@")
  if [ -n "$base_done" ]; then
    echo "stage 1 done ($base_done), skipping"
  else
    run_entry train_base.py --config "$cfg" resume auto "$@"
  fi
  run_entry train.py --config "$cfg" shot "$shot" resume auto "$@"
done
