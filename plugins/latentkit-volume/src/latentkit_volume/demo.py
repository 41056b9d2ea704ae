"""The primitives demo: train a small volume diffusion model on ``volume_primitives``, sample
each primitive, mesh the samples and measure how many are closed meshes of the prompted
primitive.

Everything goes through latentkit's public API: components by name
(:func:`latentkit.create`), :class:`latentkit.LatentDiffusion`, and the shared
:class:`latentkit.training.Trainer`. Pixel space (the ``identity`` autoencoder on 16^3
grids) keeps it to minutes on a CPU; the same code runs a latent model by naming another
autoencoder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import latentkit
import torch

from latentkit_volume.mesh import (
    is_watertight,
    save_preview_grid,
    volume_to_mesh,
    write_obj,
    write_ply,
)
from latentkit_volume.primitives import PRIMITIVES, classify_volume, shape_features

__all__ = [
    "PrimitivesResult",
    "SampleReport",
    "build_primitives_model",
    "evaluate_volumes",
    "export_volumes",
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
        gens = [torch.Generator(device=model.device).manual_seed(seed + start + i) for i in range(len(chunk))]
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


def train_primitives(
    output_dir: str | Path,
    *,
    shapes: Sequence[str] = PRIMITIVES,
    resolution: int = 16,
    steps: int = 2000,
    batch_size: int = 16,
    lr: float = 1e-3,
    dataset_length: int = 4096,
    rotate: bool = False,
    size_range: Sequence[float] = (0.6, 0.8),
    truncation: float = 2.0,
    denoiser: str = "volume_dit",
    denoiser_config: dict[str, Any] | None = None,
    conditioning: str = "class",
    per_shape: int = 8,
    sample_steps: int = 24,
    guidance_scale: float = 1.0,
    seed: int = 0,
    progress: bool = True,
    export: bool = True,
) -> PrimitivesResult:
    """Train on ``volume_primitives`` with the shared trainer, sample ``per_shape`` volumes of
    every primitive, mesh and check them (and write the meshes and previews to
    ``output_dir/samples`` when ``export``).

    The defaults are the measured recipe (docs/volume.md): axis-aligned primitives
    (``rotate=False``) of random size in ``size_range`` and random offset on 16^3 TSDF grids,
    2000 steps of batch 16, sampling without guidance."""
    from latentkit.training import Trainer, TrainingConfig

    torch.manual_seed(seed)
    dataset = latentkit.create("dataset", "volume_primitives", resolution=resolution,
                               length=dataset_length, seed=seed, shapes=list(shapes), rotate=rotate,
                               truncation=truncation, size_range=list(size_range))
    model = build_primitives_model(shapes=shapes, resolution=resolution, denoiser=denoiser,
                                   denoiser_config=denoiser_config, conditioning=conditioning)
    config = TrainingConfig(output_dir=str(output_dir), max_steps=steps, batch_size=batch_size, lr=lr,
                            warmup_steps=min(100, steps // 10), lr_decay="cosine", min_lr_ratio=0.1,
                            ema_decay=0.999, checkpoint_every=steps, seed=seed, progress=progress,
                            log_every=max(1, steps // 20), device="cpu", resume=False)
    trainer = Trainer(model, dataset, config)
    t0 = time.perf_counter()
    metrics = trainer.fit()
    train_seconds = time.perf_counter() - t0
    if trainer.ema is not None:  # sample with the averaged weights
        model.load_state_dict(trainer.ema.state_dict(model))
    t0 = time.perf_counter()
    volumes, prompts = sample_primitives(model, shapes=shapes, per_shape=per_shape, steps=sample_steps,
                                         guidance_scale=guidance_scale)
    sample_seconds = time.perf_counter() - t0
    reports = evaluate_volumes(volumes, prompts)
    check = [dataset[i] for i in range(min(len(dataset), 64))]
    data_accuracy = sum(classify_volume(it["volume"].numpy()) == it["shape"] for it in check) / len(check)
    if export:
        names = [f"{i:02d}_{p}" for i, p in enumerate(prompts)]
        labels = [f"{p} -> {r.predicted}{'' if r.watertight else ' (open)'}" for p, r in zip(prompts, reports)]
        export_volumes(volumes, names, Path(output_dir) / "samples", labels=labels)
    return PrimitivesResult(reports=reports, train_seconds=train_seconds, sample_seconds=sample_seconds,
                            steps=steps, final_loss=float(metrics.get("loss", float("nan"))),
                            data_accuracy=data_accuracy, model=model)
