"""Held-out prompt adherence of a trained quickstart model at few model calls.

Samples the quickstart's held-out prompts (never seen in training) from a ``latentkit
quickstart`` run with one sampler, at 50 steps of the model's default spacing (the reference
point) and at ``--steps`` (default 5) steps of every spacing of its schedule and of a schedule
optimised for the run (``latentkit schedule optimize``, on the conditioning of the run's own
training data, never the held-out prompts), and prints the adherence of each with the same
seeds.

    latentkit quickstart --objective flow --output runs/qs-flow
    python benchmarks/fewstep_adherence.py runs/qs-flow/diffusion [--steps 5] [--sampler dpmpp_2m]
        [--schedule FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from latentkit.diffusion.sampling import schedule_sigmas
from latentkit.diffusion.schedule_optimization import load_schedule, optimize_model_schedule
from latentkit.evaluation import prompt_adherence
from latentkit.experiment import create_dataset, load_run
from latentkit.quickstart import HELD_OUT_PROMPTS
from latentkit.samples import conditioning_batch, draw


def adherence(model: Any, sigmas: torch.Tensor | None, args: argparse.Namespace, steps: int) -> float:
    """Held-out adherence of ``model`` (4 samples per prompt, seed 0) on ``sigmas`` (or
    ``steps`` steps of the default spacing)."""
    batch, prompts = conditioning_batch(model, prompts=HELD_OUT_PROMPTS, num=args.num)
    timing: dict[str, Any] = {"sigmas": sigmas} if sigmas is not None else {"steps": steps}
    drawn = draw(model, batch, prompts, sampler=args.sampler, guidance_scale=args.guidance, seed=0, **timing)
    return prompt_adherence(drawn.images, prompts).adherence


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison; returns (and prints) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the diffusion run of a quickstart (OUTPUT/diffusion)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--guidance", type=float, default=2.5)
    parser.add_argument("--num", type=int, default=4, help="samples per held-out prompt")
    parser.add_argument("--schedule", help="a schedule file for this run (else optimised here)")
    parser.add_argument("--samples", type=int, default=128, help="draws of the optimisation")
    parser.add_argument("--json", help="write the figures as JSON")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model, config = load_run(args.run)
    model.eval()
    results: dict[str, Any] = {"run": args.run, "sampler": args.sampler, "steps": args.steps}
    started = time.perf_counter()
    results["reference_50_steps"] = adherence(model, None, args, 50)
    shape = tuple(model.latent_size)
    for spacing in model.schedule.spacings:
        sigmas = schedule_sigmas(model.schedule, args.steps, spacing, latent_shape=shape)
        results[f"{args.steps}_steps_{spacing}"] = adherence(model, sigmas, args, args.steps)
    if args.schedule:
        schedule = load_schedule(args.schedule, model=model.denoiser, sampler=args.sampler)
    else:
        dataset = create_dataset(config)
        items = [dataset[i] for i in range(args.samples)]
        batch, _ = conditioning_batch(model, items=items)
        t0 = time.perf_counter()
        schedule = optimize_model_schedule(model, batch, args.steps, args.sampler, guidance_scale=args.guidance)
        results["optimisation_s"] = time.perf_counter() - t0
    results["optimised_sigmas"] = [str(s) for s in schedule.sigmas]
    results[f"{args.steps}_steps_optimised"] = adherence(model, schedule.tensor(), args, args.steps)
    results["total_s"] = time.perf_counter() - started
    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{100 * value:.1f}%" if isinstance(value, float) and key not in ("total_s", "optimisation_s") else value
        print(f"{key:<{width}}  {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
