"""``torch.compile`` as an option that never costs a run: compiled on the first call, cached,
and eager (with one warning line) where it cannot compile.

:class:`CompiledModule` wraps a module. Its first call compiles it (``torch.compile``, the
inductor backend by default) and later calls reuse the compiled graphs. If compiling or
running the compiled module fails while the eager module runs the same call fine (no C
compiler, an operator inductor cannot lower, a backend that is missing), it warns once, in
one line naming the module and the reason, and stays eager from then on. An error the eager
module raises too (a wrong input shape) is raised as the eager module raises it, without a
warning: that is the caller's error, not the compiler's.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

__all__ = ["CompiledModule"]


class CompiledModule(nn.Module):
    """``module`` compiled on first use, falling back to eager (see the module docstring).

    ``what`` names the module in the warning; ``options`` go to ``torch.compile``. The
    wrapped module is the submodule ``module`` (so its parameters are this module's).
    """

    def __init__(self, module: nn.Module, *, what: str = "", **options: Any) -> None:
        super().__init__()
        self.module = module
        self.what = what or type(module).__name__
        self.options = dict(options)
        self._compiled: Any = None
        #: Why compiling failed (the warning's reason), or None while it has not.
        self.failure: str | None = None

    @property
    def compiled(self) -> bool:
        """Whether calls go through the compiled module (False after a fallback)."""
        return self.failure is None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The compiled module's output, or the eager one's after a fallback."""
        if self.failure is not None:
            return self.module(*args, **kwargs)
        try:
            if self._compiled is None:
                self._compiled = torch.compile(self.module, **self.options)
            return self._compiled(*args, **kwargs)
        except Exception as exc:  # compile / backend failures of any kind: see below
            output = self.module(*args, **kwargs)  # an error here is the caller's: raised as is
            lines = str(exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {lines[0][:200] if lines else ''}".rstrip(": ")
            self.failure = reason
            warnings.warn(
                f"torch.compile of {self.what} failed ({reason}); running it eagerly",
                RuntimeWarning, stacklevel=2,
            )
            return output
