#!/usr/bin/env bash
# Evaluate stage-2 checkpoints of one fold or all folds, print the table (mIoU and FB-IoU per fold + mean)
# and draw the per-class IoU bar chart of the fold(s).
#   bash test.sh <dataset> <fold|all> <backbone> <shot> [key value ...]     (fold 0-3; fss: 0, FSS-1000's one split)
#   e.g. bash test.sh pascal all resnet50 1        bash test.sh pascal 0 resnet50 5 test_seeds "[1, 2]" vis 8
# Each fold writes exp/<dataset>/split<k>/<backbone>/<shot>shot/test/results.json (numbers + protocol; COCO:
# exp/coco/<coco_split_style>/split<k>/...); the chart goes to the folder holding all of them (exp/<dataset>/,
# exp/coco/<coco_split_style>/ for all folds, the run's test/ for one):
# per_class_iou_<dataset>_<backbone>_<shot>shot.png.
set -euo pipefail
cd "$(dirname "$0")"
if [ $# -lt 4 ]; then
  echo "usage: bash test.sh <dataset> <fold|all> <backbone> <shot> [key value ...]  (fold: 0-3; fss: 0, its one split)" >&2
  exit 2
fi
dataset=$1 fold=$2 backbone=$3 shot=$4
shift 4
folds=$(python -m tools.runguard --folds "$dataset" "$fold")  # all: every fold of the benchmark (FSS-1000: 0)
source util/launch.sh
results=()
for k in $folds; do
  cfg=config/$dataset/$backbone/split$k.yaml
  if [ ! -f "$cfg" ]; then
    echo "error: $cfg not found; datasets/backbones with configs: $(cd config && ls -d */*/ | tr '\n' ' ')" >&2
    exit 2
  fi
  run_entry test.py --config "$cfg" shot "$shot" "$@"
  results+=("$(python -m tools.report --results-path --config "$cfg" shot "$shot" "$@")")
done
python -m tools.report --chart "${results[@]}"
