"""The chapters as a reader and a maintainer meet them.

A maintainer edits a chapter's MyST Markdown source (``chapters/NAME.md``); jupytext pairs it with
the notebook (``chapters/NAME.ipynb``) that nbval, Colab and the download button use. These tests
fail when a pair is out of sync, when a notebook lost its stable cell ids, when the first cell is not
the one ``tools/first_cell.py`` writes (installing the package from the repository URL of
``_config.yml``, which the README uses too), when code is wider than the page, when a chapter
imports a tool of the book's build, and when a data load may not download.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
from pathlib import Path

import jupytext
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import first_cell  # noqa: E402  (tools/ is not a package)

NOTEBOOKS = sorted((ROOT / "chapters").glob("*.ipynb")) + sorted(ROOT.glob("*.ipynb"))
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
#: Packages of the book's build and tests: a reader's kernel does not have them.
BUILD_ONLY = {"myst_nb", "jupyter_book", "sphinx", "nbval", "pytest", "jupytext", "jupyter_cache", "sphinx_exercise"}
#: Widest code line the book's code blocks show without a scroll bar (sphinx-book-theme, default font).
MAX_LINE = 88


def _code_cells(path: Path) -> list[str]:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def _imports(source: str) -> set[str]:
    """Top-level modules a cell imports (IPython magics removed first)."""
    tree = ast.parse("\n".join(line for line in source.splitlines() if not line.lstrip().startswith("%")))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_a_text_source_in_sync(path):
    source = path.with_suffix(".md")
    assert source.is_file(), f"{path.name} has no paired text source {source.name}"
    text = jupytext.read(source)
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert notebook["metadata"]["jupytext"]["formats"] == "ipynb,md:myst"
    ours = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in text.cells]
    theirs = [(c["cell_type"], "".join(c["source"]), c["metadata"].get("tags", [])) for c in notebook["cells"]]
    assert ours == theirs, f"{path.name} and {source.name} differ: run `jupytext --sync {source.relative_to(ROOT)}`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_cells_have_stable_unique_ids(path):
    ids = [c.get("id") for c in json.loads(path.read_text(encoding="utf-8"))["cells"]]
    assert all(ids) and len(set(ids)) == len(ids), f"{path.name}: every cell needs its own id"


def test_only_the_notebook_of_each_pair_is_a_page():
    config = (ROOT / "_config.yml").read_text(encoding="utf-8")
    excluded = re.search(r"^exclude_patterns:\s*\[(.*)\]", config, flags=re.M).group(1)
    assert '"chapters/*.md"' in excluded and '"environment.md"' in excluded


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_chapter_starts_with_the_install_cell(path):
    cells = _code_cells(path)
    assert cells[0] == first_cell.first_cell(first_cell.extras_for("\n".join(cells[1:]))), (
        f"{path.name}: run `python tools/first_cell.py --write` and `jupytext --sync`"
    )


def test_install_cell_repository_is_the_config_and_readme_url():
    url = first_cell.repository_url()
    assert url.startswith("https://")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"git+{url}" in readme, "the README's install line must use _config.yml's repository.url"
    for path in CHAPTERS:
        assert f'REPOSITORY = "{url}"' in _code_cells(path)[0]


def test_every_extra_a_chapter_needs_is_declared():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, (_, installs) in first_cell.EXTRAS.items():
        for module, distribution in installs.items():
            assert any(req.startswith(distribution) for req in extras[name]), f"extra {name!r} must install {module}"


def test_first_cell_template_reads_the_chapters_extras():
    assert first_cell.extras_for("from companion.interpret import grad_cam") == ["interpret"]
    assert first_cell.extras_for("import companion\ncompanion.fit(...)") == []
    # a module an extra installs, imported directly, needs the extra too (not a mere mention)
    assert first_cell.extras_for("import skimage.data\nx = 1") == ["pretrained"]
    assert first_cell.extras_for("# skimage is not imported here") == []
    cell = first_cell.first_cell(["interpret"], url="https://example.org/repo")
    assert '("companion", "captum")' in cell and 'f"dl-cv-executable[interpret] @ git+{REPOSITORY}"' in cell
    ast.parse(cell)


def test_first_cell_writer_reads_extras_from_code_not_prose(tmp_path):
    source = tmp_path / "chapter.md"
    prose = "A test checks it equals torchmetrics' value.\n\n"
    source.write_text(prose + "```{code-cell}\nimport companion\n```\n")
    assert "dl-cv-executable[" not in first_cell.expected_text(source)  # prose names a library: no extra
    source.write_text(prose + "```{code-cell}\nfrom companion.interpret import grad_cam\n```\n")
    assert "dl-cv-executable[interpret]" in first_cell.expected_text(source)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_fits_the_page(path):
    wide = [line for cell in _code_cells(path) for line in cell.splitlines() if len(line) > MAX_LINE]
    # Code shown but not run (exercise solutions, commands) lives in the Markdown cells' fences.
    markdown = path.with_suffix(".md").read_text(encoding="utf-8")
    for block in re.findall(r"^[ \t]*(```+)[ \t]*(?:python|py|bash)[ \t]*\n(.*?)^[ \t]*\1", markdown, re.S | re.M):
        wide += [line for line in block[1].splitlines() if len(line) > MAX_LINE]
    assert not wide, f"{path.name}: {len(wide)} code lines wider than {MAX_LINE} characters: {wide[:3]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_build_only_import(path):
    imported = {name.split(".")[0] for cell in _code_cells(path) for name in _imports(cell)}
    assert not imported & BUILD_ONLY, f"{path.name} imports {sorted(imported & BUILD_ONLY)}: readers lack them"


def _refusing_loads(code: str) -> list[str]:
    """Calls of the package's loaders (and run_recipe) in ``code`` that do not allow a download."""
    calls = re.findall(r"(?:load_mnist|load_fashion_mnist|load_dataset|run_recipe)\((?:[^()]|\([^()]*\))*\)", code)
    return [call for call in calls if "download=True" not in call]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_data_load_may_download(path):
    code = "\n".join(_code_cells(path))
    refusing = _refusing_loads(code)
    assert not refusing, f"{path.name}: loads without download=True: {refusing}"
    # torchvision datasets are built only after the package has downloaded the files.
    for match in re.finditer(r"torchvision\.datasets\.\w+\(", code):
        assert "download=True" in code[: match.start()], f"{path.name}: torchvision dataset before any download"


def test_the_check_catches_a_refusing_load():
    # A cell that would fail in a reader's empty data folder, next to one that would not.
    code = "train = companion.load_mnist(train=True)\nx = companion.run_recipe(c(1), download=True)"
    assert _refusing_loads(code) == ["load_mnist(train=True)"]


def test_the_reader_kernel_test_stops_each_chapter_at_its_first_data_load_and_imports_the_rest():
    """What tests/test_reader_kernel.py runs of each chapter (its harness, tests/reader_kernel.py)."""
    import nbformat

    sys.path.insert(0, str(ROOT / "tests"))
    import reader_kernel

    for path in CHAPTERS:
        notebook = nbformat.read(path, as_version=4)
        count = reader_kernel.cells_to_run(notebook, whole=False)
        code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
        if reader_kernel.LOADS.search(code):  # stops at the first cell that loads data, which it runs
            assert reader_kernel.LOADS.search(notebook.cells[count - 1].source), path.name
            assert not any(reader_kernel.LOADS.search(c.source) for c in notebook.cells[: count - 1]
                           if c.cell_type == "code"), path.name  # fmt: skip
        else:
            assert count == len(notebook.cells), path.name
        # every import of the cells it does not run is still run, each statement as the chapter wrote it
        later = reader_kernel.imports_of(notebook.cells[count:])
        assert all(re.match(r"(import|from) \S", statement) for statement in later), later
    modern = nbformat.read(ROOT / "chapters" / "modern_cnns.ipynb", as_version=4)
    assert reader_kernel.cells_to_run(modern, whole=False) < len(modern.cells)  # datasets(companion.load_mnist)
    cell = nbformat.v4.new_code_cell("import os\nfrom pathlib import (\n    Path,\n)\nx = 1\nif x:\n    import json")
    assert reader_kernel.imports_of([cell]) == ["import os", "from pathlib import Path"]  # top level only
