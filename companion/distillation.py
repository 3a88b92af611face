"""Knowledge distillation: a small network (the student) trained on a large one's (the teacher's) outputs.

Hinton, Vinyals and Dean (2015) soften both networks' class probabilities with a temperature
:math:`T`, :math:`p_k = \\operatorname{softmax}(z / T)_k`, and train the student to match the teacher's
softened probabilities :math:`q` (the *soft targets*) as well as the labels:

.. math::
    L = \\alpha\\, T^2\\, \\mathrm{KL}\\big(q^{(T)} \\,\\|\\, p^{(T)}\\big)
        + (1 - \\alpha)\\, \\mathrm{CE}\\big(y, p^{(1)}\\big).

The soft term's gradients scale as :math:`1/T^2`; the factor :math:`T^2` keeps its share of the
gradient the same when :math:`T` changes. The KL divergence differs from the soft cross-entropy
:math:`-\\sum_k q_k \\log p_k` by the teacher's entropy, a constant, so both have the same gradient.
Explained in the chapter "Shipping models".
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["cached_distillation_loss", "distillation_loss", "soft_target_loss"]


def _check_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> None:
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            kind = logits.dtype if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise TypeError(f"{name} must be a floating-point tensor (N, K), got {kind}")
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must have the same shape (N, K), got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target term: :math:`T^2\\, \\mathrm{KL}(q^{(T)} \\| p^{(T)})`, mean over the batch.

    Equal to ``T**2 * F.kl_div(F.log_softmax(student_logits / T, 1), F.log_softmax(teacher_logits / T, 1),
    reduction="batchmean", log_target=True)``. The teacher's logits are detached: no gradient flows into
    the teacher.

    Args:
        student_logits: (N, K) floating point, the student's logits (before softmax).
        teacher_logits: (N, K), the same dtype family, the teacher's logits.
        temperature: :math:`T > 0`; 1 is the plain softmax, larger values soften both distributions.

    Returns:
        A scalar tensor >= 0 (0 when the two softened distributions are equal), in nats times :math:`T^2`.

    Raises:
        TypeError: a logits argument is not a floating-point tensor.
        ValueError: the shapes differ or are not (N, K); ``temperature`` is not > 0.

    Source: Hinton, Vinyals and Dean, "Distilling the knowledge in a neural network" (2015), section 2.
    """
    _check_logits(student_logits, teacher_logits, temperature)
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    log_q = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    kl = (log_q.exp() * (log_q - log_p)).sum(dim=1).mean()
    return temperature**2 * kl


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
) -> torch.Tensor:
    """The distillation objective: ``alpha`` × soft-target loss + (1 − ``alpha``) × cross-entropy with the labels.

    Args:
        student_logits: (N, K) floating point.
        teacher_logits: (N, K), detached inside.
        target: (N,) int64 class indices in [0, K), the hard labels.
        temperature: :math:`T > 0` of the soft term (the hard term always uses :math:`T = 1`).
        alpha: weight of the soft term in [0, 1]; 1 distils from the teacher alone, 0 is plain training.

    Returns:
        A scalar tensor >= 0.

    Raises:
        TypeError: logits not floating point, or ``target`` not an integer tensor.
        ValueError: shapes that do not match (N, K) and (N,); ``temperature`` not > 0; ``alpha``
            outside [0, 1]; a label outside [0, K).

    Source: Hinton, Vinyals and Dean (2015), section 2: a weighted average of the two objectives, the
    soft one multiplied by :math:`T^2`.
    """
    _check_logits(student_logits, teacher_logits, temperature)
    if not isinstance(target, torch.Tensor) or target.dtype != torch.int64:
        kind = target.dtype if isinstance(target, torch.Tensor) else type(target).__name__
        raise TypeError(f"target must be an int64 tensor of class indices (N,), got {kind}")
    if target.shape != student_logits.shape[:1]:
        raise ValueError(f"target must have shape ({student_logits.shape[0]},), got {tuple(target.shape)}")
    if target.numel() and (target.min() < 0 or target.max() >= student_logits.shape[1]):
        raise ValueError(f"target must lie in [0, {student_logits.shape[1]}), got [{target.min()}, {target.max()}]")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    soft = soft_target_loss(student_logits, teacher_logits, temperature)
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, target)


def cached_distillation_loss(
    teacher_logits: torch.Tensor, target: torch.Tensor, temperature: float = 4.0, alpha: float = 0.9
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, None]]:
    """A ``batch_loss`` for :func:`~companion.train.fit` that distils from teacher logits computed once.

    Running the teacher at every step costs its forward pass each epoch; when nothing random happens
    to the inputs (no augmentation), its logits can be computed once for the training set instead.
    The loader then yields ``(x, index)``: ``index`` (B,) int64 are the batch's positions in the
    training set (a :class:`~companion.data.DeviceLoader` over the images and ``torch.arange(N)``),
    and the step's loss is :func:`distillation_loss` of ``model(x)`` against ``teacher_logits[index]``
    and ``target[index]``. It returns no logits, so ``fit`` records no training accuracy.

    Args:
        teacher_logits: (N, K) floating point, the teacher's logits for the N training examples.
        target: (N,) int64 labels in [0, K).
        temperature, alpha: as in :func:`distillation_loss`.

    Returns:
        ``batch_loss(model, x, index) -> (loss, None)``.

    Raises:
        TypeError: ``teacher_logits`` not floating point, or ``target`` not int64.
        ValueError: lengths that differ, ``temperature`` not > 0, ``alpha`` outside [0, 1] (checked
            here, before any training), and at each step what :func:`distillation_loss` checks.
    """
    distillation_loss(teacher_logits[:1], teacher_logits[:1], target[:1], temperature, alpha)  # the checks
    if len(teacher_logits) != len(target):
        raise ValueError(f"teacher_logits and target differ in length: {len(teacher_logits)} vs {len(target)}")
    teacher_logits = teacher_logits.detach()

    def batch_loss(model: nn.Module, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, None]:
        logits = model(x)
        teacher = teacher_logits[index.to(teacher_logits.device)].to(logits.device)
        labels = target[index.to(target.device)].to(logits.device)
        return distillation_loss(logits, teacher, labels, temperature, alpha), None

    return batch_loss
