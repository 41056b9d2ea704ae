"""The shared training loop: one :class:`Trainer` for anything with a ``loss(batch)``.

The model protocol (see ``docs/training.md``):

* ``model.loss(batch)`` returns the scalar loss as a tensor, or ``(loss, terms)``, or a dict
  with a ``"loss"`` entry, or an object with ``.loss`` (and optionally ``.logs`` with the
  terms and ``.output``). Keyword arguments the method declares are filled in by the
  trainer: ``global_step`` (optimizer steps done so far), ``generator`` (the trainer's seeded
  ``torch.Generator``, saved in checkpoints), ``return_terms=True``.
* Several optimizers (GAN-style autoencoder training): the model declares
  ``optimizer_names`` (one name per optimizer) and ``parameters_for(idx)``; each step the
  trainer calls ``loss(batch, optimizer_idx=idx, ...)`` for every ``idx`` in order, each on
  the same micro-batches, and steps that optimizer alone. When ``loss`` takes ``output``, the
  ``.output`` of optimizer ``idx - 1``'s result on the same micro-batch is passed on (so the
  discriminator reuses the reconstructions). Optional ``optimizer_options(idx)`` overrides
  ``lr``, ``betas``, ``eps`` or ``weight_decay`` for one optimizer.

Optimisation is AdamW (Loshchilov & Hutter 2019) with linear warm-up then constant, cosine
(Loshchilov & Hutter 2017, SGDR without restarts) or linear decay; gradient accumulation and
global-norm clipping; mixed precision (bf16 autocast, fp16 with a grad scaler on CUDA).
Logging, EMA and sample grids run as built-in plugins on the lifecycle hooks
(:mod:`latentkit.training.plugins`).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import random
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from latentkit.errors import LatentkitError
from latentkit.training import checkpoint as ckpt_io
from latentkit.training.config import ConfigError, TrainingConfig
from latentkit.training.distributed import (
    DistributedInfo,
    ResumableSampler,
    all_gather_objects,
    barrier,
    init_distributed,
)
from latentkit.training.ema import EMA

__all__ = ["NonFiniteLossError", "Trainer", "WarmupDecay", "split_loss_output"]


class NonFiniteLossError(LatentkitError, FloatingPointError):
    """The loss (or the gradient norm) became NaN or infinite; training stopped before any
    checkpoint could be overwritten."""


class WarmupDecay:
    """LR multiplier: linear warm-up over ``warmup_steps``, then ``constant``, ``cosine`` or
    ``linear`` decay to ``min_ratio`` at ``max_steps``.

    ``factor(s)`` is used by optimizer step ``s`` (0-based); warm-up starts at
    ``1 / warmup_steps`` so no step is wasted at lr 0. Cosine decay is
    ``min + (1 - min) * (1 + cos(pi * p)) / 2`` with ``p`` the fraction of the decay phase done
    (Loshchilov & Hutter 2017).
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


def split_loss_output(out: Any) -> tuple[torch.Tensor, dict[str, float], Any]:
    """``(loss, terms, output)`` from whatever ``model.loss`` returned (see the module doc)."""
    terms: Mapping[str, Any] = {}
    output = None
    if isinstance(out, torch.Tensor):
        loss = out
    elif isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], Mapping):
        loss, terms = out
    elif isinstance(out, Mapping):
        if "loss" not in out:
            raise TypeError(f"model.loss returned a dict without a 'loss' entry (keys {sorted(out)})")
        loss = out["loss"]
        terms = {k: v for k, v in out.items() if k != "loss"}
    elif hasattr(out, "loss"):
        loss = out.loss
        terms = getattr(out, "logs", None) or {}
        output = getattr(out, "output", None)
    else:
        raise TypeError(
            "model.loss must return a tensor, (loss, terms), a dict with 'loss', or an object "
            f"with a .loss attribute; got {type(out).__name__}"
        )
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"model.loss: the loss must be a tensor, got {type(loss).__name__}")
    if loss.ndim > 0:
        loss = loss.mean()
    floats = {}
    for k, v in terms.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            floats[k] = float(v.detach())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            floats[k] = float(v)
    return loss, floats, output


class _LossModule(nn.Module):
    """Routes ``forward`` to ``model.loss`` so DDP and ``torch.compile`` see the loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any, kwargs: dict[str, Any]) -> Any:
        model: Any = self.model
        out = model.loss(batch, **kwargs)
        # DDP with find_unused_parameters looks for the loss among the tensors of forward's
        # output (tensors, tuples, dicts), not inside objects such as a LossOutput; the loss
        # goes next to the raw result so that it finds it.
        loss = getattr(out, "loss", None)
        return (loss if isinstance(loss, torch.Tensor) else None), out


@attrs.define
class _Group:
    name: str
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR


def _batch_size_of(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        for v in batch.values():
            n = _batch_size_of(v)
            if n:
                return n
    if isinstance(batch, (list, tuple)) and batch:
        return len(batch) if not isinstance(batch[0], torch.Tensor) else _batch_size_of(batch[0])
    return 0


#: The channels-last memory format of each tensor rank that has one (images, video / volumes).
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _to_channels_last(module: nn.Module) -> nn.Module:
    """Store every 4-D parameter and buffer channels-last and every 5-D one channels-last-3d
    (``module.to(memory_format=...)`` refuses a model that mixes 2-D and 3-D convolutions)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.ndim in _CHANNELS_LAST:
            tensor.data = tensor.data.contiguous(memory_format=_CHANNELS_LAST[tensor.ndim])
    return module


def _to_device(batch: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(batch, torch.Tensor):
        out = batch.to(device, non_blocking=True)
        if channels_last and out.is_floating_point() and out.ndim in _CHANNELS_LAST:
            out = out.contiguous(memory_format=_CHANNELS_LAST[out.ndim])
        return out
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_to_device(v, device, channels_last) for v in batch]
    if isinstance(batch, tuple):
        return tuple(_to_device(v, device, channels_last) for v in batch)
    return batch


def _resolve_device(name: str, info: DistributedInfo) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank % max(1, torch.cuda.device_count()))
    return device


class Trainer:
    """Trains ``model`` on ``dataset`` as ``config`` says; see the module doc for the model
    protocol.

    Construction seeds python, numpy and torch with ``config.seed + rank``, joins the process
    group when launched by ``torchrun``, moves the model to the device and builds the
    optimizers; :meth:`fit` resumes from the newest intact checkpoint in
    ``<output_dir>/checkpoints`` (when ``config.resume``) and trains to ``config.max_steps``.

    Attributes read by plugins: ``model`` (the unwrapped model), ``config``, ``step``,
    ``output_dir``, ``device``, ``dist`` (rank and world size), ``is_main_process``, ``ema``
    (an :class:`EMA` or ``None``), ``dataset``, ``plugin_state`` (a dict plugins keep their
    per-run objects in), ``last_checkpoint``.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: torch.utils.data.Dataset[Any],
        config: TrainingConfig | None = None,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        plugin_manager: Any = None,
        **overrides: Any,
    ) -> None:
        config = config if config is not None else TrainingConfig()
        if overrides:
            config = attrs.evolve(config, **overrides)
        self.config = config
        self.dataset = dataset
        self.collate_fn = collate_fn or default_collate
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of the current epoch already consumed
        self.items_seen = 0
        self.skipped_steps = 0
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict[str, float] = {}
        self.plugin_state: dict[str, Any] = {}
        self._cleanups: list[Callable[[], None]] = []

        from latentkit.plugins import get_plugin_manager

        self.plugin_manager = plugin_manager or get_plugin_manager()
        self._ensure_builtin_plugins()

        device_hint = "cuda" if config.device == "auto" and torch.cuda.is_available() else config.device
        self.dist = init_distributed(torch.device(device_hint).type if device_hint != "auto" else "cpu")
        self.device = _resolve_device(config.device, self.dist)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ConfigError(
                f"[training] precision = 'fp16' needs a CUDA device (the device is "
                f"{self.device}); use 'bf16' or 'fp32'", section="training", key="precision")
        self._seed_everything()
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda" and config.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.channels_last = (
            config.channels_last if config.channels_last is not None else self.device.type == "cuda"
        )

        self.model = model.to(self.device)
        if self.channels_last:
            self.model = _to_channels_last(self.model)
        self.model.train()
        self.generator = torch.Generator(self.device).manual_seed(config.seed + self.dist.rank)
        self._multi = hasattr(model, "optimizer_names") and hasattr(model, "parameters_for")
        self.groups = self._build_optimizers()
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")
        self.ema: EMA | None = None
        if config.ema_decay is not None:
            self.ema = EMA(
                self.model, config.ema_decay, warmup=config.ema_warmup, power=config.ema_power,
                start_step=config.ema_start_step, update_every=config.ema_update_every,
            )
        self._loss_params = self._loss_parameters()
        self.loss_module: nn.Module = _LossModule(self.model)
        if self.dist.enabled:
            find_unused = config.find_unused_parameters
            if find_unused is None:
                find_unused = self._multi and len(self.groups) > 1
            self.loss_module = nn.parallel.DistributedDataParallel(
                self.loss_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused,
            )
        if config.compile:
            get_targets = getattr(model, "compile_targets", None)
            targets: list[nn.Module] | None = get_targets() if callable(get_targets) else None
            if targets:  # the networks alone (in place: same parameters, same state-dict keys)
                for module in targets:
                    module.compile()
            else:  # the whole loss
                self.loss_module = torch.compile(self.loss_module)  # type: ignore[assignment]
        self.sampler = ResumableSampler(dataset, info=self.dist, shuffle=config.shuffle, seed=config.seed)
        self._stream: Iterator[Any] | None = None

    # ------------------------------------------------------------------ properties

    @property
    def is_main_process(self) -> bool:
        """True on rank 0, which alone logs and writes checkpoints."""
        return self.dist.is_main

    @property
    def hook(self) -> Any:
        """The plugin manager's hook relay."""
        return self.plugin_manager.hook

    @property
    def items_per_step(self) -> int:
        """Items per optimizer step over all processes (batch x accumulation x world)."""
        return self.config.batch_size * self.config.grad_accum * self.dist.world_size

    def add_cleanup(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` when :meth:`fit` returns or raises (plugins close files here)."""
        self._cleanups.append(fn)

    # ------------------------------------------------------------------ setup

    def _ensure_builtin_plugins(self) -> None:
        # The lifecycle plugins are a built-in plugin module (plugins.BUILTIN_PLUGINS); a
        # manager created with its own block list may leave them out on purpose.
        self.plugin_manager.load()

    def _seed_everything(self) -> None:
        seed = self.config.seed + self.dist.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _loss_parameters(self) -> set[str]:
        try:
            params = inspect.signature(getattr(self.model, "loss")).parameters  # noqa: B009
        except (AttributeError, TypeError, ValueError) as exc:
            raise TypeError(
                f"{type(self.model).__name__} has no usable loss(batch) method: the trainer "
                "needs model.loss(batch) -> loss (see docs/training.md)"
            ) from exc
        return set(params)

    def _build_optimizers(self) -> list[_Group]:
        cfg = self.config
        model: Any = self.model
        if self._multi:
            names = list(model.optimizer_names)
            param_lists = [list(model.parameters_for(i)) for i in range(len(names))]
        else:
            getter = getattr(model, "trainable_parameters", None)
            params = list(getter()) if callable(getter) else list(model.parameters())
            names, param_lists = ["model"], [params]
        groups = []
        for i, (name, params) in enumerate(zip(names, param_lists)):
            params = [p for p in params if p.requires_grad]
            if not params:
                raise ValueError(f"optimizer {name!r} of {type(model).__name__} has no trainable parameters")
            options: dict[str, Any] = {"lr": cfg.lr, "betas": cfg.betas, "eps": cfg.eps,
                                       "weight_decay": cfg.weight_decay}
            if self._multi and callable(getattr(model, "optimizer_options", None)):
                extra = dict(model.optimizer_options(i))
                unknown = set(extra) - set(options)
                if unknown:
                    raise ValueError(f"optimizer_options({i}) of {type(model).__name__}: unknown "
                                     f"keys {sorted(unknown)}; allowed {sorted(options)}")
                options.update(extra)
            wd = options.pop("weight_decay")
            decay = [p for p in params if p.ndim >= 2]
            no_decay = [p for p in params if p.ndim < 2]  # biases and norm scales (timm's habit)
            param_groups = [g for g in ({"params": decay, "weight_decay": wd},
                                        {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
            # the fused kernel (CPU and CUDA): one pass over all tensors, several times
            # faster than the per-tensor loop that is torch's CPU default
            fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
            opt = torch.optim.AdamW(param_groups, fused=fused, **options)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, WarmupDecay(cfg.warmup_steps, cfg.max_steps, cfg.lr_decay, cfg.min_lr_ratio)
            )
            groups.append(_Group(name, params, opt, sched))
        return groups

    # ------------------------------------------------------------------ data

    def _batches(self) -> Iterator[Any]:
        """An endless stream of batches that records the data position as it goes."""
        cfg = self.config
        while True:
            self.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * cfg.batch_size)
            set_epoch = getattr(self.dataset, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(self.epoch)
            # A generator of its own, so creating the loader (which draws worker seeds) never
            # touches the global RNG: resuming mid-epoch leaves the RNG streams unchanged.
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.epoch)
            loader = DataLoader(
                self.dataset, batch_size=cfg.batch_size, sampler=self.sampler, drop_last=True,
                num_workers=cfg.num_workers, collate_fn=self.collate_fn, generator=gen,
                pin_memory=self.device.type == "cuda",
            )
            started_at = self.batch_in_epoch
            for batch in loader:
                self.batch_in_epoch += 1
                yield batch
            if started_at == 0 and self.batch_in_epoch == 0:
                raise ValueError(
                    f"the dataset yields no full batch: {len(self.dataset)} items "  # type: ignore[arg-type]
                    f"for {self.dist.world_size} process(es) at batch_size {cfg.batch_size}"
                )
            self.epoch += 1
            self.batch_in_epoch = 0

    # ------------------------------------------------------------------ state

    def _rng_state(self) -> dict[str, Any]:
        np_state: Any = np.random.get_state()
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "torch": torch.get_rng_state(),
            "generator": self.generator.get_state(),
        }
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        gens = {}
        for mod_name, module in self.model.named_modules():
            for attr, value in vars(module).items():
                if isinstance(value, torch.Generator):
                    gens[f"{mod_name}.{attr}" if mod_name else attr] = value.get_state()
        if gens:
            state["model_generators"] = gens
        return state

    def _set_rng_state(self, state: Mapping[str, Any]) -> None:
        random.setstate(_tuplify(state["python"]))
        n = state["numpy"]
        np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
        torch.set_rng_state(state["torch"])
        self.generator.set_state(state["generator"])
        if "cuda" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], self.device)
        for path, gen_state in state.get("model_generators", {}).items():
            mod_name, _, attr = path.rpartition(".")
            module = self.model.get_submodule(mod_name) if mod_name else self.model
            getattr(module, attr).set_state(gen_state)

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights needed to continue exactly (JSON + tensors)."""
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "items_seen": self.items_seen,
            "skipped_steps": self.skipped_steps,
            "world_size": self.dist.world_size,
            "batch_size": self.config.batch_size,
            "optimizers": {g.name: g.optimizer.state_dict() for g in self.groups},
            "schedulers": {g.name: g.scheduler.state_dict() for g in self.groups},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.extra_state() if self.ema is not None else None,
            "rng": all_gather_objects(self._rng_state()),
            "config": attrs.asdict(self.config),
        }

    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint of the current step atomically (rank 0; others wait) and fire
        ``latentkit_checkpoint_saved``. Returns its path (``None`` on other ranks)."""
        state = self.state_dict()  # collective (RNG of every rank): all ranks call it
        path = None
        if self.is_main_process:
            path = ckpt_io.save_checkpoint(
                self.checkpoint_dir, self.step,
                model_state=self.model.state_dict(),
                ema_state=self.ema.state_dict(self.model) if self.ema is not None else None,
                state=state,
                keep_last=self.config.keep_last,
            )
            self.last_checkpoint = path
        barrier()
        if path is not None:
            self.hook.latentkit_checkpoint_saved(trainer=self, step=self.step, path=str(path))
        return path

    def load_checkpoint(self, checkpoint: ckpt_io.LoadedCheckpoint | str | Path) -> None:
        """Restore weights, EMA, optimizers, schedulers, grad scaler, RNG streams and the
        data position from a checkpoint."""
        if not isinstance(checkpoint, ckpt_io.LoadedCheckpoint):
            checkpoint = ckpt_io.load_checkpoint(checkpoint)
        state = checkpoint.state
        self.model.load_state_dict(checkpoint.model)
        if self.ema is not None:
            if checkpoint.ema is None or state.get("ema") is None:
                raise ckpt_io.CheckpointError(f"{checkpoint.path} has no EMA weights, but EMA is on")
            self.ema.load_shadow(checkpoint.ema, state["ema"]["num_updates"])
        for g in self.groups:
            if g.name not in state["optimizers"]:
                raise ckpt_io.CheckpointError(
                    f"{checkpoint.path} has no state for optimizer {g.name!r} "
                    f"(it has {sorted(state['optimizers'])})")
            g.optimizer.load_state_dict(state["optimizers"][g.name])
            g.scheduler.load_state_dict(state["schedulers"][g.name])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.items_seen = int(state["items_seen"])
        self.skipped_steps = int(state["skipped_steps"])
        same_layout = (state["world_size"] == self.dist.world_size
                       and state["batch_size"] == self.config.batch_size)
        # The data position is exact with the same world size and batch size; otherwise the
        # run continues at the start of the next epoch.
        if same_layout:
            self.batch_in_epoch = int(state["batch_in_epoch"])
        else:
            self.epoch += 1
            self.batch_in_epoch = 0
        rngs = state["rng"]
        if same_layout and len(rngs) == self.dist.world_size:
            self._set_rng_state(rngs[self.dist.rank])
        self.last_checkpoint = checkpoint.path

    def resume(self) -> bool:
        """Load the newest intact checkpoint of ``output_dir`` (a corrupt newer one is
        reported and skipped). Returns whether one was found."""
        found = ckpt_io.latest_checkpoint(self.checkpoint_dir)
        if found is None:
            return False
        self.load_checkpoint(found)
        return True

    # ------------------------------------------------------------------ the loop

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
        last = self.last_checkpoint
        if last is None:
            existing = ckpt_io.checkpoint_dirs(self.checkpoint_dir)
            last = existing[-1][1] if existing else None
        last_str = str(last) if last is not None else "none yet"
        message = (
            f"non-finite {what} ({value}) at step {self.step + 1} (optimizer {group!r}). Training "
            f"stopped; no checkpoint was written after the last good one ({last_str}). Try a lower "
            "lr, a warm-up, grad_clip, bf16 instead of fp16, or nonfinite = 'skip' to skip such steps."
        )
        raise NonFiniteLossError(message)

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
        metrics["skipped_steps"] = float(self.skipped_steps)
        return metrics

    def train_step(self) -> dict[str, float]:
        """One optimizer step (``grad_accum`` micro-batches); returns its metrics."""
        if self._stream is None:
            self._stream = self._batches()
        t0 = time.perf_counter()
        batches = []
        items = 0
        for _ in range(self.config.grad_accum):
            batch = next(self._stream)
            items += _batch_size_of(batch)
            batches.append(_to_device(batch, self.device, self.channels_last))
        metrics = self._optimizer_step(batches)
        self.step += 1
        items *= self.dist.world_size
        self.items_seen += items
        dt = max(time.perf_counter() - t0, 1e-9)
        metrics.update(epoch=float(self.epoch), step_time=dt, items_per_s=items / dt)
        self.last_metrics = metrics
        return metrics

    def fit(self) -> dict[str, float]:
        """Train to ``config.max_steps`` (resuming first when ``config.resume``), firing the
        lifecycle hooks; returns the last step's metrics."""
        cfg = self.config
        if cfg.resume and self.step == 0:
            self.resume()
        self._stream = None
        try:
            self.hook.latentkit_train_start(trainer=self)
            while self.step < cfg.max_steps:
                metrics = self.train_step()
                self.hook.latentkit_train_step_end(trainer=self, step=self.step, metrics=metrics)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                    self.save_checkpoint()
            self.hook.latentkit_train_end(trainer=self, step=self.step)
        finally:
            while self._cleanups:
                fn = self._cleanups.pop()
                with contextlib.suppress(Exception):
                    fn()
        return self.last_metrics


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value
