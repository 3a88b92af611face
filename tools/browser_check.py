"""Open every page of the built book in a headless Chromium and check what a reader gets.

    python tools/browser_check.py [HTML_DIR] [--screenshots DIR]

``HTML_DIR`` is a built book (default ``_build/html``); it is served on a localhost port and
each of its pages is opened with Selenium. Every page must:

- log no console error (level SEVERE), and no request may fail (HTTP status >= 400);
- load nothing from another host (scripts, style sheets, fonts, images: the book works offline);
- show every ``<img>`` (loaded, ``naturalWidth > 0``);
- have its math typeset: each Sphinx ``.math`` element holds a MathJax ``mjx-container``, and no
  raw ``$$``, ``\\(``, ``\\[`` or ``\\begin{`` is left in the visible text outside code;
- link only to files of the build that exist, and to ``#anchors`` that exist on the target page.

- pass axe-core's accessibility rules tagged WCAG 2.0 and 2.1, levels A and AA
  (:data:`AXE_TAGS`): zero violations. axe-core is the npm package pinned in ``package.json``
  (``npm ci`` puts it in ``node_modules/``; ``AXE_CORE_JS`` may name another ``axe.min.js``);
  without it the check fails, it does not skip.

The search page must find "convolution", and the Chinese edition's (``zh/``, when built) must find
"卷积" (Sphinx indexes Chinese words only with jieba installed). Every page must link to its twin in
the other edition, and the twin back (``_ext/language_links.py``); an English page with no Chinese
twin yet links to the Chinese first page. Screenshots of the home page and the MNIST chapter are
saved to ``--screenshots`` (default: ``screenshots/`` beside ``HTML_DIR``, i.e. ``_build/screenshots``).

Exit status: 0 when every check passes; 1 when one fails or the book is not built. When
Chromium, chromedriver or Selenium is missing, the check is skipped: it prints ``SKIPPED`` and
the reason, and exits 0. Selenium is never allowed to download a browser or a driver:
``SE_OFFLINE`` is set and the driver is given by path (``CHROMEDRIVER``, else ``chromedriver``
on ``PATH``; the browser: ``CHROME_BIN``, else ``chromium`` / ``chromium-browser`` /
``google-chrome`` on ``PATH``).
"""

from __future__ import annotations

import argparse
import functools
import posixpath
import re
import html.parser
import http.server
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
SEARCH_TERM = "convolution"
#: The Chinese edition's search (its folder, the query).
ZH_SEARCH = ("zh/", "卷积")
LANGUAGE_LINK = re.compile(r'<p class="language-link">(.*?)<a href="([^"]+)"', re.S)
SCREENSHOTS = {"index.html": "index.png", "chapters/mnist_in_practice.html": "mnist_in_practice.png"}
# Chromium flags: headless, no sandbox (containers), and no network traffic of its own. The
# resolver rule makes any request to another host fail at once, so an asset from a CDN shows up
# as a console error even on a machine that is online.
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1024",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
TIMEOUT_S = 30
#: axe-core's rule tags checked on every page: WCAG 2.0 and 2.1, levels A and AA.
AXE_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa")


# ---------------------------------------------------------------------------------------------
# Static part: pages, anchors and links (no browser needed; tested in tests/test_browser_check.py)


def html_pages(html_dir: Path) -> list[str]:
    """The book's pages, as paths relative to ``html_dir``; folders starting with ``_`` hold assets."""
    pages = []
    for path in sorted(html_dir.rglob("*.html")):
        relative = path.relative_to(html_dir)
        if not any(part.startswith("_") for part in relative.parts[:-1]):
            pages.append(relative.as_posix())
    return pages


class _IdCollector(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name == "id" or (name == "name" and tag == "a")):
                self.ids.add(value)


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    """The ids (and ``<a name>``) a page defines: the targets its ``#fragment`` links may use."""
    collector = _IdCollector()
    collector.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(collector.ids)


def broken_links(html_dir: Path, base_url: str, hrefs: list[str]) -> list[str]:
    """Links among ``hrefs`` (absolute URLs, as ``a.href`` gives them) that do not resolve.

    A link into the served book must name a file of ``html_dir`` (a folder means its
    ``index.html``); a ``#fragment`` on an HTML page must be an id of that page. Links to other
    hosts and non-HTTP schemes (``mailto:``, ``javascript:``) are not checked.
    """
    base = urlsplit(base_url)
    problems = []
    for href in dict.fromkeys(hrefs):  # unique, in page order
        url = urlsplit(href)
        if url.scheme not in ("http", "https") or url.netloc != base.netloc:
            continue
        relative = unquote(url.path).lstrip("/")
        target = html_dir / relative
        if url.path.endswith("/") or target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            problems.append(f"broken link {href}: no file {target.relative_to(html_dir).as_posix()}")
            continue
        fragment = unquote(url.fragment)
        if fragment and target.suffix == ".html" and fragment not in anchors(target):
            problems.append(f"broken link {href}: no id {fragment!r} in {target.relative_to(html_dir).as_posix()}")
    return problems


# ---------------------------------------------------------------------------------------------
# The local web server


@contextmanager
def serve(html_dir: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve ``html_dir`` on a free localhost port; yields the base URL and a list that collects failed requests."""
    failures: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(html_dir), **kwargs)

        def log_request(self, code="-", size="-") -> None:
            if str(code).isdigit() and int(code) >= 400 and self.path != "/favicon.ico":
                failures.append(f"HTTP {code} for {self.path}")

        def log_message(self, format, *args) -> None:  # quiet: failures are reported per page
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", failures
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------------------------------------
# The browser part


def find_browser() -> tuple[str, str] | str:
    """``(chromium, chromedriver)`` paths, or the reason the check cannot run."""
    chrome = os.environ.get("CHROME_BIN") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not chrome:
        return "no Chromium found (set CHROME_BIN, or install it: apt-get install chromium chromium-driver)"
    if not driver:
        return "no chromedriver found (set CHROMEDRIVER, or install it: apt-get install chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "Selenium is not installed (python -m pip install -r requirements-browser.txt)"
    return chrome, driver


# Waits for MathJax's first typesetting pass; answers "none" when the page has no MathJax. MathJax is
# a deferred script: the page can finish loading before it defines window.MathJax.startup.promise, so a
# page that loads MathJax is polled for it (up to 20 s) instead of being judged at once.
_WAIT_FOR_MATHJAX = """
const done = arguments[arguments.length - 1];
const loads = [...document.scripts].some((s) => /mathjax/i.test(s.src));
const deadline = Date.now() + 20000;
(function wait() {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(() => done("ok"), (err) => done("error: " + err));
  } else if (!loads || Date.now() > deadline) {
    done("none");
  } else {
    setTimeout(wait, 50);
  }
})();
"""

# Whether the page has a MathJax script.
_LOADS_MATHJAX = "return [...document.scripts].some((s) => /mathjax/i.test(s.src));"

# Waits for every image to finish loading (or fail); answers the sources of those not shown.
_WAIT_FOR_IMAGES = """
const done = arguments[arguments.length - 1];
const images = Array.from(document.images);
images.forEach((img) => { img.loading = "eager"; });
Promise.all(images.map((img) => img.complete ? null : new Promise((resolve) => {
  img.addEventListener("load", resolve); img.addEventListener("error", resolve);
  setTimeout(resolve, 10000);
}))).then(() => done(images.filter((img) => !(img.complete && img.naturalWidth > 0))
                            .map((img) => img.getAttribute("src"))));
"""

# Everything else the checks need from the rendered page, in one round trip.
_INSPECT = r"""
const skip = "pre, code, script, style, textarea, mjx-container, .highlight";
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
const rawTex = [];
for (let node = walker.nextNode(); node; node = walker.nextNode()) {
  const parent = node.parentElement;
  if (!parent || parent.closest(skip)) continue;  // hidden text counts too: a reader can open it
  if (/\$\$|\\\(|\\\[|\\begin\{/.test(node.textContent)) rawTex.push(node.textContent.trim().slice(0, 80));
}
const math = Array.from(document.querySelectorAll(".math"));
return {
  links: Array.from(document.querySelectorAll("a[href]")).map((a) => a.href),
  mathCount: math.length,
  untypeset: math.filter((el) => !el.querySelector("mjx-container")).map((el) => el.textContent.trim().slice(0, 80)),
  typeset: document.querySelectorAll("mjx-container").length,
  rawTex: rawTex,
  resources: performance.getEntriesByType("resource").map((e) => e.name),
};
"""


# Runs axe-core (already injected) on the page; answers its violations, or an error message.
_RUN_AXE = """
const done = arguments[arguments.length - 1];
axe.run(document, {runOnly: {type: "tag", values: arguments[0]}, resultTypes: ["violations"]})
  .then((r) => done(r.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
                                              targets: v.nodes.map((n) => n.target.join(" "))}))),
        (err) => done("axe-core failed: " + err));
"""


def axe_source() -> str | None:
    """The text of ``axe.min.js`` (``AXE_CORE_JS``, else ``node_modules/axe-core/``), or None when missing."""
    path = Path(os.environ.get("AXE_CORE_JS") or ROOT / "node_modules" / "axe-core" / "axe.min.js")
    return path.read_text(encoding="utf-8") if path.is_file() else None


def accessibility_problems(driver, axe: str) -> list[str]:
    """axe-core's violations of the :data:`AXE_TAGS` rules on the open page, one line per rule."""
    driver.execute_script(axe)
    violations = driver.execute_async_script(_RUN_AXE, list(AXE_TAGS))
    if isinstance(violations, str):
        return [violations]
    return [f"accessibility ({v['impact']}) {v['id']}: {v['help']}; {len(v['targets'])} element(s), "
            f"e.g. {', '.join(v['targets'][:3])}" for v in violations]  # fmt: skip


def start_driver(chrome: str, driver_path: str, profile: str):
    """A headless Chromium (:data:`CHROME_FLAGS`) driven by Selenium, with ``profile`` as its user folder."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not download a browser or a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(TIMEOUT_S)
    driver.set_script_timeout(TIMEOUT_S)
    return driver


def console_errors(driver) -> list[str]:
    """Console messages of level SEVERE since the last call.

    Chromium's own request for ``/favicon.ico`` (made because the book declares no icon; no page
    asks for it) is not the book's error and is left out.
    """
    return [
        f"console error: {entry['message']}"
        for entry in driver.get_log("browser")
        if entry["level"] == "SEVERE" and "/favicon.ico " not in entry["message"]
    ]


def check_page(driver, html_dir: Path, base_url: str, page: str, failed_requests: list[str],
               axe: str) -> tuple[list[str], str]:  # fmt: skip
    """Open one page; return its problems and a one-line summary (``axe``: axe-core's source)."""
    driver.get(base_url + page)
    problems = []
    mathjax = driver.execute_async_script(_WAIT_FOR_MATHJAX)
    for _ in range(20):  # seen in Chromium: "none" once on a page that loads MathJax; ask again
        if mathjax != "none" or not driver.execute_script(_LOADS_MATHJAX):
            break
        time.sleep(0.5)
        mathjax = driver.execute_async_script(_WAIT_FOR_MATHJAX)
    missing_images = driver.execute_async_script(_WAIT_FOR_IMAGES)
    time.sleep(0.2)  # let late console messages (a failed font) arrive
    info = driver.execute_script(_INSPECT)
    origin = base_url.rstrip("/")
    problems += console_errors(driver)
    problems += [f"request failed: {failure}" for failure in failed_requests]
    failed_requests.clear()
    problems += [f"loaded from another host: {url}" for url in info["resources"] if not url.startswith(origin)]
    problems += [f"image not shown: {src}" for src in missing_images]
    if info["mathCount"] and mathjax != "ok":
        problems.append(f"{info['mathCount']} math elements but MathJax did not run ({mathjax})")
    problems += [f"math not typeset: {text!r}" for text in info["untypeset"]]
    problems += [f"raw TeX in the text: {text!r}" for text in info["rawTex"]]
    problems += broken_links(html_dir, base_url, info["links"])
    problems += accessibility_problems(driver, axe)
    summary = f"{len(info['links'])} links, {info['typeset']} formulas, images ok: {not missing_images}"
    return problems, summary


def language_link_problems(html_dir: Path, pages: list[str]) -> dict[str, list[str]]:
    """Each page's link to the other edition resolves, and its twin links back (read from the HTML).

    Only when the book has both editions (a ``zh/index.html``); search and index pages, which have
    no text of their own, are skipped.
    """
    if not (html_dir / "zh" / "index.html").is_file():
        return {}
    problems: dict[str, list[str]] = {}
    for page in pages:
        if posixpath.basename(page) in ("search.html", "genindex.html", "py-modindex.html"):
            continue
        text = (html_dir / page).read_text(encoding="utf-8")
        if re.search(r'http-equiv="refresh"', text, re.IGNORECASE):  # index.html: a redirect, no text
            continue
        match = LANGUAGE_LINK.search(text)
        if match is None:
            problems[page] = ["no link to the other edition"]
            continue
        untranslated, href = match.groups()
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page), href))
        if not (html_dir / target).is_file():
            problems[page] = [f"the link to the other edition, {href}, names no page ({target})"]
            continue
        if untranslated.strip():  # "no Chinese translation yet": it leads to the first page
            continue
        back = LANGUAGE_LINK.search((html_dir / target).read_text(encoding="utf-8"))
        back_target = back and posixpath.normpath(posixpath.join(posixpath.dirname(target), back.group(2)))
        if back_target != page:
            problems[page] = [f"its twin {target} links back to {back_target}, not to it"]
    return problems


def check_search(driver, base_url: str, folder: str = "", term: str = SEARCH_TERM) -> tuple[list[str], str]:
    """The search page in ``folder`` must list at least one result for ``term``."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base_url}{folder}search.html?q={term}")
    count_results = "return document.querySelectorAll('#search-results ul.search li').length"
    finished = "return !!document.querySelector('#search-results p.search-summary, #search-results > p')"
    try:
        WebDriverWait(driver, TIMEOUT_S).until(lambda d: d.execute_script(count_results) or d.execute_script(finished))
    except Exception:  # selenium's TimeoutException; reported below as no results
        pass
    results = driver.execute_script(count_results)
    problems = [] if results else [f"the search page {folder}search.html found nothing for {term!r}"]
    problems += console_errors(driver)
    return problems, f"{results} results for {term!r}"


def run(html_dir: Path, screenshots: Path) -> int:
    """Check every page; print a line per page and the problems; return the exit status."""
    found = find_browser()
    if isinstance(found, str):
        print(f"SKIPPED browser check: {found}")
        return 0
    chrome, driver_path = found
    axe = axe_source()
    if axe is None:
        print("error: axe-core is not installed (run npm ci, or set AXE_CORE_JS to an axe.min.js)", file=sys.stderr)
        return 1
    pages = html_pages(html_dir)
    screenshots.mkdir(parents=True, exist_ok=True)
    all_problems: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="browser-check-") as profile, serve(html_dir) as (base_url, failed):
        driver = start_driver(chrome, driver_path, profile)
        try:
            print(f"browser check: {len(pages)} pages of {html_dir} with {chrome} at {base_url}")
            for page in pages:
                problems, summary = check_page(driver, html_dir, base_url, page, failed, axe)
                if page in SCREENSHOTS:
                    driver.save_screenshot(str(screenshots / SCREENSHOTS[page]))
                print(f"{'FAIL' if problems else 'ok  '} {page}: {summary}")
                all_problems[page] = problems
            problems, summary = check_search(driver, base_url)
            print(f"{'FAIL' if problems else 'ok  '} search: {summary}")
            all_problems["search"] = problems
            if (html_dir / ZH_SEARCH[0] / "search.html").is_file():
                problems, summary = check_search(driver, base_url, *ZH_SEARCH)
                print(f"{'FAIL' if problems else 'ok  '} {ZH_SEARCH[0]}search: {summary}")
                all_problems[f"{ZH_SEARCH[0]}search"] = problems
        finally:
            driver.quit()
    for page, problems in language_link_problems(html_dir, pages).items():
        all_problems.setdefault(page, []).extend(problems)
    missing = [name for page, name in SCREENSHOTS.items() if page in pages and not (screenshots / name).is_file()]
    if missing:
        all_problems["screenshots"] = [f"not saved: {', '.join(missing)}"]
    failures = {page: problems for page, problems in all_problems.items() if problems}
    for page, problems in failures.items():
        print(f"\n{page}:")
        for problem in problems:
            print(f"  - {problem}")
    print(f"\nbrowser check: {'FAILED on ' + str(len(failures)) + ' page(s)' if failures else 'passed'}; "
          f"screenshots in {screenshots}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html_dir", nargs="?", type=Path, default=ROOT / "_build" / "html",
                        help="the built book (default: _build/html)")
    parser.add_argument("--screenshots", type=Path, help="where to save screenshots (default: HTML_DIR/../screenshots)")
    args = parser.parse_args(argv)
    html_dir = args.html_dir.resolve()
    if not (html_dir / "index.html").is_file():
        print(f"error: no built book in {html_dir} (no index.html): build it first with jupyter-book build .",
              file=sys.stderr)
        return 1
    return run(html_dir, (args.screenshots or html_dir.parent / "screenshots").resolve())


if __name__ == "__main__":
    sys.exit(main())
