"""Companion package of the book *Deep learning for computer vision, executable*.

Import it in the chapters and in your own code::

    import companion
    device = companion.get_device()
    train = companion.load_mnist(train=True)

Modules, one concern each and named like the book's ideas (every module of the package):

- utilities: :mod:`~companion.device` (devices, seeds, mixed precision, timing), :mod:`~companion.utils`
  (``eval_mode``, the one atomic write), :mod:`~companion.history`;
- plumbing: :mod:`~companion.distributed`, :mod:`~companion.checkpoint`;
- data: :mod:`~companion.data`, :mod:`~companion.augment`, :mod:`~companion.boxes` (box geometry), :mod:`~companion.scenes`;
- from-scratch building blocks: :mod:`~companion.concepts`, :mod:`~companion.cnn`,
  :mod:`~companion.norm`, :mod:`~companion.blocks`, :mod:`~companion.rnn`, :mod:`~companion.attention`;
- networks: :mod:`~companion.modern_cnn`, :mod:`~companion.pretrained`, :mod:`~companion.detection`,
  :mod:`~companion.segmentation`;
- measuring: :mod:`~companion.evaluation`, :mod:`~companion.summary`, :mod:`~companion.detection_metrics`,
  :mod:`~companion.interpret`;
- training: :mod:`~companion.train` (the one training loop), :mod:`~companion.recipes`,
  :mod:`~companion.finetune`, :mod:`~companion.simclr`;
- showing: :mod:`~companion.plots`, :mod:`~companion.diagrams`, :mod:`~companion.notebook` (glue and tables that work outside the
  book's build);
- entry points: :mod:`~companion.cli` (``python -m companion``).

``companion.run_recipe(config)`` trains a :class:`~companion.recipes.TrainConfig` end to end;
``companion.train_model(model, split, config)`` trains a model of your own with one.
"""

from . import (
    attention,
    augment,
    blocks,
    boxes,
    checkpoint,
    cnn,
    concepts,
    data,
    detection,
    detection_metrics,
    device,
    diagrams,
    distributed,
    evaluation,
    finetune,
    history,
    modern_cnn,
    norm,
    notebook,
    plots,
    pretrained,
    recipes,
    rnn,
    scenes,
    segmentation,
    simclr,
    summary,
    train,
    utils,
)
from .augment import RandomTranslate, random_translate
from .checkpoint import load_checkpoint, save_checkpoint
from .cnn import BatchNormCNN, SeedCNN
from .data import (
    DeviceLoader,
    ImageSplit,
    data_root,
    load_dataset,
    load_fashion_mnist,
    load_mnist,
    validation_split,
)
from .device import Timer, autocast, get_device, seed_everything
from .evaluation import confusion_matrix, evaluate, predict
from .history import History, Metrics
from .recipes import ARTICLE, FAST, IMPROVED, TrainConfig, run_recipe, train_model
from .summary import count_parameters
from .train import fit
from .utils import eval_mode

__version__ = "0.1.0"


def __getattr__(name: str):
    """Import :mod:`companion.interpret` on first use: Captum takes seconds to import."""
    if name == "interpret":
        import importlib

        return importlib.import_module(".interpret", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    # submodules, one per concern
    "attention",
    "augment",
    "blocks",
    "boxes",
    "checkpoint",
    "cnn",
    "concepts",
    "data",
    "detection",
    "detection_metrics",
    "device",
    "diagrams",
    "distributed",
    "evaluation",
    "finetune",
    "history",
    "interpret",
    "modern_cnn",
    "norm",
    "notebook",
    "plots",
    "pretrained",
    "recipes",
    "rnn",
    "scenes",
    "segmentation",
    "simclr",
    "summary",
    "train",
    "utils",
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
    "Timer",
    "TrainConfig",
    "autocast",
    "confusion_matrix",
    "count_parameters",
    "data_root",
    "eval_mode",
    "evaluate",
    "fit",
    "get_device",
    "load_checkpoint",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "predict",
    "random_translate",
    "run_recipe",
    "save_checkpoint",
    "seed_everything",
    "train_model",
    "validation_split",
]
