"""Fine-tuning tools: freeze parameters, find and replace a classification head, per-part learning rates.

They work on any ``nn.Module`` whose classifier is its last ``nn.Linear``: the package's networks
and torchvision's (ResNet ``fc``, VGG ``classifier.6``, MobileNet ``classifier.3``, ViT
``heads.head``). Explained in the chapter "Pretraining and fine-tuning".
"""

from __future__ import annotations

from torch import nn

__all__ = ["find_head", "freeze", "param_groups", "replace_head", "unfreeze"]


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
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, new)  # also works for nn.Sequential children named "6"
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
