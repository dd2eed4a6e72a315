"""Training: Algorithm 1 (``progressive``) and its phases, BatchNorm re-estimation,
distillation, checkpoints, the training data, several processes, and the two baselines."""
