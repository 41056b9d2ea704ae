"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """Install latentkit with its test extra and run the default suite (args go to pytest)."""
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def slow(session: nox.Session) -> None:
    """The longer end-to-end tests (marked ``slow``)."""
    session.install("-e", ".[test]")
    session.run("pytest", "-m", "slow", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the sources, tests, benchmarks and examples."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "examples")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the package."""
    session.install("-e", ".", "mypy")
    session.run("mypy")


PLUGINS = ("plugins/latentkit-video", "plugins/latentkit-volume")


@nox.session
@nox.parametrize("plugin", PLUGINS, ids=[p.split("/")[-1] for p in PLUGINS])
def plugins(session: nox.Session, plugin: str) -> None:
    """Install one plugin distribution into a fresh environment next to the core and run its
    tests, then the core's conformance kit over everything installed."""
    session.install("-e", ".[test]")
    session.install("-e", plugin)
    session.run("pytest", "-q", f"{plugin}/tests", *session.posargs)
    session.run("latentkit", "check")
