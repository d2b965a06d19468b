"""The per-worker training engine: pure PyTorch (no Ray, no MLflow).

- :mod:`codetr.engine.optim`: AdamW parameter groups (lr multiplier), the warm-up + step schedule, lr scaling
- :mod:`codetr.engine.loop`: the train step (gradient accumulation), metric windows and :class:`TrainLoop`
- :mod:`codetr.engine.precision`: ``train.amp`` (autocast, the fp16 loss scaler)
- :mod:`codetr.engine.evaluate`: the evaluation loop over a COCO evaluator
- :mod:`codetr.engine.checkpoint`: atomic checkpoints with RNG states
"""
from codetr.engine.checkpoint import (CHECKPOINT_FILE, capture_rng_state, load_checkpoint, restore_rng_state,
                                      save_checkpoint, seed_everything, unwrap_model)
from codetr.engine.evaluate import EvalSample, evaluate
from codetr.engine.loop import (EpochReport, LogRecord, LoopHooks, LossWindow, TrainLoop, accumulated_step, head_of,
                                optimizer_steps_per_epoch, train_step)
from codetr.engine.optim import (LRScaling, build_lr_scheduler, build_optimizer, build_param_groups, lr_factor,
                                 lr_scaling)
from codetr.engine.precision import AMP_MODES, amp_mode, autocast_context, make_grad_scaler

__all__ = ["CHECKPOINT_FILE", "capture_rng_state", "load_checkpoint", "restore_rng_state", "save_checkpoint",
           "seed_everything", "unwrap_model", "EvalSample", "evaluate", "EpochReport", "LogRecord", "LoopHooks",
           "LossWindow", "TrainLoop", "accumulated_step", "head_of", "optimizer_steps_per_epoch", "train_step",
           "LRScaling", "build_lr_scheduler", "build_optimizer", "build_param_groups", "lr_factor", "lr_scaling",
           "AMP_MODES", "amp_mode", "autocast_context", "make_grad_scaler"]
