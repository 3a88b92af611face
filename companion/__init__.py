"""Companion package of the book *Deep learning for computer vision, executable*.

Import it in the chapters and in your own code::

    import companion
    device = companion.get_device()
    train = companion.load_mnist(train=True)

Modules, one per topic and named like the chapters: :mod:`~companion.device`,
:mod:`~companion.data`, :mod:`~companion.concepts`, :mod:`~companion.cnn`, :mod:`~companion.summary`, :mod:`~companion.rnn`,
:mod:`~companion.attention`, :mod:`~companion.pretraining`, :mod:`~companion.distributed`, :mod:`~companion.interpret`, :mod:`~companion.train`, :mod:`~companion.recipes`,
:mod:`~companion.plots`, :mod:`~companion.notebook` (glue and tables that work outside the book's
build) and :mod:`~companion.cli`. ``companion.run_recipe(config)`` trains a
:class:`~companion.recipes.TrainConfig` end to end.
"""

from . import attention, cnn, concepts, data, device, distributed, notebook, plots, pretraining, recipes, rnn, summary
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
from .recipes import ARTICLE, FAST, IMPROVED, TrainConfig, run_recipe
from .train import History, Metrics, confusion_matrix, evaluate, fit, load_checkpoint, predict, save_checkpoint

__version__ = "0.1.0"


def __getattr__(name: str):
    """Import :mod:`companion.interpret` on first use: Captum takes seconds to import."""
    if name == "interpret":
        import importlib

        return importlib.import_module(".interpret", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    # submodules, one per topic
    "attention",
    "cnn",
    "concepts",
    "data",
    "device",
    "distributed",
    "interpret",
    "notebook",
    "plots",
    "pretraining",
    "recipes",
    "rnn",
    "summary",
    # the most used names
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
    "run_recipe",
    "seed_everything",
]
