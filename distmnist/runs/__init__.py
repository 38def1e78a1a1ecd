"""One run's directory and what is written into it: planning and claiming the directory, checkpoints, TensorBoard
events, the HParams experiment, the calibrated SavedModel, the pictures, and run.py, which puts one run together
from a TrainConfig (its set-up in runsetup.py, its artifacts in artifacts.py)."""
