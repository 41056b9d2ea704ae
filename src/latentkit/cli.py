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

RUN_CONFIG = "config.toml"  # the config a run was trained with, written by `latentkit train`
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def cmd_train(args: argparse.Namespace, out: TextIO) -> int:
    """Train the model a TOML config describes; resumable, and DDP under ``torchrun``."""
    import attrs

    from latentkit.training import Trainer, build_dataset, build_model, load_config
    from latentkit.training.checkpoint import latest_checkpoint

    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(2, "no such config file", str(path))
    cfg = load_config(path)
    overrides: dict[str, Any] = {}
    if args.output is not None:
        overrides["output_dir"] = args.output
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.resume is not None:
        overrides["resume"] = args.resume
    if args.no_progress:
        overrides["progress"] = False
    if overrides:
        cfg = attrs.evolve(cfg, training=attrs.evolve(cfg.training, **overrides))
    output = Path(cfg.training.output_dir)
    main_rank = _is_main_rank()
    found = latest_checkpoint(output / "checkpoints") if cfg.training.resume else None
    if main_rank:
        if found is not None:
            print(f"resuming from {found.path} (step {found.state['step']})", file=out)
        elif args.resume:
            print(f"no checkpoint under {output / 'checkpoints'}; starting from step 0", file=out)
    import torch

    torch.manual_seed(cfg.training.seed)  # the same config builds the same initial weights
    model = build_model(cfg)
    data = build_dataset(cfg, model)
    trainer = Trainer(model, data, cfg.training)
    if main_rank:
        output.mkdir(parents=True, exist_ok=True)
        note = "".join(f"# command-line override: [training] {k} = {v!r}\n" for k, v in overrides.items())
        (output / RUN_CONFIG).write_text(f"# copied from {path.resolve()} by `latentkit train`\n{note}{cfg.text}")
        size = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"training {type(model).__name__} ({size / 1e6:.2f}M trainable parameters) on "
              f"{len(data)} items, {trainer.device}, world size {trainer.dist.world_size} -> {output}",
              file=out)
    try:
        metrics = trainer.fit()
    except KeyboardInterrupt:
        if main_rank:
            last = trainer.last_checkpoint
            print(f"interrupted at step {trainer.step}; last checkpoint: {last or 'none'}; continue with "
                  f"`latentkit train {args.config} --resume`", file=sys.stderr)
        return 130
    if main_rank:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in ("loss", "lr", "grad_norm"))
        print(f"done: step {trainer.step} ({shown}); checkpoint {trainer.last_checkpoint}", file=out)
        if hasattr(model, "sample"):
            print(f"sample it: latentkit sample {output} --prompt '...' --out grid.png", file=out)
    return 0


def _find_run_config(path: Path) -> Path:
    """The ``config.toml`` of the run that ``path`` (run, ``checkpoints/`` or ``step_N``) is in."""
    for d in (path, *list(path.parents)[:3]):
        if (d / RUN_CONFIG).is_file():
            return d / RUN_CONFIG
    raise FileNotFoundError(
        2, f"no {RUN_CONFIG} next to this checkpoint or above it (runs written by `latentkit train` "
        "or `latentkit quickstart` have one)", str(path))


def load_run(path: str | os.PathLike[str], *, ema: bool = True, device: str = "cpu") -> tuple[Any, Any]:
    """``(model, config)`` of a trained run: the model its ``config.toml`` describes, with the
    weights of ``path`` (a run directory, its ``checkpoints/`` folder or one ``step_N``
    checkpoint; the newest intact one, EMA weights unless ``ema=False``), in eval mode.

    The components' ``weights_from`` are not followed: the checkpoint holds every weight.
    """
    import attrs

    from latentkit.training import build_model, load_config, load_weights

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "no such run or checkpoint", str(path))
    config = load_config(_find_run_config(path))
    parts = {
        name: attrs.evolve(comp, weights_from=None)
        for name in ("autoencoder", "denoiser", "conditioner", "schedule")
        if (comp := getattr(config, name)) is not None
    }
    config = attrs.evolve(config, **parts)
    model = build_model(config)
    where = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    model.load_state_dict(load_weights(where, ema=ema))
    return model.to(device).eval(), config


def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _load_for_sampling(args: argparse.Namespace) -> tuple[Any, Any]:
    """(LatentDiffusion, run config or None) from a run or a single-file checkpoint."""
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


def _conditioning_batch(model: Any, args: argparse.Namespace) -> tuple[Any, list[str] | None]:
    """The sampling batch and tile captions for --prompt / --label / --num."""
    import torch

    keys = tuple(getattr(model.conditioner, "input_keys", ()) or ()) if model.conditioner is not None else ()
    n = args.num
    if args.prompt:
        if keys and "caption" not in keys:
            raise ValueError(f"--prompt needs a text-conditioned model; this one reads {list(keys)} "
                             "(use --label for class labels)")
        prompts = [p for p in args.prompt for _ in range(n)]
        return {"caption": prompts}, prompts
    if args.label:
        if "label" not in keys:
            raise ValueError(f"--label needs a class-conditioned model; this one reads {list(keys) or 'nothing'}")
        labels = [v for v in args.label for _ in range(n)]
        return {"label": torch.tensor(labels, dtype=torch.long)}, [f"label {v}" for v in labels]
    if keys:
        raise ValueError(f"this model is conditioned on {list(keys)}: pass --prompt TEXT (or --label N)")
    return n, None


def _latent_size(model: Any, config: Any, size: Sequence[int] | None) -> tuple[int, ...] | None:
    """Latent spatial size from --size (pixels), the model, or the run's dataset."""
    spec = model.autoencoder.latent_spec
    if size:
        pixels = tuple(size) * (len(spec.downsampling) if len(size) == 1 else 1)
        return tuple(spec.latent_size(pixels))
    if getattr(model, "latent_size", None) is not None:
        return None  # the model knows
    if config is not None:
        import latentkit

        data = latentkit.create("dataset", config.data.name, **config.data.options)
        x = data[0].get(getattr(data, "data_key", "image"))
        if x is not None:
            return tuple(spec.latent_size(tuple(x.shape[1:])))
    raise ValueError("cannot tell the image size: pass --size H W (pixels)")


def _sample_images(model: Any, config: Any, args: argparse.Namespace, batch: Any) -> Any:
    import torch

    options: dict[str, Any] = {"sampler": args.sampler, "steps": args.steps, "guidance_scale": args.guidance,
                               "seed": args.seed}
    if args.init_image is None:  # otherwise the init image decides the size
        latent = _latent_size(model, config, args.size)
        if latent is not None:
            options["latent_size"] = latent
    if args.negative_prompt is not None:
        if not isinstance(batch, dict) or "caption" not in batch:
            raise ValueError("--negative-prompt needs --prompt")
        options["negative"] = {"caption": [args.negative_prompt] * len(batch["caption"])}
    if options["guidance_scale"] == 1.0 and args.negative_prompt is not None:
        print("note: --negative-prompt has no effect at --guidance 1", file=sys.stderr)
    if args.mask is not None and args.init_image is None:
        raise ValueError("--mask needs --init-image (the image to inpaint)")
    with torch.no_grad():
        if args.init_image is None:
            return model.sample(batch, **options).float().cpu()
        count = len(batch["caption"] if isinstance(batch, dict) and "caption" in batch else
                    batch["label"] if isinstance(batch, dict) else range(batch))
        spec = model.autoencoder.data_spec
        image = _read_image(args.init_image, spec.channels, args.size, spec.value_range)
        model.autoencoder.latent_spec.latent_size(tuple(image.shape[1:]))  # clear error if indivisible
        images = image.unsqueeze(0).expand(count, *image.shape).contiguous()
        cond_batch = batch if isinstance(batch, dict) else None
        if args.mask is not None:
            mask = _read_image(args.mask, 1, tuple(image.shape[1:]), (0.0, 1.0))
            masks = (mask > 0.5).float().unsqueeze(0).expand(count, *mask.shape).contiguous()
            strength = 1.0 if args.strength is None else args.strength
            return model.inpaint(images, masks, batch=cond_batch, strength=strength, **options).float().cpu()
        strength = 0.75 if args.strength is None else args.strength
        return model.img2img(images, strength, batch=cond_batch, **options).float().cpu()


def _read_image(path: str, channels: int, size: Sequence[int] | None, value_range: Sequence[float]) -> Any:
    """An image file as a (C, H, W) float tensor in ``value_range``, resized to ``size`` (H [W])."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if size:
                h, w = (size[0], size[0]) if len(size) == 1 else (size[0], size[1])
                img = img.resize((w, h), Image.Resampling.BICUBIC)
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"cannot read image {path!r}: {exc}") from None
    tensor = torch.from_numpy(array.copy())
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    lo, hi = float(value_range[0]), float(value_range[1])
    return tensor * (hi - lo) + lo


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


GRID_FORMATS = {".png": "a captioned grid"}  # what the built-in writer does when no plugin owns the layout


def cmd_sample(args: argparse.Namespace, out: TextIO) -> int:
    """Sample a trained run into the files of ``--out``: the plugin that owns the data layout
    writes them (``latentkit_write_samples``), else a captioned PNG grid."""
    from latentkit.hookspecs import output_suffix
    from latentkit.plugins import get_plugin_manager
    from latentkit.training import save_image_grid

    model, config = _load_for_sampling(args)
    batch, captions = _conditioning_batch(model, args)
    images = _sample_images(model, config, args, batch)
    spec = model.autoencoder.data_spec
    value_range = (float(spec.value_range[0]), float(spec.value_range[1]))
    images = images.clamp(*value_range)
    written = get_plugin_manager().hook.latentkit_write_samples(
        samples=images, path=str(args.out), layout=spec.layout, captions=captions, value_range=value_range)
    if written is None:  # no plugin owns the layout: the built-in grid
        output_suffix(args.out, GRID_FORMATS, writer="latentkit (no installed plugin owns this layout)",
                      layout=spec.layout)
        path = save_image_grid(images, args.out, captions=captions, nrow=args.num, value_range=value_range)
        print(f"wrote {len(images)} image(s) to {path}", file=out)
        return 0
    paths = [Path(p) for p in written]
    if len(paths) == 1:
        print(f"wrote {len(images)} {spec.layout} sample(s) to {paths[0]}", file=out)
    else:
        print(f"wrote {len(images)} {spec.layout} sample(s) to {len(paths)} files:", file=out)
        for p in paths:
            print(f"  {p}", file=out)
    return 0


def cmd_eval(args: argparse.Namespace, out: TextIO) -> int:
    """Prompt adherence (``shapes`` prompts) of a diffusion run, reconstruction metrics of
    its autoencoder (or of an autoencoder run)."""
    import torch

    import latentkit
    from latentkit.evaluation import parse_prompt, prompt_adherence, reconstruction_metrics

    model, config = load_run(args.run, ema=not args.no_ema, device=_device(args.device))
    autoencoder = model.autoencoder
    results: dict[str, Any] = {"run": str(args.run)}
    data = latentkit.create("dataset", config.data.name, **config.data.options)
    key = getattr(data, "data_key", "image")
    n = min(args.items, len(data))
    images = torch.stack([data[i][key] for i in range(n)])
    value_range = tuple(autoencoder.data_spec.value_range)
    if not getattr(model, "is_pixel_space", False):
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
            args.prompt = prompts
            batch, _ = _conditioning_batch(model, args)
            samples = _sample_images(model, config, args, batch).clamp(*value_range)
            report = prompt_adherence(samples, batch["caption"], value_range=value_range)
            results["prompt_adherence"] = report.as_dict()
            print(f"prompt {report.summary()}", file=out)
            for prompt, rate in report.per_prompt().items():
                print(f"  {100 * rate:5.1f}%  {prompt}", file=out)
            if args.out:
                from latentkit.training import save_image_grid

                tiles = [f"{v.prompt} [{'ok' if v.adheres else 'miss'}]" for v in report.verdicts]
                print(f"grid: {save_image_grid(samples, args.out, captions=tiles, nrow=args.num, value_range=value_range)}",
                      file=out)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
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
