"""The Chinese edition (zh/) against the English pages: drift is a test failure (tools/translation.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import translation  # noqa: E402

PAGES = translation.pages()


def test_there_are_chinese_pages():
    assert len(PAGES) >= 6, [str(p) for p in PAGES]


@pytest.mark.parametrize("english, chinese", PAGES, ids=[str(c.relative_to(ROOT)) for _, c in PAGES])
def test_chinese_page_translates_the_current_english(english, chinese):
    drift = translation.compare(english.read_text(), chinese.read_text())
    report = [f"English line {a.line}, {a.kind}, not translated (new or changed): {a.text[:60]!r}"
              for a in drift.untranslated]
    report += [f"Chinese line {b.line}, {b.kind}, its English source changed or went: {b.text[:30]!r}"
               for b in drift.stale]
    report += [f"Chinese line {b.line}: {why}" for _, b, why in drift.mismatched]
    assert drift.ok(), "run `python tools/translation.py status`; README, 'The Chinese edition':\n" + "\n".join(report)


ENGLISH = """---
jupytext: {}
---

(chapter-x)=
# A chapter

A first paragraph with {glue:text}`accuracy` and {ref}`a link <chapter-y>`.

```{code-cell}
x = 1
```

| term | 中文 |
|---|---|
| convolution | 卷积 |

- one item
- another item
"""


def chinese_of(english: str) -> str:
    return """---
jupytext: {{}}
---

(chapter-x)=
% en: {h[0]}
# 一章

% en: {h[1]}
第一段，准确率为{{glue:text}}`accuracy`，见{{ref}}`链接 <chapter-y>`。

```{{code-cell}}
x = 1
```

% en: {h[2]} {h[3]} {h[4]}
| 术语 | 中文 |
|---|---|
| 卷积 | 卷积 |

% en: {h[5]} {h[6]}
- 一项
- 另一项
""".format(h=[translation.digest(b.text) for b in translation.flatten(translation.parse(english))
              if b.kind in translation.TRANSLATED])


def test_a_faithful_translation_has_no_drift():
    assert translation.compare(ENGLISH, chinese_of(ENGLISH)).ok()


@pytest.mark.parametrize("old, new, untranslated, stale", [
    ("A first paragraph with", "A changed first paragraph with", ["paragraph"], ["paragraph"]),
    ("| convolution | 卷积 |", "| convolution (cross-correlation) | 卷积 |", ["row"], ["row"]),
    ("- another item", "- another, changed item", ["item"], ["item"]),
    ("x = 1", "x = 2", ["code"], ["code"]),
    ("(chapter-x)=", "(chapter-z)=", ["label"], ["label"]),
    ("# A chapter\n", "# A chapter\n\nA new paragraph.\n", ["paragraph"], []),
])
def test_drift_is_caught(old, new, untranslated, stale):
    chinese = chinese_of(ENGLISH)  # translates the old English
    changed = ENGLISH.replace(old, new)
    assert changed != ENGLISH
    drift = translation.compare(changed, chinese)
    assert [a.kind for a in drift.untranslated] == untranslated
    assert [b.kind for b in drift.stale] == stale


def test_a_role_lost_in_translation_is_caught():
    chinese = chinese_of(ENGLISH).replace("{glue:text}`accuracy`", "0.9")
    drift = translation.compare(ENGLISH, chinese)
    assert len(drift.mismatched) == 1 and "glue:text:accuracy" in drift.mismatched[0][2]


def test_stamp_and_restamp(tmp_path, monkeypatch):
    monkeypatch.setattr(translation, "ROOT", tmp_path)
    monkeypatch.setattr(translation, "ZH", tmp_path / "zh")
    (tmp_path / "zh").mkdir()
    english, chinese = tmp_path / "page.md", tmp_path / "zh" / "page.md"
    english.write_text(ENGLISH)
    unstamped = "\n".join(line for line in chinese_of(ENGLISH).splitlines() if not line.startswith("% en:"))
    chinese.write_text(unstamped + "\n")
    assert translation.stamp(chinese) == 7
    assert translation.compare(english.read_text(), chinese.read_text()).ok()
    # The English paragraph changes; the translator updates the Chinese in place, then restamps.
    english.write_text(ENGLISH.replace("A first paragraph", "The first paragraph"))
    assert not translation.compare(english.read_text(), chinese.read_text()).ok()
    line = next(b.line for b in translation.flatten(translation.parse(chinese.read_text()))
                if b.kind == "paragraph")
    translation.restamp(chinese, line)
    assert translation.compare(english.read_text(), chinese.read_text()).ok()
    # A table row changes in both editions: restamped where it sits in the table.
    english.write_text(english.read_text().replace("| convolution | 卷积 |", "| convolution (true) | 卷积 |"))
    chinese.write_text(chinese.read_text().replace("| 卷积 | 卷积 |", "| 卷积（真正的） | 卷积 |"))
    row = next(b.line for b in translation.flatten(translation.parse(chinese.read_text())) if b.kind == "row"
               and "真正" in b.text)
    translation.restamp(chinese, row)
    assert translation.compare(english.read_text(), chinese.read_text()).ok()
    with pytest.raises(ValueError, match="no stale translated block"):
        translation.restamp(chinese, row)
    # A block out of order cannot be stamped by position.
    chinese.write_text(unstamped.replace("x = 1\n```", "x = 1\n```\n\n(extra)=") + "\n")
    with pytest.raises(ValueError, match="translate block for block"):
        translation.stamp(chinese)


HAN = "\u3400-\u4dbf\u4e00-\u9fff"
SPACE_RULE = __import__("re").compile(rf"[{HAN}] +[A-Za-z0-9`{{$*]|[A-Za-z0-9`}}$*] +[{HAN}]")


@pytest.mark.parametrize("english, chinese", PAGES, ids=[str(c.relative_to(ROOT)) for _, c in PAGES])
def test_no_space_between_chinese_and_latin(english, chinese):
    """zh/CONVENTIONS.md: no space between Chinese characters and Latin words, numbers, code,
    roles or inline math (d2l-zh's rule), in every translated block."""
    import re

    found = []
    for block in translation.flatten(translation.parse(chinese.read_text())):
        if block.kind in translation.TRANSLATED:
            prose = re.sub(r"`[^`]*`", "`x`", block.text)  # inside code spans anything goes
            found += [f"line {block.line}: {m.group()!r}" for m in SPACE_RULE.finditer(prose)]
    assert not found, found[:10]


def test_the_space_rule_catches_a_space():
    assert SPACE_RULE.search("批量大小为 128") and SPACE_RULE.search("用 `nn.Conv2d`")
    assert not SPACE_RULE.search("批量大小为128，形状(B, C, H, W)")


NOTEBOOKS = sorted((ROOT / "zh" / "chapters").glob("*.ipynb"))


@pytest.mark.parametrize("chinese", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_chinese_notebook_reuses_the_english_execution(chinese):
    """jupyter-cache keys a notebook by its code cells (source and metadata) and kernelspec: equal
    ones let the Chinese build show the English execution (tools/build.py fails otherwise)."""
    import nbformat

    def key(path):
        nb = nbformat.read(path, as_version=4)
        cells = [(c.source, dict(c.metadata)) for c in nb.cells if c.cell_type == "code"]
        return cells, nb.metadata.get("kernelspec")

    assert key(chinese) == key(ROOT / "chapters" / chinese.name), "run jupytext --sync on both .md files"
    markdown = chinese.with_suffix(".md").read_text()
    assert all(c.source in markdown for c in nbformat.read(chinese, as_version=4).cells
               if c.cell_type == "code"), "the .ipynb is not in sync with its .md: jupytext --sync"


FIGURE = "```{glue:figure} diagram\n:name: fig-x\n:alt: %s\n\n%s\n```\n"


@pytest.fixture
def book(tmp_path, monkeypatch):
    """An empty two-edition book in tmp_path: its root, with zh/ beside the English pages."""
    monkeypatch.setattr(translation, "ROOT", tmp_path)
    monkeypatch.setattr(translation, "ZH", tmp_path / "zh")
    (tmp_path / "zh").mkdir()
    return tmp_path


def test_a_figure_keeps_its_hashes_outside(book):
    """A comment inside a figure would end its caption: the alt text's and caption's hashes go
    on the line before the directive."""
    tmp_path, figure = book, FIGURE
    (tmp_path / "page.md").write_text(figure % ("Two boxes.", "A caption with {eq}`eq-x`."))
    chinese = tmp_path / "zh" / "page.md"
    chinese.write_text(figure % ("两个框。", "图注，见{eq}`eq-x`。"))
    assert translation.stamp(chinese) == 2
    text = chinese.read_text()
    assert text.startswith("% en: ") and text.count("% en:") == 1, text
    assert translation.compare((tmp_path / "page.md").read_text(), text).ok()
    (tmp_path / "page.md").write_text(figure % ("Two boxes.", "A changed caption with {eq}`eq-x`."))
    drift = translation.compare((tmp_path / "page.md").read_text(), text)
    assert [a.kind for a in drift.untranslated] == ["paragraph"] and [b.kind for b in drift.stale] == ["paragraph"]


def _toc_files(path):
    import yaml

    toc = yaml.safe_load(path.read_text())
    return [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]


def test_chinese_toc_mirrors_the_english_one():
    """Issue #34: every English page has its Chinese twin, in the same order and parts."""
    import yaml

    english, chinese = ROOT / "_toc.yml", ROOT / "zh" / "_toc.yml"
    assert _toc_files(chinese) == _toc_files(english)
    parts = [[len(p["chapters"]), p.get("numbered", False)] for p in yaml.safe_load(english.read_text())["parts"]]
    assert [[len(p["chapters"]), p.get("numbered", False)]
            for p in yaml.safe_load(chinese.read_text())["parts"]] == parts  # fmt: skip
    missing = [f for f in _toc_files(chinese) if not any((ROOT / "zh" / f).with_suffix(s).exists()
                                                        for s in (".md", ".ipynb"))]  # fmt: skip
    assert not missing, missing


def test_chinese_api_page_lists_the_modules_of_api_rst():
    """The Chinese API page links each module's English reference to the chapter that explains it:
    the same modules, in the same order, with the same chapters as api.rst's directives."""
    import re

    english = re.findall(r"^\.\. companion-module:: (\S+) (\S+)$", (ROOT / "api.rst").read_text(), re.M)
    chinese = re.findall(r"^\| \{py:mod\}`(\S+)` \| \{ref\}`(\S+)` \|$", (ROOT / "zh" / "api.md").read_text(), re.M)
    assert english and chinese == english


def test_restamp_of_a_figure_caption_keeps_the_hashes_outside(book):
    """Restamping a changed caption rewrites the figure's hash line, never the blank line inside
    the figure (a comment there would end the caption)."""
    tmp_path, figure = book, FIGURE
    (tmp_path / "page.md").write_text(figure % ("Two boxes.", "A caption."))
    chinese = tmp_path / "zh" / "page.md"
    chinese.write_text(figure % ("两个框。", "图注。"))
    translation.stamp(chinese)
    (tmp_path / "page.md").write_text(figure % ("Two boxes.", "A changed caption."))
    caption_line = chinese.read_text().splitlines().index("图注。") + 1
    translation.restamp(chinese, caption_line)
    text = chinese.read_text()
    assert text.startswith("% en: ") and text.count("% en:") == 1 and "\n\n图注。\n" in text, text
    assert translation.compare((tmp_path / "page.md").read_text(), text).ok()
