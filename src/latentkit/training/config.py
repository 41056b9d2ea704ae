"""The options of a training run: :class:`TrainingConfig`, the ``[training]`` table of an
experiment config (docs/training.md lists every field).

Values are checked when the object is built, from TOML or in Python alike (types through
:mod:`latentkit.validation`, then ranges), so a bad value is a
:class:`~latentkit.errors.ConfigError` naming the key before any model is built.
"""

from __future__ import annotations

from typing import Literal

import attrs

from latentkit.errors import ConfigError
from latentkit.validation import check_finite, check_positive, validate_attrs

__all__ = ["SEED_LIMIT", "TrainingConfig"]

#: Seeds are below 2^63: every generator latentkit seeds (torch's, NumPy's via seed mod 2^32,
#: Python's) takes them.
SEED_LIMIT = 2**63


@attrs.frozen(kw_only=True)
class TrainingConfig:
    """Everything the :class:`~latentkit.training.Trainer` needs besides model and data."""

    output_dir: str = "runs/latentkit"  # checkpoints/, metrics.csv, samples/ go here
    max_steps: int = 1000  # optimizer steps
    max_seconds: float | None = None  # time budget: wall-clock seconds of training (summed over resumes); the lr decay ends there
    batch_size: int = 16  # per process and micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-4  # peak learning rate (AdamW, Loshchilov & Hutter 2019)
    weight_decay: float = 0.0  # decoupled; never applied to biases and norm weights (ndim < 2)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up from 0 to lr
    lr_decay: Literal["constant", "cosine", "linear"] = "constant"  # after warm-up
    min_lr_ratio: float = 0.0  # final lr / peak lr for cosine and linear decay
    grad_clip: float | None = 1.0  # max global gradient norm; 0 or None = no clipping
    ema_decay: float | None = None  # None = no EMA; e.g. 0.9999
    ema_warmup: bool = True  # d_t = 1 - (1 + t)^-ema_power, capped at ema_decay
    ema_power: float = 2.0 / 3.0
    ema_start_step: int = 0
    ema_update_every: int = 1
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # bf16 autocast; fp16 + GradScaler (CUDA)
    device: str = "auto"  # "auto" = CUDA when available (cuda:LOCAL_RANK), else CPU
    compile: bool = False  # torch.compile the model's compile_targets() (LatentDiffusion: the denoiser), else the loss
    channels_last: bool | None = None  # None = on CUDA only
    tf32: bool = True  # TF32 matmuls/convolutions on CUDA
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms(True)
    num_workers: int = 0  # DataLoader workers
    shuffle: bool = True
    checkpoint_every: int = 1000  # steps between checkpoints (also at the end); 0 = none (nothing to resume from)
    keep_last: int = 3  # checkpoints kept
    resume: bool = True  # continue from the newest intact checkpoint in output_dir
    nonfinite: Literal["stop", "skip"] = "stop"  # on a NaN/inf loss: stop, or skip the step
    nonfinite_skip_limit: float = 0.25  # with "skip": stop once more than this share of the steps were skipped
    log_every: int = 10  # steps between metric rows (CSV/TensorBoard)
    csv: bool = True
    tensorboard: bool = False  # when the tensorboard package is installed
    progress: bool = True  # tqdm progress bar
    sample_every: int = 0  # steps between sample grids (0 = never); needs model.sample
    sample_prompts: list[str] = attrs.field(factory=list)  # captions for sample grids
    sample_labels: list[int] = attrs.field(factory=list)  # class labels for sample grids
    sample_count: int = 8  # images per grid when no prompts/labels are given
    sample_steps: int = 20
    sample_sampler: str | None = None  # registered sampler; None = the model's default
    sample_guidance: float | None = None  # classifier-free guidance scale
    sample_seed: int = 0
    find_unused_parameters: bool | None = None  # DDP; None = only for several optimizer groups

    def __attrs_post_init__(self) -> None:
        validate_attrs(self, "training")
        check_finite("training", lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, betas=self.betas,
                     min_lr_ratio=self.min_lr_ratio, grad_clip=self.grad_clip, ema_decay=self.ema_decay,
                     ema_power=self.ema_power, max_seconds=self.max_seconds, sample_guidance=self.sample_guidance,
                     nonfinite_skip_limit=self.nonfinite_skip_limit)
        for key in ("seed", "sample_seed"):
            if not 0 <= getattr(self, key) < SEED_LIMIT:
                raise ConfigError(f"[training] {key} must lie in [0, 2^63), got {getattr(self, key)!r}",
                                  section="training", key=key)
        if not 0.0 < self.nonfinite_skip_limit <= 1.0:
            raise ConfigError(f"[training] nonfinite_skip_limit must lie in (0, 1], got {self.nonfinite_skip_limit!r}",
                              section="training", key="nonfinite_skip_limit")
        check_positive("training", max_steps=self.max_steps, batch_size=self.batch_size,
                       grad_accum=self.grad_accum, lr=self.lr, keep_last=self.keep_last,
                       log_every=self.log_every, ema_update_every=self.ema_update_every,
                       sample_count=self.sample_count, sample_steps=self.sample_steps, eps=self.eps,
                       max_seconds=self.max_seconds)
        for key in ("warmup_steps", "num_workers", "sample_every", "ema_start_step", "weight_decay",
                    "grad_clip", "checkpoint_every"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ConfigError(f"[training] {key} must be >= 0, got {getattr(self, key)!r}",
                                  section="training", key=key)
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"[training] min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}",
                              section="training", key="min_lr_ratio")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"[training] ema_decay must lie in (0, 1), got {self.ema_decay!r}",
                              section="training", key="ema_decay")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"[training] betas must lie in [0, 1), got {self.betas!r}",
                              section="training", key="betas")
