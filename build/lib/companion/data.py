"""MNIST and Fashion-MNIST from local files, and the device-resident batch loader.

Data root, first match wins: the ``root`` argument, the environment variable
``COMPANION_DATA_DIR``, then :data:`DEFAULT_DATA_DIR` (``~/.cache/companion/data``).
Files are laid out as torchvision expects them: ``<root>/MNIST/raw/train-images-idx3-ubyte``
and so on, and ``<root>/FashionMNIST/raw/...`` with the same file names.

Datasets: LeCun et al. (1998) for MNIST, Xiao et al. (2017) for Fashion-MNIST.
Explained in the chapter "MNIST in practice".
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from .device import get_device
from .utils import atomic_write

__all__ = [
    "DATA_DIR_ENV",
    "DATASETS",
    "DEFAULT_DATA_DIR",
    "CorruptDataError",
    "DataNotFoundError",
    "RAW_SHA256",
    "DatasetInfo",
    "DeviceLoader",
    "ImageSplit",
    "data_root",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "balanced_subset",
    "validation_split",
]

#: Environment variable naming the data root.
DATA_DIR_ENV = "COMPANION_DATA_DIR"
#: Data root used when neither an argument nor ``COMPANION_DATA_DIR`` names one
#: (``~/.cache/companion/data``, with ``~`` expanded to the user's home).
#:
#: :meta hide-value:
DEFAULT_DATA_DIR = Path("~/.cache/companion/data").expanduser()

#: SHA-256 of the decompressed IDX files, by torchvision folder and file name. Downloads are
#: checked against these (the content, not the archive: any mirror or recompression passes,
#: a truncated or wrong file does not, and MNIST cannot pass for Fashion-MNIST).
RAW_SHA256: dict[str, dict[str, str]] = {
    "MNIST": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049  # IDX: 0x00000803 (uint8, 3 dims), 0x00000801 (uint8, 1 dim)


class DataNotFoundError(FileNotFoundError):
    """The dataset files are not under the data root and could not be downloaded."""


class CorruptDataError(ValueError):
    """An IDX file is truncated or is not the IDX file it is named as."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the loader knows about one dataset.

    Attributes:
        name: the name used in this package (``"mnist"``, ``"fashion-mnist"``).
        folder: torchvision's folder under the data root (``"MNIST"``, ``"FashionMNIST"``).
        classes: class names, index = label.
        mean: mean pixel value of the training images scaled to [0, 1].
        std: standard deviation of those pixel values.
    """

    name: str
    folder: str
    classes: tuple[str, ...]
    mean: float
    std: float

    def dataset_class(self) -> type[torchvision.datasets.MNIST]:
        return getattr(torchvision.datasets, self.folder)


#: The datasets this package loads. Mean and std are measured on the 60,000 training images.
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", "MNIST", tuple(str(d) for d in range(10)), 0.1307, 0.3081),
    "fashion-mnist": DatasetInfo(
        "fashion-mnist", "FashionMNIST", tuple(torchvision.datasets.FashionMNIST.classes), 0.2860, 0.3530
    ),
}


@dataclass(frozen=True, eq=False)
class ImageSplit:
    """One split (train or test) of a dataset, held in memory.

    Attributes:
        name: dataset name, a key of :data:`DATASETS`.
        train: ``True`` for the training split.
        images: ``torch.uint8`` tensor of shape (N, 1, 28, 28), pixel values 0–255.
        labels: ``torch.int64`` tensor of shape (N,), values 0–9.
        classes: class names, index = label.
        mean: training-set pixel mean on the [0, 1] scale (used for normalisation).
        std: training-set pixel standard deviation on the [0, 1] scale.
    """

    name: str
    train: bool
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    mean: float
    std: float

    def __len__(self) -> int:
        return len(self.labels)

    def normalize(self, images: torch.Tensor | None = None) -> torch.Tensor:
        """``(images / 255 − mean) / std`` as float32, with this dataset's training statistics.

        The normalisation the package's loaders apply (LeCun et al., 1998b, recommend inputs of
        mean 0 and variance 1). ``images`` defaults to the split's own; pass any uint8 images
        in 0–255 (for example a slice, or images on a GPU) to normalise them the same way.

        Returns:
            float32, the shape and device of ``images``.
        """
        images = self.images if images is None else images
        return (images.float() / 255 - self.mean) / self.std

    def subset(self, index: torch.Tensor) -> ImageSplit:
        """The samples at ``index`` (int64 indices or a boolean mask, for example from
        :func:`balanced_subset`) as a new split with the same statistics and classes."""
        return ImageSplit(self.name, self.train, self.images[index], self.labels[index], self.classes, self.mean, self.std)

    def head(self, n: int) -> ImageSplit:
        """The first ``n`` samples as a new split (views, no copy)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        return ImageSplit(self.name, self.train, self.images[:n], self.labels[:n], self.classes, self.mean, self.std)


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Resolve the data root: ``root`` > ``$COMPANION_DATA_DIR`` > :data:`DEFAULT_DATA_DIR`."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return DEFAULT_DATA_DIR


def _dataset_info(name: str) -> DatasetInfo:
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    if key == "fashionmnist":
        key = "fashion-mnist"
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[key]


def _file_names(train: bool) -> tuple[str, str]:
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _check_idx(path: Path, magic: int) -> int:
    """Check an IDX file's magic number and size; return its number of items."""
    size = path.stat().st_size
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    with path.open("rb") as f:
        head = f.read(header)
    if len(head) < header:
        raise CorruptDataError(f"{path} is truncated: {size} bytes, shorter than its {header}-byte IDX header")
    found = int.from_bytes(head[:4], "big")
    if found != magic:
        raise CorruptDataError(f"{path} is not an IDX file of the expected kind: magic number {found}, expected {magic}")
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(torch.tensor(dims).prod())
    if size != expected:
        raise CorruptDataError(
            f"{path} is truncated or corrupted: {size} bytes, expected {expected} for dimensions {tuple(dims)}"
        )
    return dims[0]


def _missing_message(info: DatasetInfo, raw: Path, missing: list[str], reason: str) -> str:
    return (
        f"{info.folder} files not found in {raw} (missing: {', '.join(missing)}); {reason}. "
        f"Put torchvision's raw IDX files there, point the environment variable {DATA_DIR_ENV} at a folder "
        f"holding {info.folder}/raw/, or pass root=... (and download=True when online)."
    )


def _fetch(url: str, target: Path, sha256: str, timeout: float = 60.0) -> None:
    """Download the gzip archive at ``url`` and decompress it to ``target``, atomically.

    The bytes go to a hidden temporary file beside ``target``; only when the whole file has
    arrived and its SHA-256 equals ``sha256`` is it renamed to ``target``. An interrupted or
    wrong download leaves nothing under the final name (and no temporary file).
    """
    digest = hashlib.sha256()
    with atomic_write(target, suffix=".part") as out, urllib.request.urlopen(url, timeout=timeout) as response:
        with gzip.GzipFile(fileobj=response) as archive:
            while chunk := archive.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise CorruptDataError(
                f"{url} decompressed to content with SHA-256 {digest.hexdigest()}, expected {sha256} for {target.name}"
            )


def _download(info: DatasetInfo, raw: Path, missing: list[str]) -> None:
    """Fetch the ``missing`` files of ``info`` from torchvision's mirror list, one mirror after another.

    Mirrors and archive names are torchvision's (``MNIST.mirrors``, ``MNIST.resources``); the
    content is checked against :data:`RAW_SHA256` instead of the archive's MD5, so a mirror that
    recompressed the files is accepted and a wrong or truncated file is not.
    """
    dataset_class = info.dataset_class()
    raw.mkdir(parents=True, exist_ok=True)
    for name in missing:
        errors = []
        for mirror in dataset_class.mirrors:
            url = f"{mirror.rstrip('/')}/{name}.gz"
            try:
                _fetch(url, raw / name, RAW_SHA256[info.folder][name])
                break
            except (OSError, http.client.HTTPException, CorruptDataError, EOFError, zlib.error) as err:
                errors.append(f"{url}: {type(err).__name__}: {err}")
        else:
            raise OSError(f"no mirror served {name}: " + "; ".join(errors))


def load_dataset(
    name: str, train: bool = True, root: str | os.PathLike[str] | None = None, download: bool = False
) -> ImageSplit:
    """Load a split of MNIST or Fashion-MNIST through :mod:`torchvision.datasets`.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"`` (case and ``_``/``-`` do not matter).
        train: ``True`` for the 60,000 training images, ``False`` for the 10,000 test images.
        root: data root; ``None`` means ``$COMPANION_DATA_DIR``, then :data:`DEFAULT_DATA_DIR`.
        download: fetch the files if, and only if, they are missing: from torchvision's mirror
            list, each file written under its name only once complete and checked against
            :data:`RAW_SHA256`.

    Returns:
        An :class:`ImageSplit` with ``images`` uint8 (N, 1, 28, 28) in 0–255 and ``labels`` int64 (N,).

    Raises:
        ValueError: ``name`` is not a known dataset.
        DataNotFoundError: the files are missing and ``download`` is ``False`` or the download failed.
        CorruptDataError: a file is truncated or has the wrong IDX magic number.

    Examples:
        >>> test = load_mnist(train=False)  # doctest: +SKIP
        >>> test.images.shape, test.labels[:3].tolist()  # doctest: +SKIP
        (torch.Size([10000, 1, 28, 28]), [7, 2, 1])
    """
    info = _dataset_info(name)
    root = data_root(root)
    raw = root / info.folder / "raw"
    names = _file_names(train)
    # torchvision's dataset classes refuse to load either split unless the files of both are present.
    missing = [n for n in (*_file_names(True), *_file_names(False)) if not (raw / n).is_file()]
    if missing and not download:
        raise DataNotFoundError(_missing_message(info, raw, missing, "downloading was not allowed (download=False)"))
    if missing:
        try:
            _download(info, raw, missing)
        except (OSError, http.client.HTTPException, CorruptDataError, EOFError, zlib.error) as err:  # URLError is an OSError
            first_line = (str(err).strip().splitlines() or [""])[0].rstrip(":")
            raise DataNotFoundError(
                _missing_message(info, raw, missing, f"the download failed ({type(err).__name__}: {first_line})")
            ) from None
    n_images = _check_idx(raw / names[0], _IMAGE_MAGIC)
    n_labels = _check_idx(raw / names[1], _LABEL_MAGIC)
    if n_images != n_labels:
        raise CorruptDataError(f"{raw}: {n_images} images but {n_labels} labels")
    dataset = info.dataset_class()(root=str(root), train=train, download=False)
    images = dataset.data.unsqueeze(1).contiguous()  # (N, 28, 28) -> (N, 1, 28, 28)
    labels = dataset.targets.to(torch.int64)
    return ImageSplit(info.name, train, images, labels, info.classes, info.mean, info.std)


def load_mnist(train: bool = True, root: str | os.PathLike[str] | None = None, download: bool = False) -> ImageSplit:
    """MNIST (LeCun et al., 1998): :func:`load_dataset` with ``name="mnist"``."""
    return load_dataset("mnist", train=train, root=root, download=download)


def load_fashion_mnist(
    train: bool = True, root: str | os.PathLike[str] | None = None, download: bool = False
) -> ImageSplit:
    """Fashion-MNIST (Xiao et al., 2017): :func:`load_dataset` with ``name="fashion-mnist"``."""
    return load_dataset("fashion-mnist", train=train, root=root, download=download)


def balanced_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` randomly chosen samples of every class, class by class.

    Args:
        labels: class indices (N,), int.
        per_class: samples to take from each class, >= 1.
        seed: seeds the choice (a CPU ``torch.Generator``; the same on every device).

    Returns:
        int64 indices (num_classes · per_class,) into ``labels``, on the CPU.

    Raises:
        ValueError: ``per_class < 1``, or a class has fewer than ``per_class`` samples.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    labels = labels.cpu()
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        if len(members) < per_class:
            raise ValueError(f"class {label} has {len(members)} samples, fewer than per_class={per_class}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(chosen)


def validation_split(split: ImageSplit, val_size: int, seed: int = 0) -> tuple[ImageSplit, ImageSplit]:
    """Hold out ``val_size`` random images of a *training* split for validation.

    Model choices (a learning rate, a depth, when to stop) are made on the validation part; the
    test split is read only for the result reported at the end. Both parts keep the training
    split's normalisation statistics (computed on all 60,000 images: a pixel mean and standard
    deviation, which tell the model nothing about the validation labels).

    Args:
        split: a training split (``split.train``).
        val_size: images to hold out, 1 <= val_size < len(split).
        seed: seeds the random choice (a CPU ``torch.Generator``).

    Returns:
        ``(train, val)``: disjoint splits whose sizes add up to ``len(split)``.

    Raises:
        ValueError: ``split`` is a test split (validating on it would make it a second
            training signal), or ``val_size`` is out of range.
    """
    if not split.train:
        raise ValueError(f"validation_split needs a training split; got the test split of {split.name}")
    if not 1 <= val_size < len(split):
        raise ValueError(f"val_size must be in [1, {len(split) - 1}], got {val_size}")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(order[val_size:].sort().values), split.subset(order[:val_size].sort().values)


class DeviceLoader:
    """Batches from a split that lives, whole and normalised, on one device.

    A torchvision ``DataLoader`` converts every image from PIL, one at a time, each
    epoch. This loader converts the split once: ``x = (images / 255 - mean) / std`` as
    float32 on ``device``; every batch is then an indexing operation on that tensor.
    With ``shuffle=True`` each epoch draws a permutation from a CPU ``torch.Generator``
    seeded with ``(seed, epoch)``, so the order is the same on every device and a run
    resumed at epoch ``e`` (:meth:`set_epoch`) sees the batches an uninterrupted run would.

    Args:
        images: uint8 (N, C, H, W) in 0–255 (scaled to [0, 1] first) or float (N, C, H, W).
        labels: integer tensor (N,).
        batch_size: samples per batch, >= 1.
        shuffle: draw a new order every epoch.
        drop_last: drop the last batch if it has fewer than ``batch_size`` samples.
        device: where the data lives (``None``: :func:`~companion.device.get_device`).
        mean: subtracted after scaling (a dataset's :attr:`ImageSplit.mean`); 0 by default.
        std: divides after subtracting ``mean``; 1 by default, must be > 0.
        seed: seed of the shuffling and of ``transform``'s randomness.
        transform: optional batch transform ``f(x, generator) -> x`` applied to every batch,
            for example :class:`~companion.augment.RandomTranslate`.
        rank, world_size: for distributed data-parallel training (chapter "Trends, measured"):
            every process draws the same permutation and process ``rank`` takes the
            ``rank``-th slice of ``batch_size`` samples of each global batch of
            ``batch_size · world_size``, as ``DistributedSampler`` does; ``transform`` is applied
            to the whole global batch before slicing, so the random draws are those of one
            process with batch ``batch_size · world_size``. 1 process by default.

    Raises:
        TypeError: a ``batch_size`` that is not an integer.
        ValueError: ``batch_size < 1``, ``std <= 0``, images and labels of different lengths,
            or not ``0 <= rank < world_size``.

    Examples:
        >>> split = load_mnist(train=False)  # doctest: +SKIP
        >>> loader = DeviceLoader.from_split(split, batch_size=256)  # doctest: +SKIP
        >>> x, y = next(iter(loader))  # x: (256, 1, 28, 28) float32, y: (256,) int64  # doctest: +SKIP
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        device: str | torch.device | None = None,
        mean: float = 0.0,
        std: float = 1.0,
        seed: int = 0,
        transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int):
            raise TypeError(f"batch_size must be an integer >= 1, got {type(batch_size).__name__} {batch_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if std <= 0:
            raise ValueError(f"std must be > 0, got {std}")
        if len(images) != len(labels):
            raise ValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
        self.device = get_device(device)
        x = images.to(self.device)
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        self.images = ((x - mean) / std).contiguous()  # (N, C, H, W) float32, normalised once
        self.labels = labels.to(self.device, torch.int64)  # (N,)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.transform, self.epoch = seed, transform, 0
        self.rank, self.world_size = rank, world_size

    @classmethod
    def from_split(cls, split: ImageSplit, batch_size: int, **kwargs) -> DeviceLoader:
        """A loader over ``split`` normalised with the split's dataset mean and std."""
        return cls(split.images, split.labels, batch_size, mean=split.mean, std=split.std, **kwargs)

    @property
    def global_batch_size(self) -> int:
        """Samples per step over all processes, ``batch_size · world_size``."""
        return self.batch_size * self.world_size

    def _global_samples(self) -> int:
        n = len(self.labels)
        return n - n % self.global_batch_size if self.drop_last else n

    @property
    def num_samples(self) -> int:
        """Samples this process sees per epoch, counting a short last batch unless ``drop_last``."""
        full, rest = divmod(self._global_samples(), self.global_batch_size)
        return full * self.batch_size + min(max(rest - self.rank * self.batch_size, 0), self.batch_size)

    def __len__(self) -> int:
        full, rest = divmod(self._global_samples(), self.global_batch_size)
        return full + (rest > self.rank * self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use epoch ``epoch``'s order (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        generator = self._generator(epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=generator).to(self.device) if self.shuffle else None
        total = self._global_samples()
        for start in range(0, total, self.global_batch_size):
            stop = min(start + self.global_batch_size, total)  # one global batch: [start, stop)
            lo = min(start + self.rank * self.batch_size, stop)  # this process's slice of it: [lo, hi)
            hi = min(lo + self.batch_size, stop)
            if lo == hi:
                continue  # only without drop_last: the short last global batch has no samples for this rank
            if self.transform is None:
                index = slice(lo, hi) if order is None else order[lo:hi]
                yield self.images[index], self.labels[index]  # (B, C, H, W), (B,)
            else:  # transform the whole global batch, so the random draws are the ones a single process makes
                index = slice(start, stop) if order is None else order[start:stop]
                x = self.transform(self.images[index], generator)
                yield x[lo - start : hi - start], self.labels[index][lo - start : hi - start]
