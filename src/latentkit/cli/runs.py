"""``latentkit train``, ``sample``, ``eval`` and ``quickstart``: argument parsing and printing
around the experiment layer (:mod:`latentkit.experiment`: configs, runs) and the sampling
pipeline (:mod:`latentkit.samples`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from latentkit.cli.stage import stage

__all__ = ["add_run_commands", "cmd_eval", "cmd_quickstart", "cmd_sample", "cmd_train"]


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def cmd_train(args: argparse.Namespace, out: TextIO) -> int:
    """Train the model a TOML config describes; resumable, and DDP under ``torchrun``."""
    from latentkit.experiment import build_trainer, load_config, with_overrides

    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(2, "no such config file", str(path))
    overrides: dict[str, Any] = {}
    if args.output is not None:
        overrides["output_dir"] = args.output
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.resume is not None:
        overrides["resume"] = args.resume
    if args.no_progress:
        overrides["progress"] = False
    if args.compile:
        overrides["compile"] = True
    with stage("reading the config"):
        config = with_overrides(load_config(path), overrides)
    with stage("building the model and data"):
        trainer = build_trainer(config)  # resumes, when there is a run
    main_rank = _is_main_rank()
    if trainer.step > 0:
        if main_rank:
            print(f"resuming from {trainer.last_checkpoint} (step {trainer.step})", file=out)
    elif args.resume and main_rank:
        print(f"no checkpoint under {trainer.checkpoint_dir}; starting from step 0", file=out)
    if main_rank:
        size = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        print(f"training {type(trainer.model).__name__} ({size / 1e6:.2f}M trainable parameters) on "
              f"{len(trainer.dataset)} items, {trainer.device}, world size {trainer.dist.world_size} -> "  # type: ignore[arg-type]
              f"{trainer.output_dir}", file=out)
    try:
        with stage(lambda: f"training (after step {trainer.step}; last checkpoint "
                           f"{trainer.last_checkpoint or 'none'})"):
            metrics = trainer.fit()
    except KeyboardInterrupt:
        if main_rank:
            print(f"interrupted at step {trainer.step}; last checkpoint: {trainer.last_checkpoint or 'none'}; "
                  f"continue with `latentkit train {args.config} --resume`", file=sys.stderr)
        return 130
    if main_rank:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in ("loss", "lr", "grad_norm"))
        print(f"done: step {trainer.step} ({shown}); checkpoint {trainer.last_checkpoint}", file=out)
        if hasattr(trainer.model, "sample"):
            keys = getattr(getattr(trainer.model, "conditioner", None), "input_keys", ()) or ()
            what = "--prompt '...' " if "caption" in keys else "--label 0 " if "label" in keys else ""
            print(f"sample it: latentkit sample {trainer.output_dir} {what}--out grid.png", file=out)
    return 0


def _device(name: str) -> str:
    from latentkit.training.device import available_device

    return str(available_device(name, "--device"))  # an unknown or absent device: one line, before loading


def _load_for_sampling(args: argparse.Namespace) -> tuple[Any, Any]:
    """(LatentDiffusion, run config or None) from a run or a single-file checkpoint."""
    from latentkit.experiment import load_run

    target = args.checkpoint or args.run
    if target is None:
        raise ValueError("give a run directory (RUN) or --checkpoint FILE")
    if args.checkpoint and args.run:
        raise ValueError("give either a run directory (RUN) or --checkpoint FILE, not both")
    device = _device(args.device)
    if args.checkpoint or Path(target).suffix in SINGLE_FILE_SUFFIXES:
        if not Path(target).is_file():
            raise FileNotFoundError(2, "no such checkpoint file", str(target))
        from latentkit.interop.stable_diffusion import load_stable_diffusion

        return load_stable_diffusion(target, prefer_ema=not args.no_ema, device=device).eval(), None
    model, config = load_run(target, ema=not args.no_ema, device=device)
    if not hasattr(model, "sample"):
        raise ValueError(f"{target} is an autoencoder run (it cannot sample); try `latentkit eval {target}`")
    return model, config


def _draw(model: Any, config: Any, args: argparse.Namespace, prompts: list[str] | None = None) -> Any:
    """The samples ``latentkit sample`` / ``eval`` asked for, through the sampling pipeline."""
    from latentkit.experiment import create_dataset
    from latentkit.samples import conditioning_batch, draw, latent_size, read_image

    batch, captions = conditioning_batch(model, prompts=prompts or args.prompt or (), labels=args.label or (),
                                         num=args.num, names=("--prompt", "--label"))
    if args.negative_prompt is not None and not args.prompt:
        raise ValueError("--negative-prompt needs --prompt")
    if args.negative_prompt is not None and args.guidance == 1.0:
        print("note: --negative-prompt has no effect at --guidance 1", file=sys.stderr)
    if args.mask is not None and args.init_image is None:
        raise ValueError("--mask needs --init-image (the image to inpaint)")
    init = mask = size = None
    spec = model.autoencoder.data_spec
    if args.init_image is not None:
        init = read_image(args.init_image, spec.channels, args.size, spec.value_range)
        if args.mask is not None:
            mask = read_image(args.mask, 1, tuple(init.shape[1:]), (0.0, 1.0))
    else:
        unknown = not args.size and getattr(model, "latent_size", None) is None
        dataset = create_dataset(config) if config is not None and unknown else None  # only when needed
        size = latent_size(model, pixels=args.size, dataset=dataset)
        if size is None and getattr(model, "latent_size", None) is None:
            raise ValueError("cannot tell the image size: pass --size H W (pixels)")
    sampler, timing = _sampler_and_steps(model, args)
    return draw(model, batch, captions, latent_size=size, negative_prompt=args.negative_prompt, init_image=init,
                mask=mask, strength=args.strength, sampler=sampler, guidance_scale=args.guidance, seed=args.seed,
                **timing, **({"compile": True} if getattr(args, "compile", False) else {}))


def _sampler_and_steps(model: Any, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The sampler and ``{"steps": n}`` or, with ``--schedule``, ``{"sigmas": ...}`` from the
    schedule file (checked against the model's weights and the sampler) or list."""
    schedule_arg = getattr(args, "schedule", None)
    if schedule_arg is None:
        return args.sampler or "euler", {"steps": args.steps}
    from latentkit.diffusion.schedule_optimization import load_schedule

    denoiser = getattr(model, "denoiser", None)
    schedule = load_schedule(schedule_arg, model=denoiser, sampler=args.sampler, force=args.force_schedule)
    sampler = args.sampler or schedule.sampler or "euler"
    return sampler, {"sigmas": schedule.tensor()}


def _add_sampling_options(p: argparse.ArgumentParser, *, default_num: int) -> None:
    p.add_argument("--sampler", default=None,
                   help="registered sampler (see `latentkit plugins --kind sampler`; default euler, or the "
                        "one a --schedule file was optimised for)")
    p.add_argument("--steps", type=_positive_int, default=20, help="sampling steps (default 20)")
    p.add_argument("--schedule", metavar="FILE|SIGMAS",
                   help="explicit noise levels: a file from `latentkit schedule optimize`, or a comma-separated "
                        "list ending in 0 (replaces --steps)")
    p.add_argument("--force-schedule", action="store_true",
                   help="use a --schedule file optimised for another model or sampler")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the denoiser (eager, with a warning, where it cannot compile)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale (default 1 = off)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed + i (default 0)")
    p.add_argument("--num", type=_positive_int, default=default_num,
                   help=f"images per prompt or label (default {default_num})")
    p.add_argument("--size", type=_positive_int, nargs="+", metavar="PIXELS",
                   help="image size H [W] in pixels (default: the run's data size)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights, not the EMA weights")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: CUDA if available)")


def cmd_sample(args: argparse.Namespace, out: TextIO) -> int:
    """Sample a trained run into the files of ``--out``: the plugin that owns the data layout
    writes them (``latentkit_write_samples``), else a captioned PNG grid."""
    from latentkit.samples import write_samples

    with stage("loading the model"):
        model, config = _load_for_sampling(args)
    with stage("sampling"):
        drawn = _draw(model, config, args)
    with stage(f"writing {args.out}"):
        written = write_samples(drawn, args.out, nrow=args.num, plugin_manager=getattr(model, "plugin_manager", None))
    paths = written.paths
    what = "image(s)" if written.grid else f"{drawn.layout} sample(s)"
    if len(paths) == 1:
        print(f"wrote {len(drawn.images)} {what} to {paths[0]}", file=out)
    else:
        print(f"wrote {len(drawn.images)} {what} to {len(paths)} files:", file=out)
        for p in paths:
            print(f"  {p}", file=out)
    return 0


def cmd_eval(args: argparse.Namespace, out: TextIO) -> int:
    """Prompt adherence (``shapes`` prompts) of a diffusion run, reconstruction metrics of
    its autoencoder (or of an autoencoder run)."""
    import attrs
    import torch

    from latentkit.evaluation import parse_prompt, prompt_adherence, reconstruction_metrics
    from latentkit.experiment import create_dataset, load_run
    from latentkit.fileio import atomic_write_text
    from latentkit.samples import write_samples

    model, config = load_run(args.run, ema=not args.no_ema, device=_device(args.device))
    autoencoder = model.autoencoder
    results: dict[str, Any] = {"run": str(args.run)}
    data = create_dataset(config)
    key = getattr(data, "data_key", "image")
    n = min(args.items, len(data))
    images = torch.stack([data[i][key] for i in range(n)])
    value_range = tuple(autoencoder.data_spec.value_range)
    if not autoencoder.is_pixel_space:
        recon = reconstruction_metrics(autoencoder, images, value_range=value_range)
        results["reconstruction"] = recon.as_dict()
        print(f"reconstruction ({config.data.name}, {n} items): {recon.summary()}", file=out)
    if hasattr(model, "sample"):
        keys = tuple(getattr(model.conditioner, "input_keys", ()) or ()) if model.conditioner else ()
        prompts = list(args.prompt or [])
        if not prompts and "caption" in keys:
            held_out = list(getattr(data, "exclude", ()) or ())
            prompts = held_out or sorted(getattr(data, "captions", []))[: args.max_prompts]
            if held_out:
                print(f"prompts: the {len(held_out)} captions held out of training", file=out)
        if "caption" not in keys or not prompts:
            print("prompt adherence: not applicable (needs a text-conditioned model and shapes-style "
                  "prompts such as 'a red circle at the top left')", file=out)
        else:
            for p in prompts:
                parse_prompt(p)  # a clear error before any sampling
            drawn = _draw(model, config, args, prompts=prompts)
            assert drawn.captions is not None
            report = prompt_adherence(drawn.images, drawn.captions, value_range=value_range)
            results["prompt_adherence"] = report.as_dict()
            print(f"prompt {report.summary()}", file=out)
            for prompt, rate in report.per_prompt().items():
                print(f"  {100 * rate:5.1f}%  {prompt}", file=out)
            if args.out:
                tiles = [f"{v.prompt} [{'ok' if v.adheres else 'miss'}]" for v in report.verdicts]
                checked = attrs.evolve(drawn, captions=tiles)
                grid = write_samples(checked, args.out, nrow=args.num, plugin_manager=model.plugin_manager)
                print(f"grid: {grid.paths[0]}", file=out)
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2))
        print(f"metrics written to {args.json}", file=out)
    return 0


def cmd_quickstart(args: argparse.Namespace, out: TextIO) -> int:
    """Train a small text-to-image latent diffusion model on `shapes` and report adherence."""
    from latentkit.quickstart import run_quickstart

    default = "runs/quickstart-fast" if args.fast else "runs/quickstart"
    suffix = "".join(f"-{v}" for v, base in ((args.objective, "eps"), (args.denoiser, "unet")) if v != base)
    output = args.output or default + suffix

    def echo(line: str) -> None:
        print(line, file=out, flush=True)

    result = run_quickstart(output, fast=args.fast, objective=args.objective, denoiser=args.denoiser,
                            progress=not args.no_progress, echo=echo)
    if not args.fast and result.adherence.adherence < 0.8:
        echo("note: adherence is below the 80% this quickstart usually reaches")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_run_commands(sub: Any) -> None:
    """Add ``train``, ``sample``, ``eval`` and ``quickstart`` to the subcommands ``sub``."""
    p = sub.add_parser(
        "train", help="train the model a TOML config describes",
        description="Train an autoencoder or a latent diffusion model from a TOML config "
        "(see docs/training.md). Resumes from the newest intact checkpoint of the output "
        "directory unless the config or --no-resume says otherwise. Under torchrun, trains "
        "with DDP: torchrun --nproc_per_node=2 -m latentkit.cli train CONFIG",
    )
    p.add_argument("config", metavar="CONFIG", help="TOML config file (examples/configs/*.toml)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                   help="continue from the newest intact checkpoint (default: the config's resume, true)")
    p.add_argument("--output", metavar="DIR", help="output directory (overrides [training] output_dir)")
    p.add_argument("--max-steps", type=_positive_int, metavar="N", help="overrides [training] max_steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model's compile targets (overrides [training] compile)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "sample", help="sample a trained model into a PNG grid (or a plugin's format)",
        description="Sample a run trained by `latentkit train` (a run directory, its checkpoints/ "
        "folder or one step_N checkpoint) or a Stable Diffusion 1.x/2.x single-file checkpoint "
        "(--checkpoint FILE) into a captioned PNG grid. The plugin of a video or volume run "
        "writes its own formats, chosen by the suffix of --out (e.g. .gif, .ply, .obj).",
    )
    p.add_argument("run", metavar="RUN", nargs="?", help="run directory or checkpoint")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="a Stable Diffusion single-file checkpoint (.safetensors / .ckpt) instead of RUN")
    p.add_argument("--prompt", action="append", metavar="TEXT", help="prompt (repeatable)")
    p.add_argument("--negative-prompt", metavar="TEXT", help="replaces the empty prompt of guidance")
    p.add_argument("--label", action="append", type=int, metavar="N", help="class label (repeatable)")
    _add_sampling_options(p, default_num=4)
    p.add_argument("--init-image", metavar="IMAGE",
                   help="img2img: start from this image file (resized to --size if given)")
    p.add_argument("--strength", type=float, metavar="S",
                   help="img2img/inpainting: how much of the schedule to run, 0..1 "
                   "(default 0.75 for img2img, 1 for inpainting)")
    p.add_argument("--mask", metavar="IMAGE",
                   help="inpainting (with --init-image): white = region to generate, black = keep")
    p.add_argument("--out", default="grid.png", metavar="FILE",
                   help="output file; its suffix picks the format: .png grid for images, what the "
                   "layout's plugin writes otherwise (video: .gif/.png, volume: .ply/.obj/.png); "
                   "default grid.png")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "eval", help="prompt adherence / reconstruction metrics of a trained run",
        description="Evaluate a run: reconstruction metrics (PSNR, SSIM, L1, MSE) of its "
        "autoencoder on its dataset and, for a text-conditioned model, prompt adherence "
        "(colour and shape of each sample, read by a deterministic checker) on shapes-style "
        "prompts (default: the captions held out of training).",
    )
    p.add_argument("run", metavar="RUN", help="run directory or checkpoint")
    p.add_argument("--prompt", action="append", metavar="TEXT", help="prompt to check (repeatable)")
    p.add_argument("--max-prompts", type=_positive_int, default=16,
                   help="dataset captions checked when none are held out (default 16)")
    p.add_argument("--items", type=_positive_int, default=256, help="items for reconstruction metrics")
    _add_sampling_options(p, default_num=4)
    p.add_argument("--out", metavar="PNG", help="also write the checked samples as a grid")
    p.add_argument("--json", metavar="FILE", help="write every metric as JSON")
    p.set_defaults(func=cmd_eval, checkpoint=None, negative_prompt=None, label=None, init_image=None,
                   mask=None, strength=None)

    p = sub.add_parser(
        "quickstart", help="train a small text-to-image model on the CPU (minutes)",
        description="Train a small autoencoder, then a text-conditioned latent diffusion model "
        "(open_clip tokenizer + tiny text tower) on the synthetic shapes data, sample prompts "
        "held out of training into a grid, and measure prompt adherence. Under 10 minutes on "
        "a 2-core CPU; --fast runs the same pipeline at toy size in seconds.",
    )
    p.add_argument("--output", metavar="DIR", help="output directory (default runs/quickstart)")
    p.add_argument("--fast", action="store_true", help="toy size (~30 s): checks the pipeline only")
    p.add_argument("--objective", choices=("eps", "flow"), default="eps",
                   help="stage-2 objective: eps (noise prediction, default) or flow (flow matching)")
    p.add_argument("--denoiser", choices=("unet", "mmdit"), default="unet",
                   help="stage-2 backbone: unet (default) or mmdit (SD3's joint-attention transformer)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_quickstart)
