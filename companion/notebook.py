"""Notebook helpers that work in the book's build and in any reader's kernel.

The chapters put computed numbers into their prose with MyST's ``{glue:text}`` role, which
needs `myst-nb <https://myst-nb.readthedocs.io>`_ — a tool of the book's build, not a
dependency of this package. :func:`glue` uses myst-nb where it is installed and otherwise shows
the values as a small table under the cell, so a chapter opened in Colab or a fresh kernel runs
and still shows every number its text refers to. :func:`markdown_table` turns rows into the
Markdown tables the chapters display.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence

__all__ = ["glue", "join_words", "markdown_table", "markdown_table_text"]


def _display(obj: object) -> None:
    from IPython.display import display

    display(obj)


def glue(**values: object) -> None:
    """Make each value available to the chapter's text under its keyword name.

    In the book's build (myst-nb installed) each value is stored with ``myst_nb.glue(name,
    value, display=False)`` and appears where the text says ``{glue:text}`name``` (a matplotlib
    figure: where a ``{glue:figure}`` directive names it, with the caption the page gives it in
    its own language). Elsewhere, figures are displayed under the cell and the other values as a
    two-column table (name, value), so a reader without myst-nb sees the same numbers.

    Args:
        **values: name → value; names must be valid Python identifiers (they are keywords),
            values are usually preformatted strings such as ``f"{accuracy:.2%}"``.

    Raises:
        ValueError: no value was given.

    Examples:
        >>> glue(test_accuracy=f"{0.9912:.2%}")  # doctest: +SKIP
    """
    if not values:
        raise ValueError("glue() needs at least one name=value")
    if importlib.util.find_spec("myst_nb") is not None:
        from myst_nb import glue as myst_glue

        for name, value in values.items():
            myst_glue(name, value, display=False)
        return
    figures = {name: value for name, value in values.items() if _is_figure(value)}
    for figure in figures.values():  # a figure the book places with {glue:figure}: shown here
        _display(figure)
    rest = [(f"`{name}`", value) for name, value in values.items() if name not in figures]
    if rest:
        _display(markdown_table(["glued value", "value"], rest))


def join_words(items: Iterable[object], language: str = "en") -> str:
    """Join items into a list for a sentence, in the page's language.

    English: ``"a"``, ``"a and b"``, ``"a, b and c"`` (the book writes no serial comma). Chinese
    (the edition in ``zh/``): ``"a和b"``, ``"a、b和c"``, with no spaces (zh/CONVENTIONS.md). A
    chapter glues both, ``name=join_words(xs)`` and ``name_zh=join_words(xs, language="zh")``.

    Args:
        items: one or more items, each written with ``str()``.
        language: ``"en"`` or ``"zh"``.

    Returns:
        The items joined, as a string.

    Raises:
        ValueError: no items (a sentence must say what stands for "none" itself), or a language
            other than ``"en"`` and ``"zh"``.

    Examples:
        >>> join_words([1, 2, 3])
        '1, 2 and 3'
        >>> join_words(["LeNet-5", "AlexNet"], language="zh")
        'LeNet-5和AlexNet'
    """
    if language not in ("en", "zh"):
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    words = [str(item) for item in items]
    if not words:
        raise ValueError("join_words() needs at least one item; say 'none' in the chapter's own words")
    separator, last = (", ", " and ") if language == "en" else ("、", "和")
    return words[0] if len(words) == 1 else separator.join(words[:-1]) + last + words[-1]


def _is_figure(value: object) -> bool:
    from matplotlib.figure import Figure

    return isinstance(value, Figure)


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table_text(
    headers: Sequence[object], rows: Iterable[Sequence[object]], align: str | None = None
) -> str:
    """A Markdown (GitHub/MyST) table as text.

    Args:
        headers: the column headings.
        rows: one sequence of cell values per row, as many as ``headers``; values are
            converted with ``str`` (format numbers before passing them), ``|`` is escaped.
        align: one letter per column, ``"l"``, ``"r"`` or ``"c"`` (default: all left).

    Returns:
        The table, one line per row, header and separator first.

    Raises:
        ValueError: a row or ``align`` does not have one entry per column, or ``align`` holds
            a letter other than l, r, c.

    Examples:
        >>> print(markdown_table_text(["model", "accuracy"], [("MLP", "97.4 %")], align="lr"))
        | model | accuracy |
        |:---|---:|
        | MLP | 97.4 % |
    """
    headers = list(headers)
    align = align or "l" * len(headers)
    if len(align) != len(headers) or set(align) - set("lrc"):
        raise ValueError(f"align must have one of l, r, c per column ({len(headers)}), got {align!r}")
    rule = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells, expected {len(headers)} (one per header)")
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def markdown_table(headers: Sequence[object], rows: Iterable[Sequence[object]], align: str | None = None):
    """:func:`markdown_table_text` wrapped in ``IPython.display.Markdown``, ready to display.

    The last expression of a cell is shown; the book's build parses it as MyST, so citations
    and math in cells render.

    Raises:
        ValueError: as :func:`markdown_table_text`.
    """
    from IPython.display import Markdown

    return Markdown(markdown_table_text(headers, rows, align))
