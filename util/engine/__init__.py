"""Training and evaluation: the training loop, the evaluator, metrics."""
