"""Run inside the reader's virtual environment by tests/test_reader_kernel.py (not collected by pytest).

Usage: python reader_kernel.py CHAPTERS_DIR WHOLE_CHAPTER

For every chapter notebook, runs its cells in a fresh kernel of this environment up to and
including the first cell that loads data (the whole notebook if none does, or if it is
WHOLE_CHAPTER), then one more cell holding every import statement of the cells it did not run
(so a package that only a late cell imports is checked too), and prints one JSON line per
chapter: name, cells run, imports checked, seconds, error (or null). Exits 1 if any chapter failed.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import time
from pathlib import Path

import nbclient
import nbformat

#: A data load: a call of one of these, or the function passed on (``datasets(companion.load_mnist)``).
LOADS = re.compile(r"\b(load_mnist|load_fashion_mnist|load_dataset|run_recipe)\b")
PROBE = (
    "import importlib.util, json, sys\n"
    "print(json.dumps({'prefix': sys.prefix, 'myst_nb': importlib.util.find_spec('myst_nb') is not None}))"
)


def cells_to_run(notebook: nbformat.NotebookNode, whole: bool) -> int:
    """Number of cells up to and including the first code cell that loads data."""
    if whole:
        return len(notebook.cells)
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and LOADS.search(cell.source):
            return index + 1
    return len(notebook.cells)


def imports_of(cells: list) -> list[str]:
    """The top-level ``import`` / ``from ... import`` statements of ``cells``' code, one string each."""
    statements = []
    for cell in cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:  # a cell with IPython syntax (magics): its imports are not collected
            continue
        statements += [ast.unparse(node) for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    return list(dict.fromkeys(statements))


def run(path: Path, whole: bool) -> dict:
    notebook = nbformat.read(path, as_version=4)
    count = cells_to_run(notebook, whole)
    later_imports = imports_of(notebook.cells[count:])
    notebook.cells = [nbformat.v4.new_code_cell(PROBE)] + notebook.cells[:count]
    if later_imports:
        notebook.cells.append(nbformat.v4.new_code_cell("\n".join(later_imports)))
    started = time.perf_counter()
    client = nbclient.NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    error = None
    try:
        client.execute()
    except Exception as err:  # report the failure in one line, then go on with the next chapter
        if hasattr(err, "ename"):  # nbclient's CellExecutionError: the exception raised in the cell
            failed_at = sum(1 for cell in notebook.cells[1:] if cell.get("outputs") or cell.get("execution_count"))
            error = f"cell {failed_at}: {err.ename}: {str(getattr(err, 'evalue', '')).strip()[-500:]}"
        else:
            error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
    probe = json.loads(notebook.cells[0].outputs[0]["text"]) if notebook.cells[0].get("outputs") else {}
    return {"chapter": path.name, "cells": count, "later_imports": len(later_imports),
            "seconds": round(time.perf_counter() - started, 1),
            "error": error, "kernel_prefix": probe.get("prefix"), "myst_nb": probe.get("myst_nb")}  # fmt: skip


def main() -> int:
    chapters, whole = Path(sys.argv[1]), sys.argv[2]
    failed = False
    for path in sorted(chapters.glob("*.ipynb")):
        result = run(path, whole=path.stem == whole)
        print(json.dumps(result), flush=True)
        failed |= result["error"] is not None
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
