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

With ``--jobs 2`` it executes notebooks two at a time as the README's test command does
(``tools/parallel.py``): the chapters that compare speeds first, one at a time, alone and with the
default threads; the others longest first (from the test command's recorded durations), two at a
time, each kernel on one thread. Each chapter's record then says which job ran it, with how many
threads and whether it ran alone, and the record holds the wall time and the ratio of summed
chapter seconds to it.

Usage::

    COMPANION_DATA_DIR=/path/to/data MPLBACKEND=Agg python benchmarks/book_time.py
        [NOTEBOOK ...] [--top N] [--json PATH] [--timeout S] [--jobs N]

Without notebooks it runs every ``chapters/*.ipynb`` in the order of ``_toc.yml``.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

import companion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_pipeline import RESULTS, machine, write_json  # noqa: E402  (a sibling script)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import parallel  # noqa: E402  (tools/ is not a package)


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


def time_notebook(path: Path, timeout: float = 1800, env: dict | None = None) -> dict:
    """Execute ``path`` in a fresh kernel; its total seconds, cells' seconds and error (or ``None``).

    ``env`` is the kernel's environment (default: this process's).

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
        client.execute(**({} if env is None else {"env": env}))
    except CellExecutionError as exc:
        error = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[-1][:300]  # no colour codes
    return {"notebook": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
            "seconds": time.perf_counter() - started, "cells": client.cell_seconds, "error": error}  # fmt: skip


def time_in_parallel(paths: list[Path], jobs: int, timeout: float = 1800) -> list[dict]:
    """Execute ``paths`` ``jobs`` at a time, as the test command does; results in the order they finished.

    Timed chapters (:data:`parallel.TIMED_ALONE`) hold a :class:`parallel.CpuLock` exclusively and keep
    the default threads; the others hold it shared, one thread each. Each result gains ``worker``,
    ``cpu_threads``, ``alone`` and ``interval`` (start and end, seconds since the first start).
    """
    durations = parallel.read_durations(ROOT / "tests" / "durations.json", ROOT / "_build" / "test-durations.json")
    keys = {p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(p): p for p in paths}
    queue = [keys[k] for k in parallel.longest_first(keys, durations)]
    lock_path = Path(tempfile.mkdtemp(prefix="book-time-")) / "cpu.lock"
    results, guard, origin = [], threading.Lock(), time.perf_counter()

    def worker(number: int) -> None:
        lock = parallel.CpuLock(lock_path)
        while True:
            with guard:  # pop and take the lock together, so notebooks start in the queue's order
                if not queue:
                    break
                path = queue.pop(0)
                alone = parallel.timed_alone(path)
                lock.acquire(exclusive=alone)  # no holder of the lock waits for ``guard``: no deadlock
            env = dict(os.environ)
            env.pop(parallel.SHARED_ENV, None)
            if not alone:
                env.update({"OMP_NUM_THREADS": "1", parallel.SHARED_ENV: "1"})
            started = time.perf_counter() - origin
            try:
                result = time_notebook(path, timeout, env=env)
                finished = time.perf_counter() - origin  # before the lock lets the next one in
            finally:
                lock.release()
            result.update(worker=f"job{number}", cpu_threads=env.get("OMP_NUM_THREADS", "default"), alone=alone,
                          interval=[started, finished])  # fmt: skip
            print(f"{result['notebook']}: {result['seconds']:.0f} s (job{number}, {'alone' if alone else 'shared'})"
                  + (f"  ERROR {result['error']}" if result["error"] else ""), flush=True)  # fmt: skip
            with guard:
                results.append(result)
        lock.close()

    with ThreadPoolExecutor(jobs) as pool:
        for future in [pool.submit(worker, n) for n in range(jobs)]:
            future.result()
    return results


def markdown(record: dict, top: int) -> str:
    chapters = record["chapters"]
    total = sum(c["seconds"] for c in chapters)
    lines = ["| chapter | seconds | slowest cell (s) | worker, threads, alone |", "|---|---:|---:|---|"]
    for c in chapters:
        slowest = max((cell["seconds"] for cell in c["cells"]), default=0.0)
        status = f" (error: {c['error']})" if c["error"] else ""
        where = f"{c.get('worker', 'main')}, {c.get('cpu_threads', 'default')}, {'yes' if c.get('alone', True) else 'no'}"
        lines.append(f"| {Path(c['notebook']).stem}{status} | {c['seconds']:.0f} | {slowest:.0f} | {where} |")
    lines.append(f"| **all** | **{total:.0f}** ({total / 60:.1f} min) | | |")
    if "wall_seconds" in record:
        wall = record["wall_seconds"]
        lines.append(f"| **wall time** | **{wall:.0f}** ({wall / 60:.1f} min; summed / wall = {total / wall:.2f}) | | |")
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
    parser.add_argument("--jobs", type=int, default=1, help="notebooks executed at a time (as the test command: 2)")
    args = parser.parse_args()
    if args.top < 1:
        parser.error(f"--top must be >= 1, got {args.top}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    notebooks = [p.resolve() for p in args.notebooks] or toc_chapters()
    missing = [str(p) for p in notebooks if not p.is_file()]
    if missing:
        parser.error(f"no notebook at {', '.join(missing)}")
    record = {"benchmark": "book_time", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": machine(companion.get_device()), "chapters": []}  # fmt: skip
    started = time.perf_counter()
    if args.jobs > 1:
        record["chapters"] = time_in_parallel(notebooks, args.jobs, args.timeout)
    for path in notebooks if args.jobs == 1 else []:
        result = time_notebook(path, args.timeout)
        print(f"{result['notebook']}: {result['seconds']:.0f} s" + (f"  ERROR {result['error']}" if result["error"] else ""),
              flush=True)  # fmt: skip
        record["chapters"].append(result)
    record["wall_seconds"] = time.perf_counter() - started
    path = args.json or RESULTS / f"book_time-{socket.gethostname()}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(record, path)
    print(markdown(record, args.top))
    print(f"\nJSON record: {path}")
    return 1 if any(c["error"] for c in record["chapters"]) else 0


if __name__ == "__main__":
    sys.exit(main())
