"""Config of the training schedule and the platform (Ray Train / MLflow)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from codetr.config.loader import check_range


@dataclass
class TrainConfig:
    epochs: int = 12                   # training length in epochs
    max_iters: int | None = None       # stop after this many iterations (overrides epochs when smaller)
    lr: float = 2e-4                   # AdamW lr of the base parameter group
    weight_decay: float = 1e-4         # AdamW weight decay (all groups)
    # parameters whose name contains one of these get lr x lr_mult_value (official: backbone, offsets, refs)
    lr_mult_keys: list[str] = field(default_factory=lambda: ["backbone", "sampling_offsets", "reference_points"])
    lr_mult_value: float = 0.1         # lr multiplier of the lr_mult_keys group (1.0: no separate group rate)
    clip_grad_norm: float = 0.1        # max total grad norm; 0 disables clipping
    lr_steps: list[int] = field(default_factory=lambda: [11])   # epochs at which lr *= lr_gamma
    lr_gamma: float = 0.1              # lr factor at each of lr_steps
    warmup_iters: int = 0              # linear lr warm-up over this many iterations
    warmup_ratio: float = 0.001        # warm-up starts at lr x warmup_ratio
    # mixed precision: none (float32, official), bf16 (autocast), fp16 (autocast + dynamic loss scale, overflowing
    # steps skipped); true / false: the key's former form, read as bf16 / none
    amp: Literal["none", "bf16", "fp16"] | bool = "none"
    # micro-batches per optimizer step (gradient accumulation); iterations, max_iters, warmup_iters and log_every count optimizer steps
    accumulate_steps: int = 1
    # lr rule when the effective batch (workers x data.batch_size x accumulate_steps) differs from reference_batch
    scale_lr: Literal["none", "linear", "sqrt"] = "none"
    reference_batch: int | None = None  # the recipe's effective batch, for scale_lr and the start-up note (official: 16); null: none
    seed: int = 0                      # base seed; worker rank r uses seed + r
    eval_every: int = 1                # evaluate every N epochs (and always after the last); 0: only at the end
    log_every: int = 20                # iterations between metric logs / progress lines
    checkpoint_every: int = 1          # checkpoint every N epochs (and always after the last); 0: only at the end
    # a non-finite loss or gradient: stop with an error naming the iteration, terms and images, or skip the step
    on_nonfinite: Literal["error", "skip"] = "error"
    max_skipped_steps: int = 10        # on_nonfinite=skip: more skipped steps than this in a run is an error

    def validate(self, prefix: str) -> None:
        check_range(self.epochs >= 1, f"{prefix}.epochs", "must be >= 1")
        if self.max_iters is not None:
            check_range(self.max_iters >= 1, f"{prefix}.max_iters", "must be >= 1 or null")
        check_range(self.lr > 0, f"{prefix}.lr", "must be > 0")
        check_range(self.clip_grad_norm >= 0, f"{prefix}.clip_grad_norm", "must be >= 0")
        check_range(self.warmup_iters >= 0, f"{prefix}.warmup_iters", "must be >= 0")
        check_range(0 < self.warmup_ratio <= 1, f"{prefix}.warmup_ratio", "must be in (0, 1]")
        check_range(self.log_every >= 1, f"{prefix}.log_every", "must be >= 1")
        check_range(self.eval_every >= 0, f"{prefix}.eval_every", "must be >= 0")
        check_range(self.checkpoint_every >= 0, f"{prefix}.checkpoint_every", "must be >= 0")
        check_range(self.max_skipped_steps >= 0, f"{prefix}.max_skipped_steps", "must be >= 0")
        if isinstance(self.amp, bool):   # the former boolean form
            self.amp = "bf16" if self.amp else "none"
        check_range(self.accumulate_steps >= 1, f"{prefix}.accumulate_steps", "must be >= 1")
        if self.reference_batch is not None:
            check_range(self.reference_batch >= 1, f"{prefix}.reference_batch", "must be >= 1 or null")
        check_range(self.scale_lr == "none" or self.reference_batch is not None, f"{prefix}.scale_lr",
                    f"{self.scale_lr} scales the lr against train.reference_batch: set it (official recipes: 16)")


@dataclass
class EvalConfig:
    # each auxiliary head's own detections from the shared encoder, evaluated in the same pass: branch/<head>/coco/*
    branches: bool = True
    # the paper's diagnostics on a fixed val subset at every evaluation: diag/encoder_iof_iob_auc, diag/instability
    diagnostics: bool = True
    diag_images: int = 16              # the subset: the first N validation images (by image id)
    # the COCO error breakdown (errors/*), PR curves and confusion matrix at the final evaluation
    error_analysis: bool = True
    # test-time augmentation of the query head: none, flip (left-right), multiscale (tta_scales x {as is, flipped});
    # views merged by class-wise NMS at tta_nms_iou (codetr/models/tta.py)
    tta: Literal["none", "flip", "multiscale"] = "none"
    tta_scales: list[float] = field(default_factory=lambda: [0.8, 1.0, 1.2])   # multiscale: image size factors
    tta_nms_iou: float = 0.6           # IoU of the class-wise NMS that merges the views

    def validate(self, prefix: str) -> None:
        check_range(self.diag_images >= 1, f"{prefix}.diag_images", "must be >= 1")
        check_range(bool(self.tta_scales) and all(s > 0 for s in self.tta_scales), f"{prefix}.tta_scales",
                    "must be a non-empty list of factors > 0")
        check_range(0.0 < self.tta_nms_iou <= 1.0, f"{prefix}.tta_nms_iou", "must be in (0, 1]")


@dataclass
class PlatformConfig:
    num_workers: int = 1               # Ray Train workers (one per GPU when use_gpu)
    use_gpu: bool = False              # one GPU per worker (NCCL); false: CPU workers (gloo)
    cpus_per_worker: int = 1           # Ray CPUs per worker; also torch.set_num_threads in the worker
    gpus_per_worker: float = 1.0       # Ray GPUs per worker when use_gpu
    placement_strategy: str = "PACK"   # Ray placement of the workers: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD
    storage_path: str = "runs"         # Ray Train storage: a local folder, a shared mount or a URI (multi-node)
    run_name: str | None = None        # Ray Train + MLflow run name; null: <experiment>-<timestamp>; reused: resumes
    experiment_name: str = "codetr"    # MLflow experiment
    max_failures: int = 0              # Ray Train restarts from the last checkpoint after a worker failure
    resource_wait_s: float = 600.0     # longest wait for the workers' CPUs / GPUs at each (re)start, then fail (sweep trials queue)
    num_to_keep: int = 2               # checkpoints kept by Ray Train in storage
    find_unused_parameters: bool = False  # DDP: every parameter gets a gradient for any K (tests/codetr/models/test_collaborative.py)
    log_checkpoints: bool = True       # upload the last and the best checkpoint to MLflow
    num_val_images: int = 4            # validation images drawn with predicted and true boxes (MLflow)
    log_model: bool = True             # log the deployable model as an MLflow model (pyfunc) at the end
    system_metrics_interval: float = 10.0  # seconds between MLflow system-metrics samples per node; 0: off
    ray_dashboard: bool = False        # a local cluster starts Ray's dashboard (joined clusters keep theirs)

    def validate(self, prefix: str) -> None:
        check_range(self.num_workers >= 1, f"{prefix}.num_workers", "must be >= 1")
        check_range(self.cpus_per_worker >= 1, f"{prefix}.cpus_per_worker", "must be >= 1")
        check_range(self.placement_strategy in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"),
                    f"{prefix}.placement_strategy", "must be PACK, SPREAD, STRICT_PACK or STRICT_SPREAD")
        check_range(self.max_failures >= -1, f"{prefix}.max_failures", "must be >= -1 (-1: unlimited)")
        check_range(self.resource_wait_s > 0, f"{prefix}.resource_wait_s", "must be > 0")
        check_range(self.num_to_keep >= 1, f"{prefix}.num_to_keep", "must be >= 1")
        check_range(self.system_metrics_interval >= 0, f"{prefix}.system_metrics_interval", "must be >= 0 (0: off)")
