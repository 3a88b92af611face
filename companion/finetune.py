"""Fine-tuning tools: freeze parameters, find and replace a classification head, per-part learning rates.

They work on any ``nn.Module`` whose classifier is its last ``nn.Linear``: the package's networks
and torchvision's (ResNet ``fc``, VGG ``classifier.6``, MobileNet ``classifier.3``, ViT
``heads.head``). Explained in the chapter "Pretraining and fine-tuning".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Headless", "ProbeResult", "Standardize", "find_head", "freeze", "freeze_batch_norm", "linear_probe", "param_groups", "replace_head", "unfreeze"]


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradient updates to every parameter of ``module`` (``requires_grad=False``); returns it.

    Batch-norm running statistics are buffers, not parameters: they still update in
    ``train()`` mode. For a linear probe, keep the frozen part in ``eval()`` mode, or compute
    its features once with :func:`~companion.evaluation.extract_features`.
    """
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


def unfreeze(module: nn.Module) -> nn.Module:
    """Make every parameter of ``module`` trainable again (``requires_grad=True``); returns it."""
    for parameter in module.parameters():
        parameter.requires_grad_(True)
    return module


def freeze_batch_norm(model: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` of ``model`` by torchvision's ``FrozenBatchNorm2d``, in place.

    The frozen layer normalises with the running statistics the network was pretrained with and
    applies its affine weight and bias, all stored as buffers: ``model.train()`` no longer switches
    it to batch statistics, nothing updates the statistics, and an optimizer sees no batch-norm
    parameters. This is how torchvision's detection models fine-tune their ImageNet backbones. The
    output equals the original layer's in ``eval()`` mode up to rounding (the frozen layer folds
    the statistics into one scale and shift); buffers keep the layer's device and dtype.

    Args:
        model: the network (an ``nn.BatchNorm2d`` itself is not replaced: pass its parent).

    Returns:
        ``model``.

    Raises:
        ValueError: a batch-norm layer without running statistics (``track_running_stats=False``).
    """
    from torchvision.ops import FrozenBatchNorm2d

    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and name]
    for name, norm in found:  # all checked before any is replaced
        if norm.running_mean is None:
            raise ValueError(f"{name!r} has no running statistics (track_running_stats=False) to freeze")
    for name, norm in found:
        frozen = FrozenBatchNorm2d(norm.num_features, eps=norm.eps).to(norm.running_mean)  # device, dtype
        with torch.no_grad():
            frozen.running_mean.copy_(norm.running_mean)
            frozen.running_var.copy_(norm.running_var)
            if norm.affine:
                frozen.weight.copy_(norm.weight)
                frozen.bias.copy_(norm.bias)
        model.set_submodule(name, frozen)
    return model


def find_head(model: nn.Module) -> str:
    """The attribute path of ``model``'s classification head: its last registered ``nn.Linear``.

    That is ``"fc"`` for torchvision's ResNets and :class:`~companion.cnn.BatchNormCNN`,
    ``"classifier.6"`` for VGG and AlexNet, ``"heads.head"`` for torchvision's ViT,
    ``"fc2"`` for :class:`~companion.cnn.SeedCNN`, ``"head"`` for
    :class:`~companion.attention.VisionTransformer`.

    Raises:
        ValueError: ``model`` has no ``nn.Linear``.
    """
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to use as a head; pass the head's name")
    return names[-1]


def replace_head(model: nn.Module, num_classes: int, name: str | None = None) -> nn.Linear:
    """Put a freshly initialised ``nn.Linear(in_features, num_classes)`` in place of the head.

    The new layer has the old one's ``in_features``, dtype and device, and is trainable
    even when the rest of ``model`` is frozen. This is the one change that turns a network
    pretrained on one label set into a starting point for another.

    Args:
        model: the network; modified in place.
        num_classes: outputs of the new head, >= 1.
        name: attribute path of the head (``"fc"``, ``"heads.head"``); default :func:`find_head`.

    Returns:
        The new head.

    Raises:
        ValueError: ``num_classes < 1``, or ``name`` does not name an ``nn.Linear`` of ``model``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    name = find_head(model) if name is None else name
    try:
        old = model.get_submodule(name)
    except AttributeError:
        old = None
    if not isinstance(old, nn.Linear):
        found = "nothing" if old is None else type(old).__name__
        raise ValueError(f"{name!r} must name an nn.Linear of {type(model).__name__}, found {found}")
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    model.set_submodule(name, new)  # also works for nn.Sequential children named "6"
    return new


def param_groups(
    model: nn.Module,
    lr: float,
    head_lr: float,
    head: str | None = None,
    weight_decay: float = 0.0,
) -> list[dict]:
    """Optimizer parameter groups: the head at ``head_lr``, the pretrained body at ``lr``.

    A smaller learning rate for the body keeps more of what pretraining learned
    ("discriminative fine-tuning", Howard & Ruder, 2018). Frozen parameters
    (``requires_grad=False``) are left out; a group with no trainable parameters is dropped.
    Pass the result to any ``torch.optim`` optimizer: ``torch.optim.AdamW(param_groups(...))``.

    Args:
        model: the network.
        lr: learning rate of every trainable parameter outside the head, > 0.
        head_lr: learning rate of the head's parameters, > 0.
        head: attribute path of the head; default :func:`find_head`.
        weight_decay: weight decay of both groups, >= 0.

    Returns:
        A list of one or two dicts with keys ``"params"``, ``"lr"``, ``"weight_decay"`` and
        ``"name"`` (``"head"`` first, then ``"body"``).

    Raises:
        ValueError: a learning rate <= 0, ``weight_decay < 0``, an unknown ``head``, or no trainable parameter.
    """
    if not lr > 0 or not head_lr > 0:
        raise ValueError(f"learning rates must be > 0, got lr={lr}, head_lr={head_lr}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    head = find_head(model) if head is None else head
    try:
        head_module = model.get_submodule(head)
    except AttributeError as error:
        raise ValueError(f"{type(model).__name__} has no submodule {head!r}") from error
    head_ids = {id(p) for p in head_module.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"name": "head", "params": [p for p in trainable if id(p) in head_ids], "lr": head_lr, "weight_decay": weight_decay},
        {"name": "body", "params": [p for p in trainable if id(p) not in head_ids], "lr": lr, "weight_decay": weight_decay},
    ]
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters (all frozen?)")
    return groups


class Headless(nn.Module):
    """A copy of ``model`` with its classification head replaced by the identity: a feature extractor.

    ``forward_features(x)`` (and ``forward``) return what the head would have received,
    flattened to (B, D), so :func:`~companion.evaluation.extract_features` and
    :func:`linear_probe` accept any classifier: torchvision's ResNet-50 (head ``fc``, D = 2048),
    ViT-B/16 (``heads.head``, D = 768), the package's networks. ``model`` itself is not changed.

    Args:
        model: a classifier.
        head: attribute path of the head; default :func:`find_head` (its last ``nn.Linear``).
            Pass it for models whose last ``nn.Linear`` is not the head.

    Raises:
        ValueError: as :func:`find_head`, or an unknown ``head``.
    """

    def __init__(self, model: nn.Module, head: str | None = None) -> None:
        super().__init__()
        import copy

        name = head or find_head(model)
        self.model = copy.deepcopy(model)
        parent_name, _, attribute = name.rpartition(".")
        try:
            parent = self.model.get_submodule(parent_name) if parent_name else self.model
            getattr(parent, attribute)
        except AttributeError as error:
            raise ValueError(f"{type(model).__name__} has no module {name!r}") from error
        setattr(parent, attribute, nn.Identity())
        self.head_name = name

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.model(x), 1)  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


class Standardize(nn.Module):
    """Per-feature standardisation as a layer: ``(x - mean) / std``, with fixed statistics.

    Args:
        mean: (D,) floating point, the training features' mean.
        std: (D,) floating point, > 0, their standard deviation.

    Shape:
        - Input: (B, D).
        - Output: (B, D), the dtype PyTorch promotes the input and the statistics to.

    Raises:
        TypeError: ``mean`` or ``std`` is not a floating-point tensor.
        ValueError: ``mean`` and ``std`` are not both (D,), or a ``std`` is not > 0.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in (mean, std)):
            raise TypeError(f"mean and std must be floating-point tensors, got {type(mean).__name__} and {type(std).__name__}")
        if mean.dim() != 1 or mean.shape != std.shape:
            raise ValueError(f"mean and std must both be (D,), got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not bool((std > 0).all()):
            raise ValueError("std must be > 0 for every feature")
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class ProbeResult:
    """A trained linear probe.

    Attributes:
        accuracy: test accuracy in [0, 1].
        head: the ``nn.Linear(D, num_classes)``, on the CPU; it expects standardised features.
        mean, std: the training features' per-dimension mean and standard deviation (D,), which
            standardise any features for ``head``: ``head((features - mean) / std)``; ``std`` is 1
            for a feature that is constant on the training set.
        seconds: wall-clock seconds of the training (features given, so their extraction excluded).
    """

    accuracy: float
    head: nn.Linear
    mean: torch.Tensor
    std: torch.Tensor
    seconds: float

    def classifier(self) -> nn.Sequential:
        """The probe as a module on raw features: :class:`Standardize` then a copy of ``head``.

        ``classifier()(features)`` equals ``head((features - mean) / std)``. Unlike
        :meth:`folded_head`, the standardisation stays a layer of its own, so ``head``'s weights keep
        their trained range (what int8 quantisation needs; chapter "Shipping models").

        Returns:
            ``nn.Sequential(Standardize(mean, std), head)``, on the CPU.
        """
        import copy

        return nn.Sequential(Standardize(self.mean.cpu(), self.std.cpu()), copy.deepcopy(self.head))

    def folded_head(self) -> nn.Linear:
        """The probe as one ``nn.Linear`` on raw features: the standardisation folded into its weights.

        ``folded_head()(features)`` equals ``head((features - mean) / std)`` up to rounding, with
        weight :math:`W / \\sigma` (column-wise) and bias :math:`b - (W / \\sigma)\\, \\mu`, so a
        feature extractor followed by it is one network. Fine in float32, but a feature with a small
        :math:`\\sigma` gets a large column, which widens its row's int8 range: for quantisation,
        prefer :meth:`classifier`.

        Returns:
            A new ``nn.Linear(D, num_classes)`` on the CPU, ``head``'s dtype.
        """
        weight = self.head.weight.detach() / self.std.to(self.head.weight)
        folded = nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype)
        with torch.no_grad():
            folded.weight.copy_(weight)
            folded.bias.copy_(self.head.bias.detach() - weight @ self.mean.to(weight))
        return folded


def linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    steps: int = 300,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> ProbeResult:
    """Train a linear classifier on frozen features (a *linear probe*) and test it.

    The features are standardised with the training features' mean and standard deviation,
    then an ``nn.Linear``, initialised to zero, is trained with AdamW and a one-cycle schedule for at least
    ``steps`` steps (whole epochs of shuffled batches), with
    :func:`~companion.recipes.train_model`. How good the probe gets measures how linearly
    separable the classes are in the features, which is what a pretrained body is judged by
    (chapter "Pretraining and fine-tuning"; Kornblith et al., 2019).

    Args:
        train_features, test_features: float (N, D) and (M, D), for example from
            :func:`~companion.evaluation.extract_features`.
        train_labels, test_labels: int64 (N,), (M,), values in [0, K).
        steps: minimum number of optimizer steps, >= 1.
        batch_size: samples per step (at most N).
        lr: peak learning rate, > 0.
        weight_decay: AdamW's decoupled weight decay, >= 0.
        seed: seeds the shuffling.
        device: where to train; default :func:`~companion.device.get_device`.

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ValueError: features that are not 2-D with one label per row, train and test features
            of different widths, fewer than 2 training samples, or ``steps < 1`` (and
            :class:`~companion.recipes.TrainConfig`'s errors for ``lr``, ``weight_decay``,
            ``batch_size``).
    """
    from .data import DeviceLoader
    from .device import get_device
    from .evaluation import evaluate
    from .recipes import TrainConfig, train_model

    for name, x, y in (("train", train_features, train_labels), ("test", test_features, test_labels)):
        if x.ndim != 2 or y.shape != (len(x),):
            raise ValueError(f"{name}_features must be (N, D) with {name}_labels (N,), "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")  # fmt: skip
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"train and test features differ in width: {train_features.shape[1]} vs {test_features.shape[1]}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = get_device(device)
    if len(train_features) < 2:
        raise ValueError(f"a linear probe needs at least 2 training samples, got {len(train_features)}")
    mean, std = train_features.mean(0), train_features.std(0)
    # A feature constant on the training set (a ReLU that never fired) is left unscaled, as
    # scikit-learn's StandardScaler does: dividing by ~0 would blow up its test values.
    std = torch.where(std > 1e-6 * std.max().clamp(min=1e-12), std, torch.ones_like(std))
    batch_size = min(batch_size, len(train_features))
    loader = DeviceLoader((train_features - mean) / std, train_labels, batch_size, shuffle=True, device=device,
                          seed=seed)  # fmt: skip
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    head = nn.Linear(train_features.shape[1], num_classes).to(device)
    # Zero initial weights, as logistic regression starts: a feature that never varies in
    # training then keeps a zero weight instead of a random one that its test values would amplify.
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    epochs = math.ceil(steps / len(loader))
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer="adamw", weight_decay=weight_decay,
                         schedule="one-cycle", seed=seed)  # fmt: skip
    history = train_model(head, loader, config, device=device, progress=False)
    test = DeviceLoader((test_features - mean) / std, test_labels, 1000, device=device)
    accuracy = evaluate(head, test, device).accuracy
    return ProbeResult(accuracy, head.cpu(), mean, std, history.total_seconds)
