"""The shared training loop: one :class:`Trainer` for anything with a ``loss(batch)``.

The model protocol is :mod:`latentkit.training.protocol`. Optimisation is AdamW with linear
warm-up then constant, cosine or linear decay (:mod:`latentkit.training.optim`); gradient
accumulation and global-norm clipping; mixed precision (bf16 autocast, fp16 with a grad scaler
on CUDA); DDP under ``torchrun``. The trainer itself owns what a run's correctness depends on:
the EMA of the weights (updated in every step), atomic checkpoints with exact resume, and
stopping (``max_steps``, the ``max_seconds`` time budget, or :meth:`Trainer.request_stop`).
Logging, progress bars and sample grids are lifecycle plugins
(:mod:`latentkit.training.plugins`); hooks see the trainer through
:class:`latentkit.hookspecs.TrainerView`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn
from torch.utils.data import default_collate

from latentkit.errors import CheckpointError, warn_once
from latentkit.plugins import PluginManager, get_plugin_manager
from latentkit.training import checkpoint as ckpt_io
from latentkit.training.config import TrainingConfig
from latentkit.training.data import BatchStream
from latentkit.training.device import batch_size_of, setup_process, to_channels_last, to_device
from latentkit.training.distributed import (
    agree_on_stopping,
    all_gather_objects,
    barrier,
    wrap_ddp,
)
from latentkit.training.ema import EMA
from latentkit.training.optim import (
    OptimizerGroup,
    WarmupDecay,
    budget_horizon,
    build_optimizers,
)
from latentkit.training.protocol import (
    LossModule,
    compile_loss,
    loss_parameters,
    split_loss_output,
    uses_several_optimizers,
)
from latentkit.training.rng import rng_state, seed_everything, set_rng_state
from latentkit.training.steps import NonFiniteLossError, OptimizerSteps

__all__ = ["NonFiniteLossError", "Trainer", "WarmupDecay", "split_loss_output"]

class Trainer(OptimizerSteps):
    """Trains ``model`` on ``dataset`` as ``config`` says (see the module doc).

    Construction seeds python, numpy and torch with ``config.seed + rank``, joins the process
    group when launched by ``torchrun``, moves the model to the device and builds the
    optimizers; :meth:`fit` resumes from the newest intact checkpoint in
    ``<output_dir>/checkpoints`` (when ``config.resume``) and trains until ``max_steps``, the
    ``max_seconds`` budget, or :meth:`request_stop`.

    ``plugin_manager``: whose lifecycle hooks fire (default: the process-wide one).
    ``plugins``: further hook implementations (objects or modules) for this trainer only,
    registered on that manager while :meth:`fit` runs. ``clock``: the time source of the time
    budget and the step times (seconds; a fake one makes budgets testable).

    What hooks may read and call is :class:`latentkit.hookspecs.TrainerView`.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: torch.utils.data.Dataset[Any],
        config: TrainingConfig | None = None,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        plugin_manager: PluginManager | None = None,
        plugins: Iterable[Any] = (),
        clock: Callable[[], float] = time.perf_counter,
        **overrides: Any,
    ) -> None:
        config = config if config is not None else TrainingConfig()
        if overrides:
            config = attrs.evolve(config, **overrides)
        self.config = config
        self.dataset = dataset
        self.collate_fn = collate_fn or default_collate
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / ckpt_io.RUN_CHECKPOINTS
        self.step = 0
        self.items_seen = 0
        self.skipped_steps = 0
        self.train_seconds = 0.0  # wall clock spent in fit(), summed over resumed runs
        self.stop_reason: str | None = None
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict[str, float] = {}
        self.plugin_state: dict[str, Any] = {}
        self.clock = clock
        self._plugins = tuple(plugins)
        self._cleanups: list[Callable[[], None]] = []
        self._stop_requested: str | None = None
        self._budget_start: tuple[int, float] | None = None  # (step, train_seconds) after this fit's first step

        self.plugin_manager = plugin_manager or get_plugin_manager()
        self.plugin_manager.load()

        self.dist, self.device = setup_process(config)
        seed_everything(config.seed + self.dist.rank)
        self.channels_last = (
            config.channels_last if config.channels_last is not None else self.device.type == "cuda"
        )

        self.model = model.to(self.device)
        if self.channels_last:
            self.model = to_channels_last(self.model)
        self.model.train()
        self.generator = torch.Generator(self.device).manual_seed(config.seed + self.dist.rank)
        self._multi = uses_several_optimizers(model)
        self.groups: list[OptimizerGroup] = build_optimizers(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda", enabled=config.precision == "fp16")
        self.ema: EMA | None = None
        if config.ema_decay is not None:
            self.ema = EMA(
                self.model, config.ema_decay, warmup=config.ema_warmup, power=config.ema_power,
                start_step=config.ema_start_step, update_every=config.ema_update_every,
            )
        self._loss_params = loss_parameters(self.model)
        loss_module: nn.Module = LossModule(self.model)
        if self.dist.enabled:
            find_unused = config.find_unused_parameters
            if find_unused is None:
                find_unused = self._multi and len(self.groups) > 1
            loss_module = wrap_ddp(loss_module, self.device, find_unused_parameters=find_unused)
        self.loss_module = compile_loss(self.model, loss_module) if config.compile else loss_module
        self.data = BatchStream(dataset, batch_size=config.batch_size, info=self.dist,
                                shuffle=config.shuffle, seed=config.seed, num_workers=config.num_workers,
                                collate_fn=self.collate_fn, pin_memory=self.device.type == "cuda")
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

    def request_stop(self, reason: str = "requested") -> None:
        """End :meth:`fit` after the current step, with a checkpoint of it (callable from a
        hook, another thread or a signal handler); ``stop_reason`` becomes ``reason``. Under
        DDP a request on one rank stops every rank at the same step."""
        self._stop_requested = reason

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights needed to continue exactly (JSON + tensors)."""
        return {
            "step": self.step,
            "epoch": self.data.epoch,
            "batch_in_epoch": self.data.batch_in_epoch,
            "items_seen": self.items_seen,
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.train_seconds,
            "world_size": self.dist.world_size,
            "batch_size": self.config.batch_size,
            "optimizers": {g.name: g.optimizer.state_dict() for g in self.groups},
            "schedulers": {g.name: g.scheduler.state_dict() for g in self.groups},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "ema": self.ema.extra_state() if self.ema is not None else None,
            "rng": all_gather_objects(rng_state(self.generator, self.model, self.device)),
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
            self.plugin_manager.call("latentkit_checkpoint_saved", trainer=self, step=self.step, path=str(path))
        return path

    def load_checkpoint(self, checkpoint: ckpt_io.LoadedCheckpoint | str | Path) -> None:
        """Restore weights, EMA, optimizers, schedulers, grad scaler, RNG streams, the time
        spent and the data position from a checkpoint."""
        if not isinstance(checkpoint, ckpt_io.LoadedCheckpoint):
            checkpoint = ckpt_io.load_checkpoint(checkpoint)
        state = checkpoint.state
        try:
            self.model.load_state_dict(checkpoint.model)
        except RuntimeError as exc:  # keys or shapes of another model
            first = str(exc).split("\n\t", 2)[:2]
            raise CheckpointError(f"{checkpoint.path} does not fit this {type(self.model).__name__}: "
                                  f"{' '.join(line.strip() for line in first)}") from None
        if self.ema is not None:
            if checkpoint.ema is None or state.get("ema") is None:
                raise CheckpointError(f"{checkpoint.path} has no EMA weights, but EMA is on")
            self.ema.load_shadow(checkpoint.ema, state["ema"]["num_updates"])
        for g in self.groups:
            if g.name not in state["optimizers"]:
                raise CheckpointError(
                    f"{checkpoint.path} has no state for optimizer {g.name!r} "
                    f"(it has {sorted(state['optimizers'])})")
            g.optimizer.load_state_dict(state["optimizers"][g.name])
            g.scheduler.load_state_dict(state["schedulers"][g.name])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.data.epoch = int(state["epoch"])
        self.items_seen = int(state["items_seen"])
        self.skipped_steps = int(state["skipped_steps"])
        self.train_seconds = float(state.get("train_seconds", 0.0))  # absent before the time budget
        same_layout = (state["world_size"] == self.dist.world_size
                       and state["batch_size"] == self.config.batch_size)
        # The data position is exact with the same world size and batch size; otherwise the
        # run continues at the start of the next epoch.
        if same_layout:
            self.data.batch_in_epoch = int(state["batch_in_epoch"])
        else:
            self.data.epoch += 1
            self.data.batch_in_epoch = 0
        rngs = state["rng"]
        if same_layout and len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank], self.generator, self.model, self.device)
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

    def _plan_decay(self) -> None:
        """With a time budget, move the lr decay's end to where the budget is projected to
        end (:func:`~latentkit.training.optim.budget_horizon`); the multiplier of the coming
        step is computed with the new horizon."""
        if self.config.max_seconds is None or self._budget_start is None or self.step <= self._budget_start[0]:
            return  # no budget, or no step time measured yet in this fit()
        horizon = budget_horizon(self.step, self.train_seconds, self._budget_start,
                                 self.config.max_seconds, self.config.max_steps)
        for group in self.groups:
            group.schedule.max_steps = horizon

    def train_step(self) -> dict[str, float]:
        """One optimizer step (``grad_accum`` micro-batches) and the EMA update; returns its
        metrics."""
        if self._stream is None:
            self._stream = iter(self.data)
        t0 = self.clock()
        batches = []
        items = 0
        for _ in range(self.config.grad_accum):
            batch = next(self._stream)
            items += batch_size_of(batch)
            batches.append(to_device(batch, self.device, self.channels_last))
        self._plan_decay()
        metrics = self._optimizer_step(batches)
        self.step += 1
        if self.ema is not None:  # here, not in a plugin: EMA must not depend on what is blocked
            self.ema.update(self.model, self.step)
        items *= self.dist.world_size
        self.items_seen += items
        dt = max(self.clock() - t0, 1e-9)
        metrics.update(epoch=float(self.data.epoch), step_time=dt, items_per_s=items / dt)
        self.last_metrics = metrics
        return metrics

    def _agree(self) -> bool:
        """Under DDP, make every rank go by rank 0's training time (the same lr plan, the same
        last step) and by a stop requested on any rank; returns whether a stop was requested."""
        requested = self._stop_requested is not None
        if self.dist.enabled:
            self.train_seconds, requested = agree_on_stopping(self.train_seconds, requested, self.device)
            if requested and self._stop_requested is None:
                self._stop_requested = "requested"  # on another rank
        return requested

    def _why_stop(self) -> str | None:
        """``"requested"`` (or the reason given to :meth:`request_stop`), ``"max_seconds"``,
        ``"max_steps"`` or ``None`` to go on."""
        if self._stop_requested is not None:
            return self._stop_requested
        if self.config.max_seconds is not None and self.train_seconds >= self.config.max_seconds:
            return "max_seconds"
        if self.step >= self.config.max_steps:
            return "max_steps"
        return None

    def _step_end_hooks(self, metrics: dict[str, float]) -> None:
        """``latentkit_train_step_end``; when a plugin's hook raises, the step it ended is
        saved first (the work is never lost to a plugin), then the error names the plugin."""
        try:
            self.plugin_manager.call("latentkit_train_step_end", trainer=self, step=self.step, metrics=metrics)
        except Exception:
            if self.config.checkpoint_every > 0 and self.last_checkpoint != self.checkpoint_dir / f"step_{self.step:08d}":
                with contextlib.suppress(Exception):
                    self.save_checkpoint()
            raise

    def _checkpoint_due(self, stopping: bool) -> bool:
        every = self.config.checkpoint_every
        return every > 0 and (stopping or self.step % every == 0)

    def fit(self) -> dict[str, float]:
        """Train (resuming first when ``config.resume``) until ``max_steps``, the
        ``max_seconds`` budget or :meth:`request_stop`, firing the lifecycle hooks; the step
        it stops at is checkpointed (unless ``checkpoint_every = 0``). Returns the last
        step's metrics; ``stop_reason`` says why it ended."""
        if self.config.resume and self.step == 0:
            self.resume()
        self._stream = None
        self._stop_requested = None
        self._budget_start = None
        try:
            with self.plugin_manager.registered(*self._plugins):
                self.plugin_manager.call("latentkit_train_start", trainer=self)
                self.stop_reason = self._why_stop()  # a finished run resumed: nothing to do
                last = self.clock()
                while self.stop_reason is None:
                    metrics = self.train_step()
                    now = self.clock()
                    self.train_seconds += now - last
                    last = now
                    if self.config.max_seconds is not None:
                        self._agree()  # rank 0's clock before the budget is judged
                    if self._budget_start is None:
                        self._budget_start = (self.step, self.train_seconds)
                    self.stop_reason = self._why_stop()  # hooks of the last step see why
                    self._step_end_hooks(metrics)
                    if self.stop_reason is None and self._agree():  # a hook asked
                        self.stop_reason = self._stop_requested or "requested"
                    if self._checkpoint_due(self.stop_reason is not None):
                        self.save_checkpoint()  # its time (and the hooks') counts in the next step's
                self.plugin_manager.call("latentkit_train_end", trainer=self, step=self.step)
            if self.skipped_steps:
                warn_once(f"{self.skipped_steps} of {self.step} steps were skipped for non-finite losses or "
                          "gradients (nonfinite = 'skip')")
        finally:
            while self._cleanups:
                fn = self._cleanups.pop()
                with contextlib.suppress(Exception):
                    fn()
        return self.last_metrics
