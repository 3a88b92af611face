"""Keep the Chinese edition (zh/) in step with the English pages: blocks, hashes, drift.

A page is read as a sequence of blocks (front matter, code cells, other fenced blocks, display
math, labels, cell markers, headings, paragraphs). Headings and paragraphs are *translated*; every
other block is *copied* and must be byte-identical in both editions. Each translated block of a
Chinese page carries, on the line before it, a MyST comment with the hash of the English block it
translates::

    % en: 3f2a9c1b0d
    卷积层计算的是互相关……

Directives that hold prose (``{exercise}``, ``{solution-start}``, ``{note}`` …) are copied
line for line on their fence and option lines, and their body is read as blocks of its own.

Commands (run from the repository root):

``python tools/translation.py status``
    For every Chinese page: English blocks with no current translation (new, or changed since
    they were translated), Chinese blocks whose English source changed or disappeared, and copied
    blocks that differ. Exit status 1 if anything is listed.
``python tools/translation.py stamp zh/PAGE.md``
    After a page is translated block for block in the English order, put the hash comments in
    (pairing blocks by position; refuses if the two sequences of block kinds differ).
``python tools/translation.py restamp zh/PAGE.md LINE``
    After re-translating, in place, the block at LINE whose English source changed, record the
    hash of the English block's new text.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZH = ROOT / "zh"
HASH = re.compile(r"^% en: ([0-9a-f]{10}(?: [0-9a-f]{10})*)$")
LIST_ITEM = re.compile(r"^(?:[-*+]|\d+\.)\s")
FENCE = re.compile(r"^(`{3,}|:{3,})(.*)$")
TRANSLATED = {"paragraph", "heading", "row", "item", "alt"}
#: Directives whose first paragraph is a caption: a comment inside would end the figure, so the hashes
#: of their alt text and caption go on the comment line before the directive.
FIGURES = ("{figure}", "{glue:figure}")
#: Directives whose body is code, math or a file: copied whole.
VERBATIM_DIRECTIVES = ("{code-cell}", "{literalinclude}", "{math}", "{raw}", "python", "bash", "text", "")
ROLE = re.compile(r"(?<!`)\{([a-z][a-z:-]*)\}`([^`]*)`")  # not `{role}` quoted in a code span


@dataclass
class Block:
    """One block of a page: its kind, its text (lines joined), its first line (1-based)."""

    kind: str
    text: str
    line: int
    en_hash: str | None = None  # Chinese pages: the hash recorded before a translated block
    children: list[Block] = field(default_factory=list)

    def key(self) -> tuple[str, str]:
        """What pairs an English block with its Chinese twin."""
        if self.kind in TRANSLATED:
            return self.kind, self.en_hash or digest(self.text)
        if self.kind in ("table", "list"):  # their rows and items carry the hashes
            return self.kind, str(len(self.children))
        return self.kind, digest(self.text)


def digest(text: str) -> str:
    """The hash of an English block: sha1 of its text with runs of whitespace made one space."""
    return hashlib.sha1(" ".join(text.split()).encode()).hexdigest()[:10]


def parse(text: str) -> list[Block]:
    """The blocks of a MyST page (see the module docstring)."""
    return _parse(text.splitlines(), 0)


def _parse(lines: list[str], offset: int) -> list[Block]:
    blocks: list[Block] = []
    pending_hash = None
    i = 0
    if offset == 0 and lines and lines[0] == "---":
        end = lines.index("---", 1)
        blocks.append(Block("frontmatter", "\n".join(lines[: end + 1]), 1))
        i = end + 1
    while i < len(lines):
        line = lines[i]
        start = offset + i + 1
        if not line.strip():
            i += 1
            continue
        if m := HASH.match(line):
            pending_hash = m.group(1).split()
            i += 1
            continue
        if m := FENCE.match(line):
            fence, info = m.groups()
            end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == fence), len(lines) - 1)
            body = lines[i + 1 : end]
            name = info.strip().split(" ")[0]
            if name in VERBATIM_DIRECTIVES or name.startswith("{code-cell"):
                blocks.append(Block("code" if "code-cell" in name else "verbatim", "\n".join(lines[i : end + 1]), start))
            else:
                options = 0
                while options < len(body) and body[options].startswith(":"):
                    options += 1
                kept = [o for o in body[:options] if not (name in FIGURES and o.startswith(":alt:"))]
                head = "\n".join([line, *kept])
                children = _parse(body[options:], offset + i + 1 + options)
                if name in FIGURES:
                    alts = [Block("alt", o[len(":alt:"):].strip(), offset + i + 2 + k)
                            for k, o in enumerate(body[:options]) if o.startswith(":alt:")]  # fmt: skip
                    children = alts + children
                    hashes = list(pending_hash or [])
                    for child in children:
                        if child.kind in TRANSLATED and child.en_hash is None and hashes:
                            child.en_hash = hashes.pop(0)
                blocks.append(Block("directive", head + "\n" + fence, start, children=children))
            i = end + 1
            pending_hash = None
            continue
        if line.startswith("$$"):
            end = i if line.rstrip().endswith("$$") and len(line.strip()) > 2 and line.count("$$") >= 2 else next(
                (j for j in range(i + 1, len(lines)) if "$$" in lines[j]), len(lines) - 1)  # fmt: skip
            blocks.append(Block("math", "\n".join(lines[i : end + 1]), start))
            i = end + 1
            continue
        if re.match(r"^\(.+\)=\s*$", line) or line.strip() == "+++" or line.startswith("% "):
            blocks.append(Block("label" if line.startswith("(") else "marker", line, start))
            i += 1
            continue
        if line.startswith("#"):
            blocks.append(Block("heading", line, start, _one(pending_hash, start)))
            pending_hash = None
            i += 1
            continue
        end = i
        while end + 1 < len(lines) and lines[end + 1].strip() and not _starts_block(lines[end + 1]):
            end += 1
        blocks.append(_paragraph(lines[i : end + 1], start, pending_hash))
        pending_hash = None
        i = end + 1
    return blocks


def _one(hashes: list[str] | None, line: int) -> str | None:
    if hashes and len(hashes) != 1:
        raise ValueError(f"line {line}: one hash expected before a paragraph or heading, got {len(hashes)}")
    return hashes[0] if hashes else None


def _paragraph(lines: list[str], start: int, hashes: list[str] | None) -> Block:
    """A paragraph; a table is split into rows and a list into items (one hash each, listed
    together on the comment line before the table or list, since a comment inside would end it)."""
    text = "\n".join(lines)
    if all(line.startswith("|") for line in lines):
        parts = [[line] for line in lines]
        kind, child = "table", "row"
    elif LIST_ITEM.match(lines[0]):
        parts = []
        for line in lines:
            if LIST_ITEM.match(line) or not parts:
                parts.append([line])
            else:
                parts[-1].append(line)
        kind, child = "list", "item"
    else:
        return Block("paragraph", text, start, _one(hashes, start))
    if hashes and len(hashes) != len(parts):
        raise ValueError(f"line {start}: {len(hashes)} hashes for a {kind} of {len(parts)} {child}s")
    children, line = [], start
    for index, part in enumerate(parts):
        children.append(Block(child, "\n".join(part), line, hashes[index] if hashes else None))
        line += len(part)
    return Block(kind, text, start, children=children)


def _starts_block(line: str) -> bool:
    return bool(FENCE.match(line) or HASH.match(line) or line.startswith(("#", "$$", "% ", "+++"))
                or re.match(r"^\(.+\)=\s*$", line))  # fmt: skip


def flatten(blocks: list[Block]) -> list[Block]:
    """Blocks in reading order, a directive followed by its body's blocks."""
    out = []
    for block in blocks:
        out.append(block)
        out.extend(flatten(block.children))
    return out


def roles(text: str) -> list[str]:
    """The role targets of a block ({glue:text}`name`, {ref}`text <target>` → target, …), sorted."""
    found = []
    for kind, content in ROLE.findall(text):
        target = re.search(r"<([^>]+)>\s*$", content)
        name = target.group(1) if target else content
        if kind.startswith("glue") and name.endswith("_zh"):  # a Chinese variant of the same value
            name = name[: -len("_zh")]
        found.append(f"{kind}:{name}")
    return sorted(found)


@dataclass
class Drift:
    """What the status command reports for one Chinese page."""

    untranslated: list[Block] = field(default_factory=list)  # English blocks with no current translation
    stale: list[Block] = field(default_factory=list)  # Chinese blocks whose source changed or went
    mismatched: list[tuple[Block, Block, str]] = field(default_factory=list)  # paired, but not equal

    def ok(self) -> bool:
        return not (self.untranslated or self.stale or self.mismatched)


def compare(english: str, chinese: str) -> Drift:
    """Pair the blocks of an English page and of its translation by hash, and list the drift."""
    en, zh = flatten(parse(english)), flatten(parse(chinese))
    drift = Drift()
    matcher = difflib.SequenceMatcher(a=[b.key() for b in en], b=[b.key() for b in zh], autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            for a, b in zip(en[a0:a1], zh[b0:b1]):
                if a.kind in TRANSLATED and roles(a.text) != roles(b.text):
                    drift.mismatched.append((a, b, f"roles differ: {sorted(set(roles(a.text)) ^ set(roles(b.text)))}"))
            continue
        for a in en[a0:a1]:
            drift.untranslated.append(a)
        for b in zh[b0:b1]:
            drift.stale.append(b)
    return drift


def pages() -> list[tuple[Path, Path]]:
    """(English page, Chinese page) for every page of zh/ that translates one."""
    return [(ROOT / path.relative_to(ZH), path) for path in sorted(ZH.rglob("*.md"))
            if (ROOT / path.relative_to(ZH)).exists()]  # fmt: skip


def _is_figure(block: Block) -> bool:
    return block.kind == "directive" and block.text.split("\n")[0].split(" ")[0].lstrip("`:") in FIGURES


def stamp(chinese_path: Path) -> int:
    """Insert the hash comments into a freshly translated page, pairing blocks by position."""
    english = (ROOT / chinese_path.resolve().relative_to(ZH)).read_text()
    chinese = chinese_path.read_text()
    en, zh = flatten(parse(english)), flatten(parse(chinese))
    kinds_en, kinds_zh = [b.kind for b in en], [b.kind for b in zh]
    if kinds_en != kinds_zh:
        where = next(i for i, (a, b) in enumerate(zip(kinds_en + [None], kinds_zh + [None])) if a != b)
        line = zh[where].line if where < len(zh) else "end"
        raise ValueError(f"{chinese_path}: block {where} (line {line}) is a {kinds_zh[where:where + 1]}, "
                         f"the English has a {kinds_en[where:where + 1]}: translate block for block")  # fmt: skip
    lines = chinese.splitlines()
    figure_parts = {id(c) for b in zh if _is_figure(b) for c in b.children}
    for a, b in sorted(zip(en, zh), key=lambda pair: -pair[1].line):
        if id(b) in figure_parts:  # its hash goes on the line before the figure (below)
            continue
        if _is_figure(a):
            if not any(c.en_hash for c in b.children):
                lines.insert(b.line - 1, "% en: " + " ".join(digest(c.text) for c in a.children
                                                            if c.kind in TRANSLATED))  # fmt: skip
        elif a.kind in ("table", "list") and all(c.en_hash is None for c in b.children):
            lines.insert(b.line - 1, "% en: " + " ".join(digest(c.text) for c in a.children))
        elif a.kind in ("paragraph", "heading") and b.en_hash is None:
            lines.insert(b.line - 1, f"% en: {digest(a.text)}")
    chinese_path.write_text("\n".join(lines) + "\n")
    return sum(a.kind in TRANSLATED for a in en)


def restamp(chinese_path: Path, line: int) -> str:
    """Record that the translated block at LINE now translates its English block's new text.

    The block must be stale, in a run of changed blocks as long as the English run it replaces
    (a paragraph edited in place); it is paired with the English block at the same position.
    """
    english = (ROOT / chinese_path.resolve().relative_to(ZH)).read_text()
    chinese = chinese_path.read_text()
    en, zh = flatten(parse(english)), flatten(parse(chinese))
    matcher = difflib.SequenceMatcher(a=[b.key() for b in en], b=[b.key() for b in zh], autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        for k in range(b0, b1):
            block = zh[k]
            if block.kind not in TRANSLATED or not block.line <= line <= block.line + block.text.count("\n"):
                continue
            if tag == "equal":
                raise ValueError(f"{chinese_path}:{line}: no stale translated block there (it is current)")
            if tag != "replace" or a1 - a0 != b1 - b0 or en[a0 + k - b0].kind != block.kind:
                raise ValueError(f"{chinese_path}:{line}: not a block edited in place (its English "
                                 "source was added, removed or moved): translate and stamp by hand")  # fmt: skip
            source = en[a0 + k - b0]
            lines = chinese.splitlines()
            parent = next((b for b in zh if block in b.children), None)
            if parent is not None and (block.kind in ("row", "item") or _is_figure(parent)):
                # its hash is one of those on the line before the table, list or figure
                parts = [c for c in parent.children if c.kind in TRANSLATED]
                hashes = [c.en_hash or "" for c in parts]
                hashes[parts.index(block)] = digest(source.text)
                lines[parent.line - 2] = "% en: " + " ".join(hashes)
            else:
                lines[block.line - 2] = f"% en: {digest(source.text)}"
            chinese_path.write_text("\n".join(lines) + "\n")
            return f"{chinese_path}:{block.line}: now translates English line {source.line}"
    raise ValueError(f"{chinese_path}:{line}: no stale translated block there")


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    if command == "stamp":
        for name in argv[1:]:
            print(f"{name}: {stamp(Path(name))} blocks stamped")
        return 0
    if command == "restamp":
        path, line = Path(argv[1]), int(argv[2])
        print(restamp(path, line))
        return 0
    failed = False
    for english_path, chinese_path in pages():
        drift = compare(english_path.read_text(), chinese_path.read_text())
        for a in drift.untranslated:
            print(f"{english_path.relative_to(ROOT)}:{a.line}: {a.kind} to translate: {a.text[:70]!r}")
        for b in drift.stale:
            print(f"{chinese_path.relative_to(ROOT)}:{b.line}: {b.kind} whose English source changed or went: "
                  f"{b.text[:40]!r}")  # fmt: skip
        for a, b, why in drift.mismatched:
            print(f"{chinese_path.relative_to(ROOT)}:{b.line}: {why}")
        failed |= not drift.ok()
    return int(failed)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
