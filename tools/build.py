"""Build both editions into one site: English in _build/html/, Chinese (zh/) in _build/html/zh/.

``python tools/build.py`` runs ``jupyter-book build . -W -n --keep-going`` (which executes a
notebook only where the execution cache holds no run of its current code), then the same for
``zh/``, whose notebooks have the English code cells and therefore reuse the English executions.
The Chinese build must execute nothing: if it added a run to the cache (a Chinese notebook whose
code differs from its English twin), this script fails and names the notebooks, instead of
silently doubling the build's time. Exit status: 0, or the first failing step's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "_build" / ".jupyter_cache"


def cached_runs() -> dict[int, str]:
    """The executions in the English cache: record id → the notebook path it was stored from."""
    if not CACHE.exists():
        return {}
    from jupyter_cache import get_cache

    return {record.pk: record.uri for record in get_cache(str(CACHE)).list_cache_records()}


def build(book: Path, extra: list[str]) -> int:
    """``jupyter-book build . -W -n --keep-going`` in ``book`` (its relative paths are its own)."""
    command = ["jupyter-book", "build", ".", "-W", "-n", "--keep-going", *extra]
    print(f"$ (cd {book.relative_to(ROOT) or '.'} && {' '.join(command)})", flush=True)
    return subprocess.call(command, cwd=book)


def main(argv: list[str]) -> int:
    if status := build(ROOT, argv):
        return status
    before = cached_runs()
    if status := build(ROOT / "zh", argv):
        return status
    added = {pk: uri for pk, uri in cached_runs().items() if pk not in before}
    if added:
        print(f"the Chinese build executed {len(added)} notebook(s) instead of reusing the English "
              f"execution (their code cells differ from the English ones): {sorted(added.values())}",
              file=sys.stderr)  # fmt: skip
        return 1
    target = ROOT / "_build" / "html" / "zh"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(ROOT / "zh" / "_build" / "html", target)
    print(f"both editions built: {ROOT / '_build' / 'html' / 'index.html'}, {target / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
