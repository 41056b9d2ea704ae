"""One optimizer step of the shared trainer: gradient accumulation over micro-batches, mixed
precision (bf16 autocast; fp16 with a grad scaler on CUDA), global-norm clipping, several
optimizers in turn, and what happens when a loss, a gradient or the weights stop being
finite (stop with the last good checkpoint named, or skip the step up to
``nonfinite_skip_limit``)."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentkit.errors import LatentkitError
from latentkit.training import checkpoint as ckpt_io
from latentkit.training.config import TrainingConfig
from latentkit.training.distributed import DistributedInfo
from latentkit.training.optim import OptimizerGroup, all_finite
from latentkit.training.protocol import split_loss_output

__all__ = ["NonFiniteLossError", "OptimizerSteps"]


class NonFiniteLossError(LatentkitError, FloatingPointError):
    """The loss (or the gradient norm) became NaN or infinite; training stopped before any
    checkpoint could be overwritten."""


class OptimizerSteps:
    """The optimizer step of :class:`~latentkit.training.Trainer` (a base class of it: the
    attributes below are the trainer's)."""

    config: TrainingConfig
    model: nn.Module
    loss_module: nn.Module
    groups: list[OptimizerGroup]
    scaler: torch.amp.GradScaler
    dist: DistributedInfo
    device: torch.device
    generator: torch.Generator
    checkpoint_dir: Path
    last_checkpoint: Path | None
    step: int
    skipped_steps: int
    _multi: bool
    _loss_params: set[str]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        p = self.config.precision
        if p == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _loss_kwargs(self, idx: int, previous: Any) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        accepts = self._loss_params
        if self._multi:
            kw["optimizer_idx"] = idx
        if "global_step" in accepts:
            kw["global_step"] = self.step
        if "generator" in accepts:
            kw["generator"] = self.generator
        if "return_terms" in accepts:
            kw["return_terms"] = True
        if idx > 0 and previous is not None and "output" in accepts:
            kw["output"] = previous
        return kw

    def _nonfinite(self, what: str, value: float, group: str) -> None:
        good = [p for _, p in reversed(ckpt_io.checkpoint_dirs(self.checkpoint_dir)) if ckpt_io.is_intact(p)]
        last = self.last_checkpoint or (good[0] if good else None)
        weights = what.startswith("weights")
        cure = ("" if weights else ", or nonfinite = 'skip' to skip such steps")
        raise NonFiniteLossError(
            f"non-finite {what} ({value}) at step {self.step + 1} (optimizer {group!r}). Training "
            f"stopped; no checkpoint was written after the last good one ({last or 'none yet'}). Try a "
            f"lower lr, a warm-up, grad_clip, bf16 instead of fp16{cure}.")

    def _optimizer_step(self, batches: Sequence[Any]) -> dict[str, float]:
        cfg = self.config
        accum = len(batches)
        metrics: dict[str, float] = {}
        previous: list[Any] = [None] * accum
        skipped = False
        for gi, group in enumerate(self.groups):
            self.model.zero_grad(set_to_none=True)
            losses: list[float] = []
            terms_sum: dict[str, float] = {}
            bad_loss: float | None = None
            for mi, batch in enumerate(batches):
                last = mi == accum - 1
                sync = (self.loss_module.no_sync()  # type: ignore[operator]
                        if self.dist.enabled and not last and hasattr(self.loss_module, "no_sync")
                        else contextlib.nullcontext())
                with sync:
                    with self._autocast():
                        _, out = self.loss_module(batch, self._loss_kwargs(gi, previous[mi]))
                    loss, terms, output = split_loss_output(out)
                    previous[mi] = output
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        bad_loss = value
                        if not self.dist.enabled:
                            if cfg.nonfinite == "stop":
                                self._nonfinite("loss", value, group.name)
                            continue  # skip: no backward for this micro-batch
                    if loss.requires_grad:
                        self.scaler.scale(loss / accum).backward()
                losses.append(value)
                for k, v in terms.items():
                    terms_sum[k] = terms_sum.get(k, 0.0) + v
            has_grad = any(p.grad is not None for p in group.params)
            grad_norm = 0.0
            if has_grad:
                self.scaler.unscale_(group.optimizer)
                max_norm = cfg.grad_clip if cfg.grad_clip else math.inf
                grad_norm = float(nn.utils.clip_grad_norm_(group.params, max_norm))
            bad = bad_loss is not None or (not math.isfinite(grad_norm) and not self.scaler.is_enabled())
            if bad:
                what, value = ("loss", bad_loss) if bad_loss is not None else ("gradient norm", grad_norm)
                if cfg.nonfinite == "stop":
                    self._nonfinite(what, float(value), group.name)  # type: ignore[arg-type]
                skipped = True
            elif has_grad:
                self.scaler.step(group.optimizer)
                if not all_finite(group.params):  # an update no skip can undo: never train on (or save) it
                    self._nonfinite("weights after the update", math.nan, group.name)
            lr = group.optimizer.param_groups[0]["lr"]
            with warnings.catch_warnings():
                # A skipped optimizer step (no gradients yet, or a non-finite one) still
                # advances the schedule: the lr follows the global step.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                group.scheduler.step()
            suffix = "" if gi == 0 else f"/{group.name}"
            prefix = "" if gi == 0 else f"{group.name}/"
            finite = [v for v in losses if math.isfinite(v)]
            metrics[f"loss{suffix}"] = sum(finite) / len(finite) if finite else float("nan")
            metrics[f"lr{suffix}"] = lr
            metrics[f"grad_norm{suffix}"] = grad_norm
            for k, v in terms_sum.items():
                metrics[f"{prefix}{k}"] = v / accum
        if self.scaler.is_enabled():
            self.scaler.update()
            metrics["grad_scale"] = float(self.scaler.get_scale())
        self.model.zero_grad(set_to_none=True)
        if skipped:
            self.skipped_steps += 1
            limit = cfg.nonfinite_skip_limit
            if self.skipped_steps >= 3 and self.skipped_steps > limit * (self.step + 1):
                raise NonFiniteLossError(
                    f"{self.skipped_steps} of {self.step + 1} steps were skipped for non-finite losses or "
                    f"gradients, more than nonfinite_skip_limit = {limit:g} of them: the run is not training. "
                    f"Try a lower lr, a warm-up, grad_clip or bf16; the last checkpoint is "
                    f"{self.last_checkpoint or 'none yet'}")
        metrics["skipped_steps"] = float(self.skipped_steps)
        return metrics

