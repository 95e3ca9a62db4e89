"""Task-agnostic training engine: loop, schedules, AMP, DDP, checkpoints, logs, evaluation."""
from .student import StudentOnly
from .trainer import Trainer, TrainingInterrupted, build_pairs, evaluate, train

__all__ = ["StudentOnly", "Trainer", "TrainingInterrupted", "build_pairs", "evaluate", "train"]
