"""A reader's fresh machine: the chapters run in a kernel that has only the package.

The test builds a new virtual environment with PyTorch, a kernel (``ipykernel``, ``nbclient``) and
nothing of the book's build (no jupyter-book, no myst-nb). It installs the package the way every
chapter's first cell does — that cell itself runs, with the repository URL replaced by a local
copy of the package — and gives the kernels an **empty** data root. Downloads go to a local
mirror on 127.0.0.1 (``tests/mirror.py``), which torchvision's mirror lists point at in that
environment (a ``sitecustomize`` module); nothing else is asked for the data.

Then it checks, in that environment:

- an interrupted download leaves no file under a dataset's name;
- every chapter runs from its first cell through its first data load, and one chapter
  (``WHOLE_CHAPTER``) runs to its end; every import statement of the cells after the first data load
  runs too (a package that only a late cell imports is caught);
- the kernels were the environment's, without myst-nb, and the data came from the mirror.

It fails if a chapter imports a build-only package, if a load refuses to download, or if a
download is visible before it is complete. What a reader's runtime already has (PyTorch,
torchvision and a kernel) is installed once per machine into a cached folder that every fresh
environment reads through a ``.pth`` file (:func:`_reader_base`); the package and its extras are
installed anew each run, by the chapters' own first cell. Slow (a few minutes; the first run on a
machine installs PyTorch too); ``.ci/run`` runs it with the other tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

import pytest

from companion.data import RAW_SHA256
from companion.utils import atomic_write

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import first_cell  # noqa: E402  (tools/ is not a package)

pytestmark = pytest.mark.slow

#: The chapter run from its first cell to its last (short, and it trains a network on real data).
WHOLE_CHAPTER = "convolutional_networks"

SITECUSTOMIZE = '''\
"""Test environment only: torchvision's MNIST / Fashion-MNIST mirror lists -> the local test mirror."""
import importlib.machinery
import os
import sys

_URL = os.environ.get("COMPANION_TEST_MIRROR")


class _MirrorPatch:
    def find_spec(self, name, path=None, target=None):
        if not _URL or name != "torchvision.datasets.mnist":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            module.MNIST.mirrors = [_URL + "/MNIST/"]
            module.FashionMNIST.mirrors = [_URL + "/FashionMNIST/"]

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _MirrorPatch())
'''


def _run(args: list, env: dict, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def _check(result: subprocess.CompletedProcess, what: str) -> None:
    assert result.returncode == 0, f"{what} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


def _reader_base(python: Path, env: dict) -> Path:
    """PyTorch, torchvision, ipykernel and nbclient installed (``pip install --target``) into a cached folder.

    The folder is keyed by the Python, PyTorch and torchvision versions and lives under
    ``$XDG_CACHE_HOME`` (else ``~/.cache``)/``companion-tests``; it is built in a temporary folder and
    renamed into place when complete, so an interrupted build is never reused. The first run on a
    machine installs PyTorch (minutes); later runs reuse it.
    """
    import torch
    import torchvision

    pins = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}",
            "ipykernel", "nbclient"]  # fmt: skip
    version = _run([python, "-c", "import sys; print(sys.version)"], env).stdout.strip()
    key = hashlib.sha256("\n".join([version, *pins]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "companion-tests"
    base = cache / f"reader-base-{key}"
    if not base.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f"{base.name}.", dir=cache))
        _check(_run([python, "-m", "pip", "install", "-q", "--target", partial, *pins], env), "pip install (base)")
        try:
            partial.rename(base)
        except OSError:  # another run finished first: use its folder
            shutil.rmtree(partial, ignore_errors=True)
    return base


@pytest.fixture(scope="module")
def reader(tmp_path_factory, data_dir):
    """A fresh virtual environment, its environment variables, an empty data root and the mirror."""
    from mirror import Mirror

    base = tmp_path_factory.mktemp("reader")
    env_dir, data_root = base / "venv", base / "data"
    data_root.mkdir()
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], os.environ).stdout.strip())
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MPLBACKEND", "VIRTUAL_ENV")}
    env.update(PATH=f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}", COMPANION_DATA_DIR=str(data_root),
               JUPYTER_DATA_DIR=str(base / "jupyter"), PIP_DISABLE_PIP_VERSION_CHECK="1")  # fmt: skip
    # What a reader's runtime already has (Colab: PyTorch and a kernel), at the versions this machine
    # runs: installed once per machine into a folder outside the environment and reused, through a
    # .pth file, by every fresh environment. Everything else comes from the chapters' first cell.
    (site / "reader-base.pth").write_text(str(_reader_base(python, env)) + "\n")
    with Mirror(data_dir) as mirror:
        env["COMPANION_TEST_MIRROR"] = mirror.url
        yield {"python": python, "env": env, "data": data_root, "mirror": mirror, "base": base}


def test_reader_environment(reader):
    python, env, data, mirror = reader["python"], reader["env"], reader["data"], reader["mirror"]

    # 1. The first cell installs the package, as in Colab: the chapter's own cell, with the
    #    repository URL replaced by a copy of the package's sources (what git+URL would fetch).
    source = reader["base"] / "companion-src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "companion", source / "companion", ignore=shutil.ignore_patterns("__pycache__"))
    # The first cell with every extra (chapters each need some of them; tests/test_chapters.py checks
    # that every chapter's first cell is this template with its own extras).
    pretrained = json.loads((ROOT / "chapters" / "pretrained_models.ipynb").read_text())
    chapter_cell = "".join(next(c for c in pretrained["cells"] if c["cell_type"] == "code")["source"])
    assert chapter_cell == first_cell.first_cell(["interpret", "pretrained"])
    cell = first_cell.first_cell(sorted(first_cell.EXTRAS))
    local = cell.replace("git+{REPOSITORY}", source.as_uri())
    assert local != cell
    _check(_run([python, "-c", local], env), "the first cell (install)")
    listed = _run([python, "-m", "pip", "list", "--format=json"], env)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    extras = {dist for _, installs in first_cell.EXTRAS.values() for dist in installs.values()}
    assert {"dl-cv-executable", "matplotlib", "tqdm", *extras} <= installed
    assert not installed & {"jupyter-book", "myst-nb", "sphinx", "nbval", "pytest", "jupytext",
                            "efficientnet-lite-pytorch"}  # the last: the tests' oracle only  # fmt: skip
    # Where the package is installed, the same cell does nothing (no pip run: it would fail here).
    no_pip = cell.replace("subprocess.run(", "(lambda *args, **kwargs: sys.exit(3))(")
    _check(_run([python, "-c", no_pip], env), "the first cell where the package is installed")

    # 2. An interrupted download leaves nothing under the dataset's file names.
    mirror.truncate = True
    load = "import companion; companion.load_mnist(train=False, download=True)"
    failed = _run([python, "-c", load], env)
    assert failed.returncode != 0 and "DataNotFoundError" in failed.stderr, failed.stderr[-2000:]
    assert not any(p.is_file() for p in data.rglob("*")), sorted(data.rglob("*"))
    mirror.truncate = False
    mirror.requests.clear()

    # 3. Every chapter through its first data load, one to its end, in fresh kernels of this environment.
    result = _run([python, ROOT / "tests" / "reader_kernel.py", ROOT / "chapters", WHOLE_CHAPTER], env, timeout=1800,
                  cwd=reader["base"])  # fmt: skip
    runs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    with atomic_write(ROOT / "_build" / "reader-kernel.json", "w") as record:  # seconds per chapter, for the log
        json.dump(runs, record, indent=1)
    assert {r["chapter"] for r in runs} == {p.name for p in (ROOT / "chapters").glob("*.ipynb")}, result.stderr[-3000:]
    failures = [r for r in runs if r["error"]]
    assert not failures, f"chapters failed in a reader's kernel: {failures}\n{result.stderr[-3000:]}"
    for r in runs:
        assert Path(r["kernel_prefix"]) == Path(python).parent.parent and r["myst_nb"] is False, r

    # 4. The data came from the mirror, complete and under torchvision's layout.
    for folder, files in RAW_SHA256.items():
        for name, sha in files.items():
            assert hashlib.sha256((data / folder / "raw" / name).read_bytes()).hexdigest() == sha
            assert f"/{folder}/{name}.gz" in mirror.requests
