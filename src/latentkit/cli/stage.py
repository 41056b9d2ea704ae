"""What a command was doing when it failed, for its one-line error.

Commands mark their phases with :func:`stage` (``with stage("building the model"):``); when
an exception escapes, :func:`one_line` turns it into the single line the command line prints:
the phase, the message, and the notes a plugin hook failure carries (which plugin, which
distribution). The traceback is shown only with ``LATENTKIT_TRACEBACK=1``.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

__all__ = ["EXPECTED", "one_line", "stage"]

#: Errors whose message is written for users: printed without their type.
EXPECTED: tuple[type[BaseException], ...] = (KeyError, OSError, ValueError, TypeError)

#: The phase an exception left, set by the innermost :func:`stage` it passed through.
_FAILED: contextvars.ContextVar[str | None] = contextvars.ContextVar("latentkit_cli_failed_stage", default=None)


@contextlib.contextmanager
def stage(what: str | Callable[[], str]) -> Iterator[None]:
    """Name the phase of a command (a string, or a function called when it fails, e.g. to
    report the training step reached)."""
    try:
        yield
    except BaseException:
        if _FAILED.get() is None:  # the innermost phase names the failure
            _FAILED.set(what() if callable(what) else what)
        raise


def one_line(exc: BaseException) -> str:
    """``while <stage>: <message> (<notes>)``, on one line (and forget the stage)."""
    from latentkit.errors import LatentkitError

    if isinstance(exc, KeyError) and exc.args:
        message = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        message = f"{exc.strerror}: {exc.filename}"
    elif isinstance(exc, (LatentkitError, *EXPECTED)):
        message = str(exc)
    else:  # an error nobody wrote for users: its type says what kind it is
        message = f"{type(exc).__name__}: {exc}"
    notes = getattr(exc, "__notes__", None)
    if notes:
        message += f" ({'; '.join(notes)})"
    failed = _FAILED.get()
    _FAILED.set(None)
    where = f"while {failed}: " if failed else ""
    return " ".join(f"{where}{message}".split())
