"""Benchmark: the book's execution time, per chapter and per cell.

Executes each chapter notebook from its first cell in a fresh kernel (``nbclient``, as nbval
and the book build do, with the chapter's folder as working directory), times every code cell
by the wall clock, and prints two Markdown tables: each chapter's seconds, and the slowest
cells of the whole book (``--top``, default 5) with their chapter, index and first line.
Nothing is written into the notebooks.

The JSON record (default ``benchmarks/results/book_time-<host>-<time>.json``, written
atomically) holds the machine (as ``mnist_pipeline.py`` records it) and, per chapter, the total
seconds (kernel start to shutdown) and every code cell's seconds, so that runs on different
machines, or before and after a change, can be compared. A chapter that raises is recorded with
its error and the run goes on; the exit status is then 1.

Usage::

    COMPANION_DATA_DIR=/path/to/data MPLBACKEND=Agg python benchmarks/book_time.py
        [NOTEBOOK ...] [--top N] [--json PATH] [--timeout S]

Without notebooks it runs every ``chapters/*.ipynb`` in the order of ``_toc.yml``.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import companion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_pipeline import RESULTS, machine, write_json  # noqa: E402  (a sibling script)

ROOT = Path(__file__).resolve().parent.parent


class TimedClient(NotebookClient):
    """An ``nbclient`` client that records each code cell's wall-clock seconds."""

    def __init__(self, nb, **kwargs):
        super().__init__(nb, **kwargs)
        self.cell_seconds: list[dict] = []

    async def async_execute_cell(self, cell, cell_index, **kwargs):
        started = time.perf_counter()
        try:
            return await super().async_execute_cell(cell, cell_index, **kwargs)
        finally:
            if cell.cell_type == "code":
                first = next((line for line in cell.source.splitlines() if line.strip()), "")
                self.cell_seconds.append({"index": cell_index, "seconds": time.perf_counter() - started,
                                          "first_line": first[:80]})  # fmt: skip


def toc_chapters(root: Path = ROOT) -> list[Path]:
    """The chapter notebooks in the order ``_toc.yml`` lists them (``chapters/NAME`` entries)."""
    names = re.findall(r"file:\s*chapters/([\w-]+)", (root / "_toc.yml").read_text())
    return [root / "chapters" / f"{name}.ipynb" for name in names]


def time_notebook(path: Path, timeout: float = 1800) -> dict:
    """Execute ``path`` in a fresh kernel; its total seconds, cells' seconds and error (or ``None``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    nb = nbformat.read(path, as_version=4)
    client = TimedClient(nb, timeout=timeout, kernel_name="python3",
                         resources={"metadata": {"path": str(path.parent)}})  # fmt: skip
    started, error = time.perf_counter(), None
    try:
        client.execute()
    except CellExecutionError as exc:
        error = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[-1][:300]  # no colour codes
    return {"notebook": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
            "seconds": time.perf_counter() - started, "cells": client.cell_seconds, "error": error}  # fmt: skip


def markdown(record: dict, top: int) -> str:
    chapters = record["chapters"]
    total = sum(c["seconds"] for c in chapters)
    lines = ["| chapter | seconds | slowest cell (s) |", "|---|---:|---:|"]
    for c in chapters:
        slowest = max((cell["seconds"] for cell in c["cells"]), default=0.0)
        status = f" (error: {c['error']})" if c["error"] else ""
        lines.append(f"| {Path(c['notebook']).stem}{status} | {c['seconds']:.0f} | {slowest:.0f} |")
    lines.append(f"| **all** | **{total:.0f}** ({total / 60:.1f} min) | |")
    cells = [(cell, Path(c["notebook"]).stem) for c in chapters for cell in c["cells"]]
    cells.sort(key=lambda pair: pair[0]["seconds"], reverse=True)
    lines += ["", "| slowest cells | chapter | cell | seconds |", "|---|---|---:|---:|"]
    for cell, name in cells[:top]:
        first = cell["first_line"].replace("|", "\\|")
        lines.append(f"| `{first}` | {name} | {cell['index']} | {cell['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", type=Path, help="notebooks to time (default: every chapter)")
    parser.add_argument("--top", type=int, default=5, help="how many of the slowest cells to list")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON record")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one cell may take")
    args = parser.parse_args()
    if args.top < 1:
        parser.error(f"--top must be >= 1, got {args.top}")
    notebooks = [p.resolve() for p in args.notebooks] or toc_chapters()
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        parser.error(f"no notebook at {', '.join(missing)}")
    record = {"benchmark": "book_time", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(companion.get_device()), "chapters": []}  # fmt: skip
    for path in notebooks:
        result = time_notebook(path, args.timeout)
        print(f"{result['notebook']}: {result['seconds']:.0f} s" + (f"  ERROR {result['error']}" if result["error"] else ""),
              flush=True)  # fmt: skip
        record["chapters"].append(result)
    path = args.json or RESULTS / f"book_time-{socket.gethostname()}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(record, path)
    print(markdown(record, args.top))
    print(f"\nJSON record: {path}")
    return 1 if any(c["error"] for c in record["chapters"]) else 0


if __name__ == "__main__":
    sys.exit(main())
