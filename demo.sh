#!/usr/bin/env bash
# README command 1, on a fresh machine: install, generate the synth dataset, its lists and class
# embeddings if missing, then stage 1, stage 2 and the test of synth fold 0 1-shot, print the results
# table and compare it with the committed figures of the same config (README "Quick start", docs/results.md,
# where the wall times are too).
#   bash demo.sh [key value ...]      e.g. bash demo.sh use_gim false use_hpm false exp_dir exp/nomodules
set -euo pipefail
cd "$(dirname "$0")"
start=$(date +%s)
python -m pip install --quiet --disable-pip-version-check -r requirements.txt
python -m tools.make_synth --root data/synth
python -m tools.make_lists --dataset synth --data-root data/synth --list-root lists
[ -f embeddings/synth_glove50.npy ] || python -m tools.embed_classes --dataset synth
bash train.sh synth 0 efficientnet_lite0 1 "$@"
bash test.sh synth 0 efficientnet_lite0 1 "$@"
python -m bench.ablation --compare "$@"
echo "demo wall time: $(( $(date +%s) - start )) s"
