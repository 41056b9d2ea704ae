"""``latentkit schedule optimize``: a step schedule optimised for one trained run and one
sampler (:mod:`latentkit.diffusion.schedule_optimization`), written as JSON for ``latentkit
sample --schedule FILE``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, TextIO

from latentkit.cli.runs import _positive_int
from latentkit.cli.stage import stage

__all__ = ["add_schedule_commands", "cmd_schedule_optimize"]


def _prior_batch(model: Any, config: Any, args: argparse.Namespace) -> tuple[Any, str]:
    """The conditioning of the draws: ``--prompt``s cycled, else the run's own data (its
    captions / labels, the model's prior), else ``--samples`` unconditional draws."""
    from latentkit.samples import conditioning_batch

    n = args.samples
    if args.prompt:
        prompts = [args.prompt[i % len(args.prompt)] for i in range(n)]
        return conditioning_batch(model, prompts=prompts, names=("--prompt", "--label"))[0], f"{len(args.prompt)} prompt(s)"
    if model.conditioner is not None and config is not None:
        from latentkit.experiment import create_dataset

        dataset = create_dataset(config)
        items = [dataset[i % len(dataset)] for i in range(n)]
        return conditioning_batch(model, items=items)[0], f"the conditioning of {n} items of the run's data"
    return conditioning_batch(model, num=n)[0], f"{n} unconditional draws"


def cmd_schedule_optimize(args: argparse.Namespace, out: TextIO) -> int:
    """Optimise ``--steps`` noise levels of ``--sampler`` for the run ``RUN``."""
    from latentkit.cli.runs import _device
    from latentkit.diffusion.schedule_optimization import optimize_model_schedule
    from latentkit.experiment import load_run
    from latentkit.samples import latent_size

    with stage("loading the run"):
        model, config = load_run(args.run, ema=not args.no_ema, device=_device(args.device))
        if not hasattr(model, "sampling_problem"):
            raise ValueError(f"{args.run} is not a diffusion run (it cannot sample)")
        model.eval()
    with stage("preparing the draws"):
        batch, what = _prior_batch(model, config, args)
        size = None
        if getattr(model, "latent_size", None) is None:
            from latentkit.experiment import create_dataset

            size = latent_size(model, pixels=args.size, dataset=create_dataset(config) if config else None)
    started = time.perf_counter()
    with stage(f"optimising {args.steps} steps of {args.sampler}"):
        result = optimize_model_schedule(
            model, batch, args.steps, args.sampler, fine_steps=args.fine_steps, guidance_scale=args.guidance,
            latent_size=size, seed=args.seed, description=f"{Path(args.run)} ({'raw' if args.no_ema else 'EMA'} weights)",
        )
    with stage(f"writing {args.out}"):
        path = result.save(args.out)
    levels = ", ".join("inf" if s == float("inf") else f"{s:.4g}" for s in result.sigmas)
    print(f"{args.steps} steps of {args.sampler} for {args.run} ({what}, guidance {args.guidance}, "
          f"{time.perf_counter() - started:.0f} s): [{levels}]", file=out)
    shown = ", ".join(f"{k} {v:.3g}" for k, v in sorted(result.baselines.items(), key=lambda kv: kv[1]))
    print(f"error against the {result.fine_steps}-step reference: optimised {result.error:.3g} "
          f"(the DP path {result.dp_error:.3g}); spacings: {shown}", file=out)
    print(f"wrote {path}; sample with: latentkit sample {args.run} --schedule {path} --prompt '...'", file=out)
    return 0


def add_schedule_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``schedule`` (with ``optimize``) to the subcommands ``sub``."""
    p = sub.add_parser("schedule", help="step schedules optimised for a trained model")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    opt = actions.add_parser(
        "optimize", help="optimise the noise levels of N steps of a sampler for a run",
        description="Find the noise levels with which SAMPLER integrates RUN's model closest to a fine-step "
                    "reference (GITS dynamic programming, then a search with the sampler itself), on "
                    "draws from the model's own prior. See docs/samplers.md.",
    )
    opt.add_argument("run", metavar="RUN", help="run directory")
    opt.add_argument("--steps", type=_positive_int, required=True, help="number of steps to optimise")
    opt.add_argument("--sampler", default="dpmpp_2m", help="deterministic sampler (default dpmpp_2m)")
    opt.add_argument("--out", required=True, metavar="FILE", help="JSON file to write")
    opt.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale of the draws")
    opt.add_argument("--prompt", action="append", metavar="TEXT",
                     help="prompts of the draws (repeatable; default: the captions of the run's data)")
    opt.add_argument("--samples", type=_positive_int, default=128, help="number of draws (default 128)")
    opt.add_argument("--fine-steps", type=_positive_int, default=64, help="fine grid of the reference (default 64)")
    opt.add_argument("--seed", type=int, default=0, help="seed of the draws (the search is deterministic)")
    opt.add_argument("--size", type=_positive_int, nargs="+", metavar="PIXELS", help="image size H [W]")
    opt.add_argument("--no-ema", action="store_true", help="the raw weights, not the EMA weights")
    opt.add_argument("--device", default="auto", help="cpu, cuda, ... (default: CUDA if available)")
    opt.set_defaults(func=cmd_schedule_optimize)
    p.set_defaults(func=lambda args, out: p.error("choose an action: optimize"))

