"""The test command's plumbing: two workers, timed chapters alone, one execution for the book.

1. **Two workers.** ``pyproject.toml`` runs the suite under pytest-xdist (``-n 2 --dist loadfile``):
   each notebook, like each test module, stays on one worker, which executes its cells in one kernel.
   The files are ordered by :func:`parallel.longest_first` from the seconds the previous run
   recorded (``_build/test-durations.json``, written here) or else from the committed record
   ``tests/durations.json``.
2. **One thread each, timed chapters alone.** A worker's kernels and subprocesses get
   ``OMP_NUM_THREADS=1`` and ``COMPANION_CPU_SHARED=1``, while the worker holds a shared
   :class:`parallel.CpuLock`. The notebooks of :data:`parallel.TIMED_ALONE` (their cells compare
   speeds) hold it exclusively instead and keep the default threads: nothing else runs meanwhile.
   The other chapters state in their text how their seconds were measured
   (:func:`companion.device.timing_conditions`).
3. **One execution for the book.** nbval runs a notebook's code cells one by one in a single kernel.
   When every code cell of a notebook ran and passed, the notebook — with the outputs nbval received
   and execution counts 1, 2, ... — is stored in the book's jupyter-cache, so ``jupyter-book build``
   shows that execution instead of running the notebook again (``_ext/execution_cache.py``). Each
   worker stores its notebooks when it ends, one worker at a time (a file lock), with its name, the
   threads and whether the notebook ran alone: the execution-status page shows them. A notebook with
   a failed, skipped or deselected cell is not stored (the book then executes it itself).

With ``-n 0`` everything runs in one process, in the same order, alone.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT / "_ext"), str(ROOT / "tools")]
import execution_cache  # noqa: E402
import parallel  # noqa: E402

#: Seconds per file recorded by the last run (the next run's order).
DURATIONS = ROOT / "_build" / "test-durations.json"
#: The committed record: the order of a fresh clone's first run.
COMMITTED_DURATIONS = ROOT / "tests" / "durations.json"
_THREAD_ENV = ("OMP_NUM_THREADS", parallel.SHARED_ENV)

_lock: parallel.CpuLock | None = None
_saved_env: dict[str, str | None] = {}
_runs: dict[Path, dict] = {}
_file_seconds: dict[str, float] = {}


def _file_key(nodeid: str) -> str:
    """A file's key in the durations record: its path from the repository root, as in the node id."""
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config, items):
    durations = parallel.read_durations(COMMITTED_DURATIONS, DURATIONS)
    files: dict[str, list] = {}
    for item in items:
        files.setdefault(_file_key(item.nodeid), []).append(item)
    items[:] = [item for key in parallel.longest_first(files, durations) for item in files[key]]


def pytest_configure(config):
    global _lock
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or int(workerinput.get("workercount", 1)) < 2:
        return
    _lock = parallel.CpuLock(Path(tempfile.gettempdir()) / f"companion-cpu-{workerinput['testrunuid']}.lock")
    _saved_env.update({name: os.environ.get(name) for name in _THREAD_ENV})
    _share_cpu(True)


def _share_cpu(shared: bool) -> None:
    """Kernels and subprocesses started from now on: one thread beside other work, or the defaults."""
    for name, value in _saved_env.items():
        if shared:
            os.environ[name] = "1"
        elif value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _lock is None:
        yield
        return
    if not _lock.held:  # the file's first item: nbval starts the notebook's kernel in its setup
        alone = parallel.timed_alone(item.path)
        _lock.acquire(exclusive=alone)
        _share_cpu(not alone)
    try:
        yield
    finally:
        if nextitem is None or _file_key(nextitem.nodeid) != _file_key(item.nodeid):  # the kernel is gone
            _share_cpu(True)
            _lock.release()


def _is_nbval_cell(item) -> bool:
    return type(item).__name__ == "IPyNbCell" and hasattr(item, "test_outputs")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when != "call" or not _is_nbval_cell(item):
        return
    report = outcome.get_result()
    run = _runs.setdefault(Path(str(item.parent.fspath)), {
        "notebook": item.parent.nb, "passed": 0, "seconds": 0.0, "failed": False,
        "data": {"worker": getattr(item.config, "workerinput", {}).get("workerid", "main"),
                 "cpu_threads": os.environ.get("OMP_NUM_THREADS") or "default",
                 "alone": _lock is None or _lock.held == "exclusive"},
    })  # fmt: skip
    if report.passed and item.test_outputs is not None:
        run["passed"] += 1
        run["seconds"] += call.duration
        item.cell.outputs = list(item.test_outputs)
        item.cell.execution_count = run["passed"]
        for output in item.cell.outputs:
            if output.get("output_type") == "execute_result":
                output["execution_count"] = run["passed"]
    else:
        run["failed"] = True


def pytest_runtest_logreport(report):
    """Each file's seconds, setup and teardown included (under xdist the controller sees every report)."""
    key = _file_key(report.nodeid)
    _file_seconds[key] = _file_seconds.get(key, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    if not hasattr(session.config, "workerinput") and _file_seconds:
        parallel.write_durations(DURATIONS, _file_seconds)
    if _lock is not None:
        _lock.close()
    complete = {
        path: run for path, run in _runs.items()
        if not run["failed"] and run["passed"] == sum(c.cell_type == "code" for c in run["notebook"].cells)
    }  # fmt: skip
    if not complete:
        return
    from filelock import FileLock
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    execution_cache.CACHE.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(execution_cache.CACHE.parent / ".jupyter_cache.lock")):  # one worker at a time
        execution_cache.drop_if_stale()
        cache = get_cache(str(execution_cache.CACHE))
        for path, run in complete.items():
            bundle = CacheBundleIn(run["notebook"], str(path), data={"execution_seconds": run["seconds"], **run["data"]})
            cache.cache_notebook_bundle(bundle, check_validity=False, overwrite=True)
        execution_cache.stamp()
