"""Optimisation: AdamW (Loshchilov & Hutter 2019) per optimizer group, and the learning-rate
multiplier :class:`WarmupDecay` (linear warm-up, then constant, cosine or linear decay)."""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import nn

from latentkit.training.config import TrainingConfig
from latentkit.training.protocol import uses_several_optimizers

__all__ = ["OptimizerGroup", "WarmupDecay", "all_finite", "budget_horizon", "build_optimizers"]


class WarmupDecay:
    """LR multiplier: linear warm-up over ``warmup_steps``, then ``constant``, ``cosine`` or
    ``linear`` decay to ``min_ratio`` at ``max_steps``.

    ``factor(s)`` is used by optimizer step ``s`` (0-based); warm-up starts at
    ``1 / warmup_steps`` so no step is wasted at lr 0. Cosine decay is
    ``min + (1 - min) * (1 + cos(pi * p)) / 2`` with ``p`` the fraction of the decay phase done
    (Loshchilov & Hutter 2017). ``max_steps`` is the decay horizon: a trainer with a time
    budget moves it to the step the budget is projected to end at. Its attributes are saved
    with the scheduler's state, so a resumed run keeps the horizon.
    """

    def __init__(self, warmup_steps: int, max_steps: int, decay: str = "constant", min_ratio: float = 0.0) -> None:
        if decay not in ("constant", "cosine", "linear"):
            raise ValueError(f"lr decay must be 'constant', 'cosine' or 'linear', got {decay!r}")
        self.warmup_steps = int(warmup_steps)
        self.max_steps = int(max_steps)
        self.decay = decay
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return 1.0
        span = max(1, self.max_steps - self.warmup_steps)
        p = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        shape = 0.5 * (1.0 + math.cos(math.pi * p)) if self.decay == "cosine" else 1.0 - p
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def all_finite(params: list[nn.Parameter]) -> bool:
    """Whether every parameter is finite: one fused norm over all of them (cheap next to a
    training step), finite exactly when every element is."""
    with torch.no_grad():
        return bool(torch.isfinite(nn.utils.get_total_norm([p.detach() for p in params], foreach=True)))


def budget_horizon(step: int, seconds: float, since: tuple[int, float], budget: float, max_steps: int) -> int:
    """The step a time budget is projected to end at, for the lr decay's horizon: ``step``
    plus the seconds left of ``budget`` over the mean step time since ``since`` (a ``(step,
    seconds)`` point after start-up, e.g. after a run's first step, which ``step`` is past),
    at least ``step + 1`` and at most ``max_steps``."""
    step0, seconds0 = since
    per_step = (seconds - seconds0) / (step - step0)
    projected = step + int(max(0.0, budget - seconds) / max(per_step, 1e-12))
    return max(step + 1, min(max_steps, projected))


@attrs.define
class OptimizerGroup:
    """One optimizer of a model: its name, parameters, AdamW and lr schedule."""

    name: str
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR

    @property
    def schedule(self) -> WarmupDecay:
        """The lr multiplier of the scheduler."""
        fn = self.scheduler.lr_lambdas[0]
        assert isinstance(fn, WarmupDecay)
        return fn


def build_optimizers(model: nn.Module, cfg: TrainingConfig) -> list[OptimizerGroup]:
    """One :class:`OptimizerGroup` per optimizer the model asks for (see
    :mod:`latentkit.training.protocol`): decoupled weight decay on weights only (biases and
    norm scales, ``ndim < 2``, are not decayed: timm's habit), the fused AdamW kernel where
    every parameter allows it."""
    m: Any = model
    if uses_several_optimizers(m):
        names = list(m.optimizer_names)
        param_lists = [list(m.parameters_for(i)) for i in range(len(names))]
    else:
        getter = getattr(m, "trainable_parameters", None)
        params = list(getter()) if callable(getter) else list(model.parameters())
        names, param_lists = ["model"], [params]
    groups = []
    for i, (name, params) in enumerate(zip(names, param_lists)):
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError(f"optimizer {name!r} of {type(model).__name__} has no trainable parameters")
        options: dict[str, Any] = {"lr": cfg.lr, "betas": cfg.betas, "eps": cfg.eps,
                                   "weight_decay": cfg.weight_decay}
        if uses_several_optimizers(m) and callable(getattr(m, "optimizer_options", None)):
            extra = dict(m.optimizer_options(i))
            unknown = set(extra) - set(options)
            if unknown:
                raise ValueError(f"optimizer_options({i}) of {type(model).__name__}: unknown "
                                 f"keys {sorted(unknown)}; allowed {sorted(options)}")
            options.update(extra)
        wd = options.pop("weight_decay")
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        param_groups = [g for g in ({"params": decay, "weight_decay": wd},
                                    {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        # the fused kernel (CPU and CUDA): one pass over all tensors, several times faster
        # than the per-tensor loop that is torch's CPU default
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        opt = torch.optim.AdamW(param_groups, fused=fused, **options)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, WarmupDecay(cfg.warmup_steps, cfg.max_steps, cfg.lr_decay, cfg.min_lr_ratio)
        )
        groups.append(OptimizerGroup(name, params, opt, sched))
    return groups
