"""``latentkit plugins`` and ``latentkit check``: what is installed, and whether it keeps the
contract of its kind (the conformance kit, :mod:`latentkit.testing`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TextIO

from latentkit.errors import UnknownComponentError
from latentkit.interfaces import KINDS

__all__ = ["add_component_commands", "cmd_check", "cmd_plugins"]

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
            rows = [[i.name, i.summary, i.plugin, f"{i.distribution or '-'} {i.version or ''}".strip()]
                    for i in infos]
            header = ["name", "summary", "plugin", "distribution"]
            missing = [i.missing() for i in infos]
            if any(missing):  # a column only when something cannot be created here
                header.append("missing")
                for row, info, names in zip(rows, infos, missing):
                    row.append(f"{', '.join(names)} ({info.install})" if names and info.install
                               else ", ".join(names) or "-")
            _table(rows, header, out, max_width=60)
    if manager.broken:
        print(f"\nbroken plugins ({len(manager.broken)}), skipped:", file=out)
        for b in manager.broken:
            dist = f"{b.distribution} {b.version or ''}".strip() if b.distribution else "unknown distribution"
            print(f"  {b.plugin} ({dist}) at {b.stage}: {b.error}", file=out)
            if args.verbose:
                print("    " + b.traceback.replace("\n", "\n    "), file=out)
    return 0


def _select(names: Sequence[str], kind: str | None, kinds: Sequence[str] = CHECKED_KINDS) -> list[Any]:
    """The ComponentInfo objects for ``names`` (``NAME`` or ``KIND:NAME``; a bare name matches
    it in every kind), or every component of ``kinds`` (``kind`` alone when given)."""
    from latentkit.plugins import _suggest, get_plugin_manager

    manager = get_plugin_manager()
    kinds = [kind] if kind else list(kinds)
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


_RESULT = {"passed": "PASS", "skipped": "SKIP", "failed": "FAIL"}


def cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    """Run the conformance kit (and optionally the combination checks); non-zero on failure.

    Checks that do not apply are listed as SKIP with the reason; they are not passes, and
    they do not fail the command either."""
    from latentkit import testing

    combinations = args.combinations is not None  # [] for a bare --combinations: all of them
    results = []
    if args.names or not combinations or args.all:
        results += testing.run_checks(_select(args.names, args.kind))
    if combinations:
        from latentkit.testing.combinations import COMBINED_KINDS, run_combinations

        include = None
        if args.combinations:
            include = [(i.kind, i.name) for i in _select(args.combinations, None, COMBINED_KINDS)]
        results += run_combinations(max_examples=args.max_examples, include=include)
    rows = [(r.kind, r.component, r.layout or "-", r.check, _RESULT[r.outcome]) for r in results]
    _table(rows, ("kind", "component", "layout", "check", "result"), out, max_width=70)
    skipped = [r for r in results if r.skipped]
    failed = [r for r in results if r.failed]
    if skipped:
        print("", file=out)
    for r in skipped:
        print(f"SKIP {r.kind}:{r.component} [{r.layout or '-'}] {r.check}: {r.message}", file=out)
    for r in failed:
        print(f"\nFAIL {r.kind}:{r.component} [{r.layout or '-'}] {r.check}\n  {r.message}", file=out)
    passed = len(results) - len(skipped) - len(failed)
    print(f"\n{passed} passed, {len(skipped)} skipped, {len(failed)} failed", file=out)
    return 1 if failed else 0


def add_component_commands(sub: Any) -> None:
    """Add ``plugins`` and ``check`` to the subcommands ``sub``."""
    p = sub.add_parser("plugins", help="list registered components and broken plugins")
    p.add_argument("--kind", choices=KINDS, help="only this component kind")
    p.add_argument("--strict", action="store_true", help="fail on the first broken plugin")
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of broken plugins")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("check", help="run the conformance kit on installed components")
    p.add_argument("names", nargs="*", metavar="NAME", help="components to check (NAME or KIND:NAME); default all")
    p.add_argument("--kind", choices=CHECKED_KINDS, help="only components of this kind")
    p.add_argument("--combinations", nargs="*", metavar="NAME", default=None,
                   help="check random combinations of installed components (property test); with "
                        "names (NAME or KIND:NAME), only combinations containing at least one of them")
    p.add_argument("--all", action="store_true", help="with --combinations: run the per-component checks too")
    p.add_argument("--max-examples", type=int, default=20, help="combinations to draw (default 20)")
    p.set_defaults(func=cmd_check)
