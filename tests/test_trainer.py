"""The shared trainer: exact resume, gradient accumulation, EMA, LR schedule, non-finite
losses, several optimizers, mixed precision, hooks, logs and sample grids."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import latentkit
from latentkit.plugins import PluginManager
from latentkit.specs import DataSpec
from latentkit.training import (
    EMA,
    NonFiniteLossError,
    Trainer,
    TrainingConfig,
    WarmupDecay,
    latest_checkpoint,
)
from latentkit.training.checkpoint import checkpoint_dirs


class TinyData(torch.utils.data.Dataset):
    """40 regression items; the trainer shuffles them (a fresh permutation per epoch)."""

    def __init__(self, n: int = 40) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x.sum(1, keepdim=True).sin()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"x": self.x[i], "y": self.y[i], "caption": f"item {i}"}


class TinyModel(nn.Module):
    """Uses every RNG stream the trainer must restore: dropout (global torch RNG), the
    trainer's generator, numpy and python random."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))

    def loss(self, batch: dict[str, Any], *, generator: torch.Generator | None = None) -> Any:
        import random

        import numpy as np

        noise = torch.randn(batch["x"].shape, generator=generator) * 0.01
        jitter = 1.0 + 1e-3 * (random.random() + float(np.random.rand()))
        mse = ((self.net(batch["x"] + noise) - batch["y"]) ** 2).mean() * jitter
        return mse, {"mse": mse}


def _pm() -> PluginManager:
    return PluginManager(autoload=False)


def _cfg(tmp_path: Path, **kw: Any) -> TrainingConfig:
    base: dict[str, Any] = dict(output_dir=str(tmp_path), max_steps=12, batch_size=6, grad_accum=2,
                                lr=1e-2, warmup_steps=3, lr_decay="cosine", weight_decay=0.01,
                                ema_decay=0.9, checkpoint_every=4, keep_last=2, progress=False,
                                log_every=1)
    base.update(kw)
    return TrainingConfig(**base)


class _Crash(Exception):
    pass


class CrashAfterCheckpoint:
    """A plugin that simulates a crash right after checkpoint ``at`` was written."""

    def __init__(self, at: int) -> None:
        self.at = at

    @latentkit.hookimpl
    def latentkit_checkpoint_saved(self, trainer: Any, step: int, path: str) -> None:
        if step == self.at:
            raise _Crash(step)


def _run(tmp_path: Path, crash_at: int | None = None, model_seed: int = 0, **kw: Any) -> Trainer:
    torch.manual_seed(model_seed)
    pm = _pm()
    if crash_at is not None:
        pm.register(CrashAfterCheckpoint(crash_at), "crash")
    trainer = Trainer(TinyModel(), TinyData(), _cfg(tmp_path, **kw), plugin_manager=pm)
    trainer.fit()
    return trainer


def _weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_mid_epoch_is_bit_identical(tmp_path: Path) -> None:
    full = _run(tmp_path / "full")
    # 40 items, batch 6 -> 6 batches per epoch; step 6 ends mid-epoch (12 batches = 2 epochs,
    # step 4 = 8 batches = epoch 1, batch 2). Crash after the checkpoint of step 4.
    with pytest.raises(_Crash):
        _run(tmp_path / "split", crash_at=4)
    assert [s for s, _ in checkpoint_dirs(tmp_path / "split" / "checkpoints")] == [4]
    state = latest_checkpoint(tmp_path / "split" / "checkpoints").state  # type: ignore[union-attr]
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 2)
    # A different initialisation proves the weights come from the checkpoint.
    resumed = _run(tmp_path / "split", model_seed=123)
    assert resumed.step == 12
    assert _weights_equal(full.model.state_dict(), resumed.model.state_dict())
    assert full.ema is not None and resumed.ema is not None
    assert _weights_equal(full.ema.state_dict(full.model), resumed.ema.state_dict(resumed.model))
    # One CSV row per step, no duplicates from the interrupted run.
    with open(tmp_path / "split" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, 13))
    # keep_last=2
    assert [s for s, _ in checkpoint_dirs(tmp_path / "split" / "checkpoints")] == [8, 12]


def test_uninterrupted_runs_are_deterministic_and_seed_matters(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", max_steps=3)
    b = _run(tmp_path / "b", max_steps=3)
    c = _run(tmp_path / "c", max_steps=3, seed=1)
    assert _weights_equal(a.model.state_dict(), b.model.state_dict())
    assert not _weights_equal(a.model.state_dict(), c.model.state_dict())


def test_grad_accumulation_equals_one_big_batch(tmp_path: Path) -> None:
    # No dropout, no noise dependence on the batch split: 2 x B accumulated == 1 x 2B.
    class Det(TinyModel):
        def loss(self, batch: dict[str, Any], **_: Any) -> torch.Tensor:
            return ((self.net(batch["x"]) - batch["y"]) ** 2).mean()

    results = []
    for bs, accum in ((8, 2), (16, 1)):
        torch.manual_seed(0)
        trainer = Trainer(Det(dropout=0.0), TinyData(32), plugin_manager=_pm(), output_dir=str(tmp_path / f"{bs}"),
                          max_steps=2, batch_size=bs, grad_accum=accum, lr=1e-2, shuffle=False,
                          progress=False, grad_clip=0.5, checkpoint_every=100)
        trainer.fit()
        results.append(trainer.model.state_dict())
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-5, atol=1e-6)


def test_ema_matches_closed_form() -> None:
    model = nn.Linear(3, 1, bias=False)
    trajectory = [torch.randn(1, 3) for _ in range(6)]
    ema = EMA(model, decay=0.8, warmup=False)
    for w in trajectory:
        with torch.no_grad():
            model.weight.copy_(w)
        ema.update(model)
    # first update copies; then ema_n = d^(n-1) p_1 + (1-d) sum_{k=2}^{n} d^(n-k) p_k
    n, d = len(trajectory), 0.8
    expected = d ** (n - 1) * trajectory[0] + sum((1 - d) * d ** (n - k) * trajectory[k - 1] for k in range(2, n + 1))
    torch.testing.assert_close(ema.shadow["weight"], expected)
    # warm-up: d_t = min(decay, 1 - (1 + t)^(-2/3)), t = update - 1
    warm = EMA(model, decay=0.99, warmup=True)
    assert warm.decay_at(1) == 0.0
    assert math.isclose(warm.decay_at(2), 1 - 2 ** (-2 / 3))
    assert warm.decay_at(10**9) == 0.99


def test_ema_applied_restores_weights() -> None:
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.5, warmup=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # first update: copy
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    current = model.weight.detach().clone()
    with ema.applied(model):
        torch.testing.assert_close(model.weight, before["weight"] + 1.5)
    assert torch.equal(model.weight, current)


@pytest.mark.parametrize("decay", ["constant", "linear", "cosine"])
def test_lr_schedule_closed_form(decay: str) -> None:
    f = WarmupDecay(warmup_steps=4, max_steps=14, decay=decay, min_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    p = 0.5  # step 9 is halfway through the decay phase (steps 4..14)
    expected = {"constant": 1.0, "linear": 0.1 + 0.9 * (1 - p), "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))}
    assert math.isclose(f(9), expected[decay])
    assert math.isclose(f(14), 1.0 if decay == "constant" else 0.1)


def test_trainer_applies_lr_schedule(tmp_path: Path) -> None:
    trainer = _run(tmp_path, max_steps=5, ema_decay=None)
    with open(tmp_path / "metrics.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    sched = WarmupDecay(3, 5, "cosine")
    assert lrs == pytest.approx([1e-2 * sched(s) for s in range(5)])
    assert trainer.items_seen == 5 * 12


class NaNAt(TinyModel):
    def __init__(self, at: int) -> None:
        super().__init__(dropout=0.0)
        self.at = at

    def loss(self, batch: dict[str, Any], *, global_step: int = 0) -> torch.Tensor:
        loss = ((self.net(batch["x"]) - batch["y"]) ** 2).mean()
        return loss * float("nan") if global_step == self.at else loss


def test_nonfinite_loss_stops_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = Trainer(NaNAt(5), TinyData(), _cfg(tmp_path, ema_decay=None), plugin_manager=_pm())
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 6.*step_00000004"):
        trainer.fit()
    dirs = checkpoint_dirs(tmp_path / "checkpoints")
    assert [s for s, _ in dirs] == [4]
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt is not None and all(torch.isfinite(v).all() for v in ckpt.model.values())


def test_nonfinite_loss_skip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = Trainer(NaNAt(5), TinyData(), _cfg(tmp_path, ema_decay=None, nonfinite="skip"), plugin_manager=_pm())
    before = None

    class Spy:
        @latentkit.hookimpl
        def latentkit_train_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
            nonlocal before
            if step == 5:
                before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            if step == 6:
                assert _weights_equal(before, trainer.model.state_dict())  # type: ignore[arg-type]
                assert metrics["skipped_steps"] == 1.0

    trainer.plugin_manager.register(Spy(), "spy")
    trainer.fit()
    assert trainer.step == 12 and trainer.skipped_steps == 1
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())


class TwoOptimizers(nn.Module):
    """The GAN-style protocol of ``AutoencoderTrainingLoss``: optimizer_names, parameters_for,
    loss(batch, optimizer_idx, global_step, output=...)."""

    optimizer_names = ("generator", "critic")

    def __init__(self) -> None:
        super().__init__()
        self.gen = nn.Linear(4, 1)
        self.critic = nn.Linear(1, 1)
        self.outputs_seen: list[bool] = []

    def parameters_for(self, idx: int) -> list[nn.Parameter]:
        return list((self.gen, self.critic)[idx].parameters())

    def optimizer_options(self, idx: int) -> dict[str, Any]:
        return {"lr": 0.5e-2} if idx == 1 else {}

    def loss(self, batch: dict[str, Any], optimizer_idx: int = 0, global_step: int = 0, *,
             output: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if optimizer_idx == 0:
            pred = self.gen(batch["x"])
            return {"loss": ((pred - batch["y"]) ** 2).mean() + self.critic(pred).mean() * 0.1, "pred": pred}
        self.outputs_seen.append(output is not None)
        return {"loss": self.critic(batch["y"]).pow(2).mean(), "c": torch.tensor(1.0)}


def test_several_optimizers_each_step_only_their_parameters(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoOptimizers()
    critic_before = model.critic.weight.detach().clone()
    trainer = Trainer(model, TinyData(), _cfg(tmp_path, max_steps=2, ema_decay=None, warmup_steps=0,
                                              lr_decay="constant", grad_accum=1), plugin_manager=_pm())
    metrics = trainer.fit()
    assert {"loss", "loss/critic", "lr/critic", "grad_norm/critic", "critic/c"} <= set(metrics)
    assert metrics["lr"] == 1e-2 and metrics["lr/critic"] == 0.5e-2
    # The critic only moves by its own loss (d/dw of critic(y)^2), never by the generator's.
    assert not torch.equal(model.critic.weight, critic_before)
    assert [g.name for g in trainer.groups] == ["generator", "critic"]
    assert {id(p) for p in trainer.groups[1].params} == {id(p) for p in model.critic.parameters()}


def test_bf16_autocast_on_cpu_trains(tmp_path: Path) -> None:
    trainer = _run(tmp_path, max_steps=2, precision="bf16", ema_decay=None)
    assert math.isfinite(trainer.last_metrics["loss"])


def test_fp16_on_cpu_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(latentkit.training.ConfigError, match=r"fp16.*CUDA"):
        Trainer(TinyModel(), TinyData(), _cfg(tmp_path, precision="fp16", device="cpu"), plugin_manager=_pm())


def test_hooks_fire_in_order_with_metrics(tmp_path: Path) -> None:
    events: list[tuple[str, int]] = []

    class Recorder:
        @latentkit.hookimpl
        def latentkit_train_start(self, trainer: Any) -> None:
            events.append(("start", trainer.step))

        @latentkit.hookimpl
        def latentkit_train_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
            assert {"loss", "lr", "grad_norm", "mse", "items_per_s"} <= set(metrics)
            events.append(("step", step))

        @latentkit.hookimpl
        def latentkit_checkpoint_saved(self, trainer: Any, step: int, path: str) -> None:
            assert Path(path).is_dir()
            events.append(("ckpt", step))

        @latentkit.hookimpl
        def latentkit_train_end(self, trainer: Any, step: int) -> None:
            events.append(("end", step))

    pm = _pm()
    pm.register(Recorder(), "recorder")
    torch.manual_seed(0)
    Trainer(TinyModel(), TinyData(), _cfg(tmp_path, max_steps=4, checkpoint_every=2), plugin_manager=pm).fit()
    assert events == [("start", 0), ("step", 1), ("step", 2), ("ckpt", 2), ("step", 3), ("step", 4),
                      ("ckpt", 4), ("end", 4)]


class Sampler(TinyModel):
    """Has ``sample(batch, steps, seed)`` like LatentDiffusion."""

    def sample(self, batch: Any, *, steps: int = 1, seed: int | None = None) -> torch.Tensor:
        n = len(batch["caption"]) if isinstance(batch, dict) else batch
        g = torch.Generator().manual_seed(seed or 0)
        return torch.rand(n, 3, 8, 8, generator=g) * 2 - 1


def test_sample_grid_written_with_captions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = Trainer(Sampler(), TinyData(), _cfg(tmp_path, max_steps=2, sample_every=2,
                                                  sample_prompts=["a red circle", "a blue square"]),
                      plugin_manager=_pm())
    trainer.fit()
    from PIL import Image

    grid = Image.open(tmp_path / "samples" / "step_00000002.png")
    # 2 tiles upscaled to 64 px, side by side, caption band below: wider than tall, > 64 px.
    assert grid.size[0] > 2 * 64 and grid.size[1] > 64


class ClipSampler(Sampler):
    """Samples (N, 3, T, H, W) clips, out of range on purpose."""

    def sample(self, batch: Any, *, steps: int = 1, seed: int | None = None) -> torch.Tensor:
        n = len(batch["caption"]) if isinstance(batch, dict) else batch
        return torch.rand(n, 3, 2, 8, 8, generator=torch.Generator().manual_seed(seed or 0)) * 4 - 2


@pytest.mark.parametrize("writer_fails", [False, True])
def test_training_samples_go_through_the_layout_owners_writer(tmp_path: Path, writer_fails: bool) -> None:
    """sample_every hands CTHW samples (clamped to the value range) to the plugin answering
    latentkit_write_samples for that layout; a writer that raises costs a warning and the
    built-in grid, never the run."""
    calls: list[dict[str, Any]] = []

    class ClipWriter:
        @latentkit.hookimpl
        def latentkit_write_samples(self, samples: torch.Tensor, path: str, layout: str, captions: Any,
                                    value_range: tuple[float, float]) -> list[Path] | None:
            if layout != "CTHW":
                return None
            calls.append({"shape": tuple(samples.shape), "path": path, "captions": captions,
                          "min": float(samples.min()), "max": float(samples.max())})
            if writer_fails:
                raise latentkit.LatentkitError("this writer does not write .png")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(b"clips")
            return [Path(path)]

    pm = _pm()
    pm.register(ClipWriter(), "clip-writer")
    data = TinyData()
    data.data_spec = DataSpec(channels=3, layout="CTHW")  # type: ignore[attr-defined]  # a video data set
    trainer = Trainer(ClipSampler(), data, _cfg(tmp_path, max_steps=2, sample_every=2,
                                                sample_prompts=["a", "b"]), plugin_manager=pm)
    if writer_fails:
        with pytest.warns(UserWarning, match="sample writer for layout CTHW failed"):
            trainer.fit()
    else:
        trainer.fit()
    out = tmp_path / "samples" / "step_00000002.png"
    assert len(calls) == 1 and calls[0]["shape"] == (2, 3, 2, 8, 8) and calls[0]["path"] == str(out)
    assert calls[0]["captions"] == ["a", "b"] and calls[0]["min"] >= -1.0 and calls[0]["max"] <= 1.0
    if writer_fails:
        assert out.read_bytes()[:4] == b"\x89PNG"  # the built-in grid took over
    else:
        assert out.read_bytes() == b"clips"


def test_image_grid_draws_captions() -> None:
    from latentkit.samples import make_image_grid

    images = torch.zeros(2, 3, 8, 8)
    plain = make_image_grid(images)
    captioned = make_image_grid(images, captions=["a red circle at the top left", "x"])
    assert captioned.size[1] > plain.size[1]
    import numpy as np

    band = np.asarray(captioned)[plain.size[1]:]
    assert (band < 128).any()  # dark caption text on the white band


DDP_SCRIPT = '''
import sys, torch
from torch import nn
from latentkit.plugins import PluginManager
from latentkit.training import Trainer, TrainingConfig

class Data(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 4, generator=g)
        self.y = self.x.sum(1, keepdim=True).sin()
    def __len__(self):
        return 32
    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    def loss(self, batch):
        return ((self.net(batch["x"]) - batch["y"]) ** 2).mean()

torch.manual_seed(0)
cfg = TrainingConfig(output_dir=sys.argv[1], max_steps=4, batch_size=int(sys.argv[2]), lr=1e-2,
                     shuffle=False, progress=False, checkpoint_every=2, ema_decay=0.9)
Trainer(Model(), Data(), cfg, plugin_manager=PluginManager(autoload=False)).fit()
'''


def test_torchrun_two_processes_match_one_process_with_twice_the_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DDP on CPU (gloo): 2 processes x batch B reach the weights of 1 process x batch 2B."""
    import subprocess
    import sys

    from latentkit.training import load_weights

    script = tmp_path / "train.py"
    script.write_text(DDP_SCRIPT)
    monkeypatch.setattr(sys, "argv", ["train.py", str(tmp_path / "one"), "8"])
    exec(compile(DDP_SCRIPT, str(script), "exec"), {"__name__": "__main__"})  # one process, here
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    str(script), str(tmp_path / "two"), "4"], check=True, timeout=300,
                   capture_output=True)
    for ema in (False, True):
        one = load_weights(tmp_path / "one" / "checkpoints", ema=ema)
        two = load_weights(tmp_path / "two" / "checkpoints", ema=ema)
        for k in one:
            torch.testing.assert_close(one[k], two[k], rtol=1e-5, atol=1e-6)
    # rank 0 alone wrote checkpoints and metrics
    assert [s for s, _ in checkpoint_dirs(tmp_path / "two" / "checkpoints")] == [2, 4]
    with open(tmp_path / "two" / "metrics.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [4]  # log_every=10: the last step


# ----------------------------------------------------------------------- CUDA (benchmarks/gpu.py)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class ConvModel(nn.Module):
    """4-D inputs and conv weights: exercises channels-last and autocast on convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(), nn.Conv2d(16, 3, 3, padding=1))

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        x = batch["image"]
        return (self.net(x) - x.flip(-1)).pow(2).mean()


class ImageData(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.x = torch.randn(32, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.x[i]}


class MixedRankModel(nn.Module):
    """A 2-D and a 3-D convolution (as in video UNets: spatial layers, then temporal ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(3, 8, 3, padding=1)
        self.temporal = nn.Conv3d(8, 3, 3, padding=1)

    def loss(self, batch: dict[str, Any]) -> torch.Tensor:
        x = batch["image"]  # (B, 3, H, W): a 2-frame "video" of the image and its mirror
        h = self.spatial(x)
        video = torch.stack([h, h.flip(-1)], dim=2)
        return (self.temporal(video) - x[:, :, None]).pow(2).mean()


def test_channels_last_handles_3d_convolutions(tmp_path: Path) -> None:
    """channels-last (the CUDA default) stores 4-D weights channels-last and 5-D ones
    channels-last-3d, instead of refusing a model that has both; the losses equal a
    contiguous run's."""
    losses = {}
    for flag in (True, False):
        torch.manual_seed(0)
        model = MixedRankModel()
        trainer = Trainer(model, ImageData(), TrainingConfig(output_dir=str(tmp_path / str(flag)), max_steps=3,
                                                              batch_size=8, progress=False, shuffle=False,
                                                              channels_last=flag), plugin_manager=_pm())
        if flag:
            assert model.spatial.weight.is_contiguous(memory_format=torch.channels_last)
            assert model.temporal.weight.is_contiguous(memory_format=torch.channels_last_3d)
        losses[flag] = [trainer.train_step()["loss"] for _ in range(3)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_mixed_precision_and_channels_last(tmp_path: Path, precision: str) -> None:
    torch.manual_seed(0)
    model = ConvModel()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, ImageData(), TrainingConfig(output_dir=str(tmp_path), max_steps=20, batch_size=8, lr=1e-3,
                                                          precision=precision, progress=False, ema_decay=0.9),  # type: ignore[arg-type]
                      plugin_manager=_pm())
    assert trainer.device.type == "cuda" and trainer.channels_last
    assert model.net[0].weight.is_contiguous(memory_format=torch.channels_last)
    first = None

    class First:
        @latentkit.hookimpl
        def latentkit_train_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
            nonlocal first
            first = metrics["loss"] if first is None else first

    trainer.plugin_manager.register(First(), "first")
    metrics = trainer.fit()
    assert math.isfinite(metrics["loss"]) and metrics["loss"] < first  # type: ignore[operator]
    assert ("grad_scale" in metrics) == (precision == "fp16")
    assert any(not torch.equal(before[k], v.cpu()) for k, v in model.state_dict().items())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, fp32 master weights
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    assert ckpt is not None and ckpt.step == 20 and (precision != "fp16" or ckpt.state["scaler"] is not None)


@pytest.mark.cuda
@needs_cuda
def test_cuda_torch_compile(tmp_path: Path) -> None:
    torch.manual_seed(0)
    eager = Trainer(ConvModel(), ImageData(), TrainingConfig(output_dir=str(tmp_path / "e"), max_steps=3, batch_size=8,
                                                              progress=False, tf32=False, shuffle=False), plugin_manager=_pm())
    eager.fit()
    torch.manual_seed(0)
    compiled = Trainer(ConvModel(), ImageData(), TrainingConfig(output_dir=str(tmp_path / "c"), max_steps=3, batch_size=8,
                                                                 progress=False, tf32=False, shuffle=False, compile=True),
                       plugin_manager=_pm())
    compiled.fit()
    for k, v in eager.model.state_dict().items():
        torch.testing.assert_close(v, compiled.model.state_dict()[k], rtol=1e-3, atol=1e-4)


@pytest.mark.cuda
@needs_cuda
def test_cuda_ddp_one_gpu_under_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun with one process: NCCL process group and DDP wrapper, same result as eager."""
    import subprocess
    import sys

    from latentkit.training import load_weights

    script = tmp_path / "train.py"
    script.write_text(DDP_SCRIPT)
    monkeypatch.setattr(sys, "argv", ["train.py", str(tmp_path / "plain"), "8"])
    exec(compile(DDP_SCRIPT, str(script), "exec"), {"__name__": "__main__"})
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                    str(script), str(tmp_path / "ddp"), "8"], check=True, timeout=300)
    one, two = load_weights(tmp_path / "plain" / "checkpoints"), load_weights(tmp_path / "ddp" / "checkpoints")
    for k in one:
        torch.testing.assert_close(one[k], two[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_on_cpu_matches_eager(tmp_path: Path) -> None:
    class Det(TinyModel):
        def loss(self, batch: dict[str, Any], **_: Any) -> torch.Tensor:
            return ((self.net(batch["x"]) - batch["y"]) ** 2).mean()

    results = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        trainer = Trainer(Det(dropout=0.0), TinyData(), _cfg(tmp_path / str(compile_), max_steps=3, compile=compile_,
                                                             ema_decay=None), plugin_manager=_pm())
        trainer.fit()
        results.append(trainer.model.state_dict())
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-4, atol=1e-5)
