"""The static half of tools/browser_check.py (pages, anchors, links), and its refusal to run without
a built book. The browser half runs after the book build, in .ci/run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def browser_check():
    spec = importlib.util.spec_from_file_location("browser_check", ROOT / "tools" / "browser_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports no Selenium: that happens only when a browser starts
    return module


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "chapters").mkdir()
    (tmp_path / "_static").mkdir()
    (tmp_path / "index.html").write_text('<a href="chapters/a.html#sec-1">a</a>', encoding="utf-8")
    (tmp_path / "chapters" / "a.html").write_text('<h1 id="sec-1">A</h1><a name="old-anchor"></a>', encoding="utf-8")
    (tmp_path / "chapters" / "b c.html").write_text('<p id="x">B</p>', encoding="utf-8")
    (tmp_path / "_static" / "theme.html").write_text("<p>an asset, not a page</p>", encoding="utf-8")
    return tmp_path


def test_pages_are_the_html_files_outside_asset_folders(browser_check, site):
    assert browser_check.html_pages(site) == ["chapters/a.html", "chapters/b c.html", "index.html"]


def test_links_to_existing_files_and_anchors_pass(browser_check, site):
    base = "http://127.0.0.1:8000/"
    hrefs = [
        base + "chapters/a.html#sec-1",
        base + "chapters/a.html#old-anchor",
        base + "chapters/b%20c.html#x",  # percent-encoded, as a.href gives it
        base + "chapters/a.html",
        base,  # a folder: its index.html
        "https://github.com/somewhere#nothing",  # another host: not checked
        "mailto:someone@example.org",
    ]
    assert browser_check.broken_links(site, base, hrefs) == []


def test_missing_files_and_anchors_are_reported(browser_check, site):
    base = "http://127.0.0.1:8000/"
    problems = browser_check.broken_links(
        site, base, [base + "chapters/a.html#sec-2", base + "chapters/missing.html", base + "chapters/a.html#sec-2"]
    )
    assert len(problems) == 2  # the repeated link is reported once
    assert "no id 'sec-2' in chapters/a.html" in problems[0]
    assert "no file chapters/missing.html" in problems[1]


def test_without_a_built_book_the_check_fails_instead_of_skipping(browser_check, tmp_path, capsys):
    assert browser_check.main([str(tmp_path / "html")]) == 1
    assert "no built book" in capsys.readouterr().err
