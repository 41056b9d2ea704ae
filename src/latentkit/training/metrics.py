"""Progress of a training run: metrics to CSV and TensorBoard, and a progress bar."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from latentkit.fileio import atomic_write_bytes

__all__ = ["CSVLogger", "ProgressBar", "TensorBoardLogger"]


class CSVLogger:
    """Appends one row of metrics per logged step to ``path``.

    Columns are the union of every key seen (the file is rewritten when a new one appears).
    ``resume_step`` drops rows logged after that step by an interrupted run, so a resumed run
    leaves one row per step.
    """

    def __init__(self, path: str | os.PathLike[str], *, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.columns: list[str] = []
        rows: list[dict[str, str]] = []
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = list(reader.fieldnames or [])
                rows = list(reader)
            if resume_step is not None:
                rows = [r for r in rows if _as_int(r.get("step")) <= resume_step]
            else:
                rows = []
                self.columns = []
        self._rewrite(rows)

    def _rewrite(self, rows: Sequence[Mapping[str, Any]]) -> None:
        buf = io.StringIO()
        if self.columns:
            writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Append ``metrics`` for ``step``."""
        row = {"step": step, **{k: _fmt(v) for k, v in metrics.items()}}
        new = [k for k in row if k not in self.columns]
        if new:
            with open(self.path, newline="") as f:
                old = list(csv.DictReader(f)) if self.columns else []
            self.columns += new
            self._rewrite(old)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)

    def close(self) -> None:
        """Nothing to release (each row is flushed when written)."""


def _as_int(value: Any) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return -1


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    return value


class TensorBoardLogger:
    """Scalars to TensorBoard event files (needs the ``tensorboard`` package)."""

    def __init__(self, log_dir: str | os.PathLike[str], *, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter  # raises ImportError when absent

        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    @staticmethod
    def available() -> bool:
        """Whether TensorBoard can be written here."""
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return False
        return True

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write every finite scalar of ``metrics`` at ``step``."""
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


class ProgressBar:
    """A tqdm bar over optimizer steps showing loss, items/s and (tqdm's) time left."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, desc: str = "train") -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, disable=not enabled, desc=desc,
                        dynamic_ncols=True, unit="step", smoothing=0.1)
        self._items_per_s: float | None = None

    def update(self, metrics: Mapping[str, float]) -> None:
        """Advance one step and show the step's loss and smoothed throughput."""
        ips = metrics.get("items_per_s")
        if ips is not None and math.isfinite(ips):
            self._items_per_s = ips if self._items_per_s is None else 0.9 * self._items_per_s + 0.1 * ips
        postfix = {}
        if "loss" in metrics:
            postfix["loss"] = f"{metrics['loss']:.4g}"
        if self._items_per_s is not None:
            postfix["items/s"] = f"{self._items_per_s:.1f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(1)

    def write(self, message: str) -> None:
        """Print a line without breaking the bar."""
        self.bar.write(message)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()
