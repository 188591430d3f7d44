"""torch-only speed levers. Each patches a Keras or torch internal while `fit` runs, and each is
switchable and checked against Keras' own path by a test."""
