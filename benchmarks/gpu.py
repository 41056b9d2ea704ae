"""One prepared script for a CUDA machine (finishes within 8 minutes).

1. Runs the tests marked ``cuda`` (``pytest -m cuda``: bf16 and fp16 training steps,
   channels-last, ``torch.compile``, DDP on one GPU under torchrun), with a time limit.
2. Measures the card's dense bf16 matmul rate (8192^3 GEMMs), the denominator of MFU.
3. Trains an SD-sized ``unet`` (the ``sd1`` preset: 860M parameters, 64x64x4 latents,
   77x768 cross-attention context) and diffusers' ``UNet2DConditionModel`` built with the
   same architecture, for the same steps (bf16 autocast, AdamW, channels-last), and prints
   for each: steps/s, images/s, peak memory, and model FLOP utilisation = (FLOPs of one
   training step, counted by ``torch.utils.flop_counter`` on forward + backward) x steps/s /
   the measured bf16 matmul rate.

Without CUDA it says so and exits 0.

    python benchmarks/gpu.py                    # everything, < 8 minutes
    python benchmarks/gpu.py --skip-tests --batch 16 --steps 30
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent


def run_cuda_tests(timeout: float) -> bool:
    """``pytest -m cuda`` on the test suite; True when it passed."""
    print(f"== pytest -m cuda (limit {timeout:.0f} s)", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                               "--continue-on-collection-errors",
                               str(ROOT / "tests")], cwd=ROOT, timeout=timeout, capture_output=True, text=True)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-2000:]
        print(f"cuda tests: TIMED OUT after {timeout:.0f} s\n{tail!r}")
        return False
    lines = proc.stdout.strip().splitlines()
    print("\n".join(lines[-15:]))
    print(f"cuda tests: {'passed' if proc.returncode == 0 else 'FAILED'} in {time.perf_counter() - t0:.0f} s",
          flush=True)
    return proc.returncode == 0


def matmul_peak(dtype: torch.dtype = torch.bfloat16, n: int = 8192, iters: int = 20) -> float:
    """Measured dense matmul rate in FLOP/s (best of a few timed batches)."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        torch.cuda.synchronize()
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - start))
    del a, b
    torch.cuda.empty_cache()
    return best


def latentkit_unet() -> tuple[torch.nn.Module, Any]:
    """latentkit's ``unet`` with the SD 1.x preset, and its forward as f(x, t, context)."""
    import latentkit
    from latentkit.specs import Conditioning

    model = latentkit.create("denoiser", "unet", preset="sd1")

    def forward(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return model(x, t, Conditioning(crossattn=context))

    return model, forward


def diffusers_unet() -> tuple[torch.nn.Module, Any]:
    """diffusers' UNet2DConditionModel with the SD 1.x architecture (same widths, depths,
    heads and context width)."""
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8,
    )

    def forward(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return model(x, t, encoder_hidden_states=context).sample

    return model, forward


def train_benchmark(name: str, build: Any, args: argparse.Namespace, peak: float) -> dict[str, float]:
    """Training steps of one UNet: eps-MSE on random latents, bf16 autocast, AdamW."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model, forward = build()
    model = model.cuda().to(memory_format=torch.channels_last).train()
    params = sum(p.numel() for p in model.parameters())
    if args.compile:
        forward = torch.compile(forward)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    b = args.batch
    x = torch.randn(b, 4, 64, 64, device="cuda").to(memory_format=torch.channels_last)
    t = torch.rand(b, device="cuda") * 999
    context = torch.randn(b, 77, 768, device="cuda")
    target = torch.randn_like(x)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(forward(x, t, context).float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:  # forward + backward FLOPs of one step
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.mse_loss(forward(x, t, context).float(), target)
        loss.backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    steps_per_s = args.steps / elapsed
    result = {
        "params_M": params / 1e6,
        "steps_per_s": steps_per_s,
        "images_per_s": steps_per_s * b,
        "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30,
        "tflop_per_step": flops / 1e12,
        "mfu": flops * steps_per_s / peak,
    }
    print(f"{name:<28} {result['params_M']:>8.1f} {steps_per_s:>8.2f} {result['images_per_s']:>9.1f} "
          f"{result['peak_mem_GiB']:>9.2f} {result['tflop_per_step']:>10.2f} {100 * result['mfu']:>6.1f}%",
          flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the CUDA tests and the UNet benchmark; 0 without CUDA."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="latents per step (64x64x4)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="torch.compile both forwards")
    parser.add_argument("--skip-tests", action="store_true", help="benchmark only")
    parser.add_argument("--test-timeout", type=float, default=270, help="seconds for pytest -m cuda")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("benchmarks/gpu.py: no CUDA device available (torch.cuda.is_available() is False); "
              "nothing to run.")
        return 0
    t0 = time.perf_counter()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}",
          flush=True)
    tests_ok = True if args.skip_tests else run_cuda_tests(args.test_timeout)

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    peak = matmul_peak()
    print(f"\n== measured dense bf16 matmul rate: {peak / 1e12:.1f} TFLOP/s (MFU denominator)")
    print(f"== SD-sized UNet training, batch {args.batch} x 64x64x4 latents, bf16 autocast, AdamW, "
          f"channels-last{', torch.compile' if args.compile else ''}")
    print(f"{'model':<28} {'params M':>8} {'steps/s':>8} {'images/s':>9} {'peak GiB':>9} {'TFLOP/step':>10} {'MFU':>7}")
    ours = train_benchmark("latentkit unet (sd1)", latentkit_unet, args, peak)
    gc.collect()
    torch.cuda.empty_cache()
    try:
        theirs = train_benchmark("diffusers UNet2DCondition", diffusers_unet, args, peak)
    except ImportError as exc:
        print(f"diffusers not importable ({exc}); no comparison")
        theirs = None
    if theirs is not None:
        print(f"\nlatentkit / diffusers: speed {ours['steps_per_s'] / theirs['steps_per_s']:.2f}x, "
              f"peak memory {ours['peak_mem_GiB'] / theirs['peak_mem_GiB']:.2f}x, "
              f"parameters {ours['params_M'] / theirs['params_M']:.3f}x")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s; cuda tests {'passed' if tests_ok else 'FAILED'}")
    return 0 if tests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
