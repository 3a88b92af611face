"""companion.data: loading MNIST / Fashion-MNIST, its errors, random_translate and DeviceLoader.

Facts about the real files come from the data folder's README (label counts, first labels,
pixel mean and standard deviation). Error cases use small IDX files built in ``tmp_path``
with torchvision's layout ``<root>/MNIST/raw/<file>``.
"""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from companion.data import (
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    CorruptDataError,
    RAW_SHA256,
    DataNotFoundError,
    DeviceLoader,
    ImageSplit,
    data_root,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
)
from companion.augment import RandomTranslate, random_translate

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801  # IDX: uint8 data, 3 dims / 1 dim

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --- helpers ----------------------------------------------------------------------------


def write_idx(path: Path, data: torch.Tensor, magic: int) -> Path:
    """Write ``data`` (uint8) as an IDX file: magic, one big-endian uint32 per dimension, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in data.shape)
    path.write_bytes(header + data.contiguous().numpy().tobytes())
    return path


def write_split(root: Path, folder: str, images: torch.Tensor, labels: torch.Tensor, train: bool = False) -> Path:
    """Synthetic files: ``images`` uint8 (N, 28, 28) and ``labels`` uint8 (N,) as the ``train`` split,
    and a one-image other split (torchvision wants the files of both). Returns the raw folder."""
    raw = root / folder / "raw"
    other_images, other_labels = torch.full((1, 28, 28), 7, dtype=torch.uint8), torch.tensor([9], dtype=torch.uint8)
    for prefix, (x, y) in [
        ("train" if train else "t10k", (images, labels)),
        ("t10k" if train else "train", (other_images, other_labels)),
    ]:
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x, IMAGE_MAGIC)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, LABEL_MAGIC)
    return raw


def tiny_split(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), dtype=torch.uint8, generator=g)
    return images, labels


def shift_replicate(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference translation of (C, H, W): ``out[:, r, c] = image[:, clamp(r - dy), clamp(c - dx)]``."""
    H, W = image.shape[-2:]
    rows = (torch.arange(H) - dy).clamp(0, H - 1)
    cols = (torch.arange(W) - dx).clamp(0, W - 1)
    return image[:, rows][:, :, cols]


def offset_of(out: torch.Tensor, image: torch.Tensor, s: int) -> tuple[int, int] | None:
    """The (dy, dx) in [-s, s]^2 for which ``out`` is ``image`` shifted with replicate padding, if any."""
    for dy, dx in itertools.product(range(-s, s + 1), repeat=2):
        if torch.equal(out, shift_replicate(image, dy, dx)):
            return dy, dx
    return None


def epoch_labels(loader: DeviceLoader) -> torch.Tensor:
    """One epoch's labels, concatenated: with labels = arange(N) this is the epoch's sample order."""
    return torch.cat([y.cpu() for _, y in loader])


def indexed_loader(n: int = 10, batch_size: int = 3, **kwargs) -> DeviceLoader:
    """A loader whose image i is filled with the value i and whose label is i (float images: not scaled)."""
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return DeviceLoader(images, torch.arange(n), batch_size, device="cpu", **kwargs)


# --- the real files ---------------------------------------------------------------------


def test_mnist_train_label_counts_and_first_labels(mnist_train):
    assert len(mnist_train) == 60_000
    assert torch.bincount(mnist_train.labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert mnist_train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def test_mnist_test_label_counts(mnist_test):
    assert len(mnist_test) == 10_000
    assert torch.bincount(mnist_test.labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert mnist_test.labels[:3].tolist() == [7, 2, 1]  # the docstring example of load_dataset


@pytest.mark.parametrize("split", ["mnist_train", "mnist_test", "fashion_train", "fashion_test"])
def test_split_dtypes_and_shapes(split, request):
    data: ImageSplit = request.getfixturevalue(split)
    n = 60_000 if data.train else 10_000
    assert data.images.dtype == torch.uint8 and data.images.shape == (n, 1, 28, 28)
    assert data.labels.dtype == torch.int64 and data.labels.shape == (n,)
    assert int(data.images.min()) == 0 and int(data.images.max()) == 255
    assert int(data.labels.min()) == 0 and int(data.labels.max()) == 9
    assert len(data.classes) == 10


def test_mnist_train_mean_std(mnist_train):
    x = mnist_train.images.double() / 255
    assert x.mean().item() == pytest.approx(0.1307, abs=1e-3)
    assert x.std().item() == pytest.approx(0.3081, abs=1e-3)
    assert (mnist_train.mean, mnist_train.std) == (0.1307, 0.3081)


def test_fashion_mnist_counts_and_statistics(fashion_train, fashion_test):
    assert torch.bincount(fashion_train.labels, minlength=10).tolist() == [6000] * 10
    assert torch.bincount(fashion_test.labels, minlength=10).tolist() == [1000] * 10
    x = fashion_train.images.double() / 255
    assert x.mean().item() == pytest.approx(0.2860, abs=1e-3)
    assert x.std().item() == pytest.approx(0.3530, abs=1e-3)
    assert (fashion_train.mean, fashion_train.std) == (0.2860, 0.3530)


def test_mnist_and_fashion_mnist_are_not_mixed_up(mnist_train, fashion_train):
    assert (mnist_train.name, fashion_train.name) == ("mnist", "fashion-mnist")
    assert mnist_train.classes == tuple(str(d) for d in range(10))
    assert fashion_train.classes == tuple(torchvision.datasets.FashionMNIST.classes)
    assert fashion_train.classes[0] == "T-shirt/top"
    assert not torch.equal(mnist_train.images[:100], fashion_train.images[:100])
    assert not torch.equal(mnist_train.labels, fashion_train.labels)
    # MNIST is mostly black background; Fashion-MNIST is about twice as bright on average.
    assert mnist_train.images.float().mean() < 0.7 * fashion_train.images.float().mean()


def test_load_wrappers_and_name_spellings(data_dir, mnist_test, fashion_test):
    assert torch.equal(load_mnist(train=False, root=data_dir).labels, mnist_test.labels)
    fashion = load_fashion_mnist(train=False, root=data_dir)
    assert fashion.name == "fashion-mnist" and torch.equal(fashion.images, fashion_test.images)
    for spelling in ["MNIST", " mnist "]:
        assert load_dataset(spelling, train=False, root=data_dir).name == "mnist"
    for spelling in ["FashionMNIST", "fashion_mnist", "Fashion-MNIST"]:
        split = load_dataset(spelling, train=False, root=data_dir)
        assert split.name == "fashion-mnist" and torch.equal(split.labels, fashion_test.labels)


def test_data_root_from_environment(data_dir, mnist_test, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(data_dir))
    assert data_root() == data_dir
    assert torch.equal(load_mnist(train=False).images, mnist_test.images)


def test_data_root_precedence(tmp_path, monkeypatch):
    assert data_root() == DEFAULT_DATA_DIR
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "from-env"))
    assert data_root() == tmp_path / "from-env"
    assert data_root(tmp_path / "arg") == tmp_path / "arg"
    assert data_root("~/x") == Path.home() / "x"


def test_image_split_head(mnist_test):
    head = mnist_test.head(5)
    assert len(head) == 5 and head.images.shape == (5, 1, 28, 28)
    assert torch.equal(head.labels, mnist_test.labels[:5])
    assert head.images.data_ptr() == mnist_test.images.data_ptr()  # a view, no copy
    assert (head.name, head.train, head.classes, head.mean) == ("mnist", False, mnist_test.classes, 0.1307)
    with pytest.raises(ValueError, match="at least 1"):
        mnist_test.head(0)


# --- synthetic files: layout, name errors, missing and corrupt files --------------------------


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_synthetic_split_round_trips(tmp_path, name, folder, train):
    images, labels = tiny_split()
    write_split(tmp_path, folder, images, labels, train=train)
    split = load_dataset(name, train=train, root=tmp_path)
    assert torch.equal(split.images, images.unsqueeze(1))
    assert torch.equal(split.labels, labels.long()) and split.labels.dtype == torch.int64
    assert split.name == name and split.train is train
    other = load_dataset(name, train=not train, root=tmp_path)
    assert other.labels.tolist() == [9] and int(other.images.min()) == 7


def test_unknown_dataset_lists_known_ones(tmp_path):
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10", root=tmp_path)
    message = str(info.value)
    assert "'cifar10'" in message and "'mnist'" in message and "'fashion-mnist'" in message


@pytest.mark.parametrize("train", [True, False])
def test_missing_files_without_download(tmp_path, train):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("mnist", train=train, root=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    prefix = "train" if train else "t10k"
    assert str(tmp_path / "MNIST" / "raw") in message
    assert f"{prefix}-images-idx3-ubyte" in message and f"{prefix}-labels-idx1-ubyte" in message
    assert DATA_DIR_ENV in message and "download=False" in message
    assert not (tmp_path / "MNIST").exists()  # nothing was created


def test_missing_message_names_only_the_missing_file(tmp_path):
    raw = write_split(tmp_path, "FashionMNIST", *tiny_split())
    (raw / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError, match=r"missing: t10k-labels-idx1-ubyte\)"):
        load_fashion_mnist(train=False, root=tmp_path)


def test_one_split_alone_is_reported_missing(tmp_path):
    # torchvision will not load the test split without the training files: a clear error, not its RuntimeError.
    raw = write_split(tmp_path, "MNIST", *tiny_split())
    for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]:
        (raw / name).unlink()
    with pytest.raises(DataNotFoundError, match=r"missing: train-images-idx3-ubyte, train-labels-idx1-ubyte\)"):
        load_mnist(train=False, root=tmp_path)


@pytest.fixture(scope="module")
def mirror(data_dir):
    """A local mirror of the real files on 127.0.0.1 (tests/mirror.py)."""
    from mirror import Mirror

    with Mirror(data_dir) as served:
        yield served


@pytest.fixture
def mirrored(monkeypatch, mirror):
    """Point torchvision's mirror lists at the local mirror; each test starts with a complete one."""
    for folder in ("MNIST", "FashionMNIST"):
        monkeypatch.setattr(getattr(torchvision.datasets, folder), "mirrors", mirror.mirrors(folder))
    mirror.truncate = False
    mirror.requests.clear()
    return mirror


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_download_fetches_the_missing_files_and_checks_their_content(tmp_path, mirrored, data_dir, name, folder):
    split = load_dataset(name, train=False, root=tmp_path, download=True)
    raw = tmp_path / folder / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(RAW_SHA256[folder])  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    for file in RAW_SHA256[folder]:
        assert (raw / file).read_bytes() == (data_dir / folder / "raw" / file).read_bytes()
        assert (raw / file).stat().st_mode & 0o777 == 0o666 & ~umask  # readable by others, not mkstemp's 0600
    assert sorted(mirrored.requests) == sorted(f"/{folder}/{file}.gz" for file in RAW_SHA256[folder])
    assert len(split) == 10_000


def test_download_fetches_only_what_is_missing(tmp_path, mirrored, data_dir):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for file in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copyfile(data_dir / "MNIST" / "raw" / file, raw / file)
    load_mnist(train=False, root=tmp_path, download=True)
    assert mirrored.requests == ["/MNIST/train-images-idx3-ubyte.gz"]


def test_interrupted_download_leaves_no_file_under_its_name(tmp_path, mirrored):
    mirrored.truncate = True
    with pytest.raises(DataNotFoundError, match="download failed") as info:
        load_mnist(train=True, root=tmp_path, download=True)
    assert info.value.__cause__ is None and info.value.__suppress_context__ is True  # raised `from None`
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []  # neither a partial file nor a temporary one
    mirrored.truncate = False  # the next try completes
    assert len(load_mnist(train=True, root=tmp_path, download=True)) == 60_000


def test_wrong_content_is_refused(tmp_path, monkeypatch, mirrored):
    # Fashion-MNIST's archives served as MNIST's: valid gzip, valid IDX, wrong content.
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", mirrored.mirrors("FashionMNIST"))
    with pytest.raises(DataNotFoundError, match="SHA-256"):
        load_mnist(train=False, root=tmp_path, download=True)
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []


def test_failed_download_raises_one_clean_error(tmp_path, monkeypatch):
    # Port 9 (discard) on the loopback address: nothing listens, the connection is refused.
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", ["http://127.0.0.1:9/a/", "http://127.0.0.1:9/b/"])
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion-mnist", train=True, root=tmp_path, download=True)
    err = info.value
    assert err.__cause__ is None and err.__suppress_context__ is True  # raised `from None`
    message = str(err)
    assert "download failed" in message and "no mirror served" in message
    assert "127.0.0.1:9/a/" in message and "127.0.0.1:9/b/" in message  # every mirror was tried
    assert str(tmp_path / "FashionMNIST" / "raw") in message and DATA_DIR_ENV in message
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message


def test_download_true_does_not_download_present_files(tmp_path, monkeypatch):
    images, labels = tiny_split()
    write_split(tmp_path, "MNIST", images, labels)
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])  # would fail
    split = load_mnist(train=False, root=tmp_path, download=True)
    assert torch.equal(split.labels, labels.long())


def test_raw_checksums_are_the_data_folders(data_dir):
    import hashlib

    for folder, files in RAW_SHA256.items():
        for file, expected in files.items():
            assert hashlib.sha256((data_dir / folder / "raw" / file).read_bytes()).hexdigest() == expected


def test_truncated_real_label_file(tmp_path, data_dir):
    raw = write_split(tmp_path, "MNIST", *tiny_split())  # then replace the test split by the real files
    shutil.copyfile(data_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte", raw / "t10k-images-idx3-ubyte")
    labels = (data_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").read_bytes()
    assert len(labels) == 8 + 10_000
    (raw / "t10k-labels-idx1-ubyte").write_bytes(labels[:-100])
    with pytest.raises(CorruptDataError) as info:
        load_mnist(train=False, root=tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message and "9908 bytes" in message and "expected 10008" in message


def test_real_label_file_with_too_few_images(tmp_path, data_dir):
    raw = write_split(tmp_path, "MNIST", *tiny_split())  # 3 test images
    shutil.copyfile(data_dir / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", raw / "t10k-labels-idx1-ubyte")
    with pytest.raises(CorruptDataError, match="3 images but 10000 labels"):
        load_mnist(train=False, root=tmp_path)


def _corrupt_image_file(raw: Path, kind: str) -> None:
    images, _ = tiny_split()
    path = raw / "t10k-images-idx3-ubyte"
    if kind == "wrong magic":  # a label file's magic number in an image file
        write_idx(path, images, LABEL_MAGIC)
    elif kind == "short body":
        path.write_bytes(path.read_bytes()[:-1])
    elif kind == "long body":
        path.write_bytes(path.read_bytes() + b"\x00")
    elif kind == "short header":
        path.write_bytes(path.read_bytes()[:10])


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("wrong magic", "magic number 2049, expected 2051"),
        ("short body", "2367 bytes, expected 2368"),
        ("long body", "2369 bytes, expected 2368"),
        ("short header", "shorter than its 16-byte IDX header"),
    ],
)
def test_corrupt_image_file(tmp_path, kind, expected):
    images, labels = tiny_split()
    raw = write_split(tmp_path, "MNIST", images, labels)  # header 16 bytes + 3 * 784 = 2368 bytes
    _corrupt_image_file(raw, kind)
    with pytest.raises(CorruptDataError) as info:
        load_mnist(train=False, root=tmp_path)
    assert isinstance(info.value, ValueError)
    assert expected in str(info.value) and "t10k-images-idx3-ubyte" in str(info.value)


def test_wrong_magic_in_label_file(tmp_path):
    images, labels = tiny_split()
    raw = write_split(tmp_path, "MNIST", images, labels, train=True)
    write_idx(raw / "train-labels-idx1-ubyte", images, IMAGE_MAGIC)  # an image file under the label name
    with pytest.raises(CorruptDataError, match="magic number 2051, expected 2049"):
        load_mnist(train=True, root=tmp_path)


# --- random_translate -------------------------------------------------------------------


def test_random_translate_shifts_each_image_with_replicate_padding():
    s, B = 2, 300
    images = torch.rand(B, 2, 28, 28, generator=torch.Generator().manual_seed(0))  # C = 2: channels move together
    out = random_translate(images, torch.Generator().manual_seed(1), max_shift=s)
    offsets = [offset_of(out[i], images[i], s) for i in range(B)]
    assert None not in offsets
    # Every offset of the 5 x 5 grid is drawn (for this seed; each has probability 1/25 per image).
    assert set(offsets) == set(itertools.product(range(-s, s + 1), repeat=2))


def test_random_translate_moves_a_bright_pixel_by_its_offset():
    s, B, (r, c) = 3, 64, (10, 17)
    images = torch.zeros(B, 1, 28, 28)
    images[:, 0, r, c] = 1.0
    out = random_translate(images, torch.Generator().manual_seed(0), max_shift=s)
    for i in range(B):
        bright = (out[i, 0] == 1).nonzero().tolist()
        assert len(bright) == 1 and out[i].sum() == 1  # the pixel moved, nothing else lit up
        dy, dx = bright[0][0] - r, bright[0][1] - c
        assert -s <= dy <= s and -s <= dx <= s
        assert offset_of(out[i], images[i], s) == (dy, dx)


def test_random_translate_moves_an_edge_pixel_replicates_borders():
    # A lit first column, shifted right, must stay lit at the replicated left border.
    images = torch.zeros(1, 1, 5, 5)
    images[0, 0, :, 0] = 1.0
    seen = set()
    for seed in range(20):
        out = random_translate(images, torch.Generator().manual_seed(seed), max_shift=1)
        dy, dx = offset_of(out[0], images[0], 1)
        expected = torch.zeros(5, 5)
        expected[:, : max(dx + 1, 0)] = 1.0  # a shift right by dx >= 0 lights columns 0..dx
        assert torch.equal(out[0, 0], expected)
        seen.add(dx)
    assert seen == {-1, 0, 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_translate_keeps_shape_dtype_and_input(dtype):
    images = torch.rand(4, 3, 8, 6, dtype=dtype)
    before = images.clone()
    out = random_translate(images, max_shift=2)
    assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
    assert out.is_contiguous()
    assert torch.equal(images, before)


def test_random_translate_is_repeatable_with_a_generator():
    images = torch.rand(16, 1, 28, 28)
    a = random_translate(images, torch.Generator().manual_seed(5), max_shift=2)
    b = random_translate(images, torch.Generator().manual_seed(5), max_shift=2)
    c = random_translate(images, torch.Generator().manual_seed(6), max_shift=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    d = RandomTranslate(max_shift=2)(images, torch.Generator().manual_seed(5))
    assert torch.equal(a, d)


def test_random_translate_zero_shift_returns_equal_copy():
    images = torch.rand(2, 1, 4, 4)
    out = random_translate(images, max_shift=0)
    assert torch.equal(out, images) and out.data_ptr() != images.data_ptr()
    out += 1
    assert not torch.equal(out, images)


@pytest.mark.parametrize("shape", [(28, 28), (1, 28, 28), (1, 1, 1, 28, 28)])
def test_random_translate_rejects_non_4d(shape):
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        random_translate(torch.zeros(shape), max_shift=1)


def test_random_translate_rejects_negative_shift():
    with pytest.raises(ValueError, match="max_shift must be >= 0, got -1"):
        random_translate(torch.zeros(1, 1, 4, 4), max_shift=-1)


# --- DeviceLoader -----------------------------------------------------------------------


@pytest.mark.parametrize(("batch_size", "error"), [(0, ValueError), (-1, ValueError), (2.5, TypeError),
                                                  (True, TypeError), ("4", TypeError), (None, TypeError)])  # fmt: skip
def test_loader_rejects_bad_batch_size(batch_size, error):
    with pytest.raises(error, match="batch_size must be an integer >= 1"):
        DeviceLoader(torch.zeros(4, 1, 2, 2), torch.zeros(4), batch_size, device="cpu")


@pytest.mark.parametrize("std", [0.0, -1.0])
def test_loader_rejects_bad_std(std):
    with pytest.raises(ValueError, match="std must be > 0"):
        DeviceLoader(torch.zeros(4, 1, 2, 2), torch.zeros(4), 2, std=std, device="cpu")


def test_loader_rejects_length_mismatch():
    with pytest.raises(ValueError, match="4 vs 3"):
        DeviceLoader(torch.zeros(4, 1, 2, 2), torch.zeros(3), 2, device="cpu")


@pytest.mark.parametrize(
    ("n", "batch_size", "drop_last", "sizes"),
    [
        (10, 3, False, [3, 3, 3, 1]),
        (10, 3, True, [3, 3, 3]),
        (10, 5, False, [5, 5]),
        (10, 5, True, [5, 5]),
        (10, 20, False, [10]),
        (10, 20, True, []),
    ],
)
@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_len_and_batch_sizes(n, batch_size, drop_last, sizes, shuffle):
    loader = indexed_loader(n, batch_size, drop_last=drop_last, shuffle=shuffle)
    assert len(loader) == len(sizes)
    assert loader.num_samples == sum(sizes)
    assert [len(y) for _, y in loader] == sizes
    assert [len(x) for x, _ in loader] == sizes


def test_loader_normalises_once(cpu):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8, generator=g)
    labels = torch.arange(10, dtype=torch.int32)
    loader = DeviceLoader(images, labels, 4, mean=0.3, std=0.2, device=cpu)
    x = torch.cat([x for x, _ in loader])
    y = torch.cat([y for _, y in loader])
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x, (images.float() / 255 - 0.3) / 0.2)
    assert torch.equal(y, labels.long())


def test_loader_does_not_rescale_float_images(cpu):
    images = torch.rand(6, 1, 3, 3) * 4
    loader = DeviceLoader(images, torch.zeros(6), 6, mean=1.0, std=2.0, device=cpu)
    torch.testing.assert_close(next(iter(loader))[0], (images - 1.0) / 2.0)


def test_loader_from_split_uses_dataset_statistics(cpu):
    images, labels = tiny_split(5)
    split = ImageSplit("mnist", False, images.unsqueeze(1), labels.long(), tuple("0123456789"), 0.1307, 0.3081)
    x, y = next(iter(DeviceLoader.from_split(split, 5, device=cpu)))
    torch.testing.assert_close(x, (images.unsqueeze(1).float() / 255 - 0.1307) / 0.3081)
    assert torch.equal(y, labels.long())


def test_loader_without_shuffle_keeps_order():
    loader = indexed_loader(10, 3)
    for _ in range(3):  # every epoch
        assert epoch_labels(loader).tolist() == list(range(10))


def test_loader_shuffle_keeps_images_and_labels_paired():
    loader = indexed_loader(50, 8, shuffle=True, seed=3)
    for x, y in loader:
        assert torch.equal(x[:, 0, 0, 0].long(), y)
    assert epoch_labels(loader).tolist() != list(range(50))


def test_loader_every_sample_once_per_epoch():
    loader = indexed_loader(50, 8, shuffle=True, seed=1)
    for _ in range(4):
        assert sorted(epoch_labels(loader).tolist()) == list(range(50))
    dropping = indexed_loader(50, 8, shuffle=True, seed=1, drop_last=True)
    for _ in range(4):
        seen = epoch_labels(dropping).tolist()
        assert len(seen) == 48 and len(set(seen)) == 48


def test_loader_order_depends_on_seed_and_epoch():
    a, b, c = (indexed_loader(50, 8, shuffle=True, seed=s) for s in (7, 7, 8))
    a0, a1 = epoch_labels(a), epoch_labels(a)
    assert torch.equal(a0, epoch_labels(b))  # same seed, same order
    assert not torch.equal(a0, epoch_labels(c))  # different seed
    assert not torch.equal(a0, a1)  # next epoch, new order
    assert a.epoch == 2


def test_loader_set_epoch_reproduces_an_epoch():
    a = indexed_loader(50, 8, shuffle=True, seed=7)
    orders = [epoch_labels(a) for _ in range(3)]
    fresh = indexed_loader(50, 8, shuffle=True, seed=7)
    fresh.set_epoch(2)
    assert torch.equal(epoch_labels(fresh), orders[2])
    a.set_epoch(1)
    assert torch.equal(epoch_labels(a), orders[1])


def test_loader_transform_is_seeded_per_epoch():
    images = torch.rand(20, 1, 28, 28)

    def make() -> DeviceLoader:
        return DeviceLoader(images, torch.arange(20), 8, shuffle=True, seed=4, device="cpu",
                            transform=RandomTranslate(2))

    a, b = make(), make()
    first = [x for x, _ in a]
    assert all(torch.equal(p, q) for p, q in zip(first, [x for x, _ in b], strict=True))
    second = [x for x, _ in a]
    assert not torch.equal(first[0], second[0])
    c = make()
    c.set_epoch(1)
    assert all(torch.equal(p, q) for p, q in zip(second, [x for x, _ in c], strict=True))
    # Every batch is a shifted copy of its (unshuffled) images.
    c.set_epoch(0)
    for x, y in c:
        assert all(offset_of(x[i], images[y[i]], 2) is not None for i in range(len(y)))


@cuda_only
def test_loader_batches_equal_on_cpu_and_cuda():
    images = torch.randint(0, 256, (70, 1, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (70,))
    kwargs = dict(shuffle=True, seed=11, mean=0.1307, std=0.3081, transform=RandomTranslate(2))
    on_cpu = DeviceLoader(images, labels, 16, device="cpu", **kwargs)
    on_gpu = DeviceLoader(images, labels, 16, device="cuda", **kwargs)
    for _ in range(2):  # two epochs
        for (xc, yc), (xg, yg) in zip(on_cpu, on_gpu, strict=True):
            assert xg.is_cuda and yg.is_cuda
            assert torch.equal(yc, yg.cpu())
            torch.testing.assert_close(xc, xg.cpu(), rtol=0, atol=1e-6)


@cuda_only
def test_random_translate_equal_on_cpu_and_cuda():
    images = torch.rand(32, 1, 28, 28)
    on_cpu = random_translate(images, torch.Generator().manual_seed(0), max_shift=3)
    on_gpu = random_translate(images.cuda(), torch.Generator().manual_seed(0), max_shift=3)
    assert on_gpu.is_cuda and torch.equal(on_cpu, on_gpu.cpu())


def test_normalize_uses_the_training_statistics(mnist_test):
    x = mnist_test.normalize(mnist_test.images[:5])
    expected = (mnist_test.images[:5].float() / 255 - 0.1307) / 0.3081  # the data folder's facts
    torch.testing.assert_close(x, expected)
    assert x.dtype == torch.float32 and mnist_test.normalize().shape == (10_000, 1, 28, 28)


def test_subset_keeps_statistics_and_picks_the_rows(mnist_test):
    index = torch.tensor([3, 0, 7])
    sub = mnist_test.subset(index)
    assert torch.equal(sub.images, mnist_test.images[index]) and torch.equal(sub.labels, mnist_test.labels[index])
    assert (sub.mean, sub.std, sub.classes, sub.train) == (mnist_test.mean, mnist_test.std, mnist_test.classes, False)


def test_validation_split_is_disjoint_complete_seeded_and_refuses_the_test_split(mnist_train, mnist_test):
    from companion.data import validation_split

    train, val = validation_split(mnist_train, 5000, seed=3)
    assert len(train) == 55_000 and len(val) == 5000 and train.train and val.train
    assert (train.mean, train.std, val.classes) == (mnist_train.mean, mnist_train.std, mnist_train.classes)
    # disjoint and complete: every image is in exactly one part (compare the raw pixels' sums per image)
    all_keys = torch.cat([train.images, val.images]).flatten(1).double() @ torch.arange(784, dtype=torch.float64)
    reference = mnist_train.images.flatten(1).double() @ torch.arange(784, dtype=torch.float64)
    torch.testing.assert_close(all_keys.sort().values, reference.sort().values)
    again, val_again = validation_split(mnist_train, 5000, seed=3)
    assert torch.equal(val.labels, val_again.labels) and torch.equal(val.images, val_again.images)
    other = validation_split(mnist_train, 5000, seed=4)[1]
    assert not torch.equal(val.images, other.images)
    with pytest.raises(ValueError, match="needs a training split; got the test split of mnist"):
        validation_split(mnist_test, 100)
    with pytest.raises(ValueError, match=r"val_size must be in \[1, 59999\], got 60000"):
        validation_split(mnist_train, 60_000)
