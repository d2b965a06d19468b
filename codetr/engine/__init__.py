"""The per-worker training engine: pure PyTorch (no Ray, no MLflow).

- :mod:`codetr.engine.optim`: AdamW parameter groups (lr multiplier) and the warm-up + step schedule
- :mod:`codetr.engine.loop`: the train step, metric windows and :class:`TrainLoop` (hooks report out)
- :mod:`codetr.engine.evaluate`: the evaluation loop over a COCO evaluator
- :mod:`codetr.engine.checkpoint`: atomic checkpoints with RNG states
"""
from codetr.engine.checkpoint import (CHECKPOINT_FILE, capture_rng_state, load_checkpoint, restore_rng_state,
                                      save_checkpoint, seed_everything, unwrap_model)
from codetr.engine.evaluate import EvalSample, evaluate
from codetr.engine.loop import EpochReport, LogRecord, LoopHooks, LossWindow, TrainLoop, head_of, train_step
from codetr.engine.optim import build_lr_scheduler, build_optimizer, build_param_groups, lr_factor

__all__ = ["CHECKPOINT_FILE", "capture_rng_state", "load_checkpoint", "restore_rng_state", "save_checkpoint",
           "seed_everything", "unwrap_model", "EvalSample", "evaluate", "EpochReport", "LogRecord", "LoopHooks",
           "LossWindow", "TrainLoop", "head_of", "train_step", "build_lr_scheduler", "build_optimizer",
           "build_param_groups", "lr_factor"]
