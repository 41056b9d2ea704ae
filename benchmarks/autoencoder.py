"""Benchmark latentkit's ``kl`` autoencoder against diffusers' ``AutoencoderKL``.

1. Encode / decode throughput (images per second) and peak memory for the f4 and f8 presets
   at 64 and 256 pixels, for latentkit and for diffusers at the identical architecture and
   the *same weights* (copied with ``to_diffusers_state_dict``; outputs are checked to agree),
   printed with latentkit / diffusers ratios from the same run. Peak memory is the CUDA peak
   allocation on a GPU, else the growth of the process's peak resident set size while the
   first call runs (measured in a forked child per configuration).
2. Reconstruction PSNR on held-out scikit-image photo crops after a fixed training budget,
   against bicubic down/up-sampling at the same number of floats.

diffusers is used here only. Run ``python benchmarks/autoencoder.py`` (``--help`` for
options); the default width (``--base-channels 32``, a quarter of the paper's 128) keeps a CPU
run to a couple of minutes; pass ``--base-channels 128`` for the paper's full-size presets.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from typing import Any

import torch

from latentkit.autoencoders.io import to_diffusers_state_dict
from latentkit.autoencoders.kl import KLAutoencoder
from latentkit.autoencoders.losses import AutoencoderTrainingLoss
from latentkit.autoencoders.sample_data import bicubic_baseline, photo_crops, psnr


def build(impl: str, preset: str, base: int, device: str) -> Any:
    torch.manual_seed(0)
    ours = KLAutoencoder(preset, base_channels=base, norm_num_groups=min(32, base))
    if impl == "latentkit":
        return ours.eval().to(device)
    import diffusers

    c = ours.config
    widths = [base * m for m in c["channel_multipliers"]]
    ref = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=tuple(widths),
        layers_per_block=c["num_res_blocks"],
        latent_channels=c["latent_channels"],
        norm_num_groups=c["norm_num_groups"],
    )
    ref.load_state_dict(to_diffusers_state_dict(ours))
    return ref.eval().to(device)


def run_op(model: Any, impl: str, op: str, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    if impl == "latentkit":
        return model.encode(x).mode() if op == "encode" else model.decode(z)
    return model.encode(x).latent_dist.mode() if op == "encode" else model.decode(z).sample


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(impl: str, preset: str, base: int, size: int, op: str, batch: int, reps: int, device: str) -> tuple[float, float]:
    """(items per second, peak memory in MiB) for one configuration."""
    model = build(impl, preset, base, device)
    f = int(preset[1:])
    x = torch.randn(batch, 3, size, size, device=device)
    z = torch.randn(batch, model.config.latent_channels if impl == "diffusers" else model.latent_spec.channels,
                    size // f, size // f, device=device)
    with torch.inference_mode():
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base_mem = torch.cuda.memory_allocated()
            run_op(model, impl, op, x, z)
            _sync(device)
            peak = (torch.cuda.max_memory_allocated() - base_mem) / 2**20
        else:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            run_op(model, impl, op, x, z)
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        times = []
        for _ in range(reps):
            _sync(device)
            t = time.perf_counter()
            run_op(model, impl, op, x, z)
            _sync(device)
            times.append(time.perf_counter() - t)
    return batch / min(times), peak


def _child(conn: Any, args: tuple[Any, ...]) -> None:
    torch.set_num_threads(args[-1])
    conn.send(measure(*args[:-1]))
    conn.close()


def measure_isolated(*args: Any, threads: int) -> tuple[float, float]:
    """Run :func:`measure` in a forked child so its peak memory is its own."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, (*args, threads)))
    proc.start()
    result = parent.recv()
    proc.join()
    return result  # type: ignore[no-any-return]


def check_parity(preset: str, base: int, device: str) -> float:
    """Largest absolute difference between the two implementations' decoded outputs."""
    ours, ref = build("latentkit", preset, base, device), build("diffusers", preset, base, device)
    x = torch.rand(1, 3, 64, 64, device=device) * 2 - 1
    with torch.inference_mode():
        a = ours.decode(ours.encode(x).mode())
        b = ref.decode(ref.encode(x).latent_dist.mode()).sample
    return float((a - b).abs().max())


def train_psnr(steps: int, base: int, crop: int, batch: int, lr: float, device: str) -> dict[str, float]:
    """Train a small kl-f4 for ``steps`` on photo crops; PSNR on held-out crops of the same size
    (GroupNorm statistics depend on the input extent, so evaluate at the training size)."""
    torch.manual_seed(0)
    train = photo_crops(2048, crop, split="train", seed=0).to(device)
    held = photo_crops(512, crop, split="heldout", seed=1).to(device)
    model = KLAutoencoder("f4", base_channels=base, num_res_blocks=1, norm_num_groups=8, attention=False).to(device)
    loss = AutoencoderTrainingLoss(model, reconstruction="l2", disc_start=10**9)
    opt = torch.optim.Adam(loss.parameters_for(0), lr=lr, betas=(0.5, 0.9))
    gen = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, train.shape[0], (batch,), generator=gen)
        out = loss.loss(train[idx.to(device)], 0, step)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    seconds = time.perf_counter() - t
    model.eval()
    with torch.no_grad():
        rec = model.decode(model.encode(held).mode())
    floats = model.latent_spec.channels * (crop // 4) ** 2
    return {
        "steps": steps,
        "train_seconds": seconds,
        "psnr_autoencoder": psnr(rec, held),
        "psnr_bicubic_same_floats": psnr(bicubic_baseline(held, floats), held),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-channels", type=int, default=32, help="128 = the paper's presets")
    p.add_argument("--presets", nargs="*", default=["f4", "f8"], help="none: skip throughput")
    p.add_argument("--sizes", nargs="+", type=int, default=[64, 256])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads per measurement (CPU)")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"device={args.device} torch={torch.__version__} base_channels={args.base_channels} threads={args.threads}")
    import diffusers

    print(f"diffusers={diffusers.__version__}")
    for preset in args.presets:
        print(f"parity {preset}: max |latentkit - diffusers| = {check_parity(preset, args.base_channels, args.device):.2e}")
    header = f"{'preset':>6} {'size':>5} {'op':>6} | {'lk it/s':>9} {'df it/s':>9} {'ratio':>6} | {'lk MiB':>8} {'df MiB':>8} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for preset in args.presets:
        for size in args.sizes:
            batch = 4 if size <= 64 else 1
            for op in ("encode", "decode"):
                res = {}
                for impl in ("latentkit", "diffusers"):
                    common = (impl, preset, args.base_channels, size, op, batch, args.reps, args.device)
                    if args.device == "cpu":
                        res[impl] = measure_isolated(*common, threads=args.threads)
                    else:
                        res[impl] = measure(*common)
                (lk, lk_mem), (df, df_mem) = res["latentkit"], res["diffusers"]
                mem_ratio = lk_mem / df_mem if df_mem > 0 else float("nan")
                print(f"{preset:>6} {size:>5} {op:>6} | {lk:9.2f} {df:9.2f} {lk / df:6.2f} | {lk_mem:8.1f} {df_mem:8.1f} {mem_ratio:6.2f}")
                sys.stdout.flush()
    if args.train_steps > 0:
        res = train_psnr(args.train_steps, 32, 16, 16, 2e-3, args.device)
        print(
            f"training kl-f4 (base 32, 1 res block) for {res['steps']} steps on 16-px crops "
            f"({res['train_seconds']:.0f} s): held-out PSNR {res['psnr_autoencoder']:.2f} dB, "
            f"bicubic at the same floats {res['psnr_bicubic_same_floats']:.2f} dB"
        )


if __name__ == "__main__":
    main()
