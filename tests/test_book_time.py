"""benchmarks/book_time.py: per-cell timing of a notebook in a real kernel, the table and the JSON record."""

from __future__ import annotations

import json
import os
import subprocess
import time
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import book_time  # noqa: E402  (benchmarks/ is not a package)


def notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# a title")] + [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def test_toc_chapters_are_the_toc_order_and_exist():
    chapters = book_time.toc_chapters()
    assert [p.stem for p in chapters[:2]] == ["background", "core_concepts"]
    assert len(chapters) == len(set(chapters)) and all(p.is_file() for p in chapters)


@pytest.mark.slow
def test_cells_are_timed_in_a_kernel_and_an_error_is_recorded(tmp_path):
    slow = notebook(tmp_path / "slow.ipynb", "import time; time.sleep(0.6)", "x = 1", "\n\ntime.sleep(0.2)  # last")
    result = book_time.time_notebook(slow)
    cells = result["cells"]
    assert [c["index"] for c in cells] == [1, 2, 3]  # code cells only, by their index in the notebook
    assert cells[0]["seconds"] >= 0.6 and cells[2]["seconds"] >= 0.2 and cells[1]["seconds"] < 0.6
    assert cells[2]["first_line"] == "time.sleep(0.2)  # last"  # the first non-blank line
    assert result["error"] is None and result["seconds"] >= 0.8
    assert nbformat.read(slow, as_version=4).cells[1].outputs == []  # the file is left as it was

    broken = book_time.time_notebook(notebook(tmp_path / "broken.ipynb", "1 / 0", "never = 1"))
    assert "ZeroDivisionError" in broken["error"] and len(broken["cells"]) == 1

    # The table, from this record with fixed seconds (a busy machine can make "x = 1" or "1 / 0" slower than a sleep)
    fixed = [dict(c, seconds=s) for c, s in zip(cells, (0.6, 0.01, 0.2), strict=True)]
    broken_fixed = dict(broken, cells=[dict(c, seconds=0.0) for c in broken["cells"]])
    record = {"chapters": [dict(result, cells=fixed), broken_fixed]}
    table = book_time.markdown(record, top=2)
    assert f"| slow | {result['seconds']:.0f} | 1 |" in table  # total (with the kernel's start), slowest cell
    assert "| broken (error: ZeroDivisionError: division by zero) |" in table
    assert table.index("import time; time.sleep(0.6)") < table.index("time.sleep(0.2)  # last")  # slowest first
    assert "x = 1" not in table  # only the top 2 cells


def test_missing_notebook_is_refused_and_the_script_reports_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no notebook at"):
        book_time.time_notebook(tmp_path / "absent.ipynb")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "book_time.py"), str(tmp_path / "absent.ipynb"),
                          "--json", str(tmp_path / "out.json")], capture_output=True, text=True)  # fmt: skip
    assert run.returncode == 2 and "no notebook at" in run.stderr and not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_the_script_writes_a_json_record(tmp_path):
    nb = notebook(tmp_path / "one.ipynb", "y = 2")
    out = tmp_path / "record.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "book_time.py"), str(nb), "--json", str(out)],
                         capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr
    record = json.loads(out.read_text())
    assert record["benchmark"] == "book_time" and record["machine"]["threads"] >= 1
    assert [c["index"] for c in record["chapters"][0]["cells"]] == [1]
    assert "| one | " in run.stdout and str(out) in run.stdout


@pytest.mark.slow
def test_jobs_run_side_by_side_on_one_thread_and_timed_chapters_alone(tmp_path):
    probe = ("import os, time\ntime.sleep(2.0)\n"  # the kernel's environment, written beside the notebook
             "open('{}.env', 'w').write(f\"{{os.environ.get('OMP_NUM_THREADS')}} {{os.environ.get('COMPANION_CPU_SHARED')}}\")")
    paths = [notebook(tmp_path / f"{name}.ipynb", probe.format(name)) for name in ("one", "two", "trends")]
    results = book_time.time_in_parallel(paths, jobs=2)
    by_name = {Path(r["notebook"]).stem: r for r in results}
    # a timed chapter's stem: alone, with this process's threads
    assert by_name["trends"]["alone"] and by_name["trends"]["cpu_threads"] == os.environ.get("OMP_NUM_THREADS", "default")
    assert results[0]["notebook"].endswith("trends.ipynb")  # timed chapters first
    assert {by_name["one"]["worker"], by_name["two"]["worker"]} == {"job0", "job1"}  # side by side
    assert not by_name["one"]["alone"] and by_name["one"]["cpu_threads"] == "1"
    (one_start, one_end), (two_start, two_end), (trends_start, trends_end) = (
        by_name[name]["interval"] for name in ("one", "two", "trends"))  # fmt: skip
    intervals = {r["notebook"]: r["interval"] for r in results}
    assert max(one_start, two_start) < min(one_end, two_end), intervals  # one and two ran at the same time
    assert trends_end <= min(one_start, two_start), intervals  # trends first, alone
    assert all(r["error"] is None for r in results)
    assert (tmp_path / "one.env").read_text() == "1 1" and (tmp_path / "two.env").read_text() == "1 1"
    assert (tmp_path / "trends.env").read_text().split()[1] == "None"  # not marked as sharing the CPU
