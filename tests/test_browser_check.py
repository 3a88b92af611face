"""The static half of tools/browser_check.py (pages, anchors, links), and its refusal to run without
a built book. The browser half runs after the book build, in .ci/run."""

from __future__ import annotations

import importlib.util
import os
import tempfile
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


ACCESSIBLE = """<!DOCTYPE html><html lang="en"><head><title>Fine</title></head>
<body><main><h1>Fine</h1><p>Dark text on white.</p><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="a dot">
<button aria-label="Open the menu">Open the menu</button></main></body></html>"""

#: Three WCAG 2 A/AA failures: an image without a text alternative, light-grey text on white
#: (contrast 1.6:1, AA wants 4.5:1) and a button whose accessible name leaves out its visible text.
INACCESSIBLE = ACCESSIBLE.replace(' alt="a dot"', "").replace(
    "<p>Dark text on white.</p>", '<p style="color:#ccc">Grey text on white.</p>').replace(
    'aria-label="Open the menu"', 'aria-label="Navigation"')  # fmt: skip


def test_axe_core_finds_known_violations_and_passes_a_clean_page(browser_check, tmp_path):
    found = browser_check.find_browser()
    axe = browser_check.axe_source()
    if isinstance(found, str) or axe is None:
        if os.environ.get("CI"):  # .ci/run installs Chromium and axe-core before the tests
            pytest.fail(f"no browser or no axe-core under CI: {found if isinstance(found, str) else 'npm ci'}")
        pytest.skip("needs Chromium, chromedriver, Selenium and axe-core (npm ci)")
    (tmp_path / "fine.html").write_text(ACCESSIBLE, encoding="utf-8")
    (tmp_path / "bad.html").write_text(INACCESSIBLE, encoding="utf-8")
    with browser_check.serve(tmp_path) as (base_url, _), tempfile.TemporaryDirectory() as profile:
        driver = browser_check.start_driver(*found, profile)
        try:
            driver.get(base_url + "fine.html")
            assert browser_check.accessibility_problems(driver, axe) == []
            driver.get(base_url + "bad.html")
            problems = browser_check.accessibility_problems(driver, axe)
        finally:
            driver.quit()
    rules = {line.split(":")[0].split()[-1] for line in problems}
    assert rules == {"image-alt", "color-contrast", "label-content-name-mismatch"}, problems


def _link(href: str, untranslated: str = "") -> str:
    return f'<p class="language-link">{untranslated}<a href="{href}">other</a></p><p>text</p>'


def test_language_links_resolve_both_ways(browser_check, tmp_path):
    (tmp_path / "chapters").mkdir()
    (tmp_path / "zh" / "chapters").mkdir(parents=True)
    (tmp_path / "index.html").write_text(_link("zh/index.html"), encoding="utf-8")
    (tmp_path / "zh" / "index.html").write_text(_link("../index.html"), encoding="utf-8")
    (tmp_path / "chapters" / "a.html").write_text(_link("../zh/chapters/a.html"), encoding="utf-8")
    (tmp_path / "zh" / "chapters" / "a.html").write_text(_link("../../chapters/a.html"), encoding="utf-8")
    # not translated yet: says so and leads to the Chinese first page, which does not link back
    (tmp_path / "chapters" / "b.html").write_text(_link("../zh/index.html", "No translation yet: "),
                                                  encoding="utf-8")
    (tmp_path / "search.html").write_text("<p>no link needed</p>", encoding="utf-8")
    (tmp_path / "redirect.html").write_text('<meta http-equiv="Refresh" content="0; url=intro.html" />',
                                            encoding="utf-8")
    pages = browser_check.html_pages(tmp_path)
    assert browser_check.language_link_problems(tmp_path, pages) == {}
    # a twin that links elsewhere, a missing link and a link to nothing are each reported
    (tmp_path / "zh" / "chapters" / "a.html").write_text(_link("../../index.html"), encoding="utf-8")
    (tmp_path / "chapters" / "c.html").write_text("<p>no link</p>", encoding="utf-8")
    (tmp_path / "chapters" / "d.html").write_text(_link("../zh/chapters/d.html"), encoding="utf-8")
    problems = browser_check.language_link_problems(tmp_path, browser_check.html_pages(tmp_path))
    assert "links back to index.html, not to it" in problems["chapters/a.html"][0]
    assert problems["chapters/c.html"] == ["no link to the other edition"]
    assert "names no page (zh/chapters/d.html)" in problems["chapters/d.html"][0]


def test_language_links_are_not_checked_in_a_one_edition_book(browser_check, site):
    assert browser_check.language_link_problems(site, browser_check.html_pages(site)) == {}


def test_the_extension_links_a_page_to_its_twin_or_says_there_is_none():
    import sys

    sys.path.insert(0, str(ROOT / "_ext"))
    import language_links

    english = language_links.other_edition("en")
    assert "chapters/core_concepts" in english["pages"]  # translated, listed in zh/_toc.yml
    visible, alternate = language_links.link_html("chapters/core_concepts", english)
    assert 'href="../zh/chapters/core_concepts.html"' in visible and 'hreflang="zh-Hans"' in alternate
    # every page is translated now (zh/_toc.yml mirrors _toc.yml); a page missing from the other
    # edition says so and links to its home page
    untranslated = dict(english, pages={page for page in english["pages"] if page != "chapters/trends"})
    visible, alternate = language_links.link_html("chapters/trends", untranslated)
    assert "no Chinese translation yet" in visible and 'href="../zh/intro.html"' in visible and not alternate
    chinese = language_links.other_edition("zh_CN")
    visible, _ = language_links.link_html("chapters/core_concepts", chinese)
    assert 'href="../../chapters/core_concepts.html"' in visible and ">English<" in visible
