"""The book's sources: notebooks stored clean, and a table of contents that matches the chapters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb"))


def test_there_are_chapters():
    assert NOTEBOOKS, "no notebooks under chapters/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs_and_with_the_python3_kernel(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{path.name} has outputs"
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_notebook_rules(path):
    source = "\n".join("".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"])
    assert "num_workers" not in source or re.search(r"num_workers\s*=\s*0\b", source)
    assert "pin_memory=True" not in source
    assert "download=True" not in source or "companion.load_" in source  # only the package downloads
    assert not re.search(r"^\s*!", source, flags=re.M), "no shell commands in notebooks"
    assert "shared/data" not in source, "read the data root from COMPANION_DATA_DIR"


def test_table_of_contents_lists_exactly_the_chapters():
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r"file:\s*chapters/(\S+)", toc))
    assert listed == {p.stem for p in NOTEBOOKS}
