"""Core concepts: the smallest networks, and backpropagation written out by hand.

Reading order: logistic regression (one linear layer and a softmax), the one-hidden-layer
perceptron (MLP) that adds a non-linearity, then the forward and backward pass of that
MLP computed with the chain rule alone, which the tests check against autograd.

Chapter "Core concepts" trains both networks on MNIST and steps through the gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .cnn import check_image_shape

__all__ = ["MLP", "LogisticRegression", "MLPGradients", "mlp_forward_backward"]


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: ``logits = W · flatten(x) + b``.

    The softmax of the logits is the predicted class distribution; trained with
    cross-entropy, this is the classic linear classifier (no hidden layer).

    Args:
        in_features: pixels per image (784 for 28×28 MNIST).
        num_classes: number of output logits.

    Shape:
        - Input: (B, 1, 28, 28) float, normalised pixels (any (B, ...) with ``in_features`` elements per sample
          when ``in_features`` is not 784).
        - Output: (B, num_classes) logits.

    Raises:
        ValueError: a sample does not have ``in_features`` elements.
    """

    def __init__(self, in_features: int = 784, num_classes: int = 10) -> None:
        super().__init__()
        self.in_features = in_features
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The features the classifier reads: the flattened pixels, (B, in_features)."""
        return _flatten(self.flatten, x, self.in_features, "LogisticRegression")

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The linear classifier: (B, in_features) → (B, num_classes) logits."""
        return self.fc(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class MLP(nn.Module):
    """A multilayer perceptron with one hidden layer: ``fc2(relu(fc1(flatten(x))))``.

    Rumelhart, Hinton & Williams (1986) trained such networks with backpropagation;
    :func:`mlp_forward_backward` computes the same gradients by hand.

    Args:
        in_features: pixels per image (784 for MNIST).
        hidden_size: units in the hidden layer, >= 1.
        num_classes: number of output logits.

    Shape:
        - Input: (B, 1, 28, 28) float (or (B, ...) with ``in_features`` elements per sample).
        - Output: (B, num_classes) logits.

    Raises:
        ValueError: ``hidden_size < 1``, or a sample does not have ``in_features`` elements.
    """

    def __init__(self, in_features: int = 784, hidden_size: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        self.in_features = in_features
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, hidden_size)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden_size, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden layer's activations: (B, 1, 28, 28) → (B, hidden_size)."""
        x = _flatten(self.flatten, x, self.in_features, "MLP")  # (B, in_features)
        return self.relu(self.fc1(x))  # (B, hidden_size)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The output layer ``fc2``: (B, hidden_size) → (B, num_classes) logits."""
        return self.fc2(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _flatten(flatten: nn.Flatten, x: torch.Tensor, in_features: int, model: str) -> torch.Tensor:
    if in_features == 784 and x.dim() == 4:
        check_image_shape(x, (1, 28, 28), model)
    x = flatten(x) if x.dim() > 2 else x
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"{model} expects {in_features} features per sample, got input of shape {tuple(x.shape)}")
    return x


@dataclass(frozen=True)
class MLPGradients:
    """Loss and gradients of a one-hidden-layer MLP, from :func:`mlp_forward_backward`.

    Attributes:
        loss: mean cross-entropy over the batch (nats), a 0-d tensor.
        weight1, bias1, weight2, bias2: d loss / d parameter, each shaped like the parameter.
    """

    loss: torch.Tensor
    weight1: torch.Tensor
    bias1: torch.Tensor
    weight2: torch.Tensor
    bias2: torch.Tensor


def mlp_forward_backward(
    x: torch.Tensor,
    target: torch.Tensor,
    weight1: torch.Tensor,
    bias1: torch.Tensor,
    weight2: torch.Tensor,
    bias2: torch.Tensor,
) -> MLPGradients:
    """Forward and backward pass of ``softmax(W2 · relu(W1 x + b1) + b2)`` by the chain rule.

    With ``a = x W1ᵀ + b1``, ``h = relu(a)``, ``z = h W2ᵀ + b2``, ``p = softmax(z)`` and the
    mean cross-entropy ``L = −(1/B) Σ_n log p[n, y_n]``, backpropagation gives
    ``dL/dz = (p − onehot(y)) / B``, ``dL/dW2 = (dL/dz)ᵀ h``, ``dL/db2 = Σ_n dL/dz``,
    ``dL/dh = (dL/dz) W2``, ``dL/da = dL/dh ⊙ [a > 0]``, ``dL/dW1 = (dL/da)ᵀ x`` and
    ``dL/db1 = Σ_n dL/da`` (Rumelhart et al., 1986). No autograd is used; the chapter
    "Core concepts" and the tests compare every gradient with ``loss.backward()``.

    Args:
        x: inputs (B, in_features), float.
        target: class indices (B,), int64 in [0, K).
        weight1: (hidden_size, in_features); bias1: (hidden_size,);
        weight2: (K, hidden_size); bias2: (K,) — ``nn.Linear``'s layout.

    Returns:
        :class:`MLPGradients` with the loss and one gradient per parameter.

    Raises:
        ValueError: shapes that do not fit together, or a target outside [0, K).
        TypeError: a target that is not int64.
    """
    if x.dim() != 2 or target.shape != (x.shape[0],):
        raise ValueError(f"expected x (B, in_features) and target (B,), got {tuple(x.shape)} and {tuple(target.shape)}")
    if target.dtype != torch.int64:
        raise TypeError(f"target must be int64 class indices, got {target.dtype}")
    hidden, num_classes = weight1.shape[0], weight2.shape[0]
    expected = {
        "weight1": (weight1.shape, (hidden, x.shape[1])),
        "bias1": (bias1.shape, (hidden,)),
        "weight2": (weight2.shape, (num_classes, hidden)),
        "bias2": (bias2.shape, (num_classes,)),
    }
    for name, (got, want) in expected.items():
        if tuple(got) != want:
            raise ValueError(f"{name} must have shape {want} for x {tuple(x.shape)}, got {tuple(got)}")
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"target must be class indices in [0, {num_classes}), got range [{int(target.min())}, {int(target.max())}]")
    batch = x.shape[0]
    a = x @ weight1.T + bias1  # (B, H) pre-activation
    h = a.clamp(min=0)  # (B, H) ReLU
    z = h @ weight2.T + bias2  # (B, K) logits
    log_p = z - torch.logsumexp(z, dim=1, keepdim=True)  # (B, K) log-softmax, stable
    loss = -log_p[torch.arange(batch, device=x.device), target].mean()
    dz = (log_p.exp() - F.one_hot(target, num_classes).to(z.dtype)) / batch  # (B, K)
    dh = dz @ weight2  # (B, H)
    da = dh * (a > 0).to(dh.dtype)  # (B, H): the ReLU passes gradient only where it was active
    return MLPGradients(loss=loss, weight1=da.T @ x, bias1=da.sum(0), weight2=dz.T @ h, bias2=dz.sum(0))
