"""Reliability fuzzing (issue 22): hostile config values and command-line flags, and bit flips
of checkpoints.

* Every key of every table of a small valid config, and every flag of ``latentkit train``,
  ``sample`` and ``eval``, is given hostile values (wrong types, NaN/inf, huge and negative
  numbers, empty and very long strings, strings of digits for arrays, nested tables, paths
  that do not exist or hold the wrong thing, a pickle) or is removed; each command runs
  in-process through :func:`latentkit.cli.main`. It either succeeds, or fails with exit
  status 2, exactly one error line and no traceback; it never changes a file of an existing
  run, never unpickles anything, and stays within a time and memory bound.
* One random bit of one random file of the newest checkpoint is flipped: loading falls back
  to the previous intact checkpoint with a warning naming the corrupt one, and never resumes
  a changed state.

All of it is slow (``-m slow``). ``LATENTKIT_FUZZ_EXAMPLES`` (default 1000, split between the
config and the command-line test) and ``LATENTKIT_FUZZ_FLIPS`` (default 500) set the counts.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import pickle
import re
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from latentkit.cli import main
from latentkit.training.checkpoint import LoadedCheckpoint, latest_checkpoint, load_checkpoint
from test_config import VALID

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

pytestmark = pytest.mark.slow

FUZZ_EXAMPLES = int(os.environ.get("LATENTKIT_FUZZ_EXAMPLES", "1000"))
FUZZ_FLIPS = int(os.environ.get("LATENTKIT_FUZZ_FLIPS", "500"))
#: Seconds one fuzzed command may take (it is stopped, and the example fails, at HARD_SECONDS).
EXAMPLE_SECONDS = 20.0
HARD_SECONDS = 90
#: How much the process's peak memory may grow over a whole fuzz test.
RSS_GROWTH_LIMIT = 2 * 2**30
#: The address space a fuzz test may add (a safety net, so that a value that makes the product
#: allocate without bound fails inside the test instead of taking the host down; the RSS bound
#: above is what the test asserts).
ADDRESS_SPACE_MARGIN = 4 * 2**30


#: VALID on the CPU (the same on every host), drawing a 2-step grid of two labels at every
#: step, so that the sample_* keys are live in a 1-step training run.
BASE = VALID + 'device = "cpu"\nsample_every = 1\nsample_steps = 2\nsample_labels = [1, 2]\n'


# ----------------------------------------------------------------------- the trained run


@attrs.frozen
class Fixtures:
    """The trained run the fuzzed commands must leave alone, and hostile input files."""

    root: Path
    run: Path  # trained by `latentkit train` (max_steps 2): config.toml, checkpoints/step_00000002
    files: Path  # images, weight files and a pickle for path values
    marker: Path  # created by the pickle in `files` if anything ever unpickles it

    @property
    def checkpoint(self) -> Path:
        return self.run / "checkpoints" / "step_00000002"

    def tokens(self, scratch: Path, run_copy: Path) -> dict[str, str]:
        """What the placeholders in drawn values stand for (placeholders keep the drawn
        examples, and so hypothesis's reports, independent of temporary paths)."""
        return {"@RUNCOPY@": str(run_copy), "@CKPT@": str(self.checkpoint), "@RUN@": str(self.run),
                "@FILES@": str(self.files), "@SCRATCH@": str(scratch)}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_inputs(files: Path, marker: Path) -> None:
    """Input files of every kind a path option may be given."""
    from PIL import Image

    files.mkdir()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(files / "image.png")
    Image.new("L", (16, 16), 255).save(files / "mask.png")
    Image.new("RGBA", (20, 12), (0, 0, 255, 128)).save(files / "rgba.png")
    Image.new("RGB", (1, 1)).save(files / "tiny.png")
    Image.new("RGB", (2048, 2048), (10, 200, 10)).save(files / "large.png")
    data = (files / "image.png").read_bytes()
    (files / "truncated.png").write_bytes(data[: len(data) // 2])
    # A PNG header claiming 100000 x 100000 pixels: a decompression bomb.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    (files / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                                     + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))
    (files / "empty.png").write_bytes(b"")
    (files / "text.png").write_text("not an image\n")
    # Weight files: a pickle that creates `marker` when unpickled, under several suffixes.
    evil = pickle.dumps({"state_dict": _Evil(str(marker))})
    for name in ("evil.ckpt", "evil.pt", "evil.bin", "evil_pickle.safetensors"):
        (files / name).write_bytes(evil)
    torch.save({"state_dict": _Evil(str(marker))}, files / "evil_zip.pt")
    (files / "empty.safetensors").write_bytes(b"")
    (files / "garbage.safetensors").write_bytes(bytes(range(256)) * 8)
    header = b"[" * 100_000 + b"]" * 100_000  # nested far beyond any parser's recursion limit
    (files / "deep.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    huge = b'{"w":{"dtype":"F32","shape":[1000000000000],"data_offsets":[0,4000000000000]}}'
    (files / "huge_shape.safetensors").write_bytes(struct.pack("<Q", len(huge)) + huge)
    (files / "empty.toml").write_text("")
    (files / "binary.toml").write_bytes(bytes(range(256)))
    (files / "subdir").mkdir()


class _Evil:
    """Unpickling it opens (creates) a file: proof that a pickle was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    root = tmp_path_factory.mktemp("fuzz")
    config = root / "base.toml"
    config.write_text(BASE)
    run = root / "run"
    assert main(["train", str(config), "--output", str(run)], out=io.StringIO()) == 0
    assert (run / "checkpoints" / "step_00000002" / "state.json").is_file()
    marker = root / "PICKLE-WAS-EXECUTED"
    _write_inputs(root / "files", marker)
    return Fixtures(root=root, run=run, files=root / "files", marker=marker)


# ----------------------------------------------------------------------- running a command


def _snapshot(directory: Path) -> dict[str, tuple[int, str]]:
    """Size and SHA-256 of every file under ``directory`` (and every folder, as -1)."""
    found: dict[str, tuple[int, str]] = {}
    for path in sorted(directory.rglob("*")):
        rel = str(path.relative_to(directory))
        if path.is_dir():
            found[rel] = (-1, "")
        else:
            data = path.read_bytes()
            found[rel] = (len(data), hashlib.sha256(data).hexdigest())
    return found


class _Overtime(BaseException):
    """Raised by the alarm in a command that runs past HARD_SECONDS (a BaseException, so that
    the command line's last line of defence does not turn it into an error line)."""


@contextlib.contextmanager
def _hard_limit(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise _Overtime(f"the command ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@attrs.frozen
class Outcome:
    argv: list[str]
    code: int
    out: str
    err: str
    seconds: float


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    """``latentkit ARGV`` in this process; argparse's own errors (SystemExit) are outcomes
    too. Global state a command may leave behind (deterministic algorithms) is restored."""
    capsys.readouterr()
    out = io.StringIO()
    deterministic = torch.are_deterministic_algorithms_enabled()
    start = time.perf_counter()
    try:
        with _hard_limit(HARD_SECONDS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the CLI's warnings are not its error lines
            try:
                code = main(argv, out=out)
            except SystemExit as exc:  # argparse: usage and one error line
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        seconds = time.perf_counter() - start
        torch.use_deterministic_algorithms(deterministic)
    captured = capsys.readouterr()
    return Outcome(argv=argv, code=code, out=out.getvalue() + captured.out, err=captured.err, seconds=seconds)


_PROGRESS = re.compile(r"\d+it/s\]|s/it\]|\d+it \[|\|\s*\d+/\d+")


def _error_lines(err: str) -> list[str]:
    """The lines of ``err`` that are not argparse's usage block or a progress bar."""
    lines = []
    usage = False
    for line in err.replace("\r", "\n").splitlines():
        if line.startswith("usage: "):
            usage = True
            continue
        if usage and line.startswith(" "):
            continue  # a wrapped usage line
        usage = False
        if line.strip() and not _PROGRESS.search(line):
            lines.append(line)
    return lines


def _check(outcome: Outcome, fixtures: Fixtures, before: dict[str, tuple[int, str]]) -> None:
    """The properties every fuzzed command has (see the module docstring)."""
    what = f"latentkit {' '.join(map(repr, outcome.argv))}"
    assert "Traceback" not in outcome.err and "Traceback" not in outcome.out, f"{what}: a traceback\n{outcome.err}"
    if outcome.code != 0:
        assert outcome.code == 2, f"{what}: exit status {outcome.code}\n{outcome.err}"
        lines = _error_lines(outcome.err)
        assert len(lines) == 1, f"{what}: {len(lines)} error lines, expected one:\n{outcome.err}"
        assert re.match(r"latentkit( \w+)?: error: ", lines[0]), f"{what}: not an error line: {lines[0]!r}"
    assert outcome.seconds < EXAMPLE_SECONDS, f"{what}: took {outcome.seconds:.1f} s"
    assert not fixtures.marker.exists(), f"{what}: a pickle was executed"
    after = _snapshot(fixtures.run)
    assert after == before, f"{what}: changed the trained run: {_difference(before, after)}"


def _difference(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> list[str]:
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def _resolve(value: Any, tokens: dict[str, str]) -> Any:
    """``value`` with the placeholders of :meth:`Fixtures.tokens` filled in."""
    if isinstance(value, str):
        for token, path in tokens.items():
            value = value.replace(token, path)
        return value
    if isinstance(value, list):
        return [_resolve(v, tokens) for v in value]
    if isinstance(value, dict):
        return {_resolve(k, tokens): _resolve(v, tokens) for k, v in value.items()}
    return value


def _max_rss() -> int:
    """Peak resident memory of this process, in bytes (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _address_space() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


@pytest.fixture
def bounded_memory() -> Iterator[None]:
    """The whole test grows the peak RSS by less than RSS_GROWTH_LIMIT; meanwhile the address
    space is capped (when the platform says how much is in use) so that a runaway allocation
    fails here instead of exhausting the host."""
    start = _max_rss()
    used = _address_space()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if used is not None:
        cap = used + ADDRESS_SPACE_MARGIN
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    grown = _max_rss() - start
    assert grown < RSS_GROWTH_LIMIT, f"the peak RSS grew by {grown / 2**30:.2f} GiB"


def _check_memory(start: int, outcome: Outcome) -> None:
    grown = _max_rss() - start
    assert grown < RSS_GROWTH_LIMIT, (
        f"latentkit {' '.join(map(repr, outcome.argv))}: the peak RSS grew by {grown / 2**30:.2f} GiB")


@contextlib.contextmanager
def _scratch(parent: Path) -> Iterator[Path]:
    """A fresh folder for one example's outputs, also its working directory (relative
    paths of a config or a flag land there), removed after it."""
    path = Path(tempfile.mkdtemp(dir=parent))
    cwd = os.getcwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(cwd)
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------- hostile values

HOSTILE_INTS = [0, -1, 1, 2, 3, 7, -(2**63), 2**63 - 1, 2**64, 2**31, 10**9, 10**18, 4096, 65536, 10**6]
HOSTILE_FLOATS = [math.nan, math.inf, -math.inf, 1e30, -1e30, 1e39, 1e-30, 0.0, -0.0, 0.5, 1.5, -2.5,
                  5e-324, 1.7976931348623157e308]
HOSTILE_STRINGS = ["", " ", "0", "1", "12", "123", "-1", "1,2", "[1, 2]", "1e30", "nan", "inf", "true", "None",
                   "null", "auto", "cpu", "cuda", "meta", "eps", "module:attr", "os:system", "../..", "~",
                   "x" * 10_000, "\u00e9\u4e2d\u0661", "a\tb\nc", "\\", "'", '"', "\x7f", "step_00000002"]
#: Paths given where something is read (weights, configs, images, runs).
INPUT_PATHS = ["@RUN@", "@RUN@/config.toml", "@RUN@/checkpoints", "@RUN@/metrics.csv", "@CKPT@",
               "@CKPT@/model.safetensors", "@CKPT@/state.json", "@CKPT@/state.safetensors",
               "@SCRATCH@/missing", "@SCRATCH@/missing/x.safetensors", "/nonexistent/deep/path.png", "/dev/null",
               "/dev/zero", "@FILES@", "@FILES@/subdir",
               *(f"@FILES@/{name}" for name in (
                   "image.png", "mask.png", "rgba.png", "tiny.png", "large.png", "truncated.png", "bomb.png",
                   "empty.png", "text.png", "evil.ckpt", "evil.pt", "evil.bin", "evil_pickle.safetensors",
                   "evil_zip.pt", "empty.safetensors", "garbage.safetensors", "deep.safetensors",
                   "huge_shape.safetensors", "empty.toml", "binary.toml"))]
#: Paths given where something is written: only ever inside the example's scratch folder.
OUTPUT_PATHS = ["@SCRATCH@/out", "@SCRATCH@/out/grid.png", "@SCRATCH@/grid.png", "@SCRATCH@/grid.gif",
                "@SCRATCH@/grid.jpg", "@SCRATCH@/grid.txt", "@SCRATCH@/grid", "@SCRATCH@/a/b/c/grid.png",
                "@SCRATCH@", "@SCRATCH@/" + "x" * 300, "@SCRATCH@/grid.png/", "@SCRATCH@/.", "",
                "@SCRATCH@/m.json"]

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
_scalars = st.one_of(
    st.sampled_from(HOSTILE_INTS), st.sampled_from(HOSTILE_FLOATS), st.booleans(),
    st.sampled_from(HOSTILE_STRINGS), _text, st.integers(), st.floats(),
)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"x": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


def _values(paths: list[str]) -> st.SearchStrategy[Any]:
    """A hostile TOML value: a scalar, an array, a table, or a path of ``paths``."""
    return st.one_of(
        _scalars,
        st.sampled_from(paths),
        st.lists(_scalars, max_size=4),
        st.sampled_from([[], [1], [0], [-1], [10**9], [math.nan], ["1", "2"], [[1, 2]], [True], [1, 2, 2, 4, 8, 16]]),
        st.dictionaries(st.sampled_from(["", "a", "name", "x"]), _scalars, max_size=2),
        st.sampled_from([2, 40, 400]).map(_nested),
    )


# ----------------------------------------------------------------------- config fuzzing

#: Keys every part table reads itself, besides its factory's options.
_FIXED_KEYS = {"autoencoder": ["name", "weights_from", "fit_statistics"], "denoiser": ["name", "weights_from"],
               "conditioner": ["name", "weights_from"], "schedule": ["name", "weights_from"],
               "data": ["name", "cache_latents", "cache_dir", "cache_flip"], "model": ["kind", "loss"]}
_UNKNOWN_KEYS = ["", "nmae", "max_stpes", "Name", "name ", "1", "__init__", "a.b", "x" * 300]
_UNKNOWN_TABLES = ["trainig", "", "Model", "training.sub", "x" * 100]
#: Keys whose value is a place that is written.
_OUTPUT_KEYS = {"output_dir", "cache_dir"}
#: Registered names a hostile ``name`` may be (``photo_crops`` is left out: it may download).
_NAMES = ["identity", "kl", "vq", "causal_video", "unet", "dit", "video_unet", "volume_unet", "class_label",
          "openclip_text", "size", "concat", "scaled_linear", "linear", "cosine", "edm", "shapes", "digits",
          "moving_shapes", "image_folder", "latent_cache", "volume_primitives", "diffusion", "autoencoder",
          "stable_diffusion", "volume_sdf_autoencoder"]


@functools.cache
def _table_keys() -> dict[str, list[str]]:
    """Every key of every table of BASE: those present, those its component's factory (or
    TrainingConfig) takes, and a few unknown ones."""
    from latentkit.plugins import get_plugin_manager
    from latentkit.training import TrainingConfig
    from latentkit.validation import factory_parameters

    pm = get_plugin_manager()
    pm.load()
    base = tomllib.loads(BASE)
    kinds = {"autoencoder": "autoencoder", "denoiser": "denoiser", "conditioner": "conditioner",
             "schedule": "schedule", "data": "dataset"}
    keys: dict[str, list[str]] = {}
    for table, values in base.items():
        known = set(values) | set(_FIXED_KEYS.get(table, []))
        if table in kinds:
            known |= set(factory_parameters(pm.get(kinds[table], values["name"]).resolve())[0])
        elif table == "model":
            known |= set(factory_parameters(pm.get("model", values.get("kind", "diffusion")).resolve())[0])
        elif table == "training":
            known |= {f.name for f in attrs.fields(TrainingConfig)}
        keys[table] = sorted(known) + _UNKNOWN_KEYS
    return keys


@st.composite
def _mutation(draw: st.DrawFn) -> tuple[Any, ...]:
    """One change to BASE: ("set", table, key, value), ("delete", table, key),
    ("delete_table", table), ("not_a_table", table, value) or ("text", whole file)."""
    keys = _table_keys()
    base = tomllib.loads(BASE)
    op = draw(st.sampled_from(["set"] * 12 + ["unknown_table", "delete", "delete", "delete_table",
                                              "not_a_table", "text"]))
    if op in ("set", "unknown_table"):
        if op == "set":
            table = draw(st.sampled_from(sorted(base)))
            present = sorted(base[table])
            # the keys of BASE twice as often as the others the table takes, unknown ones rarely
            key = draw(st.sampled_from(present * 2 + [k for k in keys[table] if k not in present]))
        else:
            table = draw(st.sampled_from(_UNKNOWN_TABLES))
            key = draw(st.sampled_from(["name", "x"]))
        paths = OUTPUT_PATHS if key in _OUTPUT_KEYS else INPUT_PATHS
        value = draw(st.one_of(_values(paths), st.sampled_from(_NAMES)) if key in ("name", "kind") else _values(paths))
        return ("set", table, key, value)
    if op == "delete":
        table = draw(st.sampled_from(sorted(base)))
        return ("delete", table, draw(st.sampled_from(sorted(base[table]))))
    if op == "delete_table":
        return ("delete_table", draw(st.sampled_from(sorted(base))))
    if op == "not_a_table":
        return ("not_a_table", draw(st.sampled_from(sorted(base))), draw(_scalars))
    return ("text", draw(st.sampled_from([
        "", "\ufeff" + BASE, BASE + BASE, BASE.replace("]", "", 1), BASE + "[training]\n", "x = \n",
        BASE.replace("[training]", "[training]\n" + "a = [" * 5000), "\x00" * 10,
        BASE.replace("max_steps = 2", "max_steps = 2\nmax_steps = 3"), "[[training]]\nx = 1\n",
    ])))


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_str(key)


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)  # nan, inf and -inf are TOML too
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def _render(doc: dict[str, Any]) -> str:
    """TOML for ``doc``: its non-table values first, then one [table] per table."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for name, values in doc.items():
        if isinstance(values, dict):
            lines += ["", f"[{'.'.join(_toml_key(p) for p in name.split('.'))}]"]
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _mutated(mutations: list[tuple[Any, ...]], tokens: dict[str, str]) -> str:
    doc: dict[str, Any] = tomllib.loads(BASE)
    text = None
    for m in mutations:
        if m[0] == "set":
            doc.setdefault(m[1], {})
            if isinstance(doc[m[1]], dict):
                doc[m[1]][m[2]] = _resolve(m[3], tokens)
        elif m[0] == "delete":
            if isinstance(doc.get(m[1]), dict):
                doc[m[1]].pop(m[2], None)
        elif m[0] == "delete_table":
            doc.pop(m[1], None)
        elif m[0] == "not_a_table":
            doc[m[1]] = m[2]
        else:
            text = m[1]
    return text if text is not None else _render(doc)


_FUZZ_SETTINGS = settings(
    deadline=None, derandomize=True, database=None, phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


@settings(_FUZZ_SETTINGS, max_examples=FUZZ_EXAMPLES // 2)
@given(mutations=st.lists(_mutation(), min_size=1, max_size=2), resume=st.sampled_from([False, False, False, True]))
def test_hostile_config_values_fail_cleanly_and_never_touch_a_run(
    fixtures: Fixtures, tmp_path: Path, capsys: pytest.CaptureFixture[str], bounded_memory: None, mutations: list[tuple[Any, ...]], resume: bool,
) -> None:
    """``latentkit train`` with one or two keys of a valid config given a hostile value (or
    removed): it trains (exit 0) or fails with exit 2 and one error line, no traceback; it
    changes no file of the trained run, and, resuming a copy of that run, no file of the copy
    when it fails; it unpickles nothing; within EXAMPLE_SECONDS and RSS_GROWTH_LIMIT."""
    start = _max_rss()
    before = _snapshot(fixtures.run)
    with _scratch(tmp_path) as scratch:
        copy = scratch / "resumed"
        tokens = fixtures.tokens(scratch, copy)
        config = scratch / "fuzz.toml"
        config.write_text(_mutated(mutations, tokens), encoding="utf-8")
        if resume:  # a deliberate resume of (a copy of) the trained run
            shutil.copytree(fixtures.run, copy)
            target = copy
        else:
            target = scratch / "fresh"
        copied = _snapshot(copy) if resume else {}
        outcome = _run(["train", str(config), "--output", str(target), "--max-steps", "1"], capsys)
        _check(outcome, fixtures, before)
        _check_memory(start, outcome)
        if resume and outcome.code != 0:
            after = _snapshot(copy)
            assert after == copied, f"a failed resume changed the run: {_difference(copied, after)}\n{outcome.err}"
        if resume and outcome.code == 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert latest_checkpoint(copy / "checkpoints") is not None, "the resumed run lost its checkpoints"


# ----------------------------------------------------------------------- command-line fuzzing

INT_TEXTS = ["0", "-1", "1", "2", "3", "-0", "+1", " 1", "1 ", "1_0", "\u0663", "0x10", "1e3", "1.0", "1.5",
             "nan", "inf", "-inf", "1e30", "-1e30", "2147483648", "4294967296", "9223372036854775807",
             "9223372036854775808", "-9223372036854775809", "18446744073709551616", "9" * 40, "65536",
             "4096", "1000000", "", "abc", "--", "-", "None", "true"]
FLOAT_TEXTS = [*INT_TEXTS, "0.5", "7.5", "1e-30", "-0.0", "1e308", "1e309", "5e-324", "0.75", "1.0000001",
                           "NaN", "-nan", "infinity"]
DEVICES = ["cpu", "auto", "cuda", "cuda:0", "cuda:1", "cuda:-1", "cpu:0", "cpu:1", "meta", "mps", "xla", "vulkan",
           "CPU", "", " cpu", "gpu", "cuda:99999999999999999999", "cpu,cuda"]
RUN_PATHS = [*INPUT_PATHS, "", ".", "/", "@RUN@/", "@RUN@/checkpoints/step_00000002/"]
_STRINGS = st.one_of(st.sampled_from(HOSTILE_STRINGS), _text)


def _samplers() -> list[str]:
    from latentkit.plugins import get_plugin_manager

    return [info.name for info in get_plugin_manager().list("sampler")] + ["eulr", "", "Euler", "euler "]


_ONE_INT = st.sampled_from(INT_TEXTS).map(lambda s: [s])
_ONE_FLOAT = st.sampled_from(FLOAT_TEXTS).map(lambda s: [s])
_ONE_INPUT = st.sampled_from(INPUT_PATHS).map(lambda s: [s])
_ONE_OUTPUT = st.sampled_from(OUTPUT_PATHS).map(lambda s: [s])
_ONE_STRING = _STRINGS.map(lambda s: [s])
_NO_VALUE: st.SearchStrategy[list[str]] = st.just([])
#: Each flag of train / sample / eval and the values it may be given.
SAMPLING_FLAGS: dict[str, st.SearchStrategy[list[str]]] = {
    "--sampler": st.deferred(lambda: st.sampled_from(_samplers()).map(lambda s: [s])),
    "--steps": _ONE_INT, "--guidance": _ONE_FLOAT, "--seed": _ONE_INT, "--num": _ONE_INT,
    "--size": st.lists(st.sampled_from([*INT_TEXTS, "16", "32", "8"]), min_size=1, max_size=3),
    "--no-ema": _NO_VALUE, "--device": st.sampled_from(DEVICES).map(lambda s: [s]),
    "--schedule": st.one_of(_ONE_INPUT, st.sampled_from(
        ["14,3,0.5,0", "inf,2,0", "1,2,0", "3,3,0", "nan,1,0", "5", ",", "1e400,1,0", "-1,0"]).map(lambda s: [s])),
    "--force-schedule": _NO_VALUE,
}
FLAGS: dict[str, dict[str, st.SearchStrategy[list[str]]]] = {
    "train": {"--max-steps": _ONE_INT, "--output": st.sampled_from([*OUTPUT_PATHS, "@RUNCOPY@"]).map(lambda s: [s]),
              "--resume": _NO_VALUE, "--no-resume": _NO_VALUE, "--no-progress": _NO_VALUE},
    "sample": {**SAMPLING_FLAGS, "--prompt": _ONE_STRING, "--negative-prompt": _ONE_STRING, "--label": _ONE_INT,
               "--init-image": _ONE_INPUT, "--strength": _ONE_FLOAT, "--mask": _ONE_INPUT, "--out": _ONE_OUTPUT,
               "--checkpoint": _ONE_INPUT},
    "eval": {**SAMPLING_FLAGS, "--prompt": _ONE_STRING, "--max-prompts": _ONE_INT, "--items": _ONE_INT,
             "--out": _ONE_OUTPUT, "--json": _ONE_OUTPUT},
}
#: What each command starts from: (positional, [(flag, values), ...]); every command is valid.
BASE_ARGS: dict[str, tuple[str, list[tuple[str, list[str]]]]] = {
    "train": ("@SCRATCH@/train.toml", [("--output", ["@SCRATCH@/out"]), ("--max-steps", ["1"]),
                                       ("--no-progress", [])]),
    "sample": ("@RUN@", [("--label", ["1"]), ("--num", ["1"]), ("--steps", ["2"]), ("--device", ["cpu"]),
                         ("--out", ["@SCRATCH@/grid.png"])]),
    "eval": ("@RUN@", [("--items", ["4"]), ("--steps", ["2"]), ("--device", ["cpu"])]),
}
_POSITIONAL = {"train": [*INPUT_PATHS, "@SCRATCH@/train.toml", ""], "sample": RUN_PATHS, "eval": RUN_PATHS}
#: The config ``train`` reads: BASE writing into the scratch folder, with a time budget that
#: bounds any --max-steps (a valid huge one trains for max_seconds).
TRAIN_CONFIG = BASE + "max_seconds = 3.0\noutput_dir = \"@SCRATCH@/config_output\"\n"


@st.composite
def _command(draw: st.DrawFn) -> list[str]:
    """argv of train, sample or eval (with placeholders): the command's valid base with one
    to three flags set, repeated, removed, given no value, or taken from another command, or
    its positional replaced or removed."""
    command = draw(st.sampled_from(["train", "sample", "sample", "eval"]))
    positional, flags = BASE_ARGS[command]
    args: list[str | None] = [positional]
    pairs = list(flags)
    bare: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["set"] * 6 + ["repeat", "drop", "bare", "foreign", "positional", "unknown"]))
        own = FLAGS[command]
        if op in ("set", "repeat", "bare"):
            flag = draw(st.sampled_from(sorted(own)))
            if op == "bare":
                bare.append(flag)
                continue
            values = draw(own[flag])
            if op == "set":
                pairs = [(f, v) for f, v in pairs if f != flag]
            pairs.append((flag, values))
        elif op == "drop":
            if pairs:
                gone = draw(st.sampled_from([f for f, _ in pairs]))
                pairs = [(f, v) for f, v in pairs if f != gone]
        elif op == "foreign":
            other = draw(st.sampled_from(sorted(c for c in FLAGS if c != command)))
            flag = draw(st.sampled_from(sorted(FLAGS[other])))
            pairs.append((flag, draw(FLAGS[other][flag])))
        elif op == "positional":
            args = [draw(st.one_of(st.none(), st.sampled_from(_POSITIONAL[command])))]
        else:
            pairs.append((draw(st.sampled_from(["--stepz", "--", "-x", "--help-me", "--steps=3", "--size=16"])), []))
    argv = [command, *(a for a in args if a is not None)]
    for flag, values in pairs:
        argv += [flag, *values]
    return argv + bare


@settings(_FUZZ_SETTINGS, max_examples=FUZZ_EXAMPLES - FUZZ_EXAMPLES // 2)
@given(argv=_command())
def test_hostile_command_line_flags_fail_cleanly_and_never_touch_a_run(
    fixtures: Fixtures, tmp_path: Path, capsys: pytest.CaptureFixture[str], bounded_memory: None, argv: list[str],
) -> None:
    """``latentkit train | sample | eval`` with hostile flag values, repeated, missing or
    foreign flags and hostile positionals: exit 0, or exit 2 with one error line (argparse's
    usage block aside) and no traceback; no file of the trained run changes (nor of a copy of
    it that a failed ``train --output`` was pointed at); nothing is unpickled; within
    EXAMPLE_SECONDS and RSS_GROWTH_LIMIT."""
    start = _max_rss()
    before = _snapshot(fixtures.run)
    with _scratch(tmp_path) as scratch:
        copy = scratch / "resumed"
        tokens = fixtures.tokens(scratch, copy)
        (scratch / "train.toml").write_text(_resolve(TRAIN_CONFIG, tokens))
        resolved = _resolve(argv, tokens)
        if any("@RUNCOPY@" in a for a in argv):
            shutil.copytree(fixtures.run, copy)
        copied = _snapshot(copy) if copy.exists() else {}
        outcome = _run(resolved, capsys)
        _check(outcome, fixtures, before)
        _check_memory(start, outcome)
        if copied and outcome.code != 0:
            after = _snapshot(copy)
            assert after == copied, f"a failed resume changed the run: {_difference(copied, after)}\n{outcome.err}"


# ----------------------------------------------------------------------- checkpoint bit flips


class _Regression(torch.nn.Module):
    """A tiny model with the Trainer's protocol (loss(batch))."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.net(batch["x"]) - batch["y"]).pow(2).mean()


def _regression_data() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, generator=g)
    return [{"x": x[i], "y": x[i].sum(0, keepdim=True).sin()} for i in range(12)]


def _trainer(output_dir: Path) -> Any:
    from latentkit.plugins import PluginManager
    from latentkit.training import Trainer, TrainingConfig

    torch.manual_seed(0)
    cfg = TrainingConfig(output_dir=str(output_dir), max_steps=3, checkpoint_every=1, keep_last=3, batch_size=4,
                         lr=1e-2, ema_decay=0.9, progress=False, csv=False, device="cpu")
    return Trainer(_Regression(), _regression_data(), cfg, plugin_manager=PluginManager(autoload=False))


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _equal(a: Any, b: Any) -> bool:
    """Bit-identical nested state (tensors by dtype and value, NaN equal to NaN)."""
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and bool(torch.equal(_bytes(a), _bytes(b))))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def _same_checkpoint(a: LoadedCheckpoint, b: LoadedCheckpoint) -> bool:
    return a.step == b.step and _equal(a.model, b.model) and _equal(a.ema, b.ema) and _equal(a.state, b.state)


@attrs.frozen
class Saved:
    """A 3-step run with checkpoints at steps 1, 2 and 3, as loaded right after training."""

    run: Path
    loaded: dict[int, LoadedCheckpoint]

    @property
    def newest(self) -> Path:
        return self.run / "checkpoints" / "step_00000003"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    run = tmp_path_factory.mktemp("flips") / "run"
    _trainer(run).fit()
    loaded = {step: load_checkpoint(run / "checkpoints" / f"step_{step:08d}") for step in (1, 2, 3)}
    assert sorted(p.name for p in (run / "checkpoints" / "step_00000003").iterdir()) == [
        "ema.safetensors", "model.safetensors", "state.json", "state.safetensors"]
    return Saved(run=run, loaded=loaded)


def _flip(path: Path, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))


def _parsed(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


@settings(max_examples=FUZZ_FLIPS, deadline=None, derandomize=True, database=None,
          phases=(Phase.explicit, Phase.generate),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_flipped_bit_in_the_newest_checkpoint_never_resumes_a_changed_state(
    saved: Saved, tmp_path: Path, data: st.DataObject
) -> None:
    """Flip one bit of one file of the newest checkpoint (step 3) of a copy of the run:
    ``latest_checkpoint`` (and, for some flips, ``Trainer.resume`` on a fresh trainer) falls
    back to step 2, bit-identical (step, weights, EMA, optimizer state), with one warning
    naming step 3. The only flips that may load step 3 instead are those that leave the parsed
    state.json exactly as it was (e.g. ``1e-08`` -> ``1E-08``), and then step 3 must load
    bit-identical: no flip resumes a changed state, and none raises."""
    name = data.draw(st.sampled_from(sorted(p.name for p in saved.newest.iterdir())), label="file")
    original = (saved.newest / name).read_bytes()
    bit = data.draw(st.integers(0, 8 * len(original) - 1), label="bit")
    with _scratch(tmp_path) as scratch:
        run = scratch / "run"
        shutil.copytree(saved.run / "checkpoints", run / "checkpoints")
        newest = run / "checkpoints" / "step_00000003"
        _flip(newest / name, bit)
        invisible = name == "state.json" and _parsed((newest / name).read_bytes()) == _parsed(original)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            found = latest_checkpoint(run / "checkpoints")
        skipped = [str(w.message) for w in caught if "skipping checkpoint" in str(w.message)]
        assert found is not None
        if found.step == 3:
            assert invisible, f"a flip of bit {bit} of {name} loaded as intact"
            assert _same_checkpoint(found, saved.loaded[3]) and not skipped
            return
        assert found.step == 2 and _same_checkpoint(found, saved.loaded[2]), f"flip of bit {bit} of {name}"
        assert len(skipped) == 1 and "step_00000003" in skipped[0], skipped
        if data.draw(st.integers(0, 3), label="resume") == 0:
            trainer = _trainer(run)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                assert trainer.resume()
            assert any("step_00000003" in str(w.message) for w in caught)
            expected = saved.loaded[2]
            assert trainer.step == 2 and trainer.last_checkpoint == run / "checkpoints" / "step_00000002"
            assert _equal({k: v.cpu() for k, v in trainer.model.state_dict().items()}, expected.model)
            assert _equal(trainer.ema.state_dict(trainer.model), expected.ema)
            for group in trainer.groups:
                assert _equal(group.optimizer.state_dict(), expected.state["optimizers"][group.name])
                assert _equal(group.scheduler.state_dict(), expected.state["schedulers"][group.name])
