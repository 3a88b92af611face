"""Every example in the package's docstrings (``>>>``) runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

MODULES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "companion").glob("*.py") if p.stem != "__main__")


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module("companion" if name == "__init__" else f"companion.{name}")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(module, module.__name__):
        if test.examples and test.filename and Path(test.filename).stem == name:  # not re-exported objects
            runner.run(test)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0, f"{failed} of {attempted} docstring examples of {module.__name__} failed (see the output above)"


def test_the_examples_are_found():
    finder = doctest.DocTestFinder(exclude_empty=True)
    found = sum(len(t.examples) for name in MODULES
                for t in finder.find(importlib.import_module("companion" if name == "__init__" else f"companion.{name}")))  # fmt: skip
    assert found >= 14, found  # the package had 14 examples when this test was written
