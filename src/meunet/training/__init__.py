"""Training: the paper's loss, one training step, and (later) the training loop."""
