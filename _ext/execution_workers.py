"""Sphinx extension: the directive ``execution-workers``, where and how each notebook's shown execution ran.

The book shows, for every notebook, one execution stored in its jupyter-cache
(``_ext/execution_cache.py``). The README's test command makes most of them, two notebooks at a
time (the root ``conftest.py``), and records with each the worker that ran it, the CPU threads its
kernel had and whether it ran alone; an execution made by the book build itself records none of
these and ran alone. The directive renders one row per notebook of the book:

    notebook | seconds | executed by | CPU threads | alone

read from the cache record that matches the notebook's current code (the one the page shows). The
pages holding the directive are read again after all other pages (``env-updated``), so that a
notebook the build executed itself is in the table too.
"""

from __future__ import annotations

from pathlib import Path

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

_DOCS = "execution_workers_docs"


def _cache_path(app) -> Path:
    return Path(app.config.nb_execution_cache_path or Path(app.outdir).parent / ".jupyter_cache")


def execution_rows(app) -> list[tuple[str, str, str, str, str]]:
    """One row per notebook of the book: docname, seconds, worker, threads, alone ('-' where none is stored)."""
    import nbformat
    from jupyter_cache import get_cache

    cache = get_cache(str(_cache_path(app)))
    rows = []
    for docname in sorted(app.env.found_docs):
        path = Path(app.env.doc2path(docname))
        if path.suffix != ".ipynb":
            continue
        try:
            record = cache.match_cache_notebook(nbformat.read(path, as_version=4))
        except KeyError:
            rows.append((docname, "-", "not executed", "-", "-"))
            continue
        data = record.data or {}
        seconds = data.get("execution_seconds")
        rows.append((
            docname,
            "-" if seconds is None else f"{seconds:.0f}",
            str(data.get("worker", "the book build")),
            str(data.get("cpu_threads", "default")),
            "yes" if data.get("alone", True) else "no, beside other tests",
        ))  # fmt: skip
    return rows


#: The table's words in the Chinese edition (``language: zh_CN``); the English ones are the keys.
ZH = {
    "notebook": "笔记本", "seconds": "秒", "executed by": "执行者", "CPU threads": "CPU线程数",
    "alone": "是否单独运行", "the book build": "本书构建", "default": "默认", "yes": "是",
    "no, beside other tests": "否，与其他测试同时运行", "not executed": "未执行",
}  # fmt: skip


def in_language(cells, language: str | None) -> list[str]:
    """The cells in the page's language: the Chinese words of ``ZH`` for ``zh*``, else unchanged."""
    if (language or "").startswith("zh"):
        return [ZH.get(cell, cell) for cell in cells]
    return list(cells)


def _table(rows, headers) -> nodes.table:
    table = nodes.table(classes=["colwidths-auto"])
    group = nodes.tgroup(cols=len(headers))
    table += group
    group.extend(nodes.colspec(colwidth=1) for _ in headers)
    head, body = nodes.thead(), nodes.tbody()
    group += head
    group += body
    for parent, cells in [(head, headers), *((body, row) for row in rows)]:
        row = nodes.row()
        row.extend(nodes.entry("", nodes.paragraph(text=cell)) for cell in cells)
        parent += row
    return table


class ExecutionWorkers(SphinxDirective):
    """``.. execution-workers::`` (no arguments): the table described in the module docstring."""

    def run(self):
        setattr(self.env, _DOCS, getattr(self.env, _DOCS, set()) | {self.env.docname})
        headers = ["notebook", "seconds", "executed by", "CPU threads", "alone"]
        language = self.env.config.language
        rows = [[docname, *in_language(rest, language)] for docname, *rest in execution_rows(self.env.app)]
        return [_table(rows, in_language(headers, language))]


def _reread(app, env):
    return sorted(getattr(env, _DOCS, set()))


def setup(app):
    app.add_directive("execution-workers", ExecutionWorkers)
    app.connect("env-updated", _reread)
    return {"parallel_read_safe": False, "parallel_write_safe": True}
