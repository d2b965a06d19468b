"""Config of the training schedule and the platform (Ray Train / MLflow)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    epochs: int = 12
    max_iters: int | None = None       # stop after this many iterations (overrides epochs when smaller)
    lr: float = 2e-4
    weight_decay: float = 1e-4
    # parameters whose name contains one of these get lr x lr_mult_value (official: backbone, offsets, refs)
    lr_mult_keys: list[str] = field(default_factory=lambda: ["backbone", "sampling_offsets", "reference_points"])
    lr_mult_value: float = 0.1
    clip_grad_norm: float = 0.1        # 0 disables clipping
    lr_steps: list[int] = field(default_factory=lambda: [11])   # epochs at which lr *= lr_gamma
    lr_gamma: float = 0.1
    warmup_iters: int = 0
    amp: bool = True                   # bf16 autocast on GPU (ignored on CPU)
    seed: int = 0
    eval_every: int = 1                # epochs
    log_every: int = 20                # iterations
    checkpoint_every: int = 1          # epochs


@dataclass
class PlatformConfig:
    num_workers: int = 1               # Ray Train workers (one per GPU when use_gpu)
    use_gpu: bool = False
    cpus_per_worker: int = 1
    gpus_per_worker: float = 1.0
    storage_path: str = "runs"         # Ray Train storage: a local folder, a shared mount or a URI
    run_name: str | None = None
    experiment_name: str = "codetr"    # MLflow experiment
    max_failures: int = 0
    num_to_keep: int = 2               # checkpoints kept by Ray Train
