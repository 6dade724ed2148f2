"""Training: the shared accelerate loop, optimizer groups and schedules, checkpoints, run folders."""

from vlmtune.train.trainer import Trainer, TrainingError, seed_everything

__all__ = ["Trainer", "TrainingError", "seed_everything"]
