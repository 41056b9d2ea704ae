"""Exponential moving average of model weights, with warm-up.

``ema <- d_t * ema + (1 - d_t) * theta`` after each update t (Polyak & Juditsky 1992; used
for diffusion models since Ho et al. 2020 and Song & Ermon 2020). With warm-up the decay
follows ``d_t = 1 - (1 + t / inv_gamma) ** -power`` capped at ``decay`` (the schedule of
Karras et al.'s / diffusers' ``EMAModel``), so early averages are not dominated by the random
initialisation; the first update copies the weights (``d_1 = 0``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """Shadow copy (float32) of a model's trainable parameters.

    Only parameters with ``requires_grad`` are averaged (a frozen autoencoder inside a latent
    diffusion model is not copied); :meth:`state_dict` returns the model's full
    ``state_dict`` with the averaged parameters substituted, so it loads like the model's own.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.9999,  # the largest decay, reached after warm-up
        *,
        warmup: bool = True,  # use the 1 - (1 + t/inv_gamma)^-power warm-up
        power: float = 2.0 / 3.0,  # warm-up exponent (2/3 for short runs, 3/4 for long ones)
        inv_gamma: float = 1.0,
        min_decay: float = 0.0,
        start_step: int = 0,  # global steps before the first update (weights copied until then)
        update_every: int = 1,  # update every N global steps
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        if update_every < 1:
            raise ValueError(f"EMA update_every must be >= 1, got {update_every}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.power = float(power)
        self.inv_gamma = float(inv_gamma)
        self.min_decay = float(min_decay)
        self.start_step = int(start_step)
        self.update_every = int(update_every)
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().to(torch.float32).clone()
            for name, p in model.named_parameters()
            if p.requires_grad
        }

    def decay_at(self, update: int) -> float:
        """Decay used by the ``update``-th update (1-based): 0 for the first one, so the
        average starts at the weights."""
        t = update - 1
        if t <= 0:
            return 0.0
        d = 1.0 - (1.0 + t / self.inv_gamma) ** -self.power if self.warmup else self.decay
        return max(self.min_decay, min(d, self.decay))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> bool:
        """Fold the current weights in (when ``step`` is due; ``None`` = always).

        Before ``start_step`` the shadow tracks the weights exactly. Returns whether an
        averaging update happened.
        """
        params = dict(model.named_parameters())
        if step is not None and step <= self.start_step:
            for name, s in self.shadow.items():
                s.copy_(params[name].detach())
            return False
        if step is not None and (step - self.start_step) % self.update_every:
            return False
        self.num_updates += 1
        d = self.decay_at(self.num_updates)
        for name, s in self.shadow.items():
            p = params[name].detach()
            s.lerp_(p.to(s.device, torch.float32), 1.0 - d)  # s + (1-d)(p - s) = d s + (1-d) p
        return True

    def to(self, device: torch.device | str) -> EMA:
        """Move the shadow weights (kept in float32) to ``device``."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``model.state_dict()`` with the averaged parameters in the model's dtypes."""
        out = {}
        for k, v in model.state_dict().items():
            s = self.shadow.get(k)
            out[k] = s.to(v.dtype) if s is not None else v
        return out

    def load_shadow(self, weights: Mapping[str, torch.Tensor], num_updates: int) -> None:
        """Restore the shadow from saved weights (as written by :meth:`state_dict`)."""
        missing = [k for k in self.shadow if k not in weights]
        if missing:
            raise KeyError(f"EMA weights lack parameters {missing[:5]}{'...' if len(missing) > 5 else ''}")
        for k, s in self.shadow.items():
            s.copy_(weights[k].to(s.device, torch.float32))
        self.num_updates = int(num_updates)

    def extra_state(self) -> dict[str, Any]:
        """JSON-able settings and counters (the weights are saved separately)."""
        return {
            "num_updates": self.num_updates,
            "decay": self.decay,
            "warmup": self.warmup,
            "power": self.power,
            "inv_gamma": self.inv_gamma,
        }

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily load the averaged weights into ``model`` (for sampling/evaluation)."""
        params = dict(model.named_parameters())
        backup = {k: params[k].detach().clone() for k in self.shadow}
        with torch.no_grad():
            for k, s in self.shadow.items():
                params[k].copy_(s.to(params[k].dtype))
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, b in backup.items():
                    params[k].copy_(b)
