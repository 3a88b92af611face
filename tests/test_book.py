"""The book's sources: notebooks stored clean, a table of contents that matches the chapters,
an API reference that covers the package, a setup page whose error messages are the package's,
and HTML that loads nothing from another host."""

from __future__ import annotations

import ast
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
# Notebooks outside chapters/ (the build environment report) follow the same rules.
NOTEBOOKS = CHAPTERS + sorted(ROOT.glob("*.ipynb"))
MODULES = sorted(p.stem for p in (ROOT / "companion").glob("*.py") if p.stem not in ("__init__", "__main__"))


def test_there_are_chapters():
    assert CHAPTERS, "no notebooks under chapters/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_without_outputs_and_with_the_python3_kernel(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code, f"{path.name} has no code cells"
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), f"{path.name} has outputs"
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_notebook_rules(path):
    source = "\n".join("".join(c["source"]) for c in json.loads(path.read_text(encoding="utf-8"))["cells"])
    assert "num_workers" not in source or re.search(r"num_workers\s*=\s*0\b", source)
    assert "pin_memory=True" not in source
    only_package = "companion.load_" in source or "companion.run_recipe(" in source
    assert "download=True" not in source or only_package  # only the package downloads
    assert not re.search(r"^\s*!", source, flags=re.M), "no shell commands in notebooks"
    assert "shared/data" not in source, "read the data root from COMPANION_DATA_DIR"


def test_table_of_contents_lists_exactly_the_chapters():
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r"file:\s*chapters/(\S+)", toc))
    assert listed == {p.stem for p in CHAPTERS}


def test_notebooks_outside_chapters_are_in_the_book_and_run_by_pytest():
    toc = (ROOT / "_toc.yml").read_text(encoding="utf-8")
    testpaths = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["pytest"]["ini_options"]["testpaths"]
    for path in NOTEBOOKS:
        if path.parent == ROOT:
            assert re.search(rf"file:\s*{path.stem}\s*$", toc, flags=re.M), f"{path.name} is not in _toc.yml"
            assert path.name in testpaths, f"{path.name} is not in pytest's testpaths, so nbval never runs it"


def _labels() -> set[str]:
    """Every cross-reference target the book's sources define: MyST ``(label)=`` and rST ``.. _label:``."""
    sources = [*ROOT.glob("*.md"), *ROOT.glob("*.rst"), *ROOT.glob("*.ipynb"), *CHAPTERS]
    text = "\n".join(path.read_text(encoding="utf-8") for path in sources)
    return set(re.findall(r"\(([\w-]+)\)=", text)) | set(re.findall(r"^\.\. _([\w-]+):", text, flags=re.M))


def _api_reference() -> dict[str, str]:
    """``{module: chapter label}`` from api.rst's ``.. companion-module:: companion.NAME LABEL`` lines."""
    api = (ROOT / "api.rst").read_text(encoding="utf-8")
    return dict(re.findall(r"^\.\. companion-module:: companion\.(\w+) (\S+)\s*$", api, flags=re.M))


def test_api_reference_documents_every_module_and_links_it_to_a_chapter():
    documented = _api_reference()
    assert sorted(documented) == MODULES, "api.rst needs one `.. companion-module:: companion.NAME LABEL` line per module"
    missing = {module: label for module, label in documented.items() if label not in _labels()}
    assert not missing, f"chapter labels that no page defines: {missing}"


def test_api_reference_documents_the_submodules_in_companion_all():
    import inspect

    import companion

    submodules = {name for name in companion.__all__ if inspect.ismodule(getattr(companion, name))}
    assert submodules, "companion.__all__ lists no submodule"
    assert submodules <= set(_api_reference()), f"not in api.rst: {submodules - set(_api_reference())}"


def _strings(tree, keys=()):
    """Every string in a parsed YAML tree, with the keys leading to it."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _strings(value, (*keys, str(key)))
    elif isinstance(tree, list):
        for item in tree:
            yield from _strings(item, keys)
    elif isinstance(tree, str):
        yield keys, tree


# Keys whose URLs are links a reader clicks (buttons), not assets a page loads.
LINK_KEYS = {"url", "baseurl", "colab_url", "binderhub_url", "jupyterhub_url", "deepnote_url"}


def test_the_html_loads_no_script_style_or_font_from_another_host():
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    remote = {".".join(keys): value for keys, value in _strings(config) if re.match(r"\s*(https?:)?//", value)}
    assets = {key: value for key, value in remote.items() if key.rsplit(".", 1)[-1] not in LINK_KEYS}
    assert not assets, f"_config.yml loads these from another host: {assets}"
    sphinx = config["sphinx"]["config"]
    # MathJax and the fonts it fetches are served from the build (Sphinx's default is a CDN).
    static = [ROOT / folder for folder in sphinx["html_static_path"]]
    mathjax = [folder / sphinx["mathjax_path"] for folder in static if (folder / sphinx["mathjax_path"]).is_file()]
    assert mathjax, f"mathjax_path {sphinx['mathjax_path']!r} is not a file under html_static_path"
    assert list((mathjax[0].parent / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff")), "MathJax fonts missing"
    assert sphinx["nb_ipywidgets_js"] == {}, "myst-nb loads require.js and the widget manager from a CDN by default"
    # With a _static folder, Jupyter Book adds every .js under the static paths to every page: MathJax twice.
    assert not (ROOT / "_static").exists(), "keep static files in _vendor (see _vendor/README.txt), not _static"
    # _ext/offline_assets.py fails the build on any remote script or style sheet, whoever adds it.
    assert "offline_assets" in config["sphinx"]["local_extensions"]


def _message_patterns() -> list[re.Pattern[str]]:
    """Every string literal and f-string of the package as a regex (an f-string's fields match anything)."""
    patterns = []
    for path in (ROOT / "companion").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr):
                pieces = node.values
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                pieces = [node]
            else:
                continue
            fixed = [p.value for p in pieces if isinstance(p, ast.Constant)]
            if sum(map(len, fixed)) >= 15:
                patterns.append(re.compile("".join(re.escape(p.value) if isinstance(p, ast.Constant) else ".*?" for p in pieces)))
    return patterns


def _setup_section(start: str, end: str) -> str:
    text = (ROOT / "setup.md").read_text(encoding="utf-8")
    return text[text.index(start) : text.index(end)]


def test_setup_page_quotes_messages_the_package_really_prints():
    # In each table row of the two sections, the longest code span is the message.
    section = _setup_section("(setup-errors)=", "(setup-browser-check)=")
    rows = [line for line in section.splitlines() if line.startswith("|") and "`" in line]
    messages = [max(re.findall(r"`([^`]+)`", row), key=len) for row in rows]
    messages = [m for m in messages if len(m) >= 20]
    assert len(messages) >= 15
    # The command line adds "error: "; argparse adds the program and the argument.
    prefix = re.compile(r"^(?:python -m companion(?: train)?: error: (?:argument --[\w-]+: )?|error: )")
    patterns = _message_patterns()
    invented = [m for m in messages if not any(p.fullmatch(prefix.sub("", m)) for p in patterns)]
    assert not invented, f"setup.md quotes messages that no string in companion/ produces: {invented}"


def test_setup_page_explains_every_exception_class_of_the_package():
    defined = set()
    for path in (ROOT / "companion").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(b, ast.Name) and b.id.endswith(("Error", "Exception")) for b in node.bases
            ):
                defined.add(node.name)
    assert defined, "found no exception classes in companion/"
    section = _setup_section("(setup-errors)=", "(setup-cli)=")
    assert not [name for name in defined if f"`{name}`" not in section]


def test_package_docstring_lists_every_module():
    import companion

    named = set(re.findall(r":mod:`~companion\.(\w+)`", companion.__doc__))
    assert named == set(MODULES), f"missing: {set(MODULES) - named}, unknown: {named - set(MODULES)}"
