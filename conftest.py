"""Share nbval's execution of each notebook with the book build (see ``_ext/execution_cache.py``).

nbval runs a notebook's code cells one by one in a single kernel. When every code cell of a
notebook ran and passed, the notebook — with the outputs nbval received and execution counts
1, 2, ... — is stored in the book's jupyter-cache, so ``jupyter-book build`` shows that execution
instead of running the notebook again. A notebook with a failed, skipped or deselected cell is not
stored (the book then executes it itself).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))
import execution_cache  # noqa: E402

_runs: dict[Path, dict] = {}


def _is_nbval_cell(item) -> bool:
    return type(item).__name__ == "IPyNbCell" and hasattr(item, "test_outputs")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when != "call" or not _is_nbval_cell(item):
        return
    report = outcome.get_result()
    run = _runs.setdefault(Path(str(item.parent.fspath)), {"notebook": item.parent.nb, "passed": 0, "seconds": 0.0,
                                                          "failed": False})  # fmt: skip
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


def pytest_sessionfinish(session, exitstatus):
    complete = {
        path: run for path, run in _runs.items()
        if not run["failed"] and run["passed"] == sum(c.cell_type == "code" for c in run["notebook"].cells)
    }  # fmt: skip
    if not complete:
        return
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    execution_cache.drop_if_stale()
    cache = get_cache(str(execution_cache.CACHE))
    for path, run in complete.items():
        bundle = CacheBundleIn(run["notebook"], str(path), data={"execution_seconds": run["seconds"]})
        cache.cache_notebook_bundle(bundle, check_validity=False, overwrite=True)
    execution_cache.stamp()
