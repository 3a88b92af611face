"""A link on every page to the same page in the other edition (English ↔ 中文), and back.

The English book is built from the repository's root into ``_build/html/``, the Chinese one from
``zh/`` into ``_build/html/zh/`` (README, "The Chinese edition"). A page of one edition has a twin
when the other edition's table of contents lists the same path. The link is written into the
page's HTML (no script needed) above the text, with ``hreflang``, and as a
``<link rel="alternate">`` in the head. An English page that has no Chinese twin yet says so and
links to the Chinese edition's first page instead of pointing nowhere.
"""

from __future__ import annotations

import html
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def toc_pages(book: Path) -> set[str]:
    """The page names (paths without suffix) that ``book/_toc.yml`` lists."""
    toc = yaml.safe_load((book / "_toc.yml").read_text())
    pages = {toc["root"]}

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                pages.add(str(Path(entry["file"]).with_suffix("")))
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return pages


def other_edition(language: str | None) -> dict:
    """Where the other edition is, relative to this edition's output root, and what to call it."""
    if language and language.startswith("zh"):
        return dict(root="../", pages=toc_pages(ROOT), name="English", lang="en",
                    missing="", home="intro")  # fmt: skip
    return dict(root="zh/", pages=toc_pages(ROOT / "zh"), name="中文版", lang="zh-Hans",
                missing="This page has no Chinese translation yet: ", home="intro")  # fmt: skip


def link_html(pagename: str, other: dict) -> tuple[str, str] | None:
    """(the visible link, the head's alternate link) for one page, or None for a generated page."""
    up = "../" * pagename.count("/")
    if pagename in other["pages"]:
        href = f"{up}{other['root']}{pagename}.html"
        text = f'<a href="{href}" hreflang="{other["lang"]}" lang="{other["lang"]}">{other["name"]}</a>'
        alternate = f'<link rel="alternate" hreflang="{other["lang"]}" href="{href}">'
        return f'<p class="language-link">{text}</p>', alternate
    href = f"{up}{other['root']}{other['home']}.html"
    text = (f'{html.escape(other["missing"])}<a href="{href}" hreflang="{other["lang"]}" '
            f'lang="{other["lang"]}">{other["name"]}</a>')  # fmt: skip
    return f'<p class="language-link">{text}</p>', ""


def add_link(app, pagename, templatename, context, doctree) -> None:
    if doctree is None or "body" not in context:  # search, genindex: no text of their own
        return
    visible, alternate = link_html(pagename, app.env.language_links_other)
    context["body"] = visible + context["body"]
    if alternate:
        context["metatags"] = context.get("metatags", "") + alternate


def setup(app):
    def remember(app):
        app.env.language_links_other = other_edition(app.config.language)

    app.connect("builder-inited", remember)
    app.connect("html-page-context", add_link)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
