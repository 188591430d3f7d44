"""A training run: `fit` with its callbacks, W&B tracking and retrieval tables, and the exported model."""
