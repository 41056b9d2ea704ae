"""The moving-shapes experiment: train a small text-to-video model and measure whether its
shapes move in the prompted direction.

Everything is composed from registered parts through :func:`latentkit.create`, and trained by
latentkit's shared :class:`~latentkit.training.Trainer`: the ``framewise`` autoencoder around
``identity`` (pixel space), the ``openclip_text`` conditioner (tiny text tower, random and
frozen, with caption dropout for classifier-free guidance), the ``video_unet`` denoiser with
frame and position embeddings, and the ``edm`` schedule with EDM preconditioning (Karras et
al. 2022) trained at raised noise levels. Adherence is measured by
:func:`latentkit_video.datasets.direction_adherence` (centroid tracking): 100% of 32 samples
after the default 2000 steps (about 13 minutes on one CPU thread).

:data:`VARIANTS` names sets of overrides (denoiser, schedule, conditioner, model, training)
to compare; the command line runs one variant per process and appends one JSON line of
results::

    python -m latentkit_video.experiment --variant no_frame_position --steps 1000 \
        --json results.jsonl --output runs/video_variants
    python -m latentkit_video.experiment --device cuda --time-budget 200 --variant shipped
    python -m latentkit_video.experiment --list-variants
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import latentkit
import torch
from latentkit.training import Trainer, TrainingConfig

from latentkit_video.datasets import (
    DIRECTIONS,
    MovingShapesDataset,
    direction_adherence,
    motion_coherence,
    motion_direction,
)

__all__ = [
    "DEFAULT_STEPS",
    "VARIANTS",
    "MovingShapesResult",
    "build_model",
    "caption_influence",
    "evaluate",
    "main",
    "run",
    "run_variant",
    "temporal_influence",
]

#: The data of the experiment: 8 frames of 12x12, a red 3x3 square, 4 directions.
DATA_CONFIG: dict[str, Any] = {
    "frames": 8, "size": 12, "length": 4096, "colors": ["red"], "shapes": ["square"],
    "directions": ["left", "right", "up", "down"], "speed": 1, "shape_size": 3, "seed": 0,
}
#: The video UNet of the experiment (about 0.32 M parameters). ``frame_embedding`` and
#: ``position_embedding`` give the per-frame spatial layers the frame index and the pixel
#: position that a prompted direction needs (see :mod:`latentkit_video.denoiser`).
DENOISER_CONFIG: dict[str, Any] = {
    "model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
    "attention_resolutions": [2], "num_heads": 4, "norm_groups": 8, "temporal_head_channels": 16,
    "temporal_resolutions": [2], "frame_embedding": True, "position_embedding": True,
}

@attrs.frozen
class MovingShapesResult:
    """What :func:`run` measured."""

    adherence: float  # fraction of samples moving in the prompted direction
    per_direction: dict[str, float]
    samples: int
    train_seconds: float
    sample_seconds: float
    steps: int  # optimizer steps done (fewer than asked when the time budget ran out)
    final_loss: float
    stopped_by_budget: bool = False  # training ended early because time_budget ran out
    #: :func:`latentkit_video.datasets.motion_coherence` of the samples (direction-blind)
    coherence: dict[str, float] = attrs.field(factory=dict)
    #: :func:`temporal_influence` of the trained denoiser, by noise level
    temporal_influence: dict[str, float] = attrs.field(factory=dict)
    #: :func:`caption_influence` of the trained model
    caption_influence: dict[str, float] = attrs.field(factory=dict)


#: EDM training noise levels, ln(sigma) ~ N(p_mean, p_std^2). p_mean is raised from EDM's
#: -1.2 to +1.0: the direction is decided at high noise (sigma 2-8, where the clip is still
#: invisible under the noise), and at EDM's levels too few steps land there for the denoiser
#: to learn to follow the caption (docs/video.md, "Results").
SCHEDULE_CONFIG: dict[str, Any] = {"sigma_data": 0.5, "p_mean": 1.0, "p_std": 1.2}
#: The text conditioner: the tiny open_clip text tower, random and frozen (trained along, it
#: collapses the four direction prompts onto nearly one encoding), tokens to cross-attention
#: and the pooled prompt to the timestep embedding, 10% caption dropout (for
#: classifier-free guidance).
CONDITIONER_CONFIG: dict[str, Any] = {"model_name": "tiny", "outputs": ["crossattn", "vector"],
                                      "trainable": False, "dropout": 0.1}
#: Training steps of the recipe (batch 16): 100% adherence at 2000, 69% at 1000.
DEFAULT_STEPS = 2000

#: Earlier setups, as overrides of the recipe above.
_VIDEO_LDM: dict[str, dict[str, Any]] = {  # Video LDM as published: no frame / position input, text tower trained along
    "conditioner": {"outputs": ["crossattn"], "trainable": True},
    "denoiser": {"frame_embedding": False, "position_embedding": False},
    "schedule": {"p_mean": -0.4},
}

#: Named experiment variants: overrides of the denoiser, schedule, conditioner and model
#: configs above and of :func:`run`'s training options (``batch_size``, ``lr``,
#: ``guidance_scale``). The adherence in each comment is one CPU run, batch 16, 32 samples.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    # the recipe: 100% after 2000 steps (seeds 0 and 1), 68.8% after 1000
    "shipped": {},
    # without the frame and position embeddings: 46.9% after 1000 steps, 100% after 2000
    "no_frame_position": {"denoiser": {"frame_embedding": False, "position_embedding": False}},
    # with EDM-like training noise levels (p_mean 0): 37.5% / 53.1% after 1000 / 2000 steps
    "low_noise": {"schedule": {"p_mean": 0.0}},
    # a wider spread of noise levels: 100% after 2000 steps
    "wide_noise": {"schedule": {"p_std": 1.6}},
    # the linear schedule with eps prediction and min-SNR weighting (the quickstart's): 3.1%
    # after 1000 steps, the samples keep visible noise under the Heun sampler
    "eps": {"schedule": {"name": "linear"},
            "model": {"parameterization": "eps", "loss_weighting": "min_snr", "gamma": 5.0}},
    # Video LDM as published (the session-1 default): 34.4% after 800 steps
    "video_ldm": _VIDEO_LDM,
    # Video LDM with the text tower frozen: 46.9% / 37.5% after 1000 / 2000 steps
    "video_ldm_frozen_text": {**_VIDEO_LDM, "conditioner": {"outputs": ["crossattn"], "trainable": False}},
    # Video LDM plus the text in the temporal layers (cross-attention and the pooled vector):
    # 26.6% after 1402 GPU steps
    "video_ldm_temporal_text": {
        "conditioner": {"outputs": ["crossattn", "vector"], "trainable": True},
        "denoiser": {"frame_embedding": False, "position_embedding": False,
                     "temporal_context": True, "temporal_embedding": True},
        "schedule": {"p_mean": 0.0},
    },
}
_VARIANT_SECTIONS = ("denoiser", "schedule", "conditioner", "training", "model")
_TRAINING_KEYS = ("batch_size", "lr", "guidance_scale")


def build_model(
    seed: int = 0,
    denoiser_overrides: dict[str, Any] | None = None,
    schedule_overrides: dict[str, Any] | None = None,
    conditioner_overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
) -> latentkit.LatentDiffusion:
    """The pixel-space text-to-video model, composed from registered components. When the
    conditioner also outputs ``vector`` (the pooled text embedding), the denoiser takes it.

    ``schedule_overrides`` may name another registered schedule (``"name"``; its other keys
    are that schedule's options), and ``model_overrides`` sets :class:`LatentDiffusion`'s
    ``parameterization``, ``loss_weighting`` and ``gamma`` (default: EDM's)."""
    torch.manual_seed(seed)
    autoencoder = latentkit.create("autoencoder", "framewise", image_autoencoder="identity",
                                   image_config={"channels": 3})
    conditioner = latentkit.create("conditioner", "openclip_text",
                                   **{**CONDITIONER_CONFIG, **(conditioner_overrides or {})})
    spec = conditioner.output_spec
    denoiser = latentkit.create(
        "denoiser", "video_unet", in_channels=3, out_channels=3,
        crossattn_dim=spec.crossattn_dim, vector_dim=spec.vector_dim,
        **{**DENOISER_CONFIG, **(denoiser_overrides or {})},
    )
    schedule_config = dict(schedule_overrides or {})
    schedule_name = schedule_config.pop("name", "edm")
    if schedule_name == "edm":
        schedule_config = {**SCHEDULE_CONFIG, **schedule_config}
    schedule = latentkit.create("schedule", schedule_name, **schedule_config)
    model_config: dict[str, Any] = {"parameterization": "edm", "loss_weighting": "edm", **(model_overrides or {})}
    return latentkit.LatentDiffusion(autoencoder, denoiser, conditioner, schedule, **model_config)


@torch.no_grad()
def evaluate(
    model: latentkit.LatentDiffusion,
    *,
    per_direction: int = 8,
    directions: Sequence[str] = tuple(DIRECTIONS),
    color: str = "red",
    shape: str = "square",
    frames: int = 8,
    size: int = 12,
    steps: int = 20,
    guidance_scale: float = 3.0,
    seed: int = 1000,
) -> tuple[float, dict[str, float], torch.Tensor, list[str]]:
    """Sample ``per_direction`` clips per direction (fixed seeds) and measure adherence.

    Returns (adherence, adherence per direction, the clips (B, 3, T, H, W), the prompts).
    """
    model.eval()
    prompts = [f"a {color} {shape} moving {d}" for d in directions for _ in range(per_direction)]
    wanted = [d for d in directions for _ in range(per_direction)]
    videos = model.sample({"caption": prompts}, sampler="heun", steps=steps,
                          guidance_scale=guidance_scale, seed=seed, latent_size=(frames, size, size))
    videos = videos.clamp(-1.0, 1.0)
    per = {
        d: direction_adherence(videos[i * per_direction : (i + 1) * per_direction],
                               wanted[i * per_direction : (i + 1) * per_direction])
        for i, d in enumerate(directions)
    }
    return direction_adherence(videos, wanted), per, videos, prompts


def temporal_influence(
    model: latentkit.LatentDiffusion,
    dataset: MovingShapesDataset,
    *,
    sigmas: Sequence[float] = (0.5, 2.0, 8.0),
    items: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """How much the denoiser's estimate of frame 0 depends on the *other* frames.

    For ``items`` training clips noised to each ``sigma`` (fixed seed), the gradient of
    ``sum(D(x, sigma, cond)[:, :, 0] * r)`` (``r`` a fixed random direction) with respect to
    ``x`` is split by frame; the result is the share of its absolute mass on frames 1..T-1.
    0 means frame 0 is denoised on its own, as an image model would (no temporal pathway);
    the keys are ``"sigma=<value>"``.
    """
    was_training = model.training
    model.eval()
    batch = [dataset[i] for i in range(items)]
    x0 = model.encode(torch.stack([b["video"] for b in batch]))
    cond = model.conditioner({"caption": [b["caption"] for b in batch]}) if model.conditioner else None
    if cond is not None:
        cond = cond.to(model.device)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    for sigma in sigmas:
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        x = (x0 + sigma * noise).requires_grad_(True)
        with torch.enable_grad():
            denoised = model.denoise(x, torch.full((x.shape[0],), float(sigma), device=x.device), cond)
            r = torch.randn(denoised[:, :, 0].shape, generator=gen).to(x.device)
            (grad,) = torch.autograd.grad((denoised[:, :, 0] * r).sum(), x)
        per_frame = grad.abs().sum(dim=(0, 1, 3, 4))  # (T,)
        out[f"sigma={sigma:g}"] = float(per_frame[1:].sum() / per_frame.sum().clamp(min=1e-30))
    model.train(was_training)
    return out


@torch.no_grad()
def caption_influence(
    model: latentkit.LatentDiffusion,
    dataset: MovingShapesDataset,
    *,
    directions: Sequence[str] = tuple(DIRECTIONS),
    sigmas: Sequence[float] = (2.0, 8.0),
    items: int = 8,
    seed: int = 0,
) -> dict[str, float]:
    """How much the prompted direction reaches the conditioning and the denoiser.

    * ``context``: mean over pairs of direction prompts ("a red square moving left" vs
      "... right", ...) of the largest absolute difference between their ``crossattn``
      encodings (the ``vector`` when there is no ``crossattn``); 0 means the text encoder
      maps every direction to the same context (a collapsed text tower);
    * ``"sigma=<value>"``: mean over direction pairs of ``mean |D(x; p1) - D(x; p2)|``,
      divided by ``mean |D(x; p1)|``, for ``items`` training clips noised to ``sigma``
      (fixed seed): the relative change of the denoised estimate when only the direction
      word of the prompt changes.
    """
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    if model.conditioner is None:
        return out
    color, shape = "red", "square"
    prompts = [f"a {color} {shape} moving {d}" for d in directions]
    cond = model.conditioner({"caption": prompts}).to(model.device)
    enc = cond.crossattn if cond.crossattn is not None else cond.vector
    pairs = [(i, j) for i in range(len(prompts)) for j in range(i + 1, len(prompts))]
    if enc is not None and pairs:
        out["context"] = sum(float((enc[i] - enc[j]).abs().max()) for i, j in pairs) / len(pairs)
    x0 = model.encode(torch.stack([dataset[i]["video"] for i in range(items)]))
    conds = [model.conditioner({"caption": [p] * items}).to(model.device) for p in prompts]
    gen = torch.Generator().manual_seed(seed)
    for sigma in sigmas:
        x = x0 + sigma * torch.randn(x0.shape, generator=gen).to(x0.device)
        s = torch.full((items,), float(sigma), device=x0.device)
        denoised = [model.denoise(x, s, c) for c in conds]
        rel = [float((denoised[i] - denoised[j]).abs().mean() / denoised[i].abs().mean().clamp(min=1e-12))
               for i, j in pairs]
        out[f"sigma={sigma:g}"] = sum(rel) / max(1, len(rel))
    model.train(was_training)
    return out


def run(
    steps: int = DEFAULT_STEPS,
    *,
    batch_size: int = 16,
    lr: float = 1e-3,
    output_dir: str | Path = "runs/video_moving_shapes",
    per_direction: int = 8,
    seed: int = 0,
    progress: bool = True,
    write_samples: bool = True,
    denoiser_overrides: dict[str, Any] | None = None,
    schedule_overrides: dict[str, Any] | None = None,
    guidance_scale: float = 3.0,
    conditioner_overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    time_budget: float | None = None,
) -> MovingShapesResult:
    """Train on ``moving_shapes`` for ``steps`` steps with the shared trainer on ``device``,
    then sample and measure direction adherence (writing a GIF and a filmstrip of the samples).

    With ``time_budget`` (seconds of training, not counting model construction and the
    evaluation: the trainer's ``max_seconds``) training stops at the first step that ends past
    the budget, the trainer fits the cosine decay to the steps that fit in it, and the model
    is evaluated as usual; ``steps`` is then an upper bound.
    """
    output_dir = Path(output_dir)
    model = build_model(seed, denoiser_overrides, schedule_overrides, conditioner_overrides, model_overrides)
    dataset = MovingShapesDataset(**DATA_CONFIG)
    config = TrainingConfig(
        output_dir=str(output_dir), max_steps=steps, batch_size=batch_size, lr=lr,
        warmup_steps=min(100, steps // 10), lr_decay="cosine", min_lr_ratio=0.05,
        ema_decay=None, checkpoint_every=steps, keep_last=1, resume=False, seed=seed,
        log_every=50, progress=progress, device=device, max_seconds=time_budget,
        # the Conv3d weights of the temporal layers have no channels_last form
        channels_last=False,
    )
    trainer = Trainer(model, dataset, config)
    start = time.perf_counter()
    metrics = trainer.fit()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    adherence, per, videos, prompts = evaluate(model, per_direction=per_direction,
                                               guidance_scale=guidance_scale)
    sample_seconds = time.perf_counter() - start
    coherence = motion_coherence(videos, speed=float(DATA_CONFIG["speed"]))
    influence = temporal_influence(model, dataset)
    caption = caption_influence(model, dataset)
    if write_samples:
        from latentkit_video.output import save_filmstrip, save_gif

        picks = list(range(0, len(prompts), per_direction))  # the first clip of each direction
        save_gif(videos[picks], output_dir / "samples.gif", scale=4, fps=6)
        save_filmstrip(videos, output_dir / "samples_filmstrip.png", scale=2)
        lines = [f"{p}\t{motion_direction(v)['direction']}" for p, v in zip(prompts, videos)]
        (output_dir / "samples.tsv").write_text("prompt\tdetected\n" + "\n".join(lines) + "\n")
    return MovingShapesResult(
        adherence=adherence, per_direction=per, samples=len(prompts), train_seconds=train_seconds,
        sample_seconds=sample_seconds, steps=trainer.step,
        final_loss=float(metrics.get("loss", float("nan"))),
        stopped_by_budget=trainer.stop_reason == "max_seconds",
        coherence=coherence, temporal_influence=influence, caption_influence=caption,
    )


def run_variant(name: str, **options: Any) -> tuple[MovingShapesResult, dict[str, Any]]:
    """:func:`run` with the overrides of ``VARIANTS[name]`` merged under ``options`` (given
    options win). Returns the result and the keyword arguments :func:`run` got."""
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
    variant = VARIANTS[name]
    unknown = sorted(set(variant) - set(_VARIANT_SECTIONS))
    bad_training = sorted(set(variant.get("training", {})) - set(_TRAINING_KEYS))
    if unknown or bad_training:
        raise ValueError(f"variant {name!r}: unknown sections {unknown} or training keys {bad_training}")
    kwargs: dict[str, Any] = {
        "denoiser_overrides": dict(variant.get("denoiser", {})),
        "schedule_overrides": dict(variant.get("schedule", {})),
        "conditioner_overrides": dict(variant.get("conditioner", {})),
        "model_overrides": dict(variant.get("model", {})),
        **variant.get("training", {}),
    }
    kwargs.update(options)
    return run(**kwargs), kwargs


def _append_json_line(path: str | Path, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: run one variant and append its results as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m latentkit_video.experiment", description=main.__doc__)
    parser.add_argument("--variant", default="shipped", help="a name of VARIANTS (see --list-variants)")
    parser.add_argument("--list-variants", action="store_true", help="print the variants as JSON and exit")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:0")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps (an upper bound with --time-budget)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds of training; then stop early and evaluate")
    parser.add_argument("--batch-size", type=int, default=None, help="override the variant's batch size")
    parser.add_argument("--lr", type=float, default=None, help="override the variant's learning rate")
    parser.add_argument("--per-direction", type=int, default=8, help="evaluation samples per direction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    parser.add_argument("--output", default="runs/video_variants",
                        help="directory; the run writes to OUTPUT/VARIANT")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--no-samples", action="store_true", help="write no GIF / filmstrip / TSV")
    parser.add_argument("--progress", action="store_true", help="show the progress bar")
    args = parser.parse_args(argv)
    if args.list_variants:
        for name, variant in VARIANTS.items():
            print(json.dumps({"variant": name, **variant}))
        return 0
    if args.variant not in VARIANTS:
        parser.error(f"unknown variant {args.variant!r}; known: {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)

    def _terminated(signum: int, _frame: Any) -> None:  # `timeout` / kill: still write the error line
        raise SystemExit(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, _terminated)
    options: dict[str, Any] = {
        "steps": args.steps, "device": args.device, "time_budget": args.time_budget,
        "per_direction": args.per_direction, "seed": args.seed, "progress": args.progress,
        "write_samples": not args.no_samples, "output_dir": Path(args.output) / args.variant,
    }
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.lr is not None:
        options["lr"] = args.lr
    record: dict[str, Any] = {"variant": args.variant, "device": args.device, "max_steps": args.steps,
                              "time_budget": args.time_budget, "seed": args.seed}
    started = time.perf_counter()
    try:
        result, kwargs = run_variant(args.variant, **options)
    except BaseException as exc:  # a crash (or a kill by Ctrl-C) still leaves a line
        if args.json:
            _append_json_line(args.json, {**record, "error": f"{type(exc).__name__}: {exc}",
                                          "total_seconds": time.perf_counter() - started})
        raise
    record.update(
        adherence=result.adherence, per_direction=result.per_direction, steps=result.steps,
        stopped_by_budget=result.stopped_by_budget, train_seconds=result.train_seconds,
        sample_seconds=result.sample_seconds, total_seconds=time.perf_counter() - started,
        final_loss=result.final_loss, samples=result.samples, coherence=result.coherence,
        temporal_influence=result.temporal_influence, caption_influence=result.caption_influence,
        batch_size=kwargs.get("batch_size", 16), lr=kwargs.get("lr", 1e-3),
        overrides=VARIANTS[args.variant],
    )
    print(json.dumps(record), flush=True)
    if args.json:
        _append_json_line(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
