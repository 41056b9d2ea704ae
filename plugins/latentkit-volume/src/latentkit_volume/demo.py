"""The primitives demo: train a small volume diffusion model on ``volume_primitives``, sample
each primitive, mesh the samples and measure how many are closed meshes of the prompted
primitive.

Everything goes through latentkit's public API: components by name
(:func:`latentkit.create`), :class:`latentkit.LatentDiffusion`, and the shared
:class:`latentkit.training.Trainer`. Pixel space (the ``identity`` autoencoder on 16^3
grids) keeps it to about half an hour of one CPU core (two minutes on a GPU); the same code
runs a latent model by naming another autoencoder.

On the command line, ``python -m latentkit_volume.demo --device cuda --variant NAME
--time-budget SECONDS --json PATH`` trains one of :data:`VARIANTS` within a time budget and
appends its result as one JSON line (:func:`main`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import latentkit
import torch
from latentkit.random import generators_from_seed

from latentkit_volume.mesh import (
    is_watertight,
    save_preview_grid,
    volume_to_mesh,
    write_obj,
    write_ply,
)
from latentkit_volume.primitives import PRIMITIVES, classify_volume, shape_features

__all__ = [
    "VARIANTS",
    "VARIANT_DESCRIPTIONS",
    "PrimitivesResult",
    "SampleReport",
    "build_primitives_model",
    "evaluate_volumes",
    "export_volumes",
    "main",
    "result_record",
    "sample_primitives",
    "train_primitives",
]


@attrs.frozen
class SampleReport:
    """The checks on one generated volume."""

    prompt: str  # the prompted primitive
    predicted: str  # what classify_volume says it is
    watertight: bool  # the marching-cubes mesh is closed (every edge in exactly two faces)
    components: int  # 6-connected solid components
    faces: int  # triangles in the mesh

    @property
    def success(self) -> bool:
        """A closed mesh of the prompted primitive."""
        return self.watertight and self.predicted == self.prompt


@attrs.frozen
class PrimitivesResult:
    """What :func:`train_primitives` measured."""

    reports: list[SampleReport]
    train_seconds: float
    sample_seconds: float
    steps: int
    final_loss: float
    data_accuracy: float  # the classifier's accuracy on training data (its own sanity check)
    model: Any = attrs.field(default=None, repr=False)  # the trained model (EMA weights)
    extra: dict[float, list[SampleReport]] = attrs.field(factory=dict, repr=False)  # guidance -> reports

    @property
    def success_rate(self) -> float:
        """Fraction of samples that are closed meshes of the prompted primitive."""
        return sum(r.success for r in self.reports) / max(len(self.reports), 1)

    @property
    def watertight_rate(self) -> float:
        """Fraction of samples whose mesh is watertight."""
        return sum(r.watertight for r in self.reports) / max(len(self.reports), 1)

    @property
    def shape_accuracy(self) -> float:
        """Fraction of samples classified as the prompted primitive."""
        return sum(r.predicted == r.prompt for r in self.reports) / max(len(self.reports), 1)

    def per_shape(self) -> dict[str, float]:
        """Success rate per prompted primitive."""
        out: dict[str, float] = {}
        for shape in dict.fromkeys(r.prompt for r in self.reports):
            rs = [r for r in self.reports if r.prompt == shape]
            out[shape] = sum(r.success for r in rs) / len(rs)
        return out

    def summary(self) -> str:
        """A few lines for the console."""
        lines = [
            f"trained {self.steps} steps in {self.train_seconds:.0f} s (final loss {self.final_loss:.4f}); "
            f"sampled {len(self.reports)} volumes in {self.sample_seconds:.1f} s",
            f"classifier accuracy on training data: {self.data_accuracy:.1%}",
            f"watertight meshes: {self.watertight_rate:.1%}; prompted primitive: {self.shape_accuracy:.1%}; "
            f"closed mesh of the prompted primitive: {self.success_rate:.1%}",
            "per primitive: " + ", ".join(f"{k} {v:.0%}" for k, v in self.per_shape().items()),
        ]
        return "\n".join(lines)


def build_primitives_model(
    *,
    shapes: Sequence[str] = PRIMITIVES,
    resolution: int = 16,
    denoiser: str = "volume_dit",
    denoiser_config: dict[str, Any] | None = None,
    conditioning: str = "class",
    cond_dropout: float = 0.1,
) -> Any:
    """A pixel-space (``identity`` first stage) volume diffusion model for the primitives:
    ``conditioning="class"`` (a label per primitive, ``class_label`` as a vector) or
    ``"text"`` (``openclip_text`` with its ``tiny`` tower, trained from scratch), EDM
    preconditioning and loss weighting (Karras et al. 2022) on the ``edm`` schedule."""
    autoencoder = latentkit.create("autoencoder", "identity", channels=1, layout="CDHW")
    if conditioning == "class":
        conditioner = latentkit.create("conditioner", "class_label", num_classes=len(shapes),
                                       embed_dim=64, outputs="vector", dropout=cond_dropout)
    elif conditioning == "text":
        conditioner = latentkit.create("conditioner", "openclip_text", model_name="tiny",
                                       outputs=["crossattn", "vector"], trainable=True,
                                       dropout=cond_dropout)
    else:
        raise ValueError(f"conditioning must be 'class' or 'text', got {conditioning!r}")
    spec = conditioner.output_spec
    config = {"preset": "small", **(denoiser_config or {})}
    net = latentkit.create("denoiser", denoiser, in_channels=1, out_channels=1,
                           crossattn_dim=spec.crossattn_dim, vector_dim=spec.vector_dim,
                           layout="CDHW", **config)
    schedule = latentkit.create("schedule", "edm", sigma_data=0.5)
    return latentkit.LatentDiffusion(autoencoder, net, conditioner, schedule, parameterization="edm",
                                     loss_weighting="edm", latent_size=(resolution,) * 3)


def _prompt_batch(model: Any, shapes: Sequence[str], labels: torch.Tensor) -> dict[str, Any]:
    keys = model.conditioner.input_keys if model.conditioner is not None else ()
    if "caption" in keys:
        return {"caption": [f"a large {shapes[i]}" for i in labels.tolist()]}
    return {"label": labels}


@torch.no_grad()
def sample_primitives(
    model: Any,
    *,
    shapes: Sequence[str] = PRIMITIVES,
    per_shape: int = 8,
    seed: int = 1234,
    steps: int = 24,
    sampler: str = "heun",
    guidance_scale: float = 2.0,
    batch_size: int = 16,
) -> tuple[torch.Tensor, list[str]]:
    """``per_shape`` samples of every primitive: (N, 1, R, R, R) fields and their prompts.
    Item ``i`` uses seed ``seed + i`` whatever the batching."""
    model.eval()
    labels = torch.arange(len(shapes)).repeat_interleave(per_shape)
    out = []
    for start in range(0, len(labels), batch_size):
        chunk = labels[start:start + batch_size]
        batch = _prompt_batch(model, shapes, chunk)
        gens = generators_from_seed(seed + start, len(chunk), model.device)
        out.append(model.sample(batch, sampler=sampler, steps=steps, guidance_scale=guidance_scale,
                                generator=gens).cpu())
    return torch.cat(out), [shapes[i] for i in labels.tolist()]


def evaluate_volumes(volumes: torch.Tensor, prompts: Sequence[str]) -> list[SampleReport]:
    """Mesh every volume (marching cubes) and check it: watertight, and which primitive
    :func:`~latentkit_volume.primitives.classify_volume` says it is."""
    reports = []
    for volume, prompt in zip(volumes, prompts):
        field = volume.numpy()
        mesh = volume_to_mesh(field)
        reports.append(SampleReport(prompt=prompt, predicted=classify_volume(field),
                                    watertight=is_watertight(mesh),
                                    components=shape_features(field).components,
                                    faces=len(mesh.faces)))
    return reports


def export_volumes(volumes: torch.Tensor, names: Sequence[str], out_dir: str | Path,
                   *, labels: Sequence[str] | None = None) -> list[Path]:
    """Write ``<name>.obj``, ``<name>.ply`` and ``<name>.npy`` per volume, plus
    ``previews.png`` (three projections per volume, one row each). Returns the mesh paths."""
    import numpy as np

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for volume, name in zip(volumes, names):
        mesh = volume_to_mesh(volume)
        paths.append(write_obj(mesh, out / f"{name}.obj"))
        paths.append(write_ply(mesh, out / f"{name}.ply"))
        np.save(out / f"{name}.npy", volume.numpy())
    save_preview_grid(list(volumes), out / "previews.png", labels=labels or list(names))
    return paths


class _CachedDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Every item of a deterministic dataset computed once and kept in memory (the same items,
    so the same training run, without recomputing an SDF per item and step)."""

    def __init__(self, dataset: Any) -> None:
        self.items = [dataset[i] for i in range(len(dataset))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


class _Report:
    """Lifecycle hooks of one run: a line with the loss and lr every ``every`` seconds."""

    def __init__(self, every: float, tag: str) -> None:
        self.every = float(every)
        self.tag = tag
        self.start = self.last = time.perf_counter()

    @latentkit.hookimpl
    def latentkit_train_step_end(self, trainer: Any, step: int, metrics: dict[str, float]) -> None:
        """Print the step's line when ``every`` seconds have passed since the last one."""
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            print(f"{self.tag}step {step} loss {metrics.get('loss', float('nan')):.4f} "
                  f"lr {metrics.get('lr', float('nan')):.2e} {now - self.start:.0f} s", flush=True)


def train_primitives(
    output_dir: str | Path,
    *,
    shapes: Sequence[str] = PRIMITIVES,
    resolution: int = 16,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 1e-3,
    dataset_length: int = 4096,
    rotate: bool = False,
    size_range: Sequence[float] = (0.6, 0.8),
    truncation: float = 2.0,
    denoiser: str = "volume_dit",
    denoiser_config: dict[str, Any] | None = None,
    conditioning: str = "text",
    cond_dropout: float = 0.1,
    ema_decay: float | None = 0.999,
    warmup_steps: int | None = None,
    per_shape: int = 8,
    sample_steps: int = 24,
    sampler: str = "heun",
    guidance_scale: float = 2.0,
    extra_guidance: Sequence[float] = (),
    seed: int = 0,
    progress: bool = True,
    export: bool = True,
    device: str = "cpu",
    time_budget: float | None = None,
    checkpoint: bool = True,
    cache_data: bool = True,
    report_every: float | None = None,
    log_prefix: str = "",
) -> PrimitivesResult:
    """Train on ``volume_primitives`` with the shared trainer, sample ``per_shape`` volumes of
    every primitive, mesh and check them (and write the meshes and previews to
    ``output_dir/samples`` when ``export``).

    The defaults are the measured recipe (docs/volume.md, variant ``text_dit_b64`` of
    :data:`VARIANTS`): captions (``"a large sphere"``) through a tiny text tower trained from
    scratch (``conditioning="text"``), ``volume_dit`` small on 4^3 patches, axis-aligned
    primitives (``rotate=False``) of random size in ``size_range`` and random offset on 16^3
    TSDF grids, 2000 steps of batch 64 at lr 1e-3 with cosine decay, 100 warm-up steps
    (``warmup_steps=None``: ``min(100, steps // 10)``), EMA 0.999, and sampling with guidance 2
    (``heun``, 24 steps). On one H200 shared by three runs, that recipe (2036 steps, stopped by
    time) gave 100% closed meshes of the prompted primitive at guidance 2 (96.9% at guidance
    1), of 64 samples.
    On a CPU, 2000 steps take about 27 minutes of one core (0.80 s per step; docs/volume.md).

    ``device`` is the trainer's device (``"cpu"``, ``"cuda"``, ``"auto"``). ``time_budget``
    (seconds of wall clock from this call, setup included) stops training early when it runs
    out; the trainer (its ``max_seconds``) re-plans the cosine decay to end where the time
    does. Sampling and evaluation then run as usual, so leave them some time outside the
    budget. ``checkpoint`` writes the final checkpoint; ``cache_data`` computes the
    dataset's items once (the same items). ``extra_guidance`` evaluates the same weights at
    further guidance scales (:attr:`PrimitivesResult.extra`). ``report_every`` prints a line
    every that many seconds (prefixed by ``log_prefix``) while training under a budget or without
    a checkpoint."""
    from latentkit.training import Trainer, TrainingConfig

    t_call = time.perf_counter()
    torch.manual_seed(seed)
    dataset = latentkit.create("dataset", "volume_primitives", resolution=resolution,
                               length=dataset_length, seed=seed, shapes=list(shapes), rotate=rotate,
                               truncation=truncation, size_range=list(size_range))
    if cache_data:
        dataset = _CachedDataset(dataset)
    model = build_primitives_model(shapes=shapes, resolution=resolution, denoiser=denoiser,
                                   denoiser_config=denoiser_config, conditioning=conditioning,
                                   cond_dropout=cond_dropout)
    warmup = min(100, steps // 10) if warmup_steps is None else int(warmup_steps)
    # the budget counts from this call: what setup took is not left for training
    max_seconds = None if time_budget is None else max(1e-3, float(time_budget) - (time.perf_counter() - t_call))
    config = TrainingConfig(output_dir=str(output_dir), max_steps=steps, batch_size=batch_size, lr=lr,
                            warmup_steps=warmup, lr_decay="cosine", min_lr_ratio=0.1,
                            ema_decay=ema_decay, checkpoint_every=steps if checkpoint else 0, seed=seed,
                            progress=progress, log_every=max(1, steps // 20), device=device, resume=False,
                            max_seconds=max_seconds,
                            # the trainer's CUDA default (channels_last) is a 4-D format: 5-D
                            # Conv3d weights refuse it, so volumes keep the default layout
                            channels_last=False)
    reporting = (_Report(report_every, log_prefix),) if report_every is not None and (
        time_budget is not None or not checkpoint) else ()
    trainer = Trainer(model, dataset, config, plugins=reporting)
    t0 = time.perf_counter()
    metrics = trainer.fit()
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - t0
    if trainer.ema is not None:  # sample with the averaged weights
        model.load_state_dict(trainer.ema.state_dict(model))
    t0 = time.perf_counter()
    volumes, prompts = sample_primitives(model, shapes=shapes, per_shape=per_shape, steps=sample_steps,
                                         sampler=sampler, guidance_scale=guidance_scale)
    sample_seconds = time.perf_counter() - t0
    reports = evaluate_volumes(volumes, prompts)
    extra: dict[float, list[SampleReport]] = {}
    for scale in extra_guidance:
        if float(scale) == float(guidance_scale):
            continue
        more, more_prompts = sample_primitives(model, shapes=shapes, per_shape=per_shape, steps=sample_steps,
                                               sampler=sampler, guidance_scale=float(scale))
        extra[float(scale)] = evaluate_volumes(more, more_prompts)
    check = [dataset[i] for i in range(min(len(dataset), 64))]
    data_accuracy = sum(classify_volume(it["volume"].numpy()) == it["shape"] for it in check) / len(check)
    if export:
        names = [f"{i:02d}_{p}" for i, p in enumerate(prompts)]
        labels = [f"{p} -> {r.predicted}{'' if r.watertight else ' (open)'}" for p, r in zip(prompts, reports)]
        export_volumes(volumes, names, Path(output_dir) / "samples", labels=labels)
    return PrimitivesResult(reports=reports, train_seconds=train_seconds, sample_seconds=sample_seconds,
                            steps=trainer.step, final_loss=float(metrics.get("loss", float("nan"))),
                            data_accuracy=data_accuracy, model=model, extra=extra)


# --------------------------------------------------------------------------- GPU sweeps

#: The conditioning and guidance the GPU sweep measured its variants with, pinned so that a
#: variant means the same run whatever :func:`train_primitives` defaults to.
_CLASS: dict[str, Any] = {"conditioning": "class", "guidance_scale": 1.0}
_TEXT: dict[str, Any] = {"conditioning": "text", "guidance_scale": 1.0}
_P2: dict[str, Any] = {"preset": "small", "patch_size": 2}

#: Named overrides of :func:`train_primitives` for ``python -m latentkit_volume.demo``. The
#: GPU variants raise ``steps`` to 20000 (a cap: ``--time-budget`` decides) and, run from the
#: command line, sample 16 per shape. ``default`` is :func:`train_primitives`'s own recipe.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "class_b16": dict(batch_size=16, **_CLASS),
    "class_b16_long": dict(steps=20000, batch_size=16, **_CLASS),
    "dit_b64": dict(steps=20000, batch_size=64, **_CLASS),
    "dit_p2": dict(steps=20000, batch_size=32, denoiser_config=_P2, **_CLASS),
    "dit_base": dict(steps=20000, batch_size=64, lr=5e-4, denoiser_config={"preset": "base"}, **_CLASS),
    "unet": dict(steps=20000, batch_size=32, lr=5e-4, denoiser="volume_unet",
                 denoiser_config={"preset": "small"}, **_CLASS),
    "text_dit_b64": dict(steps=20000, batch_size=64, **_TEXT),
    "text_dit_p2": dict(steps=20000, batch_size=32, denoiser_config=_P2, **_TEXT),
    "text_unet": dict(steps=20000, batch_size=32, lr=5e-4, denoiser="volume_unet",
                      denoiser_config={"preset": "small"}, **_TEXT),
    "dit_b64_noema": dict(steps=20000, batch_size=64, ema_decay=None, **_CLASS),
    "dit_b64_lr3e-4": dict(steps=20000, batch_size=64, lr=3e-4, **_CLASS),
    "dit_b64_s64_g2": dict(steps=20000, batch_size=64, sample_steps=64, **{**_CLASS, "guidance_scale": 2.0}),
}

#: One line per variant of :data:`VARIANTS`, for ``--list-variants`` and ``--help``.
VARIANT_DESCRIPTIONS: dict[str, str] = {
    "default": "train_primitives' recipe: text conditioning, batch 64, 2000 steps, guidance 2 "
               "(text_dit_b64 as a fixed-length run; ~27 min of one CPU core)",
    "class_b16": "the earlier CPU recipe: class labels, batch 16, 2000 steps, guidance 1 "
                 "(71.9% on the CPU: lumpy spheres)",
    "class_b16_long": "class_b16 trained as long as the budget allows",
    "dit_b64": "class labels, batch 64 (GPU, one H200 shared by 3 runs, 166 s: 3038 steps, "
               "96.9%; 100% at guidance 2)",
    "dit_p2": "class labels, DiT on 2^3 patches (512 tokens), batch 32 (GPU, same session: "
              "2794 steps, 100%)",
    "dit_base": "class labels, the base DiT (wider, deeper), batch 64, lr 5e-4",
    "unet": "class labels, 3-D UNet with CoordConv, batch 32, lr 5e-4",
    "text_dit_b64": "captions through a tiny trained text tower, batch 64 (GPU, same session: "
                    "2036 steps, 96.9%; 100% at guidance 2)",
    "text_dit_p2": "captions, DiT on 2^3 patches, batch 32",
    "text_unet": "captions, 3-D UNet with CoordConv, batch 32, lr 5e-4",
    "dit_b64_noema": "dit_b64 without EMA",
    "dit_b64_lr3e-4": "dit_b64 at lr 3e-4",
    "dit_b64_s64_g2": "dit_b64 sampled with 64 heun steps at guidance 2",
}


def _variants_text() -> str:
    """``name: what`` and the variant's overrides, two lines per variant."""
    return "\n".join(f"{name}: {VARIANT_DESCRIPTIONS.get(name, '(no description)')}\n"
                     f"    {json.dumps(overrides)}" for name, overrides in VARIANTS.items())


def _shape_rates(reports: Sequence[SampleReport]) -> dict[str, float]:
    out: dict[str, float] = {}
    for shape in dict.fromkeys(r.prompt for r in reports):
        rs = [r for r in reports if r.prompt == shape]
        out[shape] = sum(r.success for r in rs) / len(rs)
    return out


def result_record(variant: str, overrides: dict[str, Any], result: PrimitivesResult, **extra: Any) -> dict[str, Any]:
    """The JSON record of one finished variant (see the module's command line)."""
    reports = result.reports
    record: dict[str, Any] = {
        "variant": variant,
        "success_rate": result.success_rate,
        "per_shape": result.per_shape(),
        "watertight_rate": result.watertight_rate,
        "shape_accuracy": result.shape_accuracy,
        "samples": len(reports),
        "predicted": {s: [r.predicted for r in reports if r.prompt == s] for s in result.per_shape()},
        "steps": result.steps,
        "train_seconds": round(result.train_seconds, 2),
        "sample_seconds": round(result.sample_seconds, 2),
        "final_loss": result.final_loss,
        "data_accuracy": result.data_accuracy,
        "extra_guidance": {
            f"{scale:g}": {"success_rate": sum(r.success for r in rs) / max(len(rs), 1),
                           "per_shape": _shape_rates(rs)}
            for scale, rs in result.extra.items()
        },
        "overrides": overrides,
    }
    record.update(extra)
    return record


def _append_json(path: str | Path, record: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=False, default=str) + "\n")
        f.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m latentkit_volume.demo``: train one named variant (:data:`VARIANTS`), sample,
    check, and append one JSON line with the result to ``--json``.

    ``--time-budget S`` bounds the whole process (from the start of ``main``): training gets
    ``S - --eval-reserve`` minus the time already spent, then sampling, evaluation and export
    run (about ``--eval-reserve`` seconds). ``--steps`` overrides the variant's step cap."""
    parser = argparse.ArgumentParser(
        prog="python -m latentkit_volume.demo",
        description="Train one primitives variant (overrides of train_primitives), sample 16 volumes "
                    "per primitive, mesh and check them, and append the result as one JSON line.",
        epilog="variants (name, what, overrides of train_primitives):\n" + _variants_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="default", help="a name from --list-variants (default: default)")
    parser.add_argument("--list-variants", action="store_true",
                        help="print the variants (name, what, overrides) and exit")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 or auto")
    parser.add_argument("--steps", type=int, default=None, help="step cap (default: the variant's)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds for the whole process; training stops early to fit")
    parser.add_argument("--eval-reserve", type=float, default=25.0,
                        help="seconds of --time-budget kept for sampling and evaluation")
    parser.add_argument("--per-shape", type=int, default=None, help="samples per primitive (default 16)")
    parser.add_argument("--extra-guidance", default="",
                        help="comma-separated guidance scales also evaluated, e.g. 2,3")
    parser.add_argument("--json", default=None, help="append the result line here")
    parser.add_argument("--output", default=None, help="run directory (default runs/primitives_<variant>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--checkpoint", action="store_true", help="write the final checkpoint")
    parser.add_argument("--no-export", action="store_true", help="do not write meshes and previews")
    parser.add_argument("--report-every", type=float, default=20.0, help="seconds between progress lines")
    args = parser.parse_args(argv)
    t_main = time.perf_counter()
    if args.list_variants:
        print(_variants_text())
        return 0
    if args.variant not in VARIANTS:
        parser.error(f"unknown variant {args.variant!r}; known: {', '.join(VARIANTS)}")
    torch.set_num_threads(max(1, args.threads))
    overrides = dict(VARIANTS[args.variant])
    if args.steps is not None:
        overrides["steps"] = args.steps
    kwargs: dict[str, Any] = {"per_shape": 16, **overrides}
    if args.per_shape is not None:
        kwargs["per_shape"] = args.per_shape
    extra_guidance = [float(g) for g in args.extra_guidance.split(",") if g.strip()]
    output = args.output or f"runs/primitives_{args.variant}"
    budget = None
    if args.time_budget is not None:
        budget = max(1.0, args.time_budget - args.eval_reserve - (time.perf_counter() - t_main))
    tag = f"[{args.variant}] "
    print(f"{tag}device {args.device}, budget {budget if budget is None else round(budget)} s for "
          f"training, overrides {json.dumps(overrides)}", flush=True)
    info = {"device": args.device, "seed": args.seed, "time_budget": args.time_budget}
    if args.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        result = train_primitives(output, device=args.device, time_budget=budget, seed=args.seed,
                                  progress=False, export=not args.no_export, checkpoint=args.checkpoint,
                                  extra_guidance=extra_guidance, report_every=args.report_every,
                                  log_prefix=tag, **kwargs)
    except Exception as exc:  # the line says what went wrong; the exit status too
        if args.json:
            _append_json(args.json, {"variant": args.variant, "error": f"{type(exc).__name__}: {exc}",
                                     "overrides": overrides, "wall_seconds": round(time.perf_counter() - t_main, 2),
                                     **info})
        raise
    cap = int(kwargs.get("steps", 2000))
    record = result_record(args.variant, overrides, result, step_cap=cap,
                           stopped_by_budget=result.steps < cap,
                           steps_per_second=round(result.steps / max(result.train_seconds, 1e-9), 2),
                           wall_seconds=round(time.perf_counter() - t_main, 2), **info)
    if args.json:
        _append_json(args.json, record)
    print(tag + result.summary().replace("\n", "\n" + tag), flush=True)
    print(tag + json.dumps({k: record[k] for k in ("success_rate", "per_shape", "steps", "train_seconds")}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
