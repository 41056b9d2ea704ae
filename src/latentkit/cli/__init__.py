"""The ``latentkit`` command line.

* ``latentkit plugins`` lists registered components per kind and the plugins that failed to
  load; ``latentkit check`` runs the conformance kit over installed components;
* ``latentkit train CONFIG`` trains what a TOML config describes (also under ``torchrun``);
* ``latentkit sample RUN --prompt ...`` draws samples from a trained run (or, with
  ``--checkpoint FILE``, from a Stable Diffusion single-file checkpoint) into a captioned PNG
  grid, or into the files the plugin of the data layout writes (a GIF for video, meshes for
  volumes: the ``latentkit_write_samples`` hook);
* ``latentkit eval RUN`` measures prompt adherence (``shapes`` prompts) or reconstruction;
* ``latentkit quickstart`` trains a small text-to-image latent diffusion model on the CPU;
* ``latentkit schedule optimize RUN --steps N`` optimises a step schedule for a run and a
  sampler (``latentkit sample --schedule FILE`` uses it).

Every command takes ``--help``; any failure (a bad argument, config or checkpoint, a broken
plugin, an error inside torch) is one line naming what the command was doing, exit status 2,
not a traceback (set ``LATENTKIT_TRACEBACK=1`` to see one). See docs/cli.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from latentkit.cli.components import add_component_commands
from latentkit.cli.runs import add_run_commands
from latentkit.cli.schedule import add_schedule_commands
from latentkit.cli.stage import EXPECTED, one_line
from latentkit.errors import LatentkitError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``latentkit`` command."""
    parser = argparse.ArgumentParser(
        prog="latentkit", description="latentkit: composable latent diffusion models."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_component_commands(sub)
    add_run_commands(sub)
    add_schedule_commands(sub)
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
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if os.environ.get("LATENTKIT_TRACEBACK", "").strip().lower() in ("1", "true", "yes"):
            raise
        expected = isinstance(exc, (LatentkitError, *EXPECTED))
        hint = "" if expected else " (LATENTKIT_TRACEBACK=1 shows where)"
        print(f"latentkit {args.command}: error: {one_line(exc)}{hint}", file=sys.stderr)
        return 2
