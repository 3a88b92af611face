"""Shared fixtures: the data root, the real MNIST / Fashion-MNIST splits, a clean environment.

Data-dependent tests find the raw IDX files where the package does: ``COMPANION_DATA_DIR``
(CI points it at the read-only data folder), else the package's default folder. Without
the files they are skipped with the reason, except under CI (``CI`` set), where a missing
dataset must fail the run rather than hide the tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from companion.data import DATA_DIR_ENV, ImageSplit, data_root, load_dataset
from companion.device import DEVICE_ENV
from companion.utils import assert_same_values_and_grads

# Captured at import, before the autouse fixture below removes the variable from each test's environment.
_DATA_DIR = data_root()

# One intra-op thread: the tests run tiny batches, where threads cost more than they gain, and on a
# busy 2-core runner (another job training) two threads made a training step 10-20x slower than one.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without COMPANION_DEVICE / COMPANION_DATA_DIR; tests that need them set them."""
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data root (``COMPANION_DATA_DIR`` or the default); skips the test when the files are missing."""
    root = Path(_DATA_DIR).expanduser().resolve()  # CI passes a path relative to the repository
    wanted = [root / folder / "raw" / "t10k-labels-idx1-ubyte" for folder in ("MNIST", "FashionMNIST")]
    if not all(path.is_file() for path in wanted):
        message = f"needs the MNIST and Fashion-MNIST raw files under {root}: set {DATA_DIR_ENV} to the data root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def mnist_train(data_dir: Path) -> ImageSplit:
    return load_dataset("mnist", train=True, root=data_dir)


@pytest.fixture(scope="session")
def mnist_test(data_dir: Path) -> ImageSplit:
    return load_dataset("mnist", train=False, root=data_dir)


@pytest.fixture(scope="session")
def fashion_train(data_dir: Path) -> ImageSplit:
    return load_dataset("fashion-mnist", train=True, root=data_dir)


@pytest.fixture(scope="session")
def fashion_test(data_dir: Path) -> ImageSplit:
    return load_dataset("fashion-mnist", train=False, root=data_dir)


@pytest.fixture
def small_data(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    """Make :func:`companion.recipes.train` (and so the command line) see 256 training and 200 test images.

    The recipes and the CLI have no subset option; this keeps their tests to a second or two.
    A ``root`` passed explicitly (``--data-dir``) is still honoured.
    """
    import companion.recipes

    def head_of_dataset(name: str, train: bool = True, root=None, download: bool = False) -> ImageSplit:
        split = load_dataset(name, train=train, root=data_dir if root is None else root, download=download)
        return split.head(256 if train else 200)

    monkeypatch.setattr(companion.recipes, "load_dataset", head_of_dataset)


@pytest.fixture
def cpu() -> torch.device:
    return torch.device("cpu")


# --- devices and dtypes for the equivalence tests --------------------------------------------------


@dataclass(frozen=True)
class Precision:
    """Where and in what dtype an equivalence test runs, and the tolerances that dtype deserves.

    float64 on the CPU is the book's proof (differences at rounding level); float32, and CUDA
    when present, check that the same code holds on the devices readers train on. CUDA float32
    convolutions may use TF32, hence the looser tolerance there.
    """

    device: torch.device
    dtype: torch.dtype
    rtol: float
    atol: float

    def randn(self, *shape: int, seed: int = 0) -> torch.Tensor:
        """Seeded normal samples, drawn on the CPU in float64 (the same numbers everywhere), then moved."""
        values = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return values.to(self.device, self.dtype)

    def assert_close(self, actual: torch.Tensor, expected: torch.Tensor, **kwargs) -> None:
        torch.testing.assert_close(actual, expected, rtol=self.rtol, atol=self.atol, **kwargs)

    def assert_same_values_and_grads(self, ours, theirs, *inputs: torch.Tensor, seed: int = 0) -> None:
        """:func:`companion.utils.assert_same_values_and_grads` with the inputs on this device and dtype,
        compared with this precision's tolerances."""
        moved = [t.to(self.device, self.dtype) for t in inputs]
        assert_same_values_and_grads(ours, theirs, *moved, seed=seed, assert_close=self.assert_close)


_TOLERANCES = {("cpu", torch.float64): (1e-7, 1e-10), ("cpu", torch.float32): (1e-4, 1e-5),
               ("cuda", torch.float64): (1e-7, 1e-10), ("cuda", torch.float32): (2e-3, 2e-3)}  # fmt: skip
_PRECISIONS = [(d, t) for d in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) for t in (torch.float64, torch.float32)]


@pytest.fixture(params=_PRECISIONS, ids=lambda p: f"{p[0]}-{str(p[1]).removeprefix('torch.')}")
def precision(request) -> Precision:
    """Each equivalence test once per device (CPU, and CUDA when present) and dtype (float64, float32)."""
    device, dtype = request.param
    return Precision(torch.device(device), dtype, *_TOLERANCES[(device, dtype)])
