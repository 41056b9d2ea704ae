"""Compose a latent diffusion model from registered parts and train it, in a few dozen lines.

A class-conditional pixel-space model on scikit-learn's digits: the ``identity`` autoencoder
(so diffusion runs on the pixels themselves), a ``class_label`` conditioner with 10% label
dropout for classifier-free guidance, a small ``unet`` and the ``cosine`` schedule, trained by
the shared :class:`~latentkit.training.Trainer`. Any registered part can be swapped for
another by name (``latentkit plugins`` lists them).

    python examples/compose_and_train.py [OUTPUT_DIR]      # ~2 minutes on a laptop CPU
    LATENTKIT_EXAMPLE_TINY=1 python examples/compose_and_train.py   # seconds (smoke test)

Then sample it with other samplers and guidance scales: examples/sample_with_samplers.py.
"""

from __future__ import annotations

import os
import sys

import torch

import latentkit
from latentkit.samples import save_image_grid
from latentkit.training import Trainer, TrainingConfig

TINY = os.environ.get("LATENTKIT_EXAMPLE_TINY", "") == "1"


def build_model() -> latentkit.LatentDiffusion:
    """The parts, each created by its registered name, composed into one model."""
    autoencoder = latentkit.create("autoencoder", "identity", channels=1)  # pixel space
    conditioner = latentkit.create("conditioner", "class_label", num_classes=10, embed_dim=64,
                                   outputs=["vector"], dropout=0.1)
    denoiser = latentkit.create(
        "denoiser", "unet",
        in_channels=1, out_channels=1, vector_dim=64,  # what the other parts produce
        model_channels=16 if TINY else 48, channel_mult=(1, 2), num_res_blocks=1,
        attention_resolutions=(2,), num_heads=2, norm_groups=8,
    )
    schedule = latentkit.create("schedule", "cosine")
    # the parts are checked against each other here, before any forward pass
    return latentkit.LatentDiffusion(autoencoder, denoiser, conditioner, schedule,
                                     parameterization="v", latent_size=(16, 16))


if __name__ == "__main__":
    output_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/example-digits"
    torch.manual_seed(0)
    data = latentkit.create("dataset", "digits", size=16)  # (1, 16, 16) in [-1, 1], labels 0-9
    model = build_model()

    # trained by the shared loop (progress bar, EMA, checkpoints, metrics.csv, sample grids)
    config = TrainingConfig(
        output_dir=output_dir, max_steps=5 if TINY else 1500, batch_size=8 if TINY else 64,
        lr=1e-3, warmup_steps=1 if TINY else 50, lr_decay="cosine", ema_decay=0.99,
        checkpoint_every=500, sample_every=0 if TINY else 500, sample_labels=list(range(10)),
        sample_guidance=2.0, progress=not TINY,
    )
    metrics = Trainer(model, data, config).fit()
    print(f"trained to loss {metrics['loss']:.4f}; checkpoints in {output_dir}/checkpoints")

    # one sample per digit, with classifier-free guidance
    model.eval()
    images = model.sample({"label": torch.arange(10)}, sampler="dpmpp_2m", steps=4 if TINY else 20,
                          guidance_scale=2.0, seed=0)
    save_image_grid(images.clamp(-1, 1), f"{output_dir}/digits.png",
                    captions=[str(i) for i in range(10)], nrow=10)
    print(f"samples: {output_dir}/digits.png")
