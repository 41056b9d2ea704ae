"""The documentation names only what exists: every ``from latentkit... import ...`` and
``import latentkit...`` line of a Python block in README.md and docs/*.md imports (a name
that moved, such as ``load_run``, must be documented where it now lives)."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
_FROM = re.compile(r"^\s*from (latentkit[\w.]*) import \(?([\w, ]+(?: as \w+)?)\)?\s*(?:#.*)?$", re.M)
_IMPORT = re.compile(r"^\s*import (latentkit[\w.]*)(?: as \w+)?\s*(?:#.*)?$", re.M)


def _imports() -> list[tuple[str, str, str | None]]:
    found = []
    for doc in DOCS:
        for block in _BLOCK.findall(doc.read_text()):
            for module, names in _FROM.findall(block):
                found += [(doc.name, module, n.split(" as ")[0].strip()) for n in names.split(",") if n.strip()]
            found += [(doc.name, module, None) for module in _IMPORT.findall(block)]
    return found


IMPORTS = _imports()


def test_the_docs_have_imports_to_check() -> None:
    assert len(IMPORTS) > 30 and {"training.md", "plugins.md"} <= {doc for doc, _, _ in IMPORTS}


@pytest.mark.parametrize(("doc", "module", "name"), IMPORTS, ids=[f"{d}:{m}:{n}" for d, m, n in IMPORTS])
def test_every_documented_import_exists(doc: str, module: str, name: str | None) -> None:
    mod = importlib.import_module(module)
    if name is not None:
        assert hasattr(mod, name) or importlib.util.find_spec(f"{module}.{name}") is not None, \
            f"{doc}: `from {module} import {name}`: {module} has no {name}"
