import os

# The backend must be chosen before anything imports keras; torch is what kclip ships.
os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
