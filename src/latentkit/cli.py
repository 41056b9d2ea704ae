"""The ``latentkit`` command line.

* ``latentkit plugins`` lists registered components per kind and the plugins that failed to
  load; ``latentkit check`` runs the conformance kit over installed components;
* ``latentkit train CONFIG`` trains what a TOML config describes (also under ``torchrun``);
* ``latentkit sample RUN --prompt ...`` draws samples from a trained run (or, with
  ``--checkpoint FILE``, from a Stable Diffusion single-file checkpoint) into a captioned PNG
  grid, or into the files the plugin of the data layout writes (a GIF for video, meshes for
  volumes: the ``latentkit_write_samples`` hook);
* ``latentkit eval RUN`` measures prompt adherence (``shapes`` prompts) or reconstruction;
* ``latentkit quickstart`` trains a small text-to-image latent diffusion model on the CPU.

Every command takes ``--help``; a bad argument, config or checkpoint is a one-line error
(exit status 2), not a traceback (set ``LATENTKIT_TRACEBACK=1`` to see one). See docs/cli.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from latentkit.errors import LatentkitError, UnknownComponentError
from latentkit.interfaces import KINDS

__all__ = ["build_parser", "main"]

CHECKED_KINDS = ("autoencoder", "denoiser", "conditioner", "sampler", "schedule")


def _table(rows: Sequence[Sequence[str]], header: Sequence[str], out: TextIO, max_width: int = 60) -> None:
    cells = [[str(c) if len(str(c)) <= max_width else str(c)[: max_width - 1] + "…" for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in cells:
        print(fmt.format(*r).rstrip(), file=out)


def cmd_plugins(args: argparse.Namespace, out: TextIO) -> int:
    """Print a table of components per kind, then broken plugins with their errors."""
    from latentkit.plugins import PluginManager

    manager = PluginManager(strict=args.strict)
    kinds = [args.kind] if args.kind else list(KINDS)
    for kind in kinds:
        infos = manager.list(kind)
        print(f"\n{kind}s ({len(infos)})", file=out)
        if infos:
            _table(
                [
                    (i.name, i.summary, i.plugin, f"{i.distribution or '-'} {i.version or ''}".strip())
                    for i in infos
                ],
                ("name", "summary", "plugin", "distribution"),
                out,
            )
    if manager.broken:
        print(f"\nbroken plugins ({len(manager.broken)}), skipped:", file=out)
        for b in manager.broken:
            dist = f"{b.distribution} {b.version or ''}".strip() if b.distribution else "unknown distribution"
            print(f"  {b.plugin} ({dist}) at {b.stage}: {b.error}", file=out)
            if args.verbose:
                print("    " + b.traceback.replace("\n", "\n    "), file=out)
    return 0


def _select(names: Sequence[str], kind: str | None) -> list[Any]:
    from latentkit.plugins import _suggest, get_plugin_manager

    manager = get_plugin_manager()
    kinds = [kind] if kind else list(CHECKED_KINDS)
    infos = [i for k in kinds for i in manager.list(k)]
    if not names:
        return list(infos)
    chosen = []
    for spec in names:
        k, _, n = spec.rpartition(":")
        if k:
            chosen.append(manager.get(k, n))
            continue
        matches = [i for i in infos if i.name == n]
        if not matches:
            raise UnknownComponentError(f"no component named {n!r}; {_suggest(n, {i.name for i in infos})}")
        chosen.extend(matches)
    return chosen


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    """Run the conformance kit (and optionally the combination checks); non-zero on failure."""
    from latentkit import testing

    results = []
    if args.names or not args.combinations or args.all:
        results += testing.run_checks(_select(args.names, args.kind))
    if args.combinations:
        from latentkit.testing.combinations import run_combinations

        results += run_combinations(max_examples=args.max_examples)
    rows = [
        (r.kind, r.component, r.layout or "-", r.check, "PASS" if r.passed else "FAIL")
        for r in results
    ]
    _table(rows, ("kind", "component", "layout", "check", "result"), out, max_width=70)
    failed = [r for r in results if not r.passed]
    for r in failed:
        print(f"\nFAIL {r.kind}:{r.component} [{r.layout or '-'}] {r.check}\n  {r.message}", file=out)
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed", file=out)
    return 1 if failed else 0


# ----------------------------------------------------------------------- train / sample / eval

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
    trainer = build_trainer(with_overrides(load_config(path), overrides))
    main_rank = _is_main_rank()
    if trainer.config.resume and trainer.resume():
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
            print(f"sample it: latentkit sample {trainer.output_dir} --prompt '...' --out grid.png", file=out)
    return 0


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


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
    return draw(model, batch, captions, latent_size=size, negative_prompt=args.negative_prompt, init_image=init,
                mask=mask, strength=args.strength, sampler=args.sampler, steps=args.steps,
                guidance_scale=args.guidance, seed=args.seed)


def _add_sampling_options(p: argparse.ArgumentParser, *, default_num: int) -> None:
    p.add_argument("--sampler", default="euler", help="registered sampler (see `latentkit plugins --kind sampler`)")
    p.add_argument("--steps", type=_positive_int, default=20, help="sampling steps (default 20)")
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

    model, config = _load_for_sampling(args)
    drawn = _draw(model, config, args)
    written = write_samples(drawn, args.out, nrow=args.num)
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
                print(f"grid: {write_samples(checked, args.out, nrow=args.num).paths[0]}", file=out)
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2))
        print(f"metrics written to {args.json}", file=out)
    return 0


def cmd_quickstart(args: argparse.Namespace, out: TextIO) -> int:
    """Train a small text-to-image latent diffusion model on `shapes` and report adherence."""
    from latentkit.quickstart import run_quickstart

    output = args.output or ("runs/quickstart-fast" if args.fast else "runs/quickstart")

    def echo(line: str) -> None:
        print(line, file=out, flush=True)

    result = run_quickstart(output, fast=args.fast, progress=not args.no_progress, echo=echo)
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


def _add_run_commands(sub: Any) -> None:
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
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_quickstart)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``latentkit`` command."""
    parser = argparse.ArgumentParser(
        prog="latentkit", description="latentkit: composable latent diffusion models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("plugins", help="list registered components and broken plugins")
    p.add_argument("--kind", choices=KINDS, help="only this component kind")
    p.add_argument("--strict", action="store_true", help="fail on the first broken plugin")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of broken plugins")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("check", help="run the conformance kit on installed components")
    p.add_argument("names", nargs="*", metavar="NAME", help="components to check (NAME or KIND:NAME); default all")
    p.add_argument("--kind", choices=CHECKED_KINDS, help="only components of this kind")
    p.add_argument("--combinations", action="store_true",
                   help="also check random combinations of installed components (property test)")
    p.add_argument("--all", action="store_true", help="with --combinations: run the per-component checks too")
    p.add_argument("--max-examples", type=int, default=20, help="combinations to draw (default 20)")
    p.set_defaults(func=cmd_check)
    _add_run_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``latentkit`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    try:
        return int(args.func(args, out))
    except KeyboardInterrupt:
        print(f"latentkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except (LatentkitError, KeyError, OSError, ValueError, TypeError) as exc:
        if os.environ.get("LATENTKIT_TRACEBACK", "").strip().lower() in ("1", "true", "yes"):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            message = f"{exc.strerror}: {exc.filename}"
        print(f"latentkit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
