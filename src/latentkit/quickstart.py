"""``latentkit quickstart``: a text-to-image latent diffusion model, trained from scratch on a
laptop CPU in a few minutes.

The two stages of Rombach et al. (2022) on the synthetic ``shapes`` data:

1. a small KL-regularised autoencoder (f = 4: 32x32x3 images <-> 8x8x8 latents), whose
   latents are then normalised to unit variance (``scaling_factor``, Sec. 4.3.2);
2. a small text-conditioned UNet in that latent space, with cross-attention to the tokens of a
   tiny open_clip text tower (the real CLIP BPE tokenizer, a 2-layer transformer of width 64,
   randomly initialised and frozen, as LDM freezes its CLIP text encoder: trained from scratch
   together with the UNet, such a tower maps different prompts to nearly the same encoding
   within a few hundred steps) and its pooled prompt embedding added to the timestep
   embedding (the SDXL-style global vector: colour and shape are global attributes), and
   10% prompt dropout for classifier-free guidance (Ho & Salimans 2022), trained from cached
   latents.

Then it samples prompts **held out of training** (colour/shape/position combinations the model
never saw), writes them as a captioned PNG grid, and measures prompt adherence with the
deterministic checker of :mod:`latentkit.evaluation` (colour and shape both right). Both stages
are ordinary TOML configs run by the shared :class:`~latentkit.training.Trainer`; they are
written next to the results, so ``latentkit train <output>/diffusion.toml`` reruns stage 2.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import torch

from latentkit.fileio import atomic_write_text

__all__ = [
    "FAST_SETTINGS",
    "HELD_OUT_PROMPTS",
    "OBJECTIVES",
    "QuickstartResult",
    "QuickstartSettings",
    "autoencoder_config",
    "diffusion_config",
    "run_quickstart",
]

#: Captions left out of the training data and sampled afterwards: every colour twice, every
#: shape at least twice, every position twice. The model saw each colour/shape pair, but only
#: at other positions.
HELD_OUT_PROMPTS: tuple[str, ...] = (
    "a red circle at the top left",
    "a red square at the bottom right",
    "a green triangle at the top left",
    "a green circle at the bottom right",
    "a blue triangle at the bottom right",
    "a blue square at the top left",
    "a yellow square at the bottom left",
    "a yellow triangle at the top right",
)


#: Stage-2 objectives of the quickstart: the ``[schedule]`` table and the ``[model]`` objective keys.
OBJECTIVES: dict[str, tuple[str, str]] = {
    # DDPM's linear betas, noise prediction, min-SNR-5 weighting (Hang et al. 2023)
    "eps": ('name = "linear"', 'parameterization = "eps"\nloss_weighting = "min_snr"\ngamma = 5.0'),
    # flow matching on the straight path, SD3's logit-normal t (Esser et al. 2024), velocity MSE
    "flow": ('name = "flow"\nt_distribution = "logit_normal"', 'parameterization = "flow"\nloss_weighting = "uniform"'),
}


@attrs.frozen(kw_only=True)
class QuickstartSettings:
    """Problem size of the quickstart; the defaults fit in under 10 minutes on 2 CPU cores."""

    image_size: int = 32  # pixels; the latents are image_size / 4
    dataset_length: int = 4096  # items of the shapes dataset (every combination equally often)
    seed: int = 0
    held_out: tuple[str, ...] = HELD_OUT_PROMPTS  # captions excluded from training, then sampled
    # stage 1: autoencoder
    ae_steps: int = 900
    ae_batch_size: int = 16
    ae_lr: float = 2e-3
    ae_channels: int = 16  # width of the first encoder level
    latent_channels: int = 8  # 8x8x8 latents: sharp enough edges for the shape checker
    # stage 2: latent diffusion
    ldm_steps: int = 2000
    ldm_batch_size: int = 32
    ldm_lr: float = 1e-3
    model_channels: int = 48  # UNet width
    context_length: int = 16  # text tokens (the captions have about 10)
    text_width: int = 64  # width of the tiny text transformer (2 layers)
    text_heads: int = 4
    ema_decay: float = 0.995
    partial_captions: float = 0.0  # share of stage-2 captions that leave one attribute out
    objective: str = "eps"  # "eps" (noise prediction, min-SNR) or "flow" (flow matching, logit-normal t)
    denoiser: str = "unet"  # "unet" or "mmdit" (SD3's joint-attention transformer, width below)
    mmdit_width: int = 128  # mmdit token width (depth 6, 4 heads, patch 1 on the 8x8 latents)
    # sampling
    samples_per_prompt: int = 4
    sampler: str = "dpmpp_2m"
    sample_steps: int = 20
    guidance: float = 2.5  # classifier-free guidance scale

    def __attrs_post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"QuickstartSettings.objective: expected one of {list(OBJECTIVES)}, got {self.objective!r}")
        if self.denoiser not in ("unet", "mmdit"):
            raise ValueError(f"QuickstartSettings.denoiser: expected 'unet' or 'mmdit', got {self.denoiser!r}")

    def fingerprint(self) -> str:
        """Short hash of every setting (a rerun in the same directory must match it)."""
        return hashlib.sha256(json.dumps(attrs.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


#: ``--fast``: the same pipeline at toy size (tens of seconds); adherence is not meaningful.
FAST_SETTINGS = QuickstartSettings(
    dataset_length=256, ae_steps=12, ae_batch_size=8, ae_channels=8, ldm_steps=16,
    ldm_batch_size=8, model_channels=16, text_width=32, text_heads=2, samples_per_prompt=1, sample_steps=4,
    mmdit_width=32,
)


def _toml(value: Any) -> str:
    """A TOML literal for a str / number / bool / list (JSON's syntax is TOML's for these)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _autoencoder_section(s: QuickstartSettings) -> str:
    return f"""[autoencoder]
name = "kl"
config = "f4"
base_channels = {s.ae_channels}
channel_multipliers = [1, 2, 2]   # three levels: f = 4
num_res_blocks = 1
norm_num_groups = {min(8, s.ae_channels)}
latent_channels = {s.latent_channels}
attention = false
"""


def _denoiser_section(s: QuickstartSettings) -> str:
    if s.denoiser == "mmdit":
        return f"""[denoiser]                    # in/out channels, crossattn_dim and vector_dim come from the other parts
name = "mmdit"
hidden_size = {s.mmdit_width}
depth = 6
num_heads = 4
patch_size = 1                # 8x8 latents: 64 image tokens beside the text tokens
input_size = {s.image_size // 4}
qk_norm = true
"""
    return f"""[denoiser]                    # in/out channels and crossattn_dim come from the other parts
name = "unet"
model_channels = {s.model_channels}
channel_mult = [1, 2]
num_res_blocks = 1
attention_resolutions = [1, 2]
num_heads = 4
norm_groups = {min(16, s.model_channels // 2)}
"""


def autoencoder_config(s: QuickstartSettings, output_dir: str | os.PathLike[str]) -> str:
    """Stage 1 as a TOML config: the KL autoencoder on ``shapes`` (L1 + tiny KL term; the
    discriminator never starts in so few steps)."""
    return f"""# latentkit quickstart, stage 1: autoencoder (written by `latentkit quickstart`)
[model]
kind = "autoencoder"
reconstruction = "l2"          # squared error: a wrong colour costs more than a soft edge
kl_weight = 1e-6
disc_start = {s.ae_steps + 1}   # no GAN term: the run is too short for it to help
disc_num_layers = 1
disc_channels = 8

{_autoencoder_section(s)}
[data]
name = "shapes"
size = {s.image_size}
length = {s.dataset_length}
seed = {s.seed}
exclude = {_toml(list(s.held_out))}

[training]
output_dir = {_toml(str(output_dir))}
max_steps = {s.ae_steps}
batch_size = {s.ae_batch_size}
lr = {s.ae_lr}
betas = [0.9, 0.99]
warmup_steps = {max(1, s.ae_steps // 20)}
lr_decay = "cosine"
min_lr_ratio = 0.1
checkpoint_every = {s.ae_steps}
keep_last = 1
log_every = 10
seed = {s.seed}
"""


def diffusion_config(
    s: QuickstartSettings, output_dir: str | os.PathLike[str], autoencoder_dir: str | os.PathLike[str]
) -> str:
    """Stage 2 as a TOML config: text-conditioned latent diffusion on cached latents of the
    frozen stage-1 autoencoder (``weights_from``), held-out captions excluded."""
    latent = s.image_size // 4
    schedule, objective = OBJECTIVES[s.objective]
    return f"""# latentkit quickstart, stage 2: text-to-image latent diffusion (written by `latentkit quickstart`)
{_autoencoder_section(s)}weights_from = {_toml(str(autoencoder_dir))}   # stage 1, latent statistics fitted

[conditioner]
name = "openclip_text"
model_name = "tiny"           # open_clip tokenizer + a tiny text transformer, trained here
text_cfg = {{ context_length = {s.context_length}, width = {s.text_width}, heads = {s.text_heads} }}   # captions are ~10 tokens
outputs = ["crossattn", "vector"]   # tokens to cross-attention, the pooled prompt to the timestep embedding
trainable = false             # random and frozen: trained along, the tiny tower collapses the prompts
dropout = 0.1                 # null prompt 10% of the time: classifier-free guidance

{_denoiser_section(s)}
[schedule]
{schedule}

[model]
{objective}
latent_size = [{latent}, {latent}]

[data]
name = "shapes"
size = {s.image_size}
length = {s.dataset_length}
seed = {s.seed}
exclude = {_toml(list(s.held_out))}
partial_captions = {s.partial_captions}   # "a red circle", "a circle at the top left", ...: each word alone
cache_latents = true
cache_flip = false            # a mirrored "top left" shape would contradict its caption
cache_dir = {_toml(str(Path(output_dir) / "latent_cache"))}

[training]
output_dir = {_toml(str(output_dir))}
max_steps = {s.ldm_steps}
batch_size = {s.ldm_batch_size}
lr = {s.ldm_lr}
warmup_steps = {max(1, s.ldm_steps // 20)}
lr_decay = "cosine"
min_lr_ratio = 0.05
ema_decay = {s.ema_decay}
checkpoint_every = {s.ldm_steps}
keep_last = 1
log_every = 10
seed = {s.seed}
"""


@attrs.frozen
class StageTime:
    """Wall-clock and process CPU seconds (all threads) of one stage."""

    wall_s: float
    cpu_s: float


@attrs.frozen
class QuickstartResult:
    """What :func:`run_quickstart` produced."""

    output_dir: Path
    grid: Path
    report_json: Path
    report_md: Path
    adherence: Any  # latentkit.evaluation.AdherenceReport
    reconstruction: Any  # latentkit.evaluation.ReconstructionReport
    reconstruction_adherence: Any  # the checker on autoencoder reconstructions (a ceiling)
    timings: dict[str, StageTime]
    settings: QuickstartSettings

    @property
    def total_wall_s(self) -> float:
        """Wall-clock seconds of the whole run."""
        return sum(t.wall_s for t in self.timings.values())

    @property
    def total_cpu_s(self) -> float:
        """Process CPU seconds of the whole run (all threads)."""
        return sum(t.cpu_s for t in self.timings.values())


@contextlib.contextmanager
def _timed(timings: dict[str, StageTime], name: str) -> Iterator[None]:
    w0, c0 = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        timings[name] = StageTime(time.perf_counter() - w0, time.process_time() - c0)


def _check_output_dir(out: Path, s: QuickstartSettings) -> None:
    """A rerun in the same directory resumes; a run with other settings there would mix."""
    marker = out / "settings.json"
    if marker.exists():
        try:
            found = json.loads(marker.read_text()).get("fingerprint")
        except (OSError, ValueError):
            found = None
        if found != s.fingerprint():
            from latentkit.errors import LatentkitError

            raise LatentkitError(
                f"{out} holds a quickstart run with other settings; pass another --output "
                "(or delete that directory)"
            )
    atomic_write_text(marker, json.dumps({"fingerprint": s.fingerprint(), "settings": attrs.asdict(s)}, indent=2))


def _train(config_path: Path, text: str, progress: bool) -> Any:
    """Write a stage's config next to the results and train it as ``latentkit train`` does
    (:func:`latentkit.experiment.train`); returns the trainer."""
    from latentkit.experiment import loads_config, train

    atomic_write_text(config_path, text)
    return train(loads_config(text, path=str(config_path)), overrides={} if progress else {"progress": False})


def run_quickstart(
    output_dir: str | os.PathLike[str] = "runs/quickstart",
    *,
    settings: QuickstartSettings | None = None,
    fast: bool = False,
    objective: str | None = None,
    denoiser: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> QuickstartResult:
    """Train the autoencoder, then the text-conditioned latent diffusion model, sample the
    held-out prompts and measure their adherence; see the module docstring.

    Writes into ``output_dir``: ``autoencoder.toml`` and ``diffusion.toml`` (the two configs),
    ``autoencoder/`` (stage-1 runs and the saved autoencoder), ``diffusion/`` (stage-2 run),
    ``samples.png`` (the captioned grid), ``report.json`` and ``report.md``. Rerunning in the
    same directory resumes from the checkpoints there. ``objective`` (``"eps"`` or
    ``"flow"``, see :data:`OBJECTIVES`) and ``denoiser`` (``"unet"`` or ``"mmdit"``) replace
    the settings' stage-2 objective and backbone.
    """
    from latentkit.data.shapes import ShapesDataset
    from latentkit.evaluation import prompt_adherence, reconstruction_metrics
    from latentkit.samples import conditioning_batch, draw, write_samples

    s = settings if settings is not None else (FAST_SETTINGS if fast else QuickstartSettings())
    if objective is not None:
        s = attrs.evolve(s, objective=objective)
    if denoiser is not None:
        s = attrs.evolve(s, denoiser=denoiser)
    out = Path(output_dir)
    _check_output_dir(out, s)
    timings: dict[str, StageTime] = {}
    threads = torch.get_num_threads()
    echo(f"latentkit quickstart -> {out}  ({'fast, toy size' if fast else 'full'}; torch threads: {threads})")
    echo(f"held-out prompts (never seen in training): {len(s.held_out)}")

    # ------------------------------------------------------------ stage 1: autoencoder
    echo(f"\n[1/3] autoencoder: KL, f=4, {s.ae_steps} steps of {s.ae_batch_size} images")
    ae_run = out / "autoencoder" / "run"
    ae_saved = out / "autoencoder" / "pretrained"
    with _timed(timings, "autoencoder"):
        trainer = _train(out / "autoencoder.toml", autoencoder_config(s, ae_run), progress)
        autoencoder = trainer.model.autoencoder.eval()
        data = ShapesDataset(size=s.image_size, length=s.dataset_length, seed=s.seed, exclude=s.held_out)
        images = torch.stack([data[i]["image"] for i in range(min(256, len(data)))])
        stats = autoencoder.fit_latent_statistics(images, batch_size=64, shift=True, sample=False)
        autoencoder.save_pretrained(ae_saved)
        held = ShapesDataset(size=s.image_size, length=64, seed=s.seed + 1)
        originals = torch.stack([held[i]["image"] for i in range(len(held))])
        recon = reconstruction_metrics(autoencoder, originals)
        with torch.no_grad():  # the checker on reconstructions: a ceiling for stage 2
            device = next(autoencoder.parameters()).device  # the trainer's: CUDA when there is one
            rebuilt = autoencoder.decode(autoencoder.encode(originals.to(device)).mode()).clamp(-1, 1).cpu()
        recon_check = prompt_adherence(rebuilt, [held[i]["caption"] for i in range(len(held))])
    echo(f"      reconstruction: {recon.summary()}; latent std {stats.std:.3f} "
         f"(scaling_factor {stats.scaling_factor:.3f})")
    echo(f"      checker on reconstructions: {recon_check.summary()}")

    # ------------------------------------------------------------ stage 2: diffusion
    backbone = f"UNet width {s.model_channels}" if s.denoiser == "unet" else f"MMDiT width {s.mmdit_width}"
    echo(f"\n[2/3] latent diffusion ({s.objective}): {backbone} + tiny open_clip text tower, "
         f"{s.ldm_steps} steps of {s.ldm_batch_size} cached latents")
    with _timed(timings, "diffusion"):
        trainer = _train(out / "diffusion.toml", diffusion_config(s, out / "diffusion", ae_saved), progress)
    model = trainer.model

    # ------------------------------------------------------------ stage 3: sample + check
    prompts = [p for p in s.held_out for _ in range(s.samples_per_prompt)]
    batch, _ = conditioning_batch(model, prompts=s.held_out, num=s.samples_per_prompt)
    echo(f"\n[3/3] sampling {len(prompts)} images for the held-out prompts ({s.sampler}, "
         f"{s.sample_steps} steps, guidance {s.guidance})")
    with _timed(timings, "sampling"):
        model.eval()
        ema = trainer.ema.applied(model) if trainer.ema is not None else contextlib.nullcontext()
        with ema:
            drawn = draw(model, batch, prompts, sampler=s.sampler, steps=s.sample_steps,
                         guidance_scale=s.guidance, seed=s.seed)
        report = prompt_adherence(drawn.images, prompts)
        checked = [f"{v.prompt} [{'ok' if v.adheres else 'miss'}]" for v in report.verdicts]
        grid = write_samples(attrs.evolve(drawn, captions=checked), out / "samples.png",
                             nrow=max(1, s.samples_per_prompt)).paths[0]
    result = QuickstartResult(out, Path(grid), out / "report.json", out / "report.md", report, recon,
                              recon_check, timings, s)
    _write_reports(result, threads)
    echo(f"\nprompt {report.summary()}")
    echo(f"time: {result.total_wall_s:.0f} s wall, {result.total_cpu_s:.0f} s CPU "
         + ", ".join(f"{k} {v.wall_s:.0f} s" for k, v in timings.items()))
    echo(f"grid: {grid}\nreport: {result.report_md}")
    return result


def _write_reports(r: QuickstartResult, threads: int) -> None:
    rep = r.adherence
    data = {
        "adherence": rep.as_dict(),
        "reconstruction": r.reconstruction.as_dict(),
        "reconstruction_adherence": r.reconstruction_adherence.adherence,
        "timings": {k: attrs.asdict(v) for k, v in r.timings.items()},
        "total_wall_s": r.total_wall_s,
        "total_cpu_s": r.total_cpu_s,
        "torch_threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
        "settings": attrs.asdict(r.settings),
        "grid": str(r.grid),
    }
    atomic_write_text(r.report_json, json.dumps(data, indent=2))
    lines = [
        "# latentkit quickstart report",
        "",
        f"**Prompt adherence on held-out prompts: {100 * rep.adherence:.1f}%** "
        f"(colour and shape both right, {sum(v.adheres for v in rep.verdicts)}/{len(rep.verdicts)} images; "
        f"colour {100 * rep.color_accuracy:.1f}%, shape {100 * rep.shape_accuracy:.1f}%, "
        f"position {100 * rep.position_accuracy:.1f}%).",
        "",
        f"Autoencoder reconstruction: {r.reconstruction.summary()}; the checker on "
        f"reconstructions of real images: {r.reconstruction_adherence.summary()}.",
        "",
        f"Time: {r.total_wall_s:.0f} s wall-clock, {r.total_cpu_s:.0f} s CPU "
        f"({threads} torch threads, {os.cpu_count()} CPUs).",
        "",
        "| stage | wall (s) | CPU (s) |",
        "| --- | ---: | ---: |",
        *(f"| {k} | {v.wall_s:.1f} | {v.cpu_s:.1f} |" for k, v in r.timings.items()),
        "",
        f"![samples]({r.grid.name})",
        "",
        "| prompt | adherence | seen colour / shape / position |",
        "| --- | ---: | --- |",
    ]
    by_prompt: dict[str, list[Any]] = {}
    for v in rep.verdicts:
        by_prompt.setdefault(v.prompt, []).append(v)
    for prompt, vs in by_prompt.items():
        seen = "; ".join(f"{v.color} {v.shape} {v.position}" for v in vs)
        lines.append(f"| {prompt} | {100 * sum(v.adheres for v in vs) / len(vs):.0f}% | {seen} |")
    atomic_write_text(r.report_md, "\n".join(lines) + "\n")
