"""One execution of each notebook, shared by nbval and the book build.

CI runs ``pytest`` (nbval executes every notebook, cell by cell, and fails on any error) and then
``jupyter-book build``, which would execute every notebook a second time. Instead:

1. the root ``conftest.py`` stores each notebook that nbval ran *completely and without error*,
   with the outputs nbval received, in the book's jupyter-cache (``_build/.jupyter_cache``);
2. the book's execution mode is ``cache`` (``_config.yml``): myst-nb uses a stored execution when
   the notebook's code cells are unchanged (jupyter-cache hashes their source), and executes the
   notebook itself otherwise, so a book built without a prior ``pytest`` run is still complete;
3. this Sphinx extension drops the whole cache when anything else a notebook's outputs depend on
   has changed since it was filled: the package's source, the requirements, the data root and
   device settings, Python and PyTorch (:func:`fingerprint`).

A notebook's outputs are therefore those of one real execution of its current code with the
current package, whichever of the two ran it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Where myst-nb keeps its jupyter-cache: ``<build dir>/.jupyter_cache`` (the Jupyter Book default).
CACHE = ROOT / "_build" / ".jupyter_cache"
_STAMP = "companion-fingerprint.txt"
#: Environment variables that change what the chapters compute or where they read data.
ENVIRONMENT = ("COMPANION_DEVICE", "COMPANION_DATA_DIR", "CUDA_VISIBLE_DEVICES")


def fingerprint() -> str:
    """SHA-256 over what a notebook's outputs depend on besides its own code."""
    digest = hashlib.sha256()
    files = sorted((ROOT / "companion").rglob("*.py")) + [ROOT / "pyproject.toml", ROOT / "requirements.txt"]
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    for name in ENVIRONMENT:
        value = os.environ.get(name, "")
        if name == "COMPANION_DATA_DIR" and value:
            value = str(Path(value).expanduser().resolve())
        digest.update(f"{name}={value}\0".encode())
    try:
        import torch

        digest.update(f"torch {torch.__version__}\0".encode())
    except ImportError:
        pass
    digest.update(f"python {platform.python_version()}".encode())
    return digest.hexdigest()


def is_current(cache: Path = CACHE) -> bool:
    """Whether ``cache`` was filled with the current :func:`fingerprint`."""
    stamp = cache / _STAMP
    return stamp.is_file() and stamp.read_text().strip() == fingerprint()


def drop_if_stale(cache: Path = CACHE) -> bool:
    """Remove ``cache`` if it was filled under another fingerprint; return whether it was removed."""
    if cache.exists() and not is_current(cache):
        shutil.rmtree(cache)
        return True
    return False


def stamp(cache: Path = CACHE) -> None:
    """Record that ``cache`` holds executions made under the current fingerprint."""
    cache.mkdir(parents=True, exist_ok=True)
    (cache / _STAMP).write_text(fingerprint() + "\n")


def _on_config_inited(app, config) -> None:
    cache = Path(config.nb_execution_cache_path or Path(app.outdir).parent / ".jupyter_cache")
    if drop_if_stale(cache):
        from sphinx.util import logging

        logging.getLogger(__name__).info("execution cache dropped: the package or the environment changed")


def _on_build_finished(app, exception) -> None:
    if exception is None and app.config.nb_execution_mode == "cache":
        stamp(Path(app.config.nb_execution_cache_path or Path(app.outdir).parent / ".jupyter_cache"))


def setup(app):
    app.connect("config-inited", _on_config_inited)
    app.connect("build-finished", _on_build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
