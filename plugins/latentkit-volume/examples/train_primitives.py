"""Train a small text-conditioned volume diffusion model on 16^3 primitives ("a large
sphere") and report how many samples are closed meshes of the prompted primitive.

    pip install -e plugins/latentkit-volume
    python plugins/latentkit-volume/examples/train_primitives.py --out runs/volume_primitives_demo

Prints the result and writes the sampled meshes (.obj, .ply), grids (.npy) and a preview PNG
to ``<out>/samples``. The defaults are ``train_primitives``' recipe (captions, batch 64, 2000
steps, guidance 2); ``--conditioning class --batch-size 16 --guidance 1`` is the earlier
class-conditional CPU recipe.
"""

from __future__ import annotations

import argparse
import sys

import torch

from latentkit_volume.demo import train_primitives


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, train, sample, check and print the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/volume_primitives_demo", help="output directory")
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--conditioning", choices=("text", "class"), default="text",
                        help="captions through a tiny text tower, or a class label")
    parser.add_argument("--per-shape", type=int, default=8, help="samples per primitive")
    parser.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale")
    parser.add_argument("--sample-steps", type=int, default=24)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--rotate", action="store_true", help="random rotations (harder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = train_primitives(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              per_shape=args.per_shape, guidance_scale=args.guidance,
                              conditioning=args.conditioning,
                              sample_steps=args.sample_steps, seed=args.seed, rotate=args.rotate,
                              progress=not args.no_progress)
    print(result.summary())
    print(f"meshes and previews: {args.out}/samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
