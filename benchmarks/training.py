"""End-to-end training throughput: latent caching, and latent space versus pixel space.

Three runs of the shared :class:`~latentkit.training.Trainer` on the ``shapes`` data (32x32
RGB, captions through the quickstart's tiny open_clip text tower), all with the same UNet
architecture:

1. **latent, encoding every batch**: a KL autoencoder (f = 4, frozen) encodes each batch to
   8x8x4 latents inside ``LatentDiffusion.loss``;
2. **latent, cached**: the same, trained from latents encoded once by
   :func:`latentkit.data.latent_cache.cache_latents` (the one-off caching time is reported);
3. **pixel space**: the ``identity`` autoencoder, so the same UNet runs on 32x32x3 pixels
   (Rombach et al. 2022, Sec. 4.1: the latent model's speed-up over pixel space).

For each: optimizer steps per second (after warm-up steps), and sampling time per image
(``dpmpp_2m``, 20 steps, classifier-free guidance, decoding included). Ratios are printed
from this one run. Wall-clock and process CPU time are both measured: on a shared machine
CPU time is the steadier of the two.

    python benchmarks/training.py                # ~2-4 CPU minutes
    python benchmarks/training.py --steps 5 --warmup 1 --batch 8     # smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import latentkit
from latentkit.data.latent_cache import LatentCacheDataset, cache_latents
from latentkit.training import Trainer, TrainingConfig


def _parts(pixel: bool, width: int) -> latentkit.LatentDiffusion:
    torch.manual_seed(0)
    if pixel:
        autoencoder = latentkit.create("autoencoder", "identity", channels=3)
    else:
        autoencoder = latentkit.create(
            "autoencoder", "kl", config="f4", base_channels=16, channel_multipliers=[1, 2, 2],
            num_res_blocks=1, norm_num_groups=8, latent_channels=4, attention=False,
        )
    conditioner = latentkit.create("conditioner", "openclip_text", model_name="tiny",
                                   text_cfg={"context_length": 16}, outputs=["crossattn"],
                                   trainable=True, dropout=0.1)
    channels = autoencoder.latent_spec.channels
    denoiser = latentkit.create(
        "denoiser", "unet", in_channels=channels, out_channels=channels, crossattn_dim=32,
        model_channels=width, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
        num_heads=4, norm_groups=16,
    )
    return latentkit.LatentDiffusion(autoencoder, denoiser, conditioner, "linear", loss_weighting="min_snr",
                                     gamma=5.0)


def _throughput(model: Any, data: Any, args: argparse.Namespace, out: Path) -> dict[str, float]:
    config = TrainingConfig(output_dir=str(out), max_steps=10**6, batch_size=args.batch, lr=1e-4,
                            progress=False, csv=False, resume=False, checkpoint_every=10**6)
    trainer = Trainer(model, data, config)
    for _ in range(args.warmup):
        trainer.train_step()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        trainer.train_step()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"steps_per_s": args.steps / wall, "cpu_s_per_step": cpu / args.steps}


@torch.no_grad()
def _sampling(model: Any, args: argparse.Namespace, latent_size: tuple[int, int]) -> dict[str, float]:
    model.eval()
    prompts = ["a red circle at the top left"] * args.sample_batch
    kwargs = dict(sampler="dpmpp_2m", steps=20, guidance_scale=3.0, seed=0, latent_size=latent_size)
    model.sample(prompts[:1] and {"caption": prompts[:1]}, **{**kwargs, "steps": 2})  # warm-up
    w0, c0 = time.perf_counter(), time.process_time()
    model.sample({"caption": prompts}, **kwargs)
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    model.train()
    return {"sample_s_per_image": wall / len(prompts), "sample_cpu_s_per_image": cpu / len(prompts)}


def main(argv: list[str] | None = None) -> None:
    """Run the three configurations and print their numbers and ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--width", type=int, default=32, help="UNet model_channels")
    parser.add_argument("--sample-batch", type=int, default=8, help="images sampled at once")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup}; UNet width {args.width}")
    data = latentkit.create("dataset", "shapes", size=32, length=max(512, args.batch * 4))
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        latent = _parts(pixel=False, width=args.width)
        rows["latent, encode every batch"] = _throughput(latent, data, args, root / "a")
        w0, c0 = time.perf_counter(), time.process_time()
        path = cache_latents(data, latent.autoencoder, root / "cache.safetensors", flip=False,
                             batch_size=64)
        cache_wall, cache_cpu = time.perf_counter() - w0, time.process_time() - c0
        latent = _parts(pixel=False, width=args.width)
        rows["latent, cached latents"] = _throughput(latent, LatentCacheDataset(path), args, root / "b")
        rows["latent, cached latents"].update(_sampling(latent, args, (8, 8)))
        pixel = _parts(pixel=True, width=args.width)
        rows["pixel space (identity)"] = _throughput(pixel, data, args, root / "c")
        rows["pixel space (identity)"].update(_sampling(pixel, args, (32, 32)))

    print(f"\n{'configuration':<28} {'steps/s':>9} {'CPU s/step':>11} {'sample s/img':>13} {'CPU s/img':>10}")
    for name, r in rows.items():
        s = f"{r['sample_s_per_image']:.3f}" if "sample_s_per_image" in r else "-"
        c = f"{r['sample_cpu_s_per_image']:.3f}" if "sample_cpu_s_per_image" in r else "-"
        print(f"{name:<28} {r['steps_per_s']:>9.2f} {r['cpu_s_per_step']:>11.3f} {s:>13} {c:>10}")
    print(f"(caching {len(data)} items once: {cache_wall:.1f} s wall, {cache_cpu:.1f} s CPU)")
    a, b, c = rows.values()
    print("\nratios (wall-clock / CPU time):")
    print(f"  cached vs encoding every batch, training speed:  {b['steps_per_s'] / a['steps_per_s']:.2f}x"
          f" / {a['cpu_s_per_step'] / b['cpu_s_per_step']:.2f}x")
    print(f"  latent (cached) vs pixel space, training speed:  {b['steps_per_s'] / c['steps_per_s']:.2f}x"
          f" / {c['cpu_s_per_step'] / b['cpu_s_per_step']:.2f}x")
    print(f"  latent vs pixel space, sampling speed per image: "
          f"{c['sample_s_per_image'] / b['sample_s_per_image']:.2f}x"
          f" / {c['sample_cpu_s_per_image'] / b['sample_cpu_s_per_image']:.2f}x")


if __name__ == "__main__":
    main()
