"""Runs, checkpoints and weights: what a checkpoint file is, the run folders and their guards, the weights a run starts from, run logs."""
