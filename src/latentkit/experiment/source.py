"""Where a key of a TOML config is written: the line numbers that config errors name.

The TOML parser reports the line of a syntax error only; every later error (an unknown key, a
value of the wrong type, a component that refuses an option) is found on the parsed data. So
:func:`find_line` scans the text for the table header and the key, the same way for values
the parser accepted and for ones it did not.
"""

from __future__ import annotations

import re

__all__ = ["find_line"]

_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_\-]+))\s*[.=]""")


def _opens_or_closes_multiline(line: str) -> bool:
    return line.count('"""') % 2 == 1 or line.count("'''") % 2 == 1


def find_line(text: str, section: str | None, key: str | None = None) -> int | None:
    """1-based line of ``key`` inside table ``[section]`` of TOML ``text`` (of the table
    header when ``key`` is None; a top-level key when ``section`` is None); ``None`` when not
    found."""
    current: str | None = None
    in_multiline = False
    for i, line in enumerate(text.splitlines(), 1):
        if in_multiline:
            in_multiline = not _opens_or_closes_multiline(line)
            continue
        header = _HEADER.match(line)
        if header:
            current = ".".join(p.strip().strip('"').strip("'") for p in header.group(1).split("."))
            if key is None and current == section:
                return i
            continue
        found = _KEY.match(line)
        if found and key is not None and current == section:
            if next(g for g in found.groups() if g is not None) == key:
                return i
        in_multiline = _opens_or_closes_multiline(line)
    return None
