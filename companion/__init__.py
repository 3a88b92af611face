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
  :mod:`~companion.finetune`, :mod:`~companion.lora`, :mod:`~companion.simclr`, :mod:`~companion.mae`, :mod:`~companion.large_models` (memory, checkpointing,
  accumulation, FSDP2);
- shipping: :mod:`~companion.distillation`, :mod:`~companion.quantization` (int8 from scratch and
  PyTorch's PT2E flow), :mod:`~companion.export` (ONNX and ONNX Runtime);
- showing: :mod:`~companion.plots`, :mod:`~companion.diagrams`, :mod:`~companion.notebook` (glue and tables that work outside the
  book's build);
- entry points: :mod:`~companion.cli` (``python -m companion``).

``companion.run_recipe(config)`` trains a :class:`~companion.recipes.TrainConfig` end to end;
``companion.train_model(model, split, config)`` trains a model of your own with one. The top level
holds the names the chapters use most; everything else is reached through its module.

Conventions, the same in every module:

- **Device.** A function that works on a model or batches you placed takes ``device`` as a required
  argument: where they are (``evaluate``, ``train_epoch``, ``fit``). A function or class that creates
  tensors or a model itself takes ``device=None``, which means :func:`~companion.device.get_device`
  (CUDA, else MPS, else the CPU): ``DeviceLoader``, ``train_model``, ``run_recipe``, ``make_scenes``.
- **Randomness.** A function that draws from a stream you hand it takes ``generator``, a CPU
  ``torch.Generator`` as in PyTorch (``None``: the global one), so the draws are the same on every
  device: the augmentations, ``make_scenes``. A function or class that starts its own stream (a split,
  a loader, a recipe) takes ``seed``, an ``int`` that defaults to 0, so its result is reproducible by
  default.
- **Errors.** ``TypeError``: an argument of the wrong Python type, or a tensor of the wrong dtype.
  ``ValueError``: the right type with a wrong value (a shape, a range, an option the function does not
  support). A from-scratch twin of a PyTorch function refuses an option it lacks with one of the two,
  naming the option; it never answers differently from PyTorch.
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
    distillation,
    distributed,
    evaluation,
    export,
    finetune,
    history,
    large_models,
    lora,
    mae,
    modern_cnn,
    norm,
    notebook,
    plots,
    pretrained,
    quantization,
    recipes,
    rnn,
    scenes,
    segmentation,
    simclr,
    summary,
    train,
    utils,
)
from .augment import random_translate
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
from .history import History
from .recipes import IMPROVED, TrainConfig, run_recipe, train_model
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
    "distillation",
    "distributed",
    "evaluation",
    "export",
    "finetune",
    "history",
    "large_models",
    "interpret",
    "lora",
    "mae",
    "modern_cnn",
    "norm",
    "notebook",
    "plots",
    "pretrained",
    "quantization",
    "recipes",
    "rnn",
    "scenes",
    "segmentation",
    "simclr",
    "summary",
    "train",
    "utils",
    # the names the chapters and the setup page use from the top level (tests/test_layout.py checks
    # that each is used there); everything else is reached through its module
    "IMPROVED",
    "BatchNormCNN",
    "DeviceLoader",
    "History",
    "ImageSplit",
    "SeedCNN",
    "Timer",
    "TrainConfig",
    "autocast",
    "confusion_matrix",
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
