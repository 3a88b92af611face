"""Scenes for detection and segmentation, built from real MNIST or Fashion-MNIST images.

:func:`make_scenes` pastes 1 to ``max_objects`` images of one split at random positions and
sizes onto a blank canvas, with the overlap between them limited, and returns the canvases with
each object's box, class and the per-pixel class mask. Everything is a batched tensor operation
on the chosen device (one ``grid_sample`` renders every object of a chunk of scenes), seeded by
a ``torch.Generator``. Chapter "Detection and segmentation" trains on scenes of the training
split and tests on scenes of the test split; :class:`Scenes` records which split it came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .boxes import box_iou
from .data import ImageSplit
from .device import get_device

__all__ = ["Scenes", "make_scenes"]


@dataclass(frozen=True)
class Scenes:
    """Canvases with several objects, their boxes, classes and masks.

    Attributes:
        images: uint8 (N, 1, S, S), pixel values 0–255 (objects bright on black).
        boxes: N tensors (k_i, 4) float32: each object's tight box around its ink
            ``(x1, y1, x2, y2)`` in pixels (x2, y2 exclusive: a one-pixel object is 1 wide).
        labels: N tensors (k_i,) int64: the object's class in the source dataset (0–9).
        masks: int64 (N, S, S): 0 for background, ``label + 1`` where an object's ink is (the
            object pasted last wins where two overlap).
        sources: N tensors (k_i,) int64: index of each object's image in the source split.
        train: whether the objects come from the training split.
        classes: the source dataset's class names (index = label).
    """

    images: torch.Tensor
    boxes: list[torch.Tensor]
    labels: list[torch.Tensor]
    masks: torch.Tensor
    sources: list[torch.Tensor]
    train: bool
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.images)

    def targets(self) -> list[dict[str, torch.Tensor]]:
        """One ``{"boxes", "labels"}`` dict per scene, the format of torchvision's detectors and torchmetrics."""
        return [{"boxes": b, "labels": l} for b, l in zip(self.boxes, self.labels)]


def _place(count: torch.Tensor, sizes: torch.Tensor, canvas_size: int, max_iou: float, generator: torch.Generator,
           tries: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Top-left corners (N, K, 2) and an active mask (N, K): slot j is redrawn until its patch
    overlaps no earlier active patch by more than ``max_iou``, or dropped after ``tries``."""
    N, K = sizes.shape
    corners = torch.zeros(N, K, 2)
    active = torch.arange(K)[None, :] < count[:, None]  # (N, K)
    for j in range(K):
        room = (canvas_size - sizes[:, j]).clamp(min=0) + 1  # positions per axis
        placed = torch.zeros(N, dtype=torch.bool)
        for _ in range(tries):
            proposal = (torch.rand(N, 2, generator=generator) * room[:, None]).floor()
            corners[:, j] = torch.where(placed[:, None], corners[:, j], proposal)
            if j == 0:
                placed[:] = True
                break
            box = torch.cat([corners[:, j], corners[:, j] + sizes[:, j, None]], 1)  # (N, 4)
            earlier = torch.cat([corners[:, :j], corners[:, :j] + sizes[:, :j, None]], 2)  # (N, j, 4)
            iou = torch.vmap(box_iou)(box[:, None], earlier)[:, 0]  # per scene, new box vs earlier: (N, j)
            clash = (iou > max_iou) & active[:, :j]
            placed |= ~clash.any(1)
            if placed.all():
                break
        active[:, j] &= placed  # a slot that found no room is dropped
    return corners, active


def make_scenes(
    split: ImageSplit,
    num_scenes: int,
    generator: torch.Generator,
    canvas_size: int = 64,
    min_objects: int = 1,
    max_objects: int = 5,
    size_range: tuple[int, int] = (16, 32),
    max_iou: float = 0.1,
    ink_threshold: int = 96,
    device: torch.device | str | None = None,
    tries: int = 20,
) -> Scenes:
    """Scenes of ``min_objects``–``max_objects`` images of ``split`` each, deterministic given ``generator``.

    Each object is one 28 × 28 image of the split, resized to a random side in ``size_range``
    (pixels, bilinear) and pasted at a random position; the canvas keeps the brightest value
    where objects overlap. Positions are redrawn until the object's square patch overlaps no
    earlier one by more than ``max_iou`` (IoU of the patches); an object that finds no room in
    ``tries`` draws is left out. Boxes are the tight boxes of each object's ink (pixels above
    ``ink_threshold``), so a box fits the digit, not the empty margin of its 28 × 28 image.

    Args:
        split: an MNIST or Fashion-MNIST split; its train flag is recorded in the result.
        num_scenes: N >= 1.
        generator: a CPU ``torch.Generator`` (the same scenes on every device).
        canvas_size: S, pixels.
        min_objects, max_objects: objects per scene, 1 <= min <= max.
        size_range: (smallest, largest) side of a pasted image, 8 <= smallest <= largest <= S.
        max_iou: largest allowed IoU between two objects' patches, in [0, 1].
        ink_threshold: 0–255; a pixel of an object above it is ink (for boxes and masks).
        device: where the rendering runs (``None``: :func:`~companion.device.get_device`); the result
            is moved to the CPU.
        tries: draws per object before it is dropped.

    Returns:
        :class:`Scenes`. An object that found no room, or whose resized image has no pixel above
        ``ink_threshold``, is left out, so a scene can hold fewer than ``min_objects``.

    Raises:
        ValueError: any argument out of its range.
    """
    lo, hi = size_range
    checks = [
        (num_scenes >= 1, f"num_scenes must be >= 1, got {num_scenes}"),
        (1 <= min_objects <= max_objects, f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}"),
        (8 <= lo <= hi <= canvas_size, f"need 8 <= size_range[0] <= size_range[1] <= canvas_size, got {size_range}, {canvas_size}"),
        (0 <= max_iou <= 1, f"max_iou must be in [0, 1], got {max_iou}"),
        (0 <= ink_threshold < 255, f"ink_threshold must be in [0, 255), got {ink_threshold}"),
        (tries >= 1, f"tries must be >= 1, got {tries}"),
    ]  # fmt: skip
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    device = get_device(device)
    N, K, S = num_scenes, max_objects, canvas_size
    count = torch.randint(min_objects, max_objects + 1, (N,), generator=generator)
    sources = torch.randint(0, len(split), (N, K), generator=generator)
    sizes = torch.randint(lo, hi + 1, (N, K), generator=generator).float()
    corners, active = _place(count, sizes, S, max_iou, generator, tries)

    # One affine map per object: canvas pixel -> position in its 28 x 28 image (align_corners=False).
    scale = S / sizes  # (N, K)
    theta = torch.zeros(N, K, 2, 3)
    theta[..., 0, 0] = theta[..., 1, 1] = scale
    theta[..., 0, 2] = (S - 2 * corners[..., 0]) / sizes - 1
    theta[..., 1, 2] = (S - 2 * corners[..., 1]) / sizes - 1
    images = torch.zeros(N, 1, S, S, dtype=torch.uint8)
    masks = torch.zeros(N, S, S, dtype=torch.int64)
    all_boxes, all_labels, all_sources = [], [], []
    for start in range(0, N, 256):  # chunks bound the memory: 256 * K objects of S x S floats
        stop = min(start + 256, N)
        n = stop - start
        digits = split.images[sources[start:stop].flatten()].to(device).float()  # (n·K, 1, 28, 28)
        grid = F.affine_grid(theta[start:stop].reshape(n * K, 2, 3).to(device), [n * K, 1, S, S], align_corners=False)
        rendered = F.grid_sample(digits, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        rendered = rendered.view(n, K, S, S) * active[start:stop, :, None, None].to(device)  # dropped slots: empty
        images[start:stop, 0] = rendered.amax(1).round().clamp(0, 255).to(torch.uint8).cpu()
        ink = rendered > ink_threshold  # (n, K, S, S)
        labels = split.labels[sources[start:stop]].to(device)  # (n, K)
        chunk_masks = torch.zeros(n, S, S, dtype=torch.int64, device=device)
        for j in range(K):  # later objects on top
            chunk_masks = torch.where(ink[:, j], labels[:, j, None, None] + 1, chunk_masks)
        masks[start:stop] = chunk_masks.cpu()
        rows, cols = ink.any(3), ink.any(2)  # (n, K, S): which rows / columns have ink
        has_ink = rows.any(2).cpu()
        index = torch.arange(S, device=device).float()
        y1 = torch.where(rows, index, S).amin(2)
        y2 = torch.where(rows, index, -1).amax(2) + 1
        x1 = torch.where(cols, index, S).amin(2)
        x2 = torch.where(cols, index, -1).amax(2) + 1
        boxes = torch.stack([x1, y1, x2, y2], 2).cpu()  # (n, K, 4)
        for i in range(n):
            keep = active[start + i] & has_ink[i]
            all_boxes.append(boxes[i][keep].float())
            all_labels.append(labels[i].cpu()[keep])
            all_sources.append(sources[start + i][keep])
    return Scenes(images, all_boxes, all_labels, masks, all_sources, split.train, split.classes)
