"""companion.notebook: glue with and without myst-nb, Markdown tables and their errors."""

from __future__ import annotations

import importlib.util

import pytest

import companion.notebook as notebook
from companion.notebook import glue, join_words, markdown_table, markdown_table_text


def test_markdown_table_text_hand_example():
    text = markdown_table_text(["model", "accuracy", "note"], [("MLP", "97.4 %", "a|b"), ("CNN", 0.99, "")], "lrc")
    assert text.splitlines() == [
        "| model | accuracy | note |",
        "|:---|---:|:---:|",
        "| MLP | 97.4 % | a\\|b |",  # a pipe in a cell is escaped, or it would split the cell
        "| CNN | 0.99 |  |",
    ]


def test_markdown_table_defaults_to_left_aligned_and_wraps_in_markdown():
    table = markdown_table(["a", "b"], [(1, 2)])
    assert type(table).__name__ == "Markdown"
    assert table.data.splitlines()[1] == "|:---|:---|"


@pytest.mark.parametrize(
    ("rows", "align", "match"),
    [([(1,)], None, r"row 0 has 1 cells, expected 2"), ([(1, 2)], "l", "align must have"), ([(1, 2)], "lx", "align must have")],
)
def test_markdown_table_errors(rows, align, match):
    with pytest.raises(ValueError, match=match):
        markdown_table_text(["a", "b"], rows, align)


def test_glue_needs_a_value():
    with pytest.raises(ValueError, match="at least one"):
        glue()


def test_glue_uses_myst_nb_where_it_is_installed(monkeypatch):
    import myst_nb

    calls = []
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display: calls.append((name, value, display)))
    glue(accuracy="99.1 %", seconds="3.2")
    assert calls == [("accuracy", "99.1 %", False), ("seconds", "3.2", False)]


def test_glue_shows_the_values_without_myst_nb(monkeypatch):
    # A reader's kernel: myst-nb is not installed.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "myst_nb" else real(name, *a))
    shown = []
    monkeypatch.setattr(notebook, "_display", shown.append)
    glue(accuracy="99.1 %", seconds="3.2")
    assert [line for line in shown[0].data.splitlines()[2:]] == ["| `accuracy` | 99.1 % |", "| `seconds` | 3.2 |"]


def test_glue_shows_a_figure_without_myst_nb(monkeypatch):
    from matplotlib.figure import Figure

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "myst_nb" else real(name, *a))
    shown = []
    monkeypatch.setattr(notebook, "_display", shown.append)
    figure = Figure()
    glue(diagram=figure, seconds="3.2")
    assert shown[0] is figure and "| `seconds` | 3.2 |" in shown[1].data
    shown.clear()
    glue(diagram=figure)
    assert shown == [figure]  # no empty table


@pytest.mark.parametrize(
    "items, language, expected",
    [
        (["a"], "en", "a"),
        (["a", "b"], "en", "a and b"),
        ([1, 2, 3], "en", "1, 2 and 3"),
        (["ViT-B/16"], "zh", "ViT-B/16"),
        (["LeNet-5", "AlexNet"], "zh", "LeNet-5和AlexNet"),
        (("0.3", "1", "3"), "zh", "0.3、1和3"),
        ((f"{x:g}" for x in (0.5, 2.0)), "en", "0.5 and 2"),  # any iterable
    ],
)
def test_join_words(items, language, expected):
    assert join_words(items, language=language) == expected


def test_join_words_refuses_no_items_and_unknown_languages():
    with pytest.raises(ValueError, match="at least one item"):
        join_words([])
    with pytest.raises(ValueError, match="'en' or 'zh'.*'fr'"):
        join_words(["a"], language="fr")
