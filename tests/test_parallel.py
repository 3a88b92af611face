"""tools/parallel.py: the test command's order of work and its CPU lock; the execution-status table."""

from __future__ import annotations

import stat
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "_ext")]
import parallel  # noqa: E402  (tools/ is not a package)


def test_timed_chapters_first_then_longest_first_unknown_as_longest():
    durations = {"chapters/a.ipynb": 10.0, "chapters/b.ipynb": 50.0, "tests/test_x.py": 30.0,
                 "chapters/trends.ipynb": 5.0, "chapters/modern_cnns.ipynb": 80.0}  # fmt: skip
    keys = ["tests/test_x.py", "chapters/a.ipynb", "chapters/new.ipynb", "chapters/b.ipynb",
            "chapters/trends.ipynb", "chapters/modern_cnns.ipynb", "tests/test_y.py"]  # fmt: skip
    assert parallel.longest_first(keys, durations) == [
        "chapters/modern_cnns.ipynb", "chapters/trends.ipynb",  # timed alone: first, longest first
        "chapters/new.ipynb", "tests/test_y.py",  # unknown: as long as the longest (80 s), by name
        "chapters/b.ipynb", "tests/test_x.py", "chapters/a.ipynb",
    ]  # fmt: skip
    assert parallel.timed_alone("chapters/mnist_in_practice.ipynb")
    assert not parallel.timed_alone("chapters/mnist_in_practice.md") and not parallel.timed_alone("tests/trends.py")


def test_durations_merge_atomically_with_the_usual_permissions(tmp_path):
    path = tmp_path / "sub" / "durations.json"
    parallel.write_durations(path, {"b": 2.04, "a": 1.0})
    parallel.write_durations(path, {"b": 3.0})
    assert parallel.read_durations(path) == {"a": 1.0, "b": 3.0}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["durations.json"]  # no temporary file left
    (tmp_path / "broken.json").write_text("{not json")
    assert parallel.read_durations(tmp_path / "missing.json", tmp_path / "broken.json", path) == {"a": 1.0, "b": 3.0}


def _acquire_in_thread(lock: parallel.CpuLock, exclusive: bool) -> threading.Thread:
    thread = threading.Thread(target=lock.acquire, args=(exclusive,), daemon=True)
    thread.start()
    return thread


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX")
def test_cpu_lock_shares_excludes_and_lets_a_waiting_exclusive_holder_in_first(tmp_path):
    path = tmp_path / "cpu.lock"
    first, second, timed, late = (parallel.CpuLock(path) for _ in range(4))
    first.acquire(exclusive=False)
    _acquire_in_thread(second, exclusive=False).join(timeout=5)
    assert second.held == "shared"  # two shared holders at once
    waiting = _acquire_in_thread(timed, exclusive=True)
    time.sleep(0.3)
    assert timed.held is None  # waits for both shared holders
    blocked = _acquire_in_thread(late, exclusive=False)
    time.sleep(0.3)
    assert late.held is None  # the turnstile: no new shared holder while an exclusive one waits
    first.release()
    second.release()
    waiting.join(timeout=5)
    assert timed.held == "exclusive"
    time.sleep(0.3)
    assert late.held is None  # still out while the exclusive holder runs
    timed.release()
    blocked.join(timeout=5)
    assert late.held == "shared"
    with pytest.raises(RuntimeError, match="already held"):
        late.acquire(exclusive=True)
    for lock in (first, second, timed, late):
        lock.close()


def test_execution_table_reads_the_worker_of_the_matching_execution(tmp_path):
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    import execution_workers

    notebooks = {}
    for name in ("shared", "alone", "missing"):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"x = '{name}'")])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        notebooks[name] = tmp_path / f"{name}.ipynb"
        nbformat.write(nb, notebooks[name])
    cache = get_cache(str(tmp_path / "cache"))
    data = {"shared": {"execution_seconds": 12.4, "worker": "gw1", "cpu_threads": "1", "alone": False},
            "alone": {"execution_seconds": 3.0}}  # fmt: skip
    for name, extra in data.items():
        nb = nbformat.read(notebooks[name], as_version=4)
        cache.cache_notebook_bundle(CacheBundleIn(nb, str(notebooks[name]), data=extra), check_validity=False)
    env = SimpleNamespace(found_docs={"shared", "alone", "missing", "intro"},
                          doc2path=lambda doc: str(tmp_path / f"{doc}{'.md' if doc == 'intro' else '.ipynb'}"))  # fmt: skip
    app = SimpleNamespace(config=SimpleNamespace(nb_execution_cache_path=str(tmp_path / "cache")), env=env)
    assert execution_workers.execution_rows(app) == [
        ("alone", "3", "the book build", "default", "yes"),
        ("missing", "-", "not executed", "-", "-"),
        ("shared", "12", "gw1", "1", "no, beside other tests"),
    ]  # fmt: skip


def test_execution_table_speaks_the_page_language():
    import execution_workers

    row = ("3", "the book build", "default", "no, beside other tests")
    assert execution_workers.in_language(row, "zh_CN") == ["3", "本书构建", "默认", "否，与其他测试同时运行"]
    assert execution_workers.in_language(["alone"], "zh_CN") == ["是否单独运行"]  # a header
    assert execution_workers.in_language(row, "en") == list(row)
    assert execution_workers.in_language(row, None) == list(row)
