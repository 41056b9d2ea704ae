"""Training-step throughput and memory of latentkit's denoisers against peer implementations.

* ``unet`` against diffusers' ``UNet2DConditionModel`` at the same architecture (SD 1.x layout
  at reduced width; the parameter counts are asserted equal);
* ``dit`` against a plain DiT written below after the paper's reference code (explicit
  softmax attention, fixed position-embedding buffer), at the same architecture.

One training step = forward + MSE loss + backward + ``AdamW.step``. The two models of a pair
are timed alternately (ABBA order) in the same process, so machine noise hits both alike; the
ratio is ours / theirs in samples per second (> 1: ours is faster), from the median step
time and from the fastest step (machine contention only ever adds time).

Memory: on CUDA the peak allocated bytes of one step; on CPU the bytes of activations saved for
the backward pass (parameters, gradients and AdamW state are the same for both models of a
pair, since the architectures are identical).

    python benchmarks/denoiser.py                 # both families, two sizes each
    python benchmarks/denoiser.py --family unet --reps 6 --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from latentkit.denoisers.dit import dit
from latentkit.denoisers.unet import unet
from latentkit.layers import sincos_pos_embed, timestep_embedding
from latentkit.specs import Conditioning

# --------------------------------------------------------------------------- plain DiT reference


class PlainAttention(nn.Module):
    """Multi-head self-attention with an explicit softmax(q k^T / sqrt(d)) v (as in the timm
    version the DiT reference code was written against)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(x)


class PlainDiTBlock(nn.Module):
    """DiT block with adaLN-Zero, written plainly (Peebles & Xie 2023, Fig. 3)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = PlainAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.adaLN_modulation(c).unsqueeze(1).chunk(6, dim=2)
        x = x + g1 * self.attn(self.norm1(x) * (1 + sc1) + s1)
        return x + g2 * self.mlp(self.norm2(x) * (1 + sc2) + s2)


class PlainDiT(nn.Module):
    """The DiT reference structure (2-D): conv patch embedding, fixed sin-cos position buffer,
    timestep MLP, a vector MLP in place of the label table, blocks, final adaLN layer."""

    def __init__(self, channels: int, size: int, patch: int, dim: int, depth: int, heads: int, vector_dim: int) -> None:
        super().__init__()
        self.patch, self.channels = patch, channels
        self.x_embedder = nn.Conv2d(channels, dim, patch, stride=patch)
        self.register_buffer("pos_embed", sincos_pos_embed((size // patch,) * 2, dim)[None])
        self.t_mlp = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_mlp = nn.Sequential(nn.Linear(vector_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList([PlainDiTBlock(dim, heads) for _ in range(depth)])
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, patch * patch * channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        tokens = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, D)
        c = self.t_mlp(timestep_embedding(t, 256)) + self.y_mlp(y)
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.final_mod(c).unsqueeze(1).chunk(2, dim=2)
        tokens = self.linear(self.norm_final(tokens) * (1 + scale) + shift)  # (B, N, p*p*C)
        p, gh, gw = self.patch, h // self.patch, w // self.patch
        tokens = tokens.reshape(b, gh, gw, p, p, self.channels)
        return torch.einsum("nhwpqc->nchpwq", tokens).reshape(b, self.channels, h, w)


# --------------------------------------------------------------------------- measurement


@contextlib.contextmanager
def saved_activation_bytes(params: list[torch.Tensor], out: list[int]) -> Iterator[None]:
    """Count the bytes of distinct tensors (not parameters) saved for backward."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs and t.device.type != "meta":
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield
    out.append(sum(seen.values()))


class Case:
    """One model of a pair: a module, a callable that runs a training step, and its stats."""

    def __init__(self, name: str, model: nn.Module, run: Callable[[], torch.Tensor], device: torch.device) -> None:
        self.name, self.model, self.run, self.device = name, model, run, device
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        self.times: list[float] = []
        self.memory = 0

    def step(self, record: bool = True) -> None:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = self.run()
        loss.backward()
        self.opt.step()
        sync()
        if record:
            self.times.append(time.perf_counter() - start)

    def measure_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.step(record=False)
            self.memory = torch.cuda.max_memory_allocated()
        else:
            out: list[int] = []
            self.opt.zero_grad(set_to_none=True)
            with saved_activation_bytes(list(self.model.parameters()), out):
                loss = self.run()
            loss.backward()
            self.memory = out[0]

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def unet_pair(width: int, batch: int, size: int, device: torch.device, dtype: torch.dtype,
              channels_last: bool = False) -> tuple[Case, Case]:
    """latentkit ``unet`` (SD 1.x preset at ``width`` channels) and diffusers at the same shape."""
    from diffusers import UNet2DConditionModel

    ctx_dim, tokens = 768, 77
    ours = unet(preset="sd1", model_channels=width, crossattn_dim=ctx_dim).to(device, dtype)
    theirs = UNet2DConditionModel(
        block_out_channels=tuple(width * m for m in (1, 2, 4, 4)), layers_per_block=2,
        cross_attention_dim=ctx_dim, attention_head_dim=8,
    ).to(device, dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, size, size, generator=g).to(device, dtype)
    if channels_last:
        ours.to(memory_format=torch.channels_last)
        theirs.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    target = torch.randn_like(x)
    t = torch.randint(0, 1000, (batch,), generator=g).float().to(device)
    ctx = torch.randn(batch, tokens, ctx_dim, generator=g).to(device, dtype)
    cond = Conditioning(crossattn=ctx)
    a = Case("latentkit unet", ours, lambda: F.mse_loss(ours(x, t, cond).float(), target.float()), device)
    b = Case(
        "diffusers UNet2DConditionModel",
        theirs,
        lambda: F.mse_loss(theirs(x, t, encoder_hidden_states=ctx).sample.float(), target.float()),
        device,
    )
    return a, b


def dit_pair(dim: int, depth: int, heads: int, batch: int, size: int, device: torch.device,
             dtype: torch.dtype) -> tuple[Case, Case]:
    """latentkit ``dit`` and the plain reference DiT at the same shape (patch 2, vector 64)."""
    vec = 64
    ours = dit(hidden_size=dim, depth=depth, num_heads=heads, patch_size=2, vector_dim=vec,
               input_size=size).to(device, dtype)
    theirs = PlainDiT(4, size, 2, dim, depth, heads, vec).to(device, dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, size, size, generator=g).to(device, dtype)
    target = torch.randn_like(x)
    t = torch.rand(batch, generator=g).to(device)
    y = torch.randn(batch, vec, generator=g).to(device, dtype)
    cond = Conditioning(vector=y)
    a = Case("latentkit dit", ours, lambda: F.mse_loss(ours(x, t, cond).float(), target.float()), device)
    b = Case("plain DiT", theirs, lambda: F.mse_loss(theirs(x, t, y).float(), target.float()), device)
    return a, b


def run_pair(label: str, a: Case, b: Case, reps: int, autocast: Any) -> dict[str, Any]:
    """Warm up, then time ``reps`` steps of each alternately (ABBA); return the summary."""
    if a.params != b.params:
        raise AssertionError(f"{label}: architectures differ ({a.params} vs {b.params} parameters)")
    with autocast():
        for case in (a, b):
            case.step(record=False)
        for r in range(reps):
            order = (a, b) if r % 2 == 0 else (b, a)
            for case in order:
                case.step()
        a.measure_memory()
        b.measure_memory()
    result: dict[str, Any] = {"case": label, "params": a.params}
    for key, case in (("ours", a), ("theirs", b)):
        med = statistics.median(case.times)
        result[key] = {"name": case.name, "median_s": med, "min_s": min(case.times), "memory_bytes": case.memory}
    result["speed_ratio"] = result["theirs"]["median_s"] / result["ours"]["median_s"]
    # contention on a shared machine only adds time: the fastest step is the least noisy
    result["speed_ratio_min"] = result["theirs"]["min_s"] / result["ours"]["min_s"]
    result["memory_ratio"] = a.memory / b.memory if b.memory else math.nan
    return result


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark and print one line per pair; returns the results."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["unet", "dit", "all"], default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast")
    parser.add_argument("--reps", type=int, default=4, help="timed steps per model")
    parser.add_argument("--scale", type=int, default=1, help="multiply widths and sizes (GPU runs)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (1 keeps shared machines from oversubscription noise)")
    parser.add_argument("--channels-last", action="store_true", help="channels-last UNet inputs and weights")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def autocast() -> Any:
        if args.dtype == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    s = args.scale
    pairs: list[tuple[str, Callable[[], tuple[Case, Case]]]] = []
    if args.family in ("unet", "all"):
        for width, batch, size in ((32, 2, 16), (64, 2, 16)):
            width, size = width * s, size * min(s, 2)
            pairs.append((f"unet sd1 width {width}, {batch}x4x{size}x{size}",
                          lambda w=width, b=batch, z=size: unet_pair(w, b, z, device, torch.float32, args.channels_last)))
    if args.family in ("dit", "all"):
        for dim, depth, heads, batch, size in ((192, 6, 3, 4, 16), (384, 12, 6, 2, 32)):
            dim, size = dim * s, size * min(s, 2)
            pairs.append((f"dit D{dim} depth {depth}, {batch}x4x{size}x{size} (patch 2)",
                          lambda d=dim, n=depth, h=heads, b=batch, z=size: dit_pair(d, n, h, b, z, device, torch.float32)))
    print(f"device {device}, {args.dtype}, {args.reps} timed steps per model, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}")
    mem_kind = "peak allocated" if device.type == "cuda" else "saved activations"
    results = []
    for label, make in pairs:
        a, b = make()
        res = run_pair(label, a, b, args.reps, autocast)
        results.append(res)
        print(
            f"{label}: {res['params'] / 1e6:.2f}M params | "
            f"ours {res['ours']['median_s'] * 1e3:.0f} ms/step, theirs {res['theirs']['median_s'] * 1e3:.0f} "
            f"ms/step -> speed ratio {res['speed_ratio']:.2f} (fastest steps: "
            f"{res['speed_ratio_min']:.2f}) | {mem_kind}: ours "
            f"{res['ours']['memory_bytes'] / 2**20:.1f} MiB, theirs {res['theirs']['memory_bytes'] / 2**20:.1f} MiB"
            f" -> memory ratio {res['memory_ratio']:.2f}",
            flush=True,
        )
        del a, b
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
