"""Training: run configuration and the training loop (Accelerate)."""
