"""Peak memory while loading a Stable Diffusion single-file checkpoint, against its size.

Each measurement runs in a fresh process: imports and the tokenizer are warmed first, the
kernel's peak-RSS counter is reset (``/proc/self/clear_refs``), the checkpoint is loaded and
every parameter is read once (so memory-mapped pages are really resident), then the peak RSS
(``VmHWM``) above the starting RSS is divided by the file size. Linux only.

Methods:

* ``latentkit``: :func:`latentkit.interop.stable_diffusion.load_stable_diffusion`
  (safetensors memory-mapped, modules built on the meta device, tensors assigned);
* ``naive``: what a straightforward loader does: build the model with random weights, read
  the file with ``safetensors.torch.load_file`` and ``load_state_dict`` into it (copy).

Usage::

    python benchmarks/sd_loading.py                       # SD 1.x architecture, fp16 (~2 GB file)
    python benchmarks/sd_loading.py --unet-width 64 --dtype float32
    python benchmarks/sd_loading.py measure FILE --method latentkit   # one measurement (JSON)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import torch


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024  # kB -> bytes
    return out


def scaled_config(
    family: str, unet_width: int | None, vae_width: int | None, text_width: int | None
) -> Any:
    """The released architecture of ``family``, with narrower UNet / autoencoder / text tower
    where given (the text tower then has 4 blocks)."""
    from latentkit.interop.stable_diffusion import released_config

    config = released_config(family)
    unet = dict(config.unet)
    if unet_width is not None:
        unet["model_channels"] = unet_width
    text = {**config.text, "text_cfg": dict(config.text["text_cfg"])}
    if text_width is not None:
        text["text_cfg"].update(width=text_width, heads=max(1, text_width // 64), layers=4)
        text["embed_dim"] = text_width
    unet["crossattn_dim"] = text["text_cfg"]["width"]
    autoencoder = dict(config.autoencoder)
    if vae_width is not None:
        autoencoder["base_channels"] = vae_width
    return attrs.evolve(config, unet=unet, autoencoder=autoencoder, text=text)


def write_checkpoint_file(path: Path, config: Any, dtype: torch.dtype) -> int:
    """Write an SD-format file of ``config`` with uniform random values, without building the
    model in memory (shapes come from a meta-device build). Returns its size in bytes."""
    from latentkit.checkpoint_files import write_checkpoint
    from latentkit.interop.stable_diffusion import ldm_meta_state

    shapes = ldm_meta_state(config)
    gen = torch.Generator().manual_seed(0)
    state = {
        k: torch.empty(v.shape, dtype=dtype).uniform_(-0.1, 0.1, generator=gen)
        for k, v in shapes.items()
    }
    write_checkpoint(state, path)
    return path.stat().st_size


def measure(path: Path, method: str) -> dict[str, Any]:
    """Load ``path`` with ``method`` in this process and report memory (see the module doc)."""
    import open_clip

    from latentkit.interop import stable_diffusion as sd

    open_clip.get_tokenizer("ViT-L-14")  # BPE tables: a fixed cost, not the checkpoint's
    open_clip.get_tokenizer("ViT-H-14")
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    before = _status()
    start = time.perf_counter()
    if method == "latentkit":
        model = sd.load_stable_diffusion(path)
    elif method == "naive":
        from safetensors.torch import load_file

        config = sd.detect_stable_diffusion(path)
        model = sd.build_stable_diffusion(config)
        state = load_file(os.fspath(path))
        own = sd.to_ldm_state_dict(model)
        with torch.no_grad():
            for key, value in own.items():
                value.copy_(state[key].to(value.dtype).reshape(value.shape))
        del state
    else:
        raise ValueError(f"unknown method {method!r}")
    seconds = time.perf_counter() - start
    total = 0.0
    with torch.no_grad():
        for p in model.parameters():  # page every weight in
            total += float(p.sum())
    after = _status()
    size = path.stat().st_size
    return {
        "method": method,
        "file_bytes": size,
        "load_seconds": round(seconds, 3),
        "peak_over_start_bytes": after["VmHWM"] - before["VmRSS"],
        "peak_ratio": round((after["VmHWM"] - before["VmRSS"]) / size, 3),
        "anon_ratio": round((after["RssAnon"] - before["RssAnon"]) / size, 3),
        "file_backed_ratio": round((after["RssFile"] - before["RssFile"]) / size, 3),
        "checksum_finite": total == total,
    }


def measure_in_subprocess(path: Path, method: str) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter (so earlier allocations do not hide the peak)."""
    out = subprocess.run(
        [sys.executable, __file__, "measure", os.fspath(path), "--method", method],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    """Command line: write a checkpoint and measure both methods, or measure one file."""
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "measure":
        parser = argparse.ArgumentParser(prog="sd_loading.py measure")
        parser.add_argument("path", type=Path)
        parser.add_argument("--method", default="latentkit", choices=["latentkit", "naive"])
        args = parser.parse_args(argv[1:])
        print(json.dumps(measure(args.path, args.method)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd1", choices=["sd1", "sd2"])
    parser.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument(
        "--unet-width", type=int, default=None, help="UNet base width (released: 320)"
    )
    parser.add_argument("--vae-width", type=int, default=None, help="autoencoder base width (128)")
    parser.add_argument("--text-width", type=int, default=None, help="text width (768 / 1024)")
    parser.add_argument("--methods", default="latentkit,naive")
    args = parser.parse_args(argv)
    config = scaled_config(args.family, args.unet_width, args.vae_width, args.text_width)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        size = write_checkpoint_file(path, config, getattr(torch, args.dtype))
        print(f"checkpoint: {args.family}, {args.dtype}, {size / 2**20:.1f} MiB")
        for method in args.methods.split(","):
            r = measure_in_subprocess(path, method)
            print(
                f"{method:>9}: peak RSS over start {r['peak_over_start_bytes'] / 2**20:8.1f} MiB = "
                f"{r['peak_ratio']:.3f} x file (anonymous {r['anon_ratio']:.3f} x, file-backed "
                f"{r['file_backed_ratio']:.3f} x), load {r['load_seconds']:.2f} s"
            )


if __name__ == "__main__":
    main()
