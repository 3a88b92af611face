"""Sphinx extension for the book's API reference (``api.rst``): one line per package module.

``.. companion-module:: companion.data chapter-mnist`` expands, as if typed in the page, to::

    ``companion.data``
    ------------------

    Explained in :ref:`chapter-mnist`.

    .. automodule:: companion.data

The ``automodule`` options (members from the module's ``__all__``, base classes shown) are
``autodoc_default_options`` in ``_config.yml``. ``tests/test_book.py`` checks that every module
of the package has its line in ``api.rst``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from docutils.parsers.rst import Directive
from docutils.statemachine import StringList

# The reference documents the package in this checkout, not whichever copy happens to be installed.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class CompanionModule(Directive):
    """``.. companion-module:: MODULE LABEL``: a section documenting MODULE, linked to the chapter LABEL."""

    required_arguments = 2
    has_content = False

    def run(self) -> list:
        module, label = self.arguments
        title = f"``{module}``"
        lines = [title, "-" * len(title), "", f"Explained in :ref:`{label}`.", "", f".. automodule:: {module}", ""]
        source, _ = self.state_machine.get_source_and_line(self.lineno)
        # Inserted into the input, so the section title is parsed like one written in the page.
        self.state_machine.insert_input(StringList(lines, source), source)
        return []


def public_bases(app, name, obj, options, bases: list) -> None:
    """Show a private base class (``companion.rnn._Cell``) as its own bases, which are documented."""
    i = 0
    while i < len(bases):
        if bases[i].__name__.startswith("_"):
            bases[i : i + 1] = list(bases[i].__bases__)
        else:
            i += 1


def setup(app) -> dict:
    app.add_directive("companion-module", CompanionModule)
    app.connect("autodoc-process-bases", public_bases)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
