"""The numbers a chapter's prose types by hand, for ``tests/test_typed_numbers.py``.

A measured result belongs in a chapter's text only through ``{glue:text}``, so that the text
says what the code computed when the book was built. This module finds every number that is
left in the Markdown of a MyST text notebook (``chapters/NAME.md``) once the places where a
number is not a typed result are removed:

- code: ``{code-cell}`` blocks, fenced code (```` ```python ````, ``literalinclude`` …), inline
  code, the YAML front matter;
- glued values and every other MyST role: ``{glue:text}`…```, ``{cite:p}`…```, ``{ref}`…```,
  ``{numref}``, ``{doc}``, ``{eq}``, ``{math}`` …;
- mathematics: ``$…$``, ``$$…$$`` (with its ``(label)``), ``{math}`` blocks;
- cross-references and addresses: labels ``(label)=``, Markdown link and image targets, URLs,
  HTML tags and comments, directive options (``:label:``, ``:width:`` …), numbered-list markers,
  references to a numbered part of a text (``Section 3.2``, ``§1–2``, ``items 1, 2 and 9``,
  ``Table 1``), software versions (``PyTorch 2.4``);
- names: digits inside a word or joined to one by ``-``, ``/`` or ``@`` (``ResNet-18``,
  ``ViT-B/16``, ``MNIST-1D``, ``float32``, ``bf16``, ``mAP@0.5``), and a number directly
  followed by letters that are not a unit (``1D``, ``3rd``);
- shapes: products of sizes such as ``28 × 28`` or ``3 × 3 × 64``;
- years: a four-digit number from 1900 to 2039 in a year's context (``in 2012``,
  ``2012–2016``, ``(LeCun et al., 1998)``, ``the 1990s``).

What is left is reported as a :class:`TypedNumber`: the number as written (separators kept, a
``%`` or ``×`` that follows it included, whitespace collapsed to one space), its line and the
line's text. ``98.7 %``, ``1,000``, ``0.001``, ``10⁻³``, ``3×``, ``60 000``, ``1.2M`` (a unit
written next to the number is kept; ``1.2 M`` is reported as ``1.2``) and the ``5`` of ``5-layer``
are all reported; the test decides, with its allow-list, which of them are settings, thresholds,
definitions or sourced facts.

    python tools/typed_numbers.py chapters/background.md   # list the typed numbers of a chapter
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TypedNumber", "explain", "prose_mask", "typed_numbers"]


@dataclass(frozen=True)
class TypedNumber:
    """One number typed in a chapter's prose."""

    text: str  #: the number as written (``"98.7 %"``, ``"1,000"``, ``"3×"``)
    line: int  #: 1-based line in the source
    context: str  #: that line, stripped
    column: int = 0  #: 0-based position of the number in ``source_line``
    source_line: str = ""  #: the line as in the source

    def excerpt(self, width: int = 60) -> str:
        """The number with ``width`` characters of its line on either side."""
        return self.source_line[max(0, self.column - width) : self.column + len(self.text) + width]


#: Directives whose body is code or data, not prose: masked whole.
_CODE_DIRECTIVES = {"code-cell", "code-block", "code", "literalinclude", "math", "raw", "mermaid", "glue:figure",
                    "glue:math", "csv-table", "bibliography", "toctree", "include", "eval-rst"}  # fmt: skip
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,}|:{3,})(?P<info>.*)$")
_UNITS = ("k", "K", "M", "B", "G", "T", "x", "s", "ms", "µs", "us", "ns", "h", "min", "px", "KB", "MB", "GB",
          "TB", "KiB", "MiB", "GiB", "TiB", "kB", "Hz", "kHz", "MHz", "GHz", "W", "TFLOPS", "GFLOPS", "FLOPs",
          "MACs", "bit", "bits")  # fmt: skip
_SUPERSCRIPT = "⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺"
_NUMBER = re.compile(
    rf"""
    (?<![\w.,/@^_\-{_SUPERSCRIPT}])          # not inside a word, a decimal or a name
    (?P<sign>[-−±+]?)
    (?P<digits>\d{{1,3}}(?:(?:,|[ \u00a0\u202f\u2009])\d{{3}})+(?!\d)|\d+)
    (?P<decimals>\.\d+)?
    (?P<exponent>[eE][-+−]?\d+|[{_SUPERSCRIPT}]+)?
    (?P<fraction>/\d+)?
    (?P<suffix>\s?%|\s?×(?!\s*\d)|x(?![\w]))?
    (?P<after>[A-Za-zµ]+)?
    """,
    re.VERBOSE,
)
_YEAR_BEFORE = re.compile(r"(?:\b(?:in|since|from|of|by|until|before|after|to|and|or|year|early|late|mid|circa|c\.)"
                          r"|[(–,;|]|et al\.,?)\s*$", re.I)  # fmt: skip
_YEAR_AFTER = re.compile(r"^(?:s\b|–|-\d|\)|,|\.|;|:|\s*\||\s+(?:and|to|on|onwards|paper|article|model|version)\b|$)")
_PART_REFERENCE = re.compile(
    r"(?:\b(?:[Ss]ections?|[Ii]tems?|[Cc]hapters?|[Ff]igures?|[Ff]igs?\.|[Tt]ables?|[Ee]quations?|[Ee]qs?\."
    r"|[Aa]ppendix|[Aa]ppendices|[Pp]arts?|[Ee]xercises?|[Aa]lgorithms?|[Ll]emmas?|[Tt]heorems?)\s+|§\s*)"
    r"[A-Z]?\d+(?:\.\d+)*(?:\s*(?:,|and|or|–|-|to|&)\s*§?[A-Z]?\d+(?:\.\d+)*)*"
)
_VERSION = re.compile(r"\b(?:Python|PyTorch|torch|torchvision|CUDA|cuDNN|NumPy|numpy|Jupyter Book|jupyter-book"
                      r"|Sphinx|version|release|v)\s*\d+(?:\.[\dx]+)*", re.I)  # fmt: skip
_SIZE = r"(?:\d{1,3}(?:,\d{3})+|\d+)"
_SHAPE = re.compile(rf"(?<![\w.,]){_SIZE}(?:\s*[×x]\s*{_SIZE})+(?![\d{_SUPERSCRIPT}]|\.\d)")


def _blank_all(text: str, pattern: str | re.Pattern, flags: int = 0) -> str:
    """``text`` with every match of ``pattern`` replaced by spaces, newlines kept (line numbers stay)."""
    pieces, last = [], 0
    for match in re.finditer(pattern, text, flags):
        pieces += [text[last : match.start()], re.sub(r"[^\n]", " ", match.group(0))]
        last = match.end()
    return "".join(pieces) + text[last:]


def _mask_blocks(lines: list[str]) -> list[str]:
    """Blank front matter, code cells, fenced code, directive fences and options, cell markers."""
    out, stack = [], []  # stack of (fence, is_code) for the open fenced blocks
    in_front_matter = bool(lines) and lines[0].strip() == "---"
    for i, line in enumerate(lines):
        if in_front_matter:
            out.append("")
            if i > 0 and line.strip() == "---":
                in_front_matter = False
            continue
        match = _FENCE.match(line)
        if stack and stack[-1][1]:  # inside code: only its closing fence counts
            fence = stack[-1][0]
            closing = match and not match["info"].strip() and match["fence"][0] == fence[0]
            if closing and len(match["fence"]) >= len(fence):
                stack.pop()
            out.append("")
            continue
        if match:
            fence, info = match["fence"], match["info"].strip()
            if stack and not info and fence[0] == stack[-1][0][0] and len(fence) >= len(stack[-1][0]):
                stack.pop()  # closes a prose directive
                out.append("")
                continue
            name = re.match(r"\{([^}]*)\}", info)
            directive = name.group(1) if name else info.split()[0] if info else ""
            is_code = not name or directive in _CODE_DIRECTIVES  # plain ``` fences hold code
            stack.append((fence, is_code))
            out.append("")
            continue
        if stack and re.match(r"^\s*:[\w-]+:", line):  # a directive's option
            out.append("")
            continue
        if re.match(r"^\s*(?:\+\+\+|\([\w:.-]+\)=\s*$)", line):  # cell marker, label
            out.append("")
            continue
        out.append(line)
    return out


def prose_mask(source: str) -> str:
    """``source`` with everything but the prose's own words and numbers blanked, lines kept."""
    text = "\n".join(_mask_blocks(source.split("\n")))
    steps: list[tuple[str, int]] = [
        (r"<!--.*?-->", re.S),  # HTML comments
        (r"\$\$.*?\$\$(?:[ \t]*\([\w:.-]+\))?", re.S),  # display math and its label
        (r"\{[\w:.-]+\}(`+)(?:(?!\1).)*?\1", re.S),  # MyST roles: glue, cite, ref, numref, doc, eq, math …
        (r"(`+)(?:(?!\1).)+?\1", re.S),  # inline code
        (r"(?<![\\$])\$(?!\$)(?:\\.|[^$\\\n])+?\$", 0),  # inline math
        (r"\]\((?:[^()\s]|\([^()]*\))*(?:\s+\"[^\"]*\")?\)", 0),  # link and image targets
        (r"^\s*\[[^\]]+\]:\s*\S+.*$", re.M),  # reference-style link definitions
        (r"<https?://[^>]+>|https?://[^\s)>\]]+", 0),  # URLs
        (r"</?[A-Za-z][^<>\n]*>", 0),  # HTML tags
        (r"^\s*\d+[.)](?=\s)", re.M),  # numbered-list markers
        (r"\[\^[\w-]+\]", 0),  # footnote references
        (r"@\[[^\]\n]*\]", 0),  # metric names: mAP@[0.5:0.95]
        (_PART_REFERENCE.pattern, 0),
        (_VERSION.pattern, re.I),
        (_SHAPE.pattern, 0),
    ]
    for pattern, flags in steps:
        text = _blank_all(text, pattern, flags)
    return text


def _is_year(text: str, match: re.Match) -> bool:
    if match["sign"] or match["decimals"] or match["exponent"] or match["fraction"] or match["suffix"]:
        return False
    digits = match["digits"]
    if not (len(digits) == 4 and digits.isdigit() and 1900 <= int(digits) <= 2039):
        return False
    if match["after"] and match["after"] != "s":
        return False
    before = text[max(0, match.start() - 30) : match.start()]
    after = text[match.end("digits") : match.end("digits") + 20]
    return bool(_YEAR_BEFORE.search(before) or _YEAR_AFTER.match(after))


def typed_numbers(source: str) -> list[TypedNumber]:
    """The numbers typed in the prose of a MyST text notebook, in order."""
    masked = prose_mask(source)
    lines = source.split("\n")
    found = []
    for match in _NUMBER.finditer(masked):
        after = match["after"]
        if after and after not in _UNITS:  # 1D, 3rd, 2nd: part of a name or an ordinal
            continue
        if _is_year(masked, match):
            continue
        end = match.end("after") if after else match.end()
        written = re.sub(r"\s+", " ", masked[match.start() : end])
        line = masked.count("\n", 0, match.start()) + 1
        column = match.start() - (masked.rfind("\n", 0, match.start()) + 1)
        found.append(TypedNumber(written, line, lines[line - 1].strip(), column, lines[line - 1]))
    return found


def explain(
    numbers: list[TypedNumber], entries: list[tuple[str, ...]]
) -> tuple[list[TypedNumber], list[tuple[str, ...]]]:
    """Match typed numbers with allow-list entries ``(number, reason)`` or ``(number, reason, context)``.

    An entry explains every occurrence of its number as written, or, with a context, only those on a
    line that contains the context. Returns the numbers no entry explains and the entries that
    explain none (stale ones). Entries with a context are tried first.
    """
    used, unexplained = set(), []
    # entries with a context first, so that a general entry for the same number does not hide them
    order = sorted(range(len(entries)), key=lambda i: len(entries[i]) < 3)
    for number in numbers:
        for i in order:
            text, _, *context = entries[i]
            if text == number.text and (not context or context[0] in number.context):
                used.add(i)
                break
        else:
            unexplained.append(number)
    return unexplained, [entry for i, entry in enumerate(entries) if i not in used]


def main(argv: list[str]) -> int:
    for name in argv or sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "chapters").glob("*.md")):
        for number in typed_numbers(Path(name).read_text(encoding="utf-8")):
            print(f"{name}:{number.line}: {number.text!r}: …{number.excerpt()}…")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
