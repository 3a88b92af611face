"""Sphinx extension: every page's scripts and style sheets come from the build, each once.

At each page (``html-page-context``) it

- drops repeated copies of the same inline script. Sphinx 7.4 registers an inline script that
  an extension adds after the builder starts twice (once with ``filename=None``, once with
  ``""``); sphinx-thebe's ``const THEBE_JS_URL = ...`` then runs twice, a JavaScript
  ``SyntaxError`` on every page.
- warns (an error under ``-W``) about a script or style sheet loaded from another host, such as a
  CDN, since the book must work offline, and about a script file included twice (for example
  MathJax, if it were under a folder that Jupyter Book scans for ``.js`` files).
"""

from __future__ import annotations

from sphinx.util import logging

logger = logging.getLogger(__name__)


def _is_remote(filename: str) -> bool:
    return "://" in filename or filename.startswith("//")


def check_assets(app, pagename: str, templatename: str, context: dict, doctree) -> None:
    scripts, seen, files = [], set(), set()
    for script in context.get("script_files", []):
        filename = str(script.filename or "")
        key = (filename, script.priority, tuple(sorted(script.attributes.items())))
        if key in seen:
            continue  # the same script, registered twice
        seen.add(key)
        scripts.append(script)
        if filename and filename in files:
            logger.warning(f"{pagename}: the script {filename} is included twice", type="offline", subtype="duplicate")
        files.add(filename)
    context["script_files"] = scripts
    assets = [str(s.filename or "") for s in scripts] + [str(c.filename or "") for c in context.get("css_files", [])]
    for filename in filter(_is_remote, assets):
        logger.warning(
            f"{pagename}: loads {filename} from another host; the book must work offline "
            f"(serve the file from the build)",
            type="offline",
            subtype="remote",
        )


def setup(app) -> dict:
    # After the theme and the extensions have added their files (default priority 500).
    app.connect("html-page-context", check_assets, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
