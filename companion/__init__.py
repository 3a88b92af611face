"""Companion package of the book *Deep learning for computer vision, executable*.

Import it in the chapters and in your own code::

    import companion
    device = companion.get_device()
    train = companion.load_mnist(train=True)
"""

from .cnn import BatchNormCNN, SeedCNN
from .data import (
    DeviceLoader,
    ImageSplit,
    RandomTranslate,
    data_root,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
    random_translate,
)
from .device import autocast, get_device, seed_everything
from .recipes import ARTICLE, FAST, IMPROVED, TrainConfig, train
from .train import History, Metrics, confusion_matrix, evaluate, fit, load_checkpoint, predict, save_checkpoint

__version__ = "0.1.0"

__all__ = [
    "ARTICLE",
    "FAST",
    "IMPROVED",
    "BatchNormCNN",
    "DeviceLoader",
    "History",
    "ImageSplit",
    "Metrics",
    "RandomTranslate",
    "SeedCNN",
    "TrainConfig",
    "autocast",
    "confusion_matrix",
    "data_root",
    "evaluate",
    "fit",
    "get_device",
    "load_checkpoint",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "predict",
    "random_translate",
    "save_checkpoint",
    "seed_everything",
    "train",
]
