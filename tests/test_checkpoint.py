"""Atomic checkpoints: no-pickle state round trips, crashes during a write, truncated and
corrupt files, keep-last-K, and the trainer's fall-back to the previous checkpoint."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from latentkit.training import checkpoint as ck
from latentkit.training.checkpoint import (
    CheckpointError,
    checkpoint_dirs,
    from_json_state,
    latest_checkpoint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    to_json_state,
)


def _optimizer_state() -> dict:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    return opt.state_dict()


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def test_state_round_trip_without_pickle() -> None:
    state = {
        "optimizer": _optimizer_state(),  # int keys, tuples (betas), scalar tensors
        "rng": torch.get_rng_state(),
        "numpy": np.arange(5, dtype=np.uint32),
        "floats": [float("inf"), -float("inf"), float("nan"), 0.1],
        "nested": {"a": (1, "x", None, True), 3: [torch.zeros(0), torch.ones(2, dtype=torch.bfloat16)]},
    }
    tensors: dict[str, torch.Tensor] = {}
    js = to_json_state(state, tensors, "s")
    import json

    text = json.dumps(js, allow_nan=False)  # strictly JSON
    restored = from_json_state(json.loads(text), tensors)
    assert _equal(state, restored)
    with pytest.raises(TypeError, match="no pickle"):
        to_json_state({"obj": object()}, {}, "s")


def _save(tmp_path: Path, step: int, scale: float = 1.0, **kw: object) -> Path:
    weights = {"w": torch.full((4, 4), scale * step), "b": torch.arange(3.0)}
    return save_checkpoint(tmp_path, step, model_state=weights, ema_state={"w": torch.zeros(4, 4), "b": torch.ones(3)},
                           state={"step": step, "opt": _optimizer_state()}, **kw)  # type: ignore[arg-type]


def test_save_load_and_keep_last(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep_last=2)
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [3, 4]
    loaded = load_checkpoint(tmp_path / "step_00000004")
    assert loaded.step == 4 and torch.equal(loaded.model["w"], torch.full((4, 4), 4.0))
    assert loaded.state["step"] == 4 and isinstance(loaded.state["opt"]["param_groups"][0]["betas"], tuple)
    assert torch.equal(load_weights(tmp_path)["b"], torch.ones(3))  # EMA weights by default
    assert torch.equal(load_weights(tmp_path, ema=False)["b"], torch.arange(3.0))


def test_crash_during_rename_leaves_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path, 1)

    def boom(src: object, dst: object) -> None:
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(ck.os, "rename", boom)
    with pytest.raises(OSError, match="simulated crash"):
        _save(tmp_path, 2)
    monkeypatch.undo()
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [1]
    assert not list(tmp_path.glob(".tmp-*"))  # the partial write was cleaned up
    assert latest_checkpoint(tmp_path).step == 1  # type: ignore[union-attr]


def test_crash_while_writing_a_file_leaves_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _save(tmp_path, 1)
    real = ck.write_synced
    calls = {"n": 0}

    def half_then_die(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the second file: write half of it, then "crash"
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(ck, "write_synced", half_then_die)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path).step == 1  # type: ignore[union-attr]


def test_sigkill_during_writes_never_leaves_a_broken_checkpoint(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import torch
        from latentkit.training.checkpoint import save_checkpoint
        big = torch.randn(1_000_000)  # 4 MB per file: writes take a while
        step = 0
        while True:
            step += 1
            save_checkpoint({str(tmp_path)!r}, step, model_state={{"w": big * step}},
                            ema_state={{"w": big}}, state={{"step": step}}, keep_last=3)
    """)
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script])
        try:
            deadline = time.time() + 60
            while not checkpoint_dirs(tmp_path) and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(float(rng.uniform(0.0, 0.4)))  # a random moment, often mid-write
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        dirs = checkpoint_dirs(tmp_path)
        assert dirs, "the writer never finished a checkpoint"
        for step, path in dirs:  # every visible checkpoint is whole
            loaded = load_checkpoint(path)
            assert loaded.state["step"] == step
        assert latest_checkpoint(tmp_path).step == dirs[-1][0]  # type: ignore[union-attr]


def test_truncated_checkpoint_is_a_clear_error_and_previous_is_used(tmp_path: Path) -> None:
    _save(tmp_path, 1)
    newest = _save(tmp_path, 2)
    target = newest / "model.safetensors"
    size = target.stat().st_size
    with open(target, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CheckpointError, match=rf"model.safetensors has {size // 2} bytes, expected {size} \(truncated"):
        load_checkpoint(newest)
    with pytest.warns(UserWarning, match="step_00000002.*truncated.*falling back"):
        found = latest_checkpoint(tmp_path)
    assert found is not None and found.step == 1


def test_corrupt_bytes_and_missing_manifest(tmp_path: Path) -> None:
    first = _save(tmp_path, 1)
    second = _save(tmp_path, 2)
    data = bytearray((second / "state.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (second / "state.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"state\.safetensors does not match its SHA-256"):
        load_checkpoint(second)
    (first / "state.json").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete: state\.json is missing"):
        load_checkpoint(first)
    with pytest.warns(UserWarning):
        assert latest_checkpoint(tmp_path) is None
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "step_00000099")


def test_trainer_resumes_from_previous_when_newest_is_truncated(tmp_path: Path) -> None:
    from latentkit.plugins import PluginManager
    from latentkit.training import Trainer, TrainingConfig

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def loss(self, batch: dict) -> torch.Tensor:
            return (self.lin(batch["x"]) - batch["y"]).pow(2).mean()

    data = [{"x": torch.randn(2), "y": torch.randn(1)} for _ in range(12)]
    cfg = TrainingConfig(output_dir=str(tmp_path), max_steps=8, checkpoint_every=4, batch_size=4,
                         progress=False)

    def trainer() -> Trainer:
        return Trainer(Model(), data, cfg, plugin_manager=PluginManager(autoload=False))  # type: ignore[arg-type]

    trainer().fit()
    model_file = tmp_path / "checkpoints" / "step_00000008" / "model.safetensors"
    with open(model_file, "r+b") as f:
        f.truncate(10)
    resumed = trainer()
    with pytest.warns(UserWarning, match="step_00000008"):
        assert resumed.resume()
    assert resumed.step == 4
    # ...and training on from there rewrites step 8 whole.
    resumed.fit()
    assert load_checkpoint(tmp_path / "checkpoints" / "step_00000008").step == 8


KILL_SCRIPT = '''
import sys, torch
from torch import nn
from latentkit.plugins import PluginManager
from latentkit.training import Trainer, TrainingConfig

class Data(torch.utils.data.Dataset):
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(50, 8, generator=g)
        self.y = self.x.sum(1, keepdim=True).sin()
    def __len__(self):
        return 50
    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 256), nn.Tanh(), nn.Dropout(0.1), nn.Linear(256, 1))
    def loss(self, batch, *, generator=None):
        noise = 0.01 * torch.randn(batch["x"].shape, generator=generator)
        return ((self.net(batch["x"] + noise) - batch["y"]) ** 2).mean()

torch.manual_seed(int(sys.argv[2]))  # a different init each launch: weights must come from checkpoints
cfg = TrainingConfig(output_dir=sys.argv[1], max_steps=150, batch_size=8, grad_accum=2, lr=3e-3,
                     warmup_steps=10, lr_decay="cosine", ema_decay=0.95, checkpoint_every=3,
                     keep_last=2, progress=False, log_every=1)
Trainer(Model(), Data(), cfg, plugin_manager=PluginManager(autoload=False)).fit()
'''


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "train.py"
    script.write_text(KILL_SCRIPT)
    monkeypatch.setattr(sys, "argv", ["train.py", str(tmp_path / "reference"), "0"])
    exec(compile(KILL_SCRIPT, str(script), "exec"), {"__name__": "__main__"})  # uninterrupted

    run = tmp_path / "killed"
    rng = np.random.default_rng(1)
    kills = 0
    for launch in range(1, 20):
        # launch 1 starts like the reference; later launches get another init, so equal final
        # weights prove that they came from the checkpoints
        proc = subprocess.Popen([sys.executable, str(script), str(run), str(0 if launch == 1 else launch)])
        if kills < 3:
            start = (checkpoint_dirs(run / "checkpoints") or [(0, None)])[-1][0]
            deadline = time.time() + 120
            # wait until this launch has written a checkpoint of its own, then kill it at a
            # random moment (checkpoints every 3 steps: often in the middle of a write)
            while (checkpoint_dirs(run / "checkpoints") or [(0, None)])[-1][0] <= start and proc.poll() is None:
                if time.time() > deadline:
                    break
                time.sleep(0.01)
            time.sleep(float(rng.uniform(0.0, 0.15)))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
        if proc.wait(timeout=300) == 0:
            break
    assert kills >= 2, "the run finished before it could be killed twice"
    final = load_checkpoint(run / "checkpoints" / "step_00000150")
    reference = load_checkpoint(tmp_path / "reference" / "checkpoints" / "step_00000150")
    for k in reference.model:
        assert torch.equal(final.model[k], reference.model[k]), k
        assert torch.equal(final.ema[k], reference.ema[k]), k  # type: ignore[index]


RESUMING_WRITER = '''
import sys, torch
from latentkit.training.checkpoint import latest_checkpoint, save_checkpoint
directory = sys.argv[1]
big = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))  # 4 MB per file
found = latest_checkpoint(directory)  # falls back past the corrupt newest one, with a warning
step = found.step if found is not None else 0
while True:
    step += 1
    save_checkpoint(directory, step, model_state={"w": big * step}, ema_state={"w": big},
                    state={"step": step}, keep_last=1)
    print(step, flush=True)  # reported saved
'''


@pytest.mark.slow
def test_sigkill_with_a_corrupt_newest_checkpoint_and_keep_last_1_keeps_a_good_one(tmp_path: Path) -> None:
    """A run whose newest checkpoint is corrupt with its sizes intact (the case a size-only
    intactness test misses) resumes from the good one and saves with keep_last = 1; killed
    with SIGKILL at random moments, it always leaves an intact checkpoint at or after the last
    step it reported saved, the corrupt one is never counted intact nor loaded, and every
    other visible checkpoint loads."""
    import warnings

    ckpts = tmp_path / "checkpoints"
    big = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))
    save_checkpoint(ckpts, 1, model_state={"w": big}, ema_state={"w": big}, state={"step": 1})
    corrupt = save_checkpoint(ckpts, 10_000_000, model_state={"w": big}, ema_state={"w": big},
                              state={"step": 10_000_000})
    target = corrupt / "model.safetensors"
    data = bytearray(target.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):  # flipped bytes, same size
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    assert not ck.is_intact(corrupt)
    script = tmp_path / "writer.py"
    script.write_text(RESUMING_WRITER)
    rng = np.random.default_rng(2)
    newest_good = 1
    for launch in range(4):
        log = tmp_path / f"writer-{launch}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, str(script), str(ckpts)], stdout=out,
                                    stderr=subprocess.DEVNULL)
            try:
                deadline = time.time() + 120
                while not log.read_text().strip() and proc.poll() is None and time.time() < deadline:
                    time.sleep(0.02)  # until this launch has saved one checkpoint of its own
                time.sleep(float(rng.uniform(0.0, 0.4)))  # a random moment, often mid-write or mid-prune
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        lines = log.read_text().split()
        assert lines, f"launch {launch} never saved a checkpoint"
        assert int(lines[0]) == newest_good + 1, "the writer did not resume from the newest good checkpoint"
        reported = int(lines[-1])
        dirs = checkpoint_dirs(ckpts)
        good = [(step, path) for step, path in dirs if path != corrupt]
        assert good and good[-1][0] >= reported, f"saved step {reported} is gone: {[s for s, _ in dirs]}"
        for step, path in good:  # every visible checkpoint besides the corrupt one is whole
            assert ck.is_intact(path) and load_checkpoint(path).state["step"] == step
        assert not ck.is_intact(corrupt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the warning that names the corrupt one
            found = latest_checkpoint(ckpts)
        assert found is not None and found.step == good[-1][0]
        newest_good = found.step
